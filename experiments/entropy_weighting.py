"""Entropy weighting, the worked example of docs/adding_a_method.md: a token-weighting method outside vcore.

Each supervised token is weighted by the entropy of the model's prediction at its position, normalised to mean 1
inside each example: ``w_t = n H_t^p / Σ_j H_j^p`` over the example's ``n`` supervised tokens (``p``:
``method.power``; uniform weights, i.e. SFT, where an example's entropies are all 0 or ``p = 0``). Tokens the model is
unsure about weigh more. ``H_t`` comes from the training forward itself (``needs``), computed inside the chunked
cross-entropy: no second forward, no ``[T, vocab]`` logits.

    python run.py --config-dir experiments/conf method=entropy
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcore.checks import check
from vcore.methods import MethodConfig, MicroBatch, TokenWeighting
from vcore.ops.forward import ForwardNeeds, TokenForward


@dataclass
class EntropyConfig(MethodConfig):
    name: str = "entropy"
    power: float = 1.0  # w ∝ H^power inside each example; 0 gives uniform weights (SFT)

    def __post_init__(self) -> None:
        check(self.power >= 0, "method.power", f"must be >= 0 (got {self.power}); 0 gives uniform weights")


def entropy_weights(entropy: torch.Tensor, mask: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``entropy [B, T]``, ``mask [B, T] bool`` -> ``[B, T]`` float32: ``n H^p / Σ H^p`` per row on the mask, 1 on the
    mask of a row whose ``H^p`` sum to 0, 0 off the mask."""
    h = torch.where(mask, entropy.detach().double().clamp(min=0) ** power, 0.0)
    n, total = mask.sum(dim=1, keepdim=True), h.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, n * h / total.clamp(min=1e-300), 1.0)
    return (w * mask).float()


class EntropyWeighting(TokenWeighting):
    name = "entropy"
    Config = EntropyConfig
    needs = ForwardNeeds(entropy=True)

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        return entropy_weights(forward.entropy, forward.mask, self.cfg.power)

    def token_values(self, forward: TokenForward, micro: MicroBatch) -> dict[str, torch.Tensor]:
        return {"entropy": forward.entropy}  # shown beside the weights: inspector, W&B heatmap, report
