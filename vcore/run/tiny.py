"""Build the default model: a tiny Qwen3-architecture network with a BPE tokenizer, pretrained on the synthetic
miniature's broad corpus so that fine-tuning starts from a prior (as the paper's methods do), not from noise.

    python run.py task=pretrain       # build (or find) the base and evaluate it zero-shot; any run builds it too

:func:`ensure_tiny` is the one entry point: it returns a ``from_pretrained`` directory (tokenizer + model), built
once, deterministically (one seed for the initialisation, one for the corpus and data order; bit-identical on the
same machine and thread count), and cached by the hash of everything that shapes it (architecture, tokenizer
corpus, pretraining settings and corpus, build recipe version). Builds go to a temporary directory and are moved in
place when complete, under a file lock: a crash leaves no half-built base, and parallel sweep jobs wait for one
build instead of racing. The pretraining itself is plain SFT through this project's own Trainer
(:func:`vcore.run.training.build_job`), on ``vcore.data.synthetic`` split ``corpus``.

The chat template mirrors Qwen3's single-turn rendering: the assistant turn opens ``<think>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from vcore.checks import ConfigError
from vcore.config import ModelConfig, TinyModelConfig
from vcore.prompts import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

# Bump when the build recipe changes in a way the config does not show (cached bases are then rebuilt).
BUILD_VERSION = 4  # 4: splits disjoint by problem signature (vcore.data.synthetic)
STAMP = "vcore_tiny.json"
PRETRAIN_RECORD = "pretrain.json"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", THINK_OPEN, THINK_CLOSE]

# Single-turn Qwen3 rendering: reasoning between <think> tags is split out of the content and re-emitted, so a
# response written with its own <think> block renders exactly once; a response without one gets no empty block.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit numbers (as Qwen's tokenizer), trained on ``corpus``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def build_tiny(path: str | Path, spec: TinyModelConfig, corpus: list[str]) -> Path:
    """Write tokenizer + randomly initialised model into ``path`` (no pretraining; see :func:`ensure_tiny`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _fingerprint(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def build_stamp(spec: TinyModelConfig) -> str:
    """Everything that shapes the built model, as canonical JSON (its hash names the cache entry)."""
    from vcore.data.synthetic import make_split

    settings = {k: v for k, v in dataclasses.asdict(spec).items() if k != "cache_dir"}
    p = spec.pretrain
    corpus = make_split("corpus", p.steps * p.batch_size, seed=p.seed) if p.steps else []
    return json.dumps(
        {
            "build_version": BUILD_VERSION,
            "spec": settings,
            "tokenizer_corpus": _fingerprint(tiny_corpus()),
            "pretrain_corpus": _fingerprint([r["problem"] + r["generated_solution"] for r in corpus]),
        },
        sort_keys=True,
    )


def tiny_path(cfg: ModelConfig, stamp: str | None = None) -> Path:
    """Where ``cfg``'s tiny model lives: ``model.name_or_path`` if set, else its cache entry."""
    assert cfg.tiny is not None
    if cfg.name_or_path:
        return Path(cfg.name_or_path)
    digest = hashlib.sha256((stamp or build_stamp(cfg.tiny)).encode()).hexdigest()[:16]
    return Path(cfg.tiny.cache_dir).expanduser() / f"tiny-{digest}"


def _is_complete(path: Path, stamp: str) -> bool:
    return (path / STAMP).is_file() and (path / STAMP).read_text() == stamp


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to ``path`` (released when the process dies, so a crash never leaves it held)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the tiny model at %s", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


Pretrain = Callable[[Path, Path, TinyModelConfig], dict]


def ensure_tiny(cfg: ModelConfig, pretrain: Pretrain) -> Path:
    """The ``from_pretrained`` directory of the tiny model ``cfg.tiny`` describes, built unless already there.

    ``pretrain(init_dir, work_dir, spec)`` trains the initialised model (``spec.pretrain.steps`` > 0) and returns a
    record; the caller passes it (:func:`vcore.run.training.pretrain_tiny_base`), so building a base, itself a
    training run, needs no import of the training job from here."""
    from vcore.distributed import launched_world_size

    assert cfg.tiny is not None, "ensure_tiny needs model.tiny"
    stamp = build_stamp(cfg.tiny)
    path = tiny_path(cfg, stamp)
    if _is_complete(path, stamp):
        return path
    if launched_world_size() > 1:
        if cfg.tiny.pretrain.steps:  # pretraining is a single-process job (its own Trainer)
            raise ConfigError(
                f"model.tiny: the tiny base is not built yet ({path}); build it once in a single process "
                "(python run.py task=pretrain with the same model settings), then launch the distributed job"
            )
        if int(os.environ.get("RANK", "0")) != 0:
            # transformers writes weights from rank 0 only once a process group exists: a build on another rank
            # would be stamped complete without its weights. Read from the launcher's environment, not the
            # process group, which may not exist yet.
            return _wait_for(path, stamp)
    with _locked(path):
        if _is_complete(path, stamp):  # another job built it while we waited
            return path
        if path.exists() and any(path.iterdir()) and not (path / STAMP).is_file():
            raise ConfigError(
                f"model.name_or_path={path}: the directory exists and holds something other than a tiny build; "
                "choose an empty or new directory, or unset model.name_or_path to use the cache"
            )
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(tmp, cfg.tiny, pretrain)
            missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (tmp / f).is_file()]
            if missing:  # never stamp a build that cannot be loaded
                raise RuntimeError(f"building the tiny model at {path}: {', '.join(missing)} not written")
            (tmp / STAMP).write_text(stamp)  # last: marks the build complete
            if path.exists():
                shutil.rmtree(path)  # a build of other settings at an explicit model.name_or_path
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _wait_for(path: Path, stamp: str, timeout_s: float = 1800.0) -> Path:
    """Wait until another process (rank 0) has built ``path``."""
    deadline = time.monotonic() + timeout_s
    while not _is_complete(path, stamp):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for rank 0 to build the tiny model at {path}")
        time.sleep(0.5)
    return path


def _build(path: Path, spec: TinyModelConfig, pretrain: Pretrain) -> None:
    """Tokenizer + initialisation, then ``spec.pretrain.steps`` of pretraining, all into ``path``."""
    p = spec.pretrain
    if not p.steps:
        build_tiny(path, spec, tiny_corpus())
        return
    t0 = time.perf_counter()
    work = path / "pretraining"
    init = build_tiny(work / "init", spec, tiny_corpus())
    log.info(
        "pretraining the tiny base: %d steps of %d examples (a few minutes on 2 CPU cores; cached afterwards)",
        p.steps,
        p.batch_size,
    )
    record = pretrain(init, work, spec)
    for f in init.iterdir():  # the tokenizer files; the weights come from the trained model below
        if f.is_file() and not f.name.startswith(("model", "config", "generation_config")):
            shutil.copy2(f, path / f.name)
    trained = work / "model"
    for f in trained.iterdir():
        shutil.copy2(f, path / f.name)
    shutil.copy2(work / "history.jsonl", path / "pretrain_history.jsonl")
    record["build_s"] = time.perf_counter() - t0
    (path / PRETRAIN_RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(work)
    log.info("tiny base built in %.0f s (final pretraining NLL %.3f)", record["build_s"], record["final_nll"])


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: prompts and responses of the corpus and the fine-tuning data (fixed seed;
    no evaluated split: its words and numbers all occur in these)."""
    from vcore.data.synthetic import make_split

    texts = []
    for split, n in (("corpus", 2500), ("train", 500)):
        for rec in make_split(split, n, seed=12345):
            texts.append(rec["problem"])
            texts.append(rec["generated_solution"])
    return texts
