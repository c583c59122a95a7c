"""The one forward that turns a batch into per-token losses, shared by training, probes and evaluation."""

from __future__ import annotations

import torch
from torch import nn

from vcore.ops.chunked_ce import chunked_token_cross_entropy, hidden_states_as_logits
from vcore.ops.losses import supervised_mask, token_cross_entropy

# Keys the collator adds for the loss and the methods; never passed to the model.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids")


def _token_loss(model: nn.Module, batch: dict, chunk_size: int) -> torch.Tensor:
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    inputs["use_cache"] = False
    packed = "pack_index" in batch
    labels = batch["packed_labels"] if packed else batch["labels"]
    if chunk_size:
        with hidden_states_as_logits(model) as head:
            hidden = model(**inputs).logits
            loss = chunked_token_cross_entropy(hidden, head.weight, labels, chunk_size)
    else:
        loss = token_cross_entropy(model(**inputs).logits, labels)
    if not packed:
        return loss
    # Packed rows -> example layout [E, T_max], so every per-example quantity sees examples (see data/collate.py).
    index = batch["pack_index"]
    return loss.reshape(-1)[index.clamp(min=0)] * (index >= 0)


class _TokenLoss(nn.Module):
    """Wraps a model so ``functional_call`` can substitute its parameters (names prefixed ``model.``)."""

    def __init__(self, model: nn.Module, chunk_size: int) -> None:
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(self, batch: dict) -> torch.Tensor:
        return _token_loss(self.model, batch, self.chunk_size)


def model_token_loss(
    model: nn.Module, batch: dict, params: dict[str, torch.Tensor] | None = None, *, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch -> (token_loss [B, T] float32, mask [B, T] bool)``; the loss carries the graph if grads are on.

    ``chunk_size > 0``: the cross-entropy is computed from hidden states in chunks of that many tokens, never
    materialising the full ``[B, T, V]`` logits (``model.loss_chunk_size``; check the model first with
    :func:`vcore.ops.chunked_ce.check_supported`); 0: from full logits. ``params`` replaces the named parameters for
    this call only (``torch.func.functional_call``), e.g. with dual tensors for a forward-mode probe; the module
    itself is never mutated.
    """
    if params is None:
        token_loss = _token_loss(model, batch, chunk_size)
    else:
        token_loss = torch.func.functional_call(_TokenLoss(model, chunk_size), {f"model.{n}": p for n, p in params.items()}, (batch,))
    return token_loss, supervised_mask(batch["labels"])
