"""The one forward that turns a batch into per-token losses, shared by training, probes and evaluation."""

from __future__ import annotations

import torch
from torch import nn

from vcore.ops.chunked_ce import causal_lm, chunked_token_cross_entropy, hidden_states_as_logits
from vcore.ops.losses import supervised_mask, token_cross_entropy

# Keys the collator adds for the loss and the methods; never passed to the model.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids")
CHUNK_ATTR = "vcore_loss_chunk_size"


def set_loss_chunk_size(model: nn.Module, chunk: int) -> None:
    """``chunk > 0``: per-token CE from hidden states in chunks of tokens (no full logits); 0: full logits."""
    if chunk:
        from vcore.ops.chunked_ce import check_supported

        check_supported(model)
    setattr(causal_lm(model), CHUNK_ATTR, int(chunk))


def _token_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    inputs["use_cache"] = False
    packed = "pack_index" in batch
    labels = batch["packed_labels"] if packed else batch["labels"]
    chunk = getattr(causal_lm(model), CHUNK_ATTR, 0)
    if chunk:
        with hidden_states_as_logits(model) as head:
            hidden = model(**inputs).logits
            loss = chunked_token_cross_entropy(hidden, head.weight, labels, chunk)
    else:
        loss = token_cross_entropy(model(**inputs).logits, labels)
    if not packed:
        return loss
    # Packed rows -> example layout [E, T_max], so every per-example quantity sees examples (see data/collate.py).
    index = batch["pack_index"]
    return loss.reshape(-1)[index.clamp(min=0)] * (index >= 0)


class _TokenLoss(nn.Module):
    """Wraps a model so ``functional_call`` can substitute its parameters (names prefixed ``model.``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return _token_loss(self.model, batch)


def model_token_loss(model: nn.Module, batch: dict, params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch -> (token_loss [B, T] float32, mask [B, T] bool)``; the loss carries the graph if grads are on.

    ``params`` replaces the named parameters for this call only (``torch.func.functional_call``), e.g. with
    dual tensors for a forward-mode probe; the module itself is never mutated.
    """
    if params is None:
        token_loss = _token_loss(model, batch)
    else:
        token_loss = torch.func.functional_call(_TokenLoss(model), {f"model.{n}": p for n, p in params.items()}, (batch,))
    return token_loss, supervised_mask(batch["labels"])
