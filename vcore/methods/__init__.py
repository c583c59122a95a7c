"""Token-weighting methods: ``build_method(cfg.method, ...)`` picks one by its config's ``name``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from vcore.methods.base import Batch, TokenWeighting
from vcore.methods.dft import DFT, dft_weights
from vcore.methods.iw_sft import IwSFT, iw_sft_weights
from vcore.methods.random import RandomTokens, random_weights
from vcore.methods.sft import SFT, sft_weights
from vcore.methods.vcore import VCORE, gibbs_weights, loss_ratio_alpha, paper_alpha

METHODS = ("sft", "dft", "random", "iw_sft", "vcore")


def build_method(
    cfg: Any,
    model: nn.Module,
    train_dataset: Sequence[Any],
    collate: Callable[[list[Any]], Batch],
    reference: nn.Module | None = None,
    loss_chunk_size: int = 0,
) -> TokenWeighting:
    """Instantiate the weighting named by ``cfg.name`` (a :class:`vcore.config.MethodConfig` subclass).

    ``loss_chunk_size``: ``model.loss_chunk_size``, for the forwards a method runs itself (probe, reference model).

    ``reference``: iw-SFT's frozen starting model under full fine-tuning, when ``model`` is not it (the inspector
    loads a trained checkpoint); by default a copy of ``model``, which is right at the start of training.
    """
    if cfg.name == "sft":
        return SFT()
    if cfg.name == "dft":
        return DFT()
    if cfg.name == "random":
        return RandomTokens(cfg.keep_fraction, cfg.seed, cfg.always_keep_answer)
    if cfg.name == "iw_sft":
        return IwSFT(model, cfg.temperature, cfg.clip_min, cfg.clip_max, reference=reference, loss_chunk_size=loss_chunk_size)
    if cfg.name == "vcore":
        return VCORE(cfg, model, train_dataset, collate, loss_chunk_size)
    raise ValueError(f"method.name: unknown method {cfg.name!r}; choose one of {', '.join(METHODS)}")


__all__ = [
    "METHODS", "TokenWeighting", "build_method", "SFT", "DFT", "RandomTokens", "IwSFT", "VCORE",
    "sft_weights", "dft_weights", "random_weights", "iw_sft_weights", "gibbs_weights", "paper_alpha", "loss_ratio_alpha",
]
