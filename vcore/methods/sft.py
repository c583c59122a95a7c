"""Uniform SFT: ``w_t = 1`` (SPEC §3)."""

from __future__ import annotations

import torch

from vcore.methods.base import Batch, TokenWeighting


def sft_weights(mask: torch.Tensor) -> torch.Tensor:
    """``mask [B, T] bool -> [B, T] float32``, 1 on supervised tokens."""
    return mask.to(torch.float32)


class SFT(TokenWeighting):
    name = "sft"

    def weights(self, token_loss: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        return sft_weights(mask)
