"""Per-token cross-entropy from hidden states, in chunks of tokens, never holding the ``[T, vocab]`` logits.

Why: every method needs per-token losses, not just their sum, so scalar-only fused losses do not fit; and float32
logits of one 16k-token sequence over Qwen3's 151,936-token vocabulary take ~10 GB. Here the lm-head projection
and the float32 log-softmax run ``chunk`` tokens at a time, and are recomputed chunk by chunk in the backward pass
and in the forward-mode (jvp) pass, so peak extra memory is ``O(chunk · vocab)``.

TRL 1.16's ``add_fused_lm_head`` returns per-token log-probabilities in tiles too, but its autograd function has no
forward-mode rule (the VCORE jvp probe needs one) and it patches ``model.forward``; hence this module.

Shapes: ``hidden [N, H]``, ``weight [V, H]``, ``targets [N]`` (``-100`` = ignored) -> ``loss [N]``, float32 (float64
for float64 inputs), 0 where ignored. Under autocast the projection runs in the autocast dtype, as the model's own
lm-head would; the softmax is always at least float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vcore.ops.losses import IGNORE_INDEX

DEFAULT_CHUNK = 1024


def _dtypes(hidden: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(projection dtype, softmax dtype) for the current autocast state."""
    dev = hidden.device.type
    proj = (
        torch.get_autocast_dtype(dev)
        if torch.is_autocast_enabled(dev) and hidden.dtype != torch.float64
        else hidden.dtype
    )
    return proj, torch.promote_types(hidden.dtype, torch.float32)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class ChunkedTokenCE(torch.autograd.Function):
    """``(loss [N], entropy [N] | [0], top-k log-probs [N, k] | [0], top-k ids [N, k] | [0])``; the extras (empty
    unless asked for) come from the same chunk of logits as the loss and carry no derivative."""

    @staticmethod
    def forward(hidden, weight, targets, chunk, proj_dtype, acc_dtype, entropy=False, top_k=0):
        n = hidden.shape[0]
        loss = torch.zeros(n, dtype=acc_dtype, device=hidden.device)
        ent = torch.zeros(n if entropy else 0, dtype=acc_dtype, device=hidden.device)
        top_lp = torch.zeros((n, top_k) if top_k else (0,), dtype=acc_dtype, device=hidden.device)
        top_id = torch.zeros((n, top_k) if top_k else (0,), dtype=torch.long, device=hidden.device)
        w = weight.to(proj_dtype)
        for sl in _chunks(n, chunk):
            logits = (hidden[sl].to(proj_dtype) @ w.T).to(acc_dtype)
            tgt = targets[sl]
            keep = tgt != IGNORE_INDEX
            picked = logits.gather(1, tgt.clamp(min=0)[:, None]).squeeze(1)
            lse = torch.logsumexp(logits, dim=-1)
            loss[sl] = torch.where(keep, lse - picked, torch.zeros_like(picked))
            if entropy or top_k:
                log_p = logits - lse[:, None]
            if entropy:  # -Σ p log p, with 0 · log 0 = 0 for tokens a model rules out (-inf logits)
                p = log_p.exp()
                h = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)
                ent[sl] = torch.where(keep, h, torch.zeros_like(h))
            if top_k:
                values, ids = log_p.topk(top_k, dim=-1)
                top_lp[sl] = torch.where(keep[:, None], values, torch.zeros_like(values))
                top_id[sl] = torch.where(keep[:, None], ids, torch.zeros_like(ids))
        return loss, ent, top_lp, top_id

    @staticmethod
    def setup_context(ctx, inputs, output):
        hidden, weight, targets, chunk, proj_dtype, acc_dtype, *_ = inputs
        ctx.save_for_backward(hidden, weight, targets)
        ctx.save_for_forward(hidden, weight, targets)
        ctx.mark_non_differentiable(*output[1:])
        ctx.chunk, ctx.proj_dtype, ctx.acc_dtype = chunk, proj_dtype, acc_dtype

    @staticmethod
    def _probs(ctx, hidden, w, targets, sl):
        logits = (hidden[sl].to(ctx.proj_dtype) @ w.T).to(ctx.acc_dtype)
        p = torch.softmax(logits, dim=-1)
        keep = (targets[sl] != IGNORE_INDEX)[:, None]
        return p * keep, targets[sl].clamp(min=0), keep

    @staticmethod
    def backward(ctx, grad, *_):
        hidden, weight, targets = ctx.saved_tensors
        w = weight.to(ctx.proj_dtype)
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = (
            torch.zeros(weight.shape, dtype=ctx.acc_dtype, device=weight.device) if ctx.needs_input_grad[1] else None
        )
        for sl in _chunks(hidden.shape[0], ctx.chunk):
            p, tgt, keep = ChunkedTokenCE._probs(ctx, hidden, w, targets, sl)
            d_logits = p.scatter_add(1, tgt[:, None], -keep.to(p.dtype)) * grad[sl, None].to(p.dtype)
            d_logits = d_logits.to(ctx.proj_dtype)
            if d_hidden is not None:
                d_hidden[sl] = (d_logits @ w).to(hidden.dtype)
            if d_weight is not None:
                d_weight += (d_logits.T @ hidden[sl].to(ctx.proj_dtype)).to(ctx.acc_dtype)
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_hidden, d_weight, *_):
        hidden, weight, targets = ctx.saved_tensors
        w = weight.to(ctx.proj_dtype)
        out = torch.zeros(hidden.shape[0], dtype=ctx.acc_dtype, device=hidden.device)
        for sl in _chunks(hidden.shape[0], ctx.chunk):
            p, tgt, keep = ChunkedTokenCE._probs(ctx, hidden, w, targets, sl)
            d_logits = torch.zeros_like(p)
            if d_hidden is not None:
                d_logits = d_logits + (d_hidden[sl].to(ctx.proj_dtype) @ w.T).to(ctx.acc_dtype)
            if d_weight is not None:
                d_logits = d_logits + (hidden[sl].to(ctx.proj_dtype) @ d_weight.to(ctx.proj_dtype).T).to(ctx.acc_dtype)
            out[sl] = ((p * d_logits).sum(-1) - d_logits.gather(1, tgt[:, None]).squeeze(1)) * keep.squeeze(1)
        return out, None, None, None


