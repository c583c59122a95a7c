"""Dynamic Fine-Tuning (Wu et al., arXiv 2508.05629, eq. 9): ``w_t = p_θ(y_t) = exp(-l_t)``, detached.

Derived from the per-token CE already computed, so no second vocabulary-wide softmax is needed (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcore.methods.base import MethodConfig, MicroBatch, TokenWeighting
from vcore.methods.registry import register
from vcore.ops.forward import TokenForward


@dataclass
class DFTConfig(MethodConfig):
    name: str = "dft"


def dft_weights(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``token_loss [B, T]``, ``mask [B, T] -> [B, T]``: ``exp(-l_t)`` on supervised tokens, detached."""
    return torch.exp(-token_loss.detach()) * mask


@register
class DFT(TokenWeighting):
    name = "dft"
    Config = DFTConfig

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        return dft_weights(forward.token_loss, forward.mask)
