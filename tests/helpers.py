"""Helpers shared by several test modules: paths, the tiny test overrides, small float64 models and batches, typed
method configs, float64 references written from SPEC, and the environment of test subprocesses.

Test modules import from here (``from tests.helpers import ...``), never from each other or from ``conftest``;
fixtures live in ``tests/conftest.py``. This module is also imported by torchrun worker scripts, so it imports
nothing heavy at module level.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("VCORE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Small enough for a test to train in seconds, big enough to have every kind of layer.
TINY_MODEL = [
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=1",
    "model.tiny.pretrain.steps=0",  # random init: tests need the code path, not a useful model
]
TINY_TEST = [
    *TINY_MODEL,
    "dataset.num_examples=32",
    "dataset.eval_examples=8",
    "trainer.max_steps=2",
    "trainer.per_device_train_batch_size=4",
    "trainer.gradient_accumulation_steps=2",
    "trainer.logging_steps=1",
    "method.probe.batch_size=2",
    "method.probe.accumulation=1",
    "decoding.max_new_tokens=48",
    "eval.num_workers=1",
    "eval.before_train=false",
    "logger=none",
]


# ------------------------------------------------------------------------------------------- subprocesses
def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of every process a test starts (run.py, torchrun ranks, benchmarks): offline, W&B offline,
    and one thread per process. Tiny models train ~10x faster on one thread than on two on the 2-core test machine,
    and a torchrun job's two ranks would otherwise each start as many threads as there are cores."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",  # a child's log lines reach its log file as they are written (tests poll them)
    }
    env.update(extra)
    return env


def torchrun(args: list[str], cwd: Path, timeout: int = 120, ranks: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=<ranks> <args>``, one thread per rank."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def finished_wandb_run(run_dir: Path, timeout: float = 30.0):
    """The offline W&B run of ``run_dir`` (``read_offline_run``) once its record is complete, and its exit code.

    W&B's service, a separate process, may still be writing the run's file when ``finish()`` returns; its exit record
    comes last, after the final summary, so a reader waits for it."""
    import time

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    from vcore.tools.wandb_files import read_offline_run, records

    (files,) = (Path(run_dir) / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + timeout
    while True:
        for raw in records(next(files.glob("run-*.wandb"))):
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except DecodeError:  # bytes the service has not finished writing (seen in CI): read the file again
                break
            if rec.WhichOneof("record_type") == "exit":
                return read_offline_run(files), rec.exit.exit_code
        assert time.monotonic() < deadline, f"{files}: no exit record, the W&B run was not finished"
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- devices
def needs_cuda():
    """Marks of a test that needs a CUDA device: ``gpu`` (deselected by default; ``pytest -m gpu``) and a skip
    when there is none, so ``pytest -m gpu`` on a CPU machine reports skips, not errors."""
    import pytest
    import torch

    return [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def devices() -> list:
    """``["cpu", cuda]`` for ``pytest.mark.parametrize("device", devices())``: the same test on CPU (default suite)
    and on CUDA (``gpu``-marked)."""
    import pytest

    return ["cpu", pytest.param("cuda", marks=needs_cuda(), id="cuda")]


# ------------------------------------------------------------------------------------------- models, batches
def tiny_causal_lm(
    path: Path, *, dtype=None, vocab_size: int = 37, seed: int = 0, attn: str = "sdpa", arch: str = "qwen3"
):
    """A tiny model built from a config, saved to ``path`` and loaded back through ``from_pretrained``.

    ``arch="gpt2"`` gives a model that computes entirely in float64 when loaded so; Qwen3's RMSNorm upcasts to
    float32 internally, which puts a float32 noise floor under any finite difference.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen3Config

    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    else:
        config = Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float64, attn_implementation=attn)


def random_lm_batch(B: int = 3, T: int = 10, vocab_size: int = 37, seed: int = 0, pad_from: int | None = 7):
    """A batch in the collator's format: a 2-token prompt per row, the last row padded from ``pad_from``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    labels = ids.clone()
    labels[:, :2] = -100
    if pad_from is not None:
        attn[-1, pad_from:] = 0
        labels[-1, pad_from:] = -100
    answer = torch.zeros(B, T, dtype=torch.bool)
    answer[:, -2:] = labels[:, -2:] != -100
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "labels": labels,
        "answer_mask": answer,
        "example_id": torch.arange(B),
    }


def varied_rows(n: int = 8, vocab: int = 37, seed: int = 0, spread: int = 7) -> list[dict]:
    """Examples of lengths ``5 + (3i mod spread)`` (so padding differs between batchings), each with a 2-token
    prompt and its last two tokens marked as the answer; the encoded-example format the collator takes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 5 + (i * 3) % spread
        ids = torch.randint(vocab, (length,), generator=g).tolist()
        out.append(
            {
                "input_ids": ids,
                "labels": [-100, -100] + ids[2:],
                "answer_mask": [False] * (length - 2) + [True, True],
                "example_id": i,
            }
        )
    return out


# ------------------------------------------------------------------------------------------- method configs
def method_config(name: str, **kwargs):
    """The typed config of the registered method ``name`` (its schema, with its checks); ``kwargs`` override fields."""
    from vcore.methods import method_class

    return method_class({"name": name}).Config(**kwargs)


