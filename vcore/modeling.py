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
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vcore.checks import ConfigError
from vcore.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_source(name_or_path: str, option: str = "model.name_or_path") -> None:
    """One clear line for a model source that is neither a directory nor shaped like a hub id (``org/name``);
    ``from_pretrained`` would answer with pages of chained tracebacks about repo ids."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"{option}={name_or_path}: a file, not a model directory (give the directory holding config.json)")
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
        target_modules=list(cfg.lora.target_modules) if not isinstance(cfg.lora.target_modules, str) else cfg.lora.target_modules,
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
