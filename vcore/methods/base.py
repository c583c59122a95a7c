"""What a token-weighting method is, as the trainer sees it.

Methods differ only in their weights (STYLE habit 1): each returns detached ``w_t`` of shape ``[B, T]`` and,
optionally, a loss factor α; :func:`vcore.ops.losses.weighted_loss` does the rest for every method.

Two hooks:
- :meth:`TokenWeighting.prepare_step` runs once per optimizer step on *all* micro-batches of the accumulation
  window before any of them is back-propagated. Methods whose weights depend on the whole step batch (VCORE's α,
  its scores from extra forwards) or on a second model (iw-SFT's reference) compute them here and store per
  micro-batch tensors under ``batch["weighting"]``.
- :meth:`TokenWeighting.weights` runs inside the loss of each micro-batch, with that micro-batch's per-token
  losses from the training forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vcore.distributed import all_reduce_sum
from vcore.ops.losses import supervised_mask

Batch = dict[str, Any]

# A method's state in a checkpoint: written by rank 0 last (it marks the checkpoint complete), plus one file per rank
# for what differs between ranks (VCORE's stored probe direction under FSDP).
METHOD_STATE = "vcore_method_state.pt"
RANK_STATE_FILE = "vcore_method_state_rank{rank}.pt"


def step_counts(batches: list[Batch]) -> dict[str, torch.Tensor]:
    """Supervised tokens and examples of the whole step batch, over all ranks (float64 scalars). The trainer computes
    them once per step and stores them in every micro-batch as ``batch["step_counts"]``; methods read them there."""
    masks = [supervised_mask(b["labels"]) for b in batches]
    counts = torch.tensor(
        [float(sum(int(m.sum()) for m in masks)), float(sum(int((m.sum(1) > 0).sum()) for m in masks))],
        dtype=torch.float64,
        device=masks[0].device,
    )
    num_tokens, num_examples = all_reduce_sum(counts)
    return {"num_tokens": num_tokens, "num_examples": num_examples}


class TokenWeighting:
    name: str = "base"

    def prepare_step(self, model: nn.Module, batches: list[Batch]) -> dict[str, torch.Tensor]:
        """Per-step work over the whole step batch; returns step-level diagnostics (detached tensors)."""
        return {}

    def weights(self, token_loss: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, T]`` detached weights (0 where ``mask`` is False) for one micro-batch."""
        raise NotImplementedError

    def loss_scale(self, batch: Batch) -> torch.Tensor | float:
        """Detached factor applied to the micro-batch's loss (VCORE's α); 1 for most methods."""
        return 1.0

    # Checkpointed state (generators); empty for stateless methods. ``rank_state_dict``: the part that differs
    # between ranks (VCORE's stored probe direction under FSDP: this rank's shards), None when nothing does.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rank_state_dict(self) -> dict[str, Any] | None:
        return None

    def load_rank_state_dict(self, state: dict[str, Any] | None) -> None:
        """``state``: what this rank saved, or None when the checkpoint has no file for this rank."""