def step_method_config(name: str):
    """The method settings the step-level tests (accumulation, packing) use: a seeded Random, a sharp VCORE."""
    from vcore.config import ProbeConfig

    if name == "random":
        return method_config("random", seed=3)
    if name == "vcore":
        return method_config("vcore", tau=3.0, probe=ProbeConfig(epsilon=1e-5, batch_size=2, accumulation=2, seed=1))
    return method_config(name)


# ------------------------------------------------------------------------------------------- SPEC references
def reference_weights(scores, mask, tau: float):
    """SPEC §4.4-5, one example at a time, float64 numpy: q = softmax(τ s) over supervised tokens, w = n q."""
    import numpy as np

    w, q = np.zeros_like(scores, dtype=np.float64), np.zeros_like(scores, dtype=np.float64)
    for i in range(scores.shape[0]):
        idx = np.flatnonzero(mask[i])
        if idx.size == 0:
            continue
        z = tau * scores[i, idx].astype(np.float64)
        e = np.exp(z - z.max())
        q[i, idx] = e / e.sum()
        w[i, idx] = idx.size * q[i, idx]
    return w, q


def reference_paper_alpha(scores, q, mask, alpha_max):
    """SPEC §4.6: V_q = Var(Σ q s), V_u = Var(mean s) over examples; α = sqrt(V_u / V_q), float64 numpy."""
    import numpy as np

    scores, q, mask = np.asarray(scores, np.float64), np.asarray(q, np.float64), np.asarray(mask, bool)
    keep = mask.sum(1) > 0
    a = (q * scores * mask).sum(1)[keep]
    u = ((scores * mask).sum(1) / np.maximum(mask.sum(1), 1))[keep]
    if a.size < 2 or np.var(a) == 0:
        return 1.0
    alpha = math.sqrt(np.var(u) / np.var(a))
    return alpha if alpha_max is None else min(alpha, alpha_max)


def reference_token_nll(model, input_ids, labels) -> list[float]:
    """-log p(labels[t] | ids[:t]) for every supervised t >= 1 of one unpadded example, from float64 logits computed
    by a log-softmax written out here (not F.cross_entropy)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].double()
    out = []
    for t in range(1, len(input_ids)):
        if labels[t] == -100:
            continue
        row = logits[t - 1]
        m = row.max()
        log_z = m + torch.log(torch.exp(row - m).sum())
        out.append(float(log_z - row[labels[t]]))
    return out


# ------------------------------------------------------------------------------------------- data-parallel runs
RANK_BATCH, ACCUMULATION, STEPS = 2, 2, 4  # per-rank micro-batch, accumulation steps, optimizer steps


def train_tiny(
    out: Path,
    method: str,
    per_device: int,
    probe_batch: int,
    every: int = 1,
    resume: str | None = None,
    loss_chunk: int = 0,
    checkpointing: bool = False,
    device: str = "cpu",
    **training_args,
):
    """``STEPS`` optimizer steps of the real Trainer on a float64 GPT-2-architecture model over 32 varied rows;
    returns the final (full) parameters. ``method``: a registered method, or vcore_jvp (VCORE's jvp probe).

    ``loss_chunk``/``checkpointing``: chunked cross-entropy and gradient checkpointing, as ``model.loss_chunk_size``
    and ``model.gradient_checkpointing`` set them up. Under FSDP the parameters are gathered whole. ``device="cuda"``:
    the same run on the GPU (NCCL under torchrun; tests/gpu/)."""
    from transformers import TrainingArguments

    from vcore.config import ProbeConfig, ProbeMode
    from vcore.data.collate import Collator
    from vcore.distributed import rank_zero_first
    from vcore.methods import MethodContext, build_method
    from vcore.run.trainer import WeightedTrainer

    with rank_zero_first():  # save_pretrained writes on rank 0 only; the others load what it wrote
        model = tiny_causal_lm(out / f"model-{method}", arch="gpt2")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    data = varied_rows(32, spread=11)
    collate = Collator(pad_token_id=0)
    # ε = 1e-3: rounding in l_t(θ) - l_t(θ - εg) is divided by ε, and the paper-α variances then amplify it.
    probe = ProbeConfig(
        epsilon=1e-3,
        batch_size=probe_batch,
        accumulation=2,
        seed=1,
        every=every,
        mode=ProbeMode.jvp if method == "vcore_jvp" else ProbeMode.finite_difference,
    )
    cfg = method_config("vcore", tau=3.0, probe=probe) if method.startswith("vcore") else method_config(method)
    args = TrainingArguments(
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=ACCUMULATION,
        max_steps=STEPS,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        logging_steps=1,
        seed=0,
        use_cpu=device == "cpu",
        report_to="none",
        remove_unused_columns=False,
        **{"output_dir": str(out / f"ckpt-{method}"), "save_strategy": "no", **training_args},
    )
    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collate,
        loss_chunk_size=loss_chunk,
        weighting=build_method(cfg, MethodContext(model, data, collate, loss_chunk)),
    )
    trainer.train(resume_from_checkpoint=resume)
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }
