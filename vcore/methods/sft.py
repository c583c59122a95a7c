"""Uniform SFT: ``w_t = 1`` (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcore.methods.base import MethodConfig, MicroBatch, TokenWeighting
from vcore.methods.registry import register
from vcore.ops.forward import TokenForward


@dataclass
class SFTConfig(MethodConfig):
    name: str = "sft"


def sft_weights(mask: torch.Tensor) -> torch.Tensor:
    """``mask [B, T] bool -> [B, T] float32``, 1 on supervised tokens."""
    return mask.to(torch.float32)


@register
class SFT(TokenWeighting):
    name = "sft"
    Config = SFTConfig

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        return sft_weights(forward.mask)
