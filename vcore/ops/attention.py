"""Causal attention with a forward-mode derivative computed block by block over queries.

Why: VCORE's exact token utility ``s_t = <g, ∇l_t>`` is a directional derivative, one forward-mode pass along
``g``. SDPA/flash kernels have no forward-mode rule, and eager attention materialises the ``T × T`` probabilities
of every head (and their tangents), which dominates memory and time at long context (SPEC §6). Here the forward
and its JVP are computed for ``block`` queries at a time: peak extra memory is ``O(block · T)`` per head, linear in
``T``. Only the probe uses it (registered with transformers' attention interface as ``"vcore_blocked"`` and
switched on by :func:`use_attention` for the duration of the probe); training keeps SDPA/flash.

Math, per query block (``P = softmax(S)``, ``S = Q Kᵀ·scale`` masked, ``O = P V``):
``dS = (dQ Kᵀ + Q dKᵀ)·scale``, ``dP = P ⊙ (dS − rowsum(P ⊙ dS))``, ``dO = dP V + P dV``.
Scores and softmax run in float32 for bf16/fp16 inputs (float64 for float64); the output takes the input dtype.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

NAME = "vcore_blocked"
DEFAULT_BLOCK = 256


def _acc(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for bf16/fp16/fp32 inputs, float64 for float64 (the exactness tests)."""
    return torch.promote_types(t.dtype, torch.float32)


def _masked_scores(q_blk, k, key_mask, start: int, scale: float, segments=None) -> torch.Tensor:
    """``q_blk [B, Hkv, G, Tb, D]``, ``k [B, Hkv, S, D]`` -> ``[B, Hkv, G, Tb, S]`` (≥ float32), masked.

    ``segments [B, S]`` (packed rows): a query attends only to keys of its own example.
    """
    acc = _acc(q_blk)
    s = torch.matmul(q_blk.to(acc), k.to(acc).unsqueeze(2).transpose(-1, -2)) * scale
    tb, length = s.shape[-2], s.shape[-1]
    q_pos = torch.arange(start, start + tb, device=s.device)[:, None]
    allowed = torch.arange(length, device=s.device)[None, :] <= q_pos  # causal
    allowed = allowed[None, None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, None, :].bool()
    if segments is not None:
        same = segments[:, start : start + tb, None] == segments[:, None, :]
        allowed = allowed & same[:, None, None]
    # A query whose every key is masked (a padded position before any real token) gets a uniform row, not NaN.
    return s.masked_fill(~allowed, torch.finfo(acc).min)


def _no_autocast(t: torch.Tensor):
    return torch.autocast(t.device.type, enabled=False)


def _grouped(q: torch.Tensor, num_kv: int) -> torch.Tensor:
    b, h, t, d = q.shape
    return q.view(b, num_kv, h // num_kv, t, d)


class BlockedAttention(torch.autograd.Function):
    """``(q [B, H, T, D], k, v [B, Hkv, T, D], key_mask [B, T] bool | None) -> [B, H, T, D]``; forward-mode only."""

    @staticmethod
    def forward(q, k, v, key_mask, scale, block, segments=None):
        with _no_autocast(q):  # accumulation dtypes are chosen here, explicitly
            return BlockedAttention._forward(q, k, v, key_mask, scale, block, segments)

    @staticmethod
    def _forward(q, k, v, key_mask, scale, block, segments):
        num_kv = k.shape[1]
        qg = _grouped(q, num_kv)
        out = torch.empty_like(qg)
        for start in range(0, q.shape[2], block):
            p = torch.softmax(
                _masked_scores(qg[:, :, :, start : start + block], k, key_mask, start, scale, segments), dim=-1
            )
            out[:, :, :, start : start + block] = torch.matmul(p, v.to(p.dtype).unsqueeze(2)).to(q.dtype)
        return out.view_as(q)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, key_mask, scale, block, segments = inputs
        ctx.save_for_forward(q, k, v)
        ctx.key_mask, ctx.scale, ctx.block, ctx.segments = key_mask, scale, block, segments

    @staticmethod
    def jvp(ctx, dq, dk, dv, *_):
        with _no_autocast(ctx.saved_tensors[0]):
            return BlockedAttention._jvp(ctx, dq, dk, dv)

    @staticmethod
    def _jvp(ctx, dq, dk, dv):
        q, k, v = ctx.saved_tensors
        num_kv = k.shape[1]
        qg = _grouped(q, num_kv)
        dqg = None if dq is None else _grouped(dq, num_kv)
        tangent = torch.zeros_like(qg)
        acc = _acc(q)
        kt, va = k.to(acc).unsqueeze(2).transpose(-1, -2), v.to(acc).unsqueeze(2)
        for start in range(0, q.shape[2], ctx.block):
            sl = slice(start, start + ctx.block)
            q_blk = qg[:, :, :, sl]
            s = _masked_scores(q_blk, k, ctx.key_mask, start, ctx.scale, ctx.segments)
            p = torch.softmax(s, dim=-1)
            ds = torch.zeros_like(s)
            if dqg is not None:
                ds = ds + torch.matmul(dqg[:, :, :, sl].to(acc), kt)
            if dk is not None:
                ds = ds + torch.matmul(q_blk.to(acc), dk.to(acc).unsqueeze(2).transpose(-1, -2))
            ds = ds * ctx.scale
            dp = p * (ds - (p * ds).sum(dim=-1, keepdim=True))  # masked entries: p = 0, so dp = 0 there
            blk = torch.matmul(dp, va)
            if dv is not None:
                blk = blk + torch.matmul(p, dv.to(acc).unsqueeze(2))
            tangent[:, :, :, sl] = blk.to(q.dtype)
        return tangent.view_as(q)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            "vcore_blocked attention has only a forward-mode derivative; it is meant for the VCORE jvp probe, "
            "not for training (keep model.attn_implementation=sdpa)"
        )


