"""Every method trains on CUDA in bf16 autocast on a Qwen3-0.6B-shaped model (random init, built from a config) at
T = 2,048: padded and packed batches, full fine-tuning and LoRA, through the real Trainer (probe, weights, chunked
CE, AdamW). VCORE runs with each probe: finite differences, jvp through the blocked attention, jvp through the fused
kernel (which must take every call: head dim 128, GQA, right padding or packed rows, bf16).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.helpers import method_config, needs_cuda
from vcore.methods import method_names

pytestmark = needs_cuda()

QWEN3_06B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
)
T = 2048
STEPS, BATCH = 2, 2
# Every registered method with its default settings; VCORE once per probe: finite differences, jvp, the fused kernel.
VARIANTS = {"vcore": ("vcore_fd", "vcore_jvp", "vcore_jvp_fused")}
METHODS = tuple(v for name in method_names() for v in VARIANTS.get(name, (name,)))


@pytest.fixture(scope="module")
def base_model():
    """Built once from a config, initialised on the GPU (float32 weights; seconds, where a CPU initialisation of 0.6B
    parameters takes a large part of the check's budget); each test trains a deep copy."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**QWEN3_06B, max_position_embeddings=8 * T, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()]), torch.device("cuda"):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def rows(n: int = 8, seed: int = 0) -> list[dict]:
    """Examples of T and fewer tokens (so padded rows really pad), a 16-token prompt, an 8-token answer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = T if i % 2 == 0 else T * 5 // 8
        ids = torch.randint(QWEN3_06B["vocab_size"], (length,), generator=g).tolist()
        out.append(
            {
                "input_ids": ids,
                "labels": [-100] * 16 + ids[16:],
                "answer_mask": [False] * (length - 8) + [True] * 8,
                "example_id": i,
            }
        )
    return out


def method(name: str):
    from vcore.config import ProbeConfig, ProbeMode

    if not name.startswith("vcore"):
        return method_config(name, seed=3) if name == "random" else method_config(name)
    probe = ProbeConfig(
        mode=ProbeMode.finite_difference if name == "vcore_fd" else ProbeMode.jvp,
        batch_size=BATCH,
        accumulation=1,
        jvp_attention="fused" if name.endswith("fused") else "vcore_blocked",
    )
    return method_config("vcore", tau=1.0, probe=probe)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_in_bf16_at_2048(base_model, tmp_path, name, pack, lora, caplog):
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from vcore.data.collate import Collator
    from vcore.methods import MethodContext, build_method
    from vcore.modeling import LoraConfig as VcoreLora
    from vcore.ops import fused_attention
    from vcore.run.trainer import WeightedTrainer

    model = copy.deepcopy(base_model)
    if lora:  # vcore.modeling.load_model's adapters (its defaults, dropout off)
        defaults = VcoreLora()
        model = get_peft_model(
            model,
            LoraConfig(
                r=defaults.r,
                lora_alpha=defaults.alpha,
                lora_dropout=0.0,
                target_modules=defaults.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data, collate = rows(), Collator(0, pack=pack)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        seed=0,
    )
    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collate,
        precision="bf16",
        loss_chunk_size=1024,
        weighting=build_method(method(name), MethodContext(model, data, collate, 1024)),
    )
    fused_attention._reported.clear()
    with caplog.at_level("WARNING", logger="vcore.ops.fused_attention"):
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), trainer.state.log_history
    assert all(p.device.type == "cuda" for p in model.parameters())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before), f"{len(before) - len(changed)} trainable tensors did not move"
    if name.startswith("vcore"):
        assert any("vcore/alpha" in h for h in trainer.state.log_history)  # the probe ran and weighted the step
    if name.endswith("fused"):
        assert not caplog.records, [r.getMessage() for r in caplog.records]  # every attention call took the kernel
    del trainer, model
    torch.cuda.empty_cache()
