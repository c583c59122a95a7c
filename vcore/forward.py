"""The one forward that turns a batch into per-token losses, shared by training, probes and evaluation."""

from __future__ import annotations

import torch
from torch import nn

from vcore.losses import supervised_mask, token_cross_entropy

# Keys the collator adds for the loss and the methods; never passed to the model.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids")


def model_token_loss(model: nn.Module, batch: dict, params: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch -> (token_loss [B, T] float32, mask [B, T] bool)``; the loss carries the graph if grads are on.

    ``params`` replaces the named parameters for this call only (``torch.func.functional_call``), e.g. with
    dual tensors for a forward-mode probe; the module itself is never mutated.
    """
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    inputs["use_cache"] = False
    if params is None:
        logits = model(**inputs).logits
    else:
        logits = torch.func.functional_call(model, params, args=(), kwargs=inputs).logits
    return token_cross_entropy(logits, batch["labels"]), supervised_mask(batch["labels"])