def blocked_attention(q, k, v, key_mask=None, scale=None, block: int = DEFAULT_BLOCK, segments=None) -> torch.Tensor:
    """Causal attention; see :class:`BlockedAttention`. ``scale`` defaults to ``D ** -0.5``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return BlockedAttention.apply(q, k, v, key_mask, float(scale), int(block), segments)


def packed_segments(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Example index of every position of packed rows (positions restart at each example), or None if unpacked."""
    if position_ids is None:
        return None
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    segments = starts.cumsum(-1)
    return None if bool((segments[:, -1] == 1).all()) else segments


def _attention_interface(
    module: nn.Module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    *,
    block: int = DEFAULT_BLOCK,
    **kwargs,
):
    """transformers' attention-function signature; returns ``([B, T, H, D], None)`` like the eager path."""
    if query.shape[2] != key.shape[2]:
        raise ValueError("vcore_blocked attention needs queries and keys of the same length (no KV cache)")
    if kwargs.get("sliding_window"):
        raise ValueError("vcore_blocked attention does not implement sliding-window attention")
    # Packed rows (no padding mask, positions restarting per example): attention never crosses examples.
    segments = packed_segments(kwargs.get("position_ids")) if attention_mask is None else None
    out = blocked_attention(query, key, value, attention_mask, scaling, block, segments)
    return out.transpose(1, 2).contiguous(), None


def register(block: int = DEFAULT_BLOCK) -> None:
    """Make ``"vcore_blocked"`` a valid ``attn_implementation`` computing ``block`` queries at a time; its mask is the
    2D padding mask (or None)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, functools.partial(_attention_interface, block=block))
    AttentionMaskInterface.register(NAME, flash_attention_mask)


def _configs(model: nn.Module) -> list:
    seen, out = set(), []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation") and id(cfg) not in seen:
            seen.add(id(cfg))
            out.append(cfg)
    return out


@contextlib.contextmanager
def use_attention(model: nn.Module, name: str = NAME, block: int = DEFAULT_BLOCK) -> Iterator[None]:
    """Switch every config of ``model`` to attention ``name`` (any registered implementation: ``vcore_blocked``,
    ``eager``, ``vcore_fused`` once :func:`vcore.ops.fused_attention.register` ran) for the ``with`` block, then
    restore it; ``block``: the query block size of ``vcore_blocked`` (registered with it bound, so nothing is stored
    on the model)."""
    if name == NAME:
        register(block)
    configs = _configs(model)
    previous = [c._attn_implementation for c in configs]
    try:
        for c in configs:
            c._attn_implementation = name
        yield
    finally:
        for c, p in zip(configs, previous):
            c._attn_implementation = p
