"""Exact float32 compute for the finite-difference probe (SPEC §6).

At the paper's ε (1e-5..1e-4) the difference ``l_t(θ) - l_t(θ - εg)`` is far below bf16 resolution and below
TF32's; measured Pearson against exact scores drops to ≈0 under bf16 autocast and to 0.53 with TF32 at ε=2e-5.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vcore.checks import ConfigError

LOW_PRECISION = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Autocast off on every device type and TF32 matmuls off, restored on exit."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def check_finite_difference_precision(model: nn.Module, allow_low_precision: bool) -> None:
    """Refuse a finite-difference probe whose forwards would run on bf16/fp16 weights."""
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in LOW_PRECISION})
    if low and not allow_low_precision:
        raise ConfigError(
            f"method.probe.mode=finite_difference with {', '.join(low)} weights: at the paper's ε the finite "
            "difference is rounding noise (SPEC §6: Pearson ≈ 0 against exact scores). Fix: load the weights in "
            "float32 with model.dtype=float32 (keep bf16 speed for the main step with trainer.precision=bf16; the "
            "probe forwards then run in exact float32), or set method.probe.allow_low_precision=true to study the "
            "noisy combination on purpose."
        )
