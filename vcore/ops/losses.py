"""The one loss every method shares, and per-token cross-entropy.

Shape conventions: ``B`` examples, ``T`` positions, ``V`` vocabulary. ``labels[b, t]`` is the token at position
``t`` if it is supervised, else ``-100`` (HF convention, not shifted). Per-token quantities are aligned with
``labels``: ``token_loss[b, t] = -log p(labels[b, t] | tokens < t)``, computed from ``logits[b, t - 1]``;
position 0 is never supervised (nothing predicts it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def supervised_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: positions whose token is a prediction target (position 0 never is)."""
    mask = labels.ne(IGNORE_INDEX)
    mask[:, 0] = False
    return mask


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in float32.

    Args:
        logits: ``[B, T, V]`` any float dtype (upcast here; SPEC §1 computes l_t in float32).
        labels: ``[B, T]`` int64, ``-100`` where unsupervised.
    Returns:
        ``[B, T]`` float32 (float64 if the logits are float64), 0 where unsupervised.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    shifted = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].to(dtype).flatten(0, 1), shifted.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(shifted)
    return F.pad(loss, (1, 0))


def weighted_loss(
    token_loss: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: torch.Tensor | float,
    *,
    normalization: str = "token",
    num_examples: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """SPEC §2: the weighted objective of one micro-batch, normalised for the whole optimizer step.

    Args:
        token_loss: ``[B, T]`` per-token NLL (carries the graph).
        weights: ``[B, T]`` detached weights ``w_t``; ignored where ``mask`` is False.
        mask: ``[B, T]`` bool, supervised positions.
        num_tokens: ``N``, supervised tokens of the whole step batch (all micro-batches, all ranks).
        normalization: ``"token"``: ``(1/N) Σ w l``; ``"sequence"``: ``(1/|B|) Σ_i (1/n_i) Σ_t w l``.
        num_examples: ``|B|`` of the whole step batch (examples with a supervised token); for ``"sequence"``.
    Returns:
        scalar. Summing it over the micro-batches of a step gives the step's loss, so k micro-batches of b
        give the same gradient as one batch of k·b. With no supervised token it is a graph-connected 0.
    """
    contrib = token_loss * weights.detach().to(token_loss.dtype) * mask
    if normalization == "token":
        return contrib.sum() / _at_least_one(num_tokens, token_loss)
    if normalization == "sequence":
        if num_examples is None:
            raise ValueError("sequence normalization needs num_examples (|B| of the step batch)")
        per_example = contrib.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_example.sum() / _at_least_one(num_examples, token_loss)
    raise ValueError(f"method.loss_normalization: unknown {normalization!r}; use token or sequence")


def _at_least_one(n: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    # A step with no supervised token divides by 1: the loss is an exact, graph-connected zero, never NaN.
    return torch.as_tensor(n, dtype=like.dtype, device=like.device).clamp(min=1)
