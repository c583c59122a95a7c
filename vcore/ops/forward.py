"""The one forward that turns a batch into per-token losses, shared by training, probes and evaluation.

A method may ask the training forward for more than the loss (:class:`ForwardNeeds`): the entropy of the predictive
distribution and its top-k log-probabilities at every position. They are computed inside the chunked cross-entropy
(:mod:`vcore.ops.chunked_ce`) from the same logits as the loss, a chunk of positions at a time, so neither the
``[T, vocab]`` logits nor a second forward ever exist for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from vcore.ops.chunked_ce import (
    DEFAULT_CHUNK,
    chunked_token_cross_entropy,
    chunked_token_statistics,
    hidden_states_as_logits,
)
from vcore.ops.losses import supervised_mask, token_cross_entropy

# Keys the collator adds for the loss and the methods; never passed to the model.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids")


@dataclass(frozen=True)
class ForwardNeeds:
    """What a method reads from the training forward besides the per-token loss (which is always there).

    ``entropy``: ``H(p_θ(· | y_<t))`` at every supervised position. ``top_k``: the k largest log-probabilities (and
    their token ids) at every supervised position; 0: none.
    """

    entropy: bool = False
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"ForwardNeeds.top_k must be >= 0 (got {self.top_k})")

    @property
    def extras(self) -> bool:
        return self.entropy or self.top_k > 0


NOTHING_MORE = ForwardNeeds()


@dataclass
class TokenForward:
    """One forward's per-token results in example layout ``[B, T]`` (aligned with ``labels``; 0 off ``mask``).

    ``token_loss``: ``-log p_θ(y_t)`` in float32, carrying the graph when gradients are on. The rest is detached and
    present only when asked for (:class:`ForwardNeeds`): ``entropy [B, T]``, ``top_k_log_probs [B, T, k]`` (largest
    first) with their ``top_k_ids [B, T, k]``.
    """

    token_loss: torch.Tensor
    mask: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    top_k_log_probs: Optional[torch.Tensor] = None
    top_k_ids: Optional[torch.Tensor] = None

    @property
    def log_prob(self) -> torch.Tensor:
        """``log p_θ(y_t)`` ``[B, T]``, detached: the negated loss, 0 off the mask."""
        return -self.token_loss.detach()

    @property
    def top_k_mass(self) -> torch.Tensor:
        """``[B, T]``: the probability of the k most likely tokens together (needs ``ForwardNeeds(top_k=k)``)."""
        if self.top_k_log_probs is None:
            raise ValueError("top_k_mass needs the top-k log-probabilities: declare needs = ForwardNeeds(top_k=k)")
        return self.top_k_log_probs.exp().sum(-1) * self.mask


def _example_layout(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Packed rows ``[R, L, ...]`` -> example layout ``[E, T_max, ...]`` (``index``: ``pack_index``, -1 = none)."""
    flat = x.reshape(-1, *x.shape[2:])[index.clamp(min=0)]
    return flat * (index >= 0).reshape(*index.shape, *([1] * (x.dim() - 2)))


def _forward(model: nn.Module, batch: dict, chunk_size: int, needs: ForwardNeeds) -> TokenForward:
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    inputs["use_cache"] = False
    packed = "pack_index" in batch
    labels = batch["packed_labels"] if packed else batch["labels"]
    extras: dict[str, torch.Tensor] = {}
    if needs.extras:  # always from hidden states in chunks, whatever model.loss_chunk_size says (no [T, V] logits)
        with hidden_states_as_logits(model) as head:
            hidden = model(**inputs).logits
            loss, extras = chunked_token_statistics(
                hidden, head.weight, labels, chunk_size or DEFAULT_CHUNK, entropy=needs.entropy, top_k=needs.top_k
            )
    elif chunk_size:
        with hidden_states_as_logits(model) as head:
            hidden = model(**inputs).logits
            loss = chunked_token_cross_entropy(hidden, head.weight, labels, chunk_size)
    else:
        loss = token_cross_entropy(model(**inputs).logits, labels)
    if packed:
        # Packed rows -> example layout [E, T_max], so every per-example quantity sees examples (see data/collate.py).
        index = batch["pack_index"]
        loss = loss.reshape(-1)[index.clamp(min=0)] * (index >= 0)
        extras = {k: _example_layout(v, index) for k, v in extras.items()}
    return TokenForward(loss, supervised_mask(batch["labels"]), **extras)


def _token_loss(model: nn.Module, batch: dict, chunk_size: int) -> torch.Tensor:
    return _forward(model, batch, chunk_size, NOTHING_MORE).token_loss


class _TokenLoss(nn.Module):
    """Wraps a model so ``functional_call`` can substitute its parameters (names prefixed ``model.``)."""

    def __init__(self, model: nn.Module, chunk_size: int) -> None:
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(self, batch: dict) -> torch.Tensor:
        return _token_loss(self.model, batch, self.chunk_size)


def model_forward(
    model: nn.Module, batch: dict, needs: ForwardNeeds = NOTHING_MORE, *, chunk_size: int = 0
) -> TokenForward:
    """``batch ->`` :class:`TokenForward` with what ``needs`` asks for, from one forward of ``model``.

    ``chunk_size > 0``: the cross-entropy is computed from hidden states in chunks of that many tokens, never
    materialising the full ``[B, T, V]`` logits (``model.loss_chunk_size``); 0: from full logits, unless ``needs``
    asks for more than the loss, which is always computed in chunks (of :data:`vcore.ops.chunked_ce.DEFAULT_CHUNK`
    tokens when ``chunk_size`` is 0). Check the model first with :func:`vcore.ops.chunked_ce.check_supported`.
    """
    return _forward(model, batch, chunk_size, needs)


def model_token_loss(
    model: nn.Module, batch: dict, params: dict[str, torch.Tensor] | None = None, *, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch -> (token_loss [B, T] float32, mask [B, T] bool)``; the loss carries the graph if grads are on.

    ``chunk_size``: as in :func:`model_forward`. ``params`` replaces the named parameters for this call only
    (``torch.func.functional_call``), e.g. with dual tensors for a forward-mode probe; the module itself is never
    mutated.
    """
    if params is None:
        token_loss = _token_loss(model, batch, chunk_size)
    else:
        token_loss = torch.func.functional_call(
            _TokenLoss(model, chunk_size), {f"model.{n}": p for n, p in params.items()}, (batch,)
        )
    return token_loss, supervised_mask(batch["labels"])
