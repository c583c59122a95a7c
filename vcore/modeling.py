"""The one model loader: every model and tokenizer enters through ``from_pretrained`` here (hub id or local dir).

Training, evaluation, the inspector and the fidelity tool all load through these functions:

- :func:`load_model` / :func:`load_tokenizer`: a :class:`vcore.config.ModelConfig` (dtype, attention, gradient
  checkpointing, new or saved LoRA adapters). The tiny default model must be resolved to its directory first
  (:func:`vcore.run.training.resolve_model` builds it on first use);
- :func:`load_checkpoint`: a checkpoint or ``final/`` dir of one of our runs, full weights or LoRA adapters;
- :func:`load_pretrained`: any hub id or model dir, as it was saved (evaluation of models we did not train).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vcore.checks import ConfigError
from vcore.checks import check as _check


# --------------------------------------------------------------------------------------------------- schema
# The ``model`` config group (registered by vcore.config), next to the loader that reads it.
@dataclass
class TinyPretrainConfig:
    """How the tiny base is pretrained: SFT through this project's own Trainer on the synthetic miniature's broad
    corpus (``vcore.data.synthetic``, split ``corpus``: single operations and word problems with short solutions)."""

    steps: int = 700  # optimizer steps; 0: no pretraining (a randomly initialised model, as the tests use)
    batch_size: int = 32  # examples per step (one epoch over steps x batch_size fresh examples)
    learning_rate: float = 3e-3
    warmup_ratio: float = 0.1
    # Packed rows of at most this many tokens (0: padded batches). The corpus mixes 30- and 250-token examples, so
    # padding wastes ~45% of the compute; rows of 384 keep ~83% and train 1.6x faster on 2 CPU cores, with the
    # same batches. (Length-grouped batches would save as much but measurably slow learning down.)
    pack_length: int = 384
    seed: int = 0  # the corpus draw and the data order
    # torch threads for the build, whatever OMP_NUM_THREADS says: the weights depend on how many threads sum the
    # reductions (1 and 2 threads give different bases), so the thread count is part of what the cache key hashes.
    threads: int = 2


@dataclass
class TinyModelConfig:
    """A Qwen3-architecture model small enough for 2 CPU cores, with a BPE tokenizer trained on the synthetic task,
    pretrained on the synthetic miniature's broad corpus (``pretrain``) so that fine-tuning starts from a prior.

    Built once and loaded back through ``from_pretrained`` like any hub model. With ``model.name_or_path`` unset it
    is cached in ``cache_dir/<hash of this config and of the corpus>/``: a second run with the same settings reuses
    it, a change to any setting (or to the generator) builds a new one.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384
    vocab_size: int = 640  # BPE vocabulary trained on the synthetic corpus, special tokens included
    max_position_embeddings: int = 1024
    seed: int = 0  # weight initialisation (fixed: seeds of fine-tuning runs share one base)
    pretrain: TinyPretrainConfig = field(default_factory=TinyPretrainConfig)
    cache_dir: str = "~/.cache/vcore/tiny"  # where built bases live (model.name_or_path unset)

    def __post_init__(self) -> None:
        _check(self.pretrain.steps >= 0, "model.tiny.pretrain.steps", "must be >= 0 (0: no pretraining)")
        _check(self.pretrain.batch_size >= 1, "model.tiny.pretrain.batch_size", "must be >= 1")
        _check(self.pretrain.learning_rate > 0, "model.tiny.pretrain.learning_rate", "must be > 0")
        _check(self.pretrain.pack_length >= 0, "model.tiny.pretrain.pack_length", "must be >= 0 (0: padded batches)")
        _check(self.pretrain.threads >= 1, "model.tiny.pretrain.threads", "must be >= 1")


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    # "all-linear" is peft's shorthand for every linear layer except the output head (paper: LoRA on all linear layers)
    target_modules: Any = "all-linear"


