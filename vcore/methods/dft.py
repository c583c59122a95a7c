"""Dynamic Fine-Tuning (Wu et al., arXiv 2508.05629, eq. 9): ``w_t = p_θ(y_t) = exp(-l_t)``, detached.

Derived from the per-token CE already computed, so no second vocabulary-wide softmax is needed (SPEC §3).
"""

from __future__ import annotations

import torch

from vcore.methods.base import Batch, TokenWeighting


def dft_weights(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``token_loss [B, T]``, ``mask [B, T] -> [B, T]``: ``exp(-l_t)`` on supervised tokens, detached."""
    return torch.exp(-token_loss.detach()) * mask


class DFT(TokenWeighting):
    name = "dft"

    def weights(self, token_loss: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        return dft_weights(token_loss, mask)
