"""Load the model and tokenizer through ``from_pretrained`` (hub id or local dir), and wrap LoRA adapters."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vcore.checks import ConfigError
from vcore.config import ModelConfig
from vcore.ops.forward import set_loss_chunk_size

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``name_or_path`` pointing at files: the tiny model (``model.tiny``) is built or found in its
    cache first (one writer under data parallelism; see :func:`vcore.run.tiny.ensure_tiny`). The result has no ``tiny``
    left, so resolving it again (``load_tokenizer``, ``load_model``) neither rehashes the build nor synchronises ranks."""
    if cfg.tiny is None:
        return cfg
    from vcore.distributed import rank_zero_first
    from vcore.run.tiny import ensure_tiny

    with rank_zero_first():
        path = ensure_tiny(cfg)
    return dataclasses.replace(cfg, name_or_path=str(path), tiny=None)


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


def load_tokenizer(cfg: ModelConfig):
    cfg = resolve_model(cfg)
    check_source(cfg.tokenizer or cfg.name_or_path, "model.tokenizer" if cfg.tokenizer else "model.name_or_path")
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out of the loss and of attention
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {cfg.tokenizer or cfg.name_or_path!r} has no chat template; set model.tokenizer to one that has")
    return tokenizer


def load_model(cfg: ModelConfig, adapter: str | None = None):
    """Base model in ``model.dtype``; LoRA adapters (new, or loaded from ``adapter``) when ``model.lora.enabled``."""
    cfg = resolve_model(cfg)
    check_source(cfg.name_or_path)
    kwargs = {"dtype": DTYPES[cfg.dtype]}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    set_loss_chunk_size(model, cfg.loss_chunk_size)
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