@dataclass
class ModelConfig:
    # hub id or local directory, passed to from_pretrained; with model.tiny set: where to build the tiny model
    # (null: its cache, see TinyModelConfig)
    name_or_path: Optional[str] = None
    tokenizer: Optional[str] = None  # defaults to name_or_path
    dtype: str = "float32"  # dtype of the weights: float32 | bfloat16 | float16
    attn_implementation: Optional[str] = "sdpa"  # sdpa | eager | flash_attention_2 | null (model default)
    gradient_checkpointing: bool = False
    # > 0: per-token CE from hidden states in chunks of this many tokens, never the full [T, vocab] logits
    # (exact; needed for long CoT at 16k tokens with a 152k vocabulary). 0: full logits.
    loss_chunk_size: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: Optional[TinyModelConfig] = None  # set: build (or reuse) the tiny model, see TinyModelConfig

    def __post_init__(self) -> None:
        _check(
            bool(self.name_or_path) or self.tiny is not None,
            "model.name_or_path",
            "set a hub id or a local model directory (or pick model=tiny, which builds its own)",
        )
        _check(
            self.dtype in ("float32", "bfloat16", "float16"),
            "model.dtype",
            f"unknown dtype {self.dtype!r}; use float32, bfloat16 or float16",
        )
        _check(self.loss_chunk_size >= 0, "model.loss_chunk_size", "must be >= 0 (0: full logits)")


# --------------------------------------------------------------------------------------------------- loading
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_source(name_or_path: str, option: str = "model.name_or_path") -> None:
    """One clear line for a model source that is neither a directory nor shaped like a hub id (``org/name``);
    ``from_pretrained`` would answer with pages of chained tracebacks about repo ids."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(
            f"{option}={name_or_path}: a file, not a model directory (give the directory holding config.json)"
        )
    if not _HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")) or ".." in name_or_path:
        raise ConfigError(f"{option}={name_or_path}: no such directory, and not a hub id (org/name)")


def _resolved(cfg: ModelConfig) -> ModelConfig:
    if cfg.tiny is not None:
        raise ConfigError(
            "model.tiny: the tiny model has no directory until it is built; resolve the config first "
            "(vcore.run.training.resolve_model), which builds or finds it"
        )
    return cfg


def load_tokenizer(cfg: ModelConfig | str):
    """The tokenizer of ``cfg`` (``model.tokenizer`` or ``model.name_or_path``), or of a hub id / dir; pad = EOS when
    the tokenizer has no pad token (padding is masked out of the loss and of attention)."""
    if isinstance(cfg, str):
        source, option = cfg, "tokenizer"
    else:
        cfg = _resolved(cfg)
        source, option = cfg.tokenizer or cfg.name_or_path, "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    check_source(str(source), option)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {source!r} has no chat template; set model.tokenizer to one that has")
    return tokenizer


def load_model(cfg: ModelConfig, adapter: str | None = None):
    """Base model in ``model.dtype``; LoRA adapters (new, or loaded from ``adapter``) when ``model.lora.enabled``."""
    cfg = _resolved(cfg)
    check_source(cfg.name_or_path)
    kwargs = {"dtype": DTYPES[cfg.dtype]}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.loss_chunk_size:  # refuse an architecture chunked CE cannot handle now, not at the first step
        from vcore.ops.chunked_ce import check_supported

        check_supported(model)
    if not cfg.lora.enabled:
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules)
        if not isinstance(cfg.lora.target_modules, str)
        else cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_checkpoint(cfg: ModelConfig, checkpoint: Path):
    """``(tokenizer, model)`` from a checkpoint or ``final/`` dir of a run trained with ``cfg`` (the run's model
    config): full weights as saved, in ``model.dtype``; LoRA adapters on the run's base model."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint (did the run finish?)")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if cfg.lora.enabled:
        return tokenizer, load_model(cfg, adapter=str(checkpoint))
    return tokenizer, AutoModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPES[cfg.dtype])


def load_pretrained(name_or_path: str, dtype: str = "auto"):
    """Any causal LM as it was saved (hub id or dir), ``dtype`` ``auto`` or a torch dtype name."""
    check_source(str(name_or_path), "model")
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