def chunked_token_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """``hidden [B, T, H]``, lm-head ``weight [V, H]``, ``labels [B, T]`` -> ``[B, T]`` per-token NLL.

    Aligned like :func:`vcore.ops.losses.token_cross_entropy`: entry ``t`` is the loss of ``labels[t]`` predicted from
    ``hidden[t - 1]``; position 0 is 0.
    """
    return chunked_token_statistics(hidden, weight, labels, chunk)[0]


def chunked_token_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    *,
    entropy: bool = False,
    top_k: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`chunked_token_cross_entropy` plus, from the same chunks of logits, what is asked for: ``entropy``
    ``[B, T]`` (of the distribution that predicts ``labels[t]``), ``top_k_log_probs`` and ``top_k_ids`` ``[B, T, k]``
    (largest first). Aligned like the loss, 0 where ``labels`` is ignored; the extras are detached."""
    b, t, h = hidden.shape
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1).reshape(-1)
    proj, acc = _dtypes(hidden)
    flat = hidden.reshape(-1, h)
    loss, ent, top_lp, top_id = ChunkedTokenCE.apply(flat, weight, targets, int(chunk), proj, acc, entropy, top_k)

    def shift(x: torch.Tensor) -> torch.Tensor:  # [B*T, ...] by predicting position -> [B, T, ...] by predicted one
        return torch.nn.functional.pad(x.view(b, t, *x.shape[1:])[:, :-1], (0, 0) * (x.dim() - 1) + (1, 0))

    extras = {}
    if entropy:
        extras["entropy"] = shift(ent)
    if top_k:
        extras["top_k_log_probs"], extras["top_k_ids"] = shift(top_lp), shift(top_id)
    return shift(loss), extras


# Architectures that transform logits after the lm-head (soft-capping, scaling) would need that transform here.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


def causal_lm(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft


def check_supported(model: nn.Module) -> None:
    cfg = causal_lm(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    used = [a for a in _LOGIT_TRANSFORMS if getattr(cfg, a, None) not in (None, 1.0)]
    head = causal_lm(model).get_output_embeddings()
    if used or getattr(head, "bias", None) is not None:
        raise ValueError(
            "model.loss_chunk_size: chunked cross-entropy does not support this architecture "
            f"({used or 'lm-head bias'}); "
            "set model.loss_chunk_size=0 to use full logits"
        )


@contextlib.contextmanager
def hidden_states_as_logits(model: nn.Module) -> Iterator[nn.Module]:
    """Make the model's forward return final hidden states in ``.logits`` (lm-head swapped for an identity).

    The call still goes through the outermost module (DDP, peft), so every wrapper sees a normal forward.
    """
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(nn.Identity())
    try:
        yield head
    finally:
        lm.set_output_embeddings(head)
