"""Fused forward-mode attention for the jvp probe on CUDA: the ``jvp-flash-attention`` Triton kernel.

``method.probe.jvp_attention=fused`` runs the probe's attention through this module (registered with transformers
as ``"vcore_fused"``): one flash-attention pass that streams over keys with an online softmax and computes the
tangent in the same kernel, so the probe's attention costs about what SDPA's forward costs, with no ``T × T``
tensor. :mod:`vcore.ops.attention` (``vcore_blocked``) stays the CPU path and the reference; every call the kernel
cannot take goes there, and the reason is logged once.

What the kernel (jvp-flash-attention 0.14, read from its source) takes, and how the gaps are bridged here:

- causal attention with no mask, or a full ``[B, H, T, T]`` mask without causality (never both): right-padded
  rows need no mask (under causal attention a real token never sees the padding after it), and packed rows are
  cut into their examples, each a row of its own (gathered into one batch, right-padded), so no mask is ever built;
- as many key/value heads as query heads: grouped-query keys and values are repeated per query head (linear memory);
- lengths: its loads have no bounds check, so every row is right-padded to a multiple of 32 (causal: exact);
- head dims 32-256 (its 32-key blocks must not exceed the head dim, so 16 fails), float16/bfloat16/float32
  (float32 dots run in TF32 on CUDA), no float64: float64 calls and other head dims fall back;
- Triton 3.9 (the newest, checked here) has no block pointers (``make_block_ptr`` raises), which its non-TMA kernel
  (pre-Hopper GPUs) still uses; its Hopper kernel (tensor descriptors) works, so below compute capability 9 the
  kernel is used only with a Triton that still has them.

Install: ``pip install -e ".[gpu]"``. Tests run the kernel on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, tests/test_fused_attention.py) and on CUDA (tests/gpu/).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from vcore.ops.attention import DEFAULT_BLOCK, _attention_interface, packed_segments

log = logging.getLogger(__name__)

NAME = "vcore_fused"
ROW_MULTIPLE = 32  # the kernel's query and key block: rows are padded to a multiple of it
HEAD_DIMS = (32, 64, 128, 256)
_reported: set[str] = set()


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernel_or_reason(device_type: str, capability: tuple[int, int] | None):
    """``(JVPAttn, None)`` when the kernel can run on this device, else ``(None, why not)``."""
    if device_type != "cuda" and not (device_type == "cpu" and _interpreted()):
        return None, f"the fused kernel needs CUDA (or TRITON_INTERPRET=1 on CPU), and the probe runs on {device_type}"
    try:
        import triton.language as tl
        from jvp_flash_attention.jvp_attention import JVPAttn
    except ImportError as err:
        return None, f"jvp-flash-attention is not installed ({err}; pip install -e '.[gpu]')"
    # Triton 3.9 turned make_block_ptr into a stub that raises (earlier versions not checked); only the package's
    # Hopper kernel avoids it.
    block_pointers_gone = "removed" in (tl.make_block_ptr.__doc__ or "")
    hopper = capability is not None and capability[0] >= 9
    if block_pointers_gone and not hopper and not _interpreted():
        return (
            None,
            "this Triton has no block pointers, which the kernel needs below compute capability 9 "
            f"(this GPU: {capability})",
        )
    return JVPAttn, None


def _kernel(device: torch.device):
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return _kernel_or_reason(device.type, capability)


def call_reason(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, sliding_window
) -> str | None:
    """Why this attention call cannot go through the kernel (None: it can)."""
    if query.shape[-1] not in HEAD_DIMS:
        return f"head dim {query.shape[-1]} (the kernel takes {HEAD_DIMS})"
    if query.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {query.dtype} (the kernel takes float16, bfloat16, float32)"
    if query.shape[2] != key.shape[2]:
        return "queries and keys of different lengths (a KV cache)"
    if sliding_window:
        return "sliding-window attention"
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        return "a padding mask that is not right padding"
    return None


def _note(reason: str) -> None:
    if reason not in _reported:
        _reported.add(reason)
        log.warning("jvp probe attention: fused kernel not used (%s); using vcore_blocked for such calls", reason)


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    """What SDPA would compute in: the autocast dtype inside autocast, else the query's dtype."""
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return q.dtype


def _causal_rows(kernel, q, k, v, scale: float) -> torch.Tensor:
    """``[N, H, L, D]`` causal attention (L a multiple of 32) with the tangent from the same kernel."""
    primals, tangents = zip(*(fwAD.unpack_dual(x) for x in (q, k, v)))
    if all(t is None for t in tangents):
        out, _ = kernel.apply(*primals, None, None, None, None, 0.0, True, scale, True, True, False)
        return out
    # The kernel reads the tangents from separate contiguous buffers; a missing one (a frozen input) is zero.
    tangents = [torch.zeros_like(p) if t is None else t.contiguous() for p, t in zip(primals, tangents)]
    duals = [fwAD.make_dual(p.contiguous(), t) for p, t in zip(primals, tangents)]
    # Dual inputs make autograd call the Function's jvp, which returns the tangent the forward computed.
    out, _ = kernel.apply(*duals, *tangents, None, 0.0, True, scale, True, True, False)
    return out


def fused_attention(q, k, v, scale: float | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention ``q [B, H, T, D]``, ``k, v [B, Hkv, T, D]`` -> ``[B, H, T, D]`` (q's dtype) through the
    fused kernel, forward-mode differentiable. ``segments [B, T]``: packed rows (attention stays inside each
    example). Rows with right padding need no mask (see the module docstring)."""
    kernel, reason = _kernel(q.device)
    if kernel is None:
        raise RuntimeError(f"fused attention unavailable: {reason}")
    b, h, t, d = q.shape
    scale = d**-0.5 if scale is None else float(scale)
    dtype, out_dtype = _compute_dtype(q), q.dtype
    groups = h // k.shape[1]
    q, k, v = q.to(dtype), k.repeat_interleave(groups, 1).to(dtype), v.repeat_interleave(groups, 1).to(dtype)
    if segments is None:
        pad = -t % ROW_MULTIPLE
        rows = [F.pad(x, (0, 0, 0, pad)).contiguous() for x in (q, k, v)]
        return _causal_rows(kernel, *rows, scale)[:, :, :t].to(out_dtype)
    # Packed rows: every example becomes a row of its own, right-padded to a common multiple of 32.
    flat_seg = (segments + torch.arange(b, device=segments.device)[:, None] * (t + 1)).flatten()
    _, seg_id, counts = torch.unique_consecutive(flat_seg, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(b * t, device=q.device) - starts[seg_id]
    width = int(counts.max()) + (-int(counts.max()) % ROW_MULTIPLE)
    slot = seg_id * width + offset  # where each flat position goes in the [segments, width] layout
    gathered = []
    for x in (q, k, v):
        flat = x.transpose(1, 2).reshape(b * t, h, d)
        buf = flat.new_zeros(len(counts) * width, h, d).index_copy(0, slot, flat)
        gathered.append(buf.view(len(counts), width, h, d).transpose(1, 2).contiguous())
    out = _causal_rows(kernel, *gathered, scale)
    out = out.transpose(1, 2).reshape(len(counts) * width, h, d).index_select(0, slot)
    return out.view(b, t, h, d).transpose(1, 2).to(out_dtype)


def _fused_interface(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, block: int = DEFAULT_BLOCK, **kwargs
):
    """transformers' attention-function signature; the blocked path for every call the kernel cannot take."""
    _, reason = _kernel(query.device)
    reason = reason or call_reason(query, key, attention_mask, kwargs.get("sliding_window"))
    if reason is not None:
        _note(reason)
        return _attention_interface(module, query, key, value, attention_mask, scaling, dropout, block=block, **kwargs)
    segments = packed_segments(kwargs.get("position_ids")) if attention_mask is None else None
    out = fused_attention(query, key, value, scaling, segments)
    return out.transpose(1, 2).contiguous(), None


def register(block: int = DEFAULT_BLOCK) -> None:
    """Make ``"vcore_fused"`` a valid ``attn_implementation`` (``block``: the fallback's query block)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, functools.partial(_fused_interface, block=block))
    AttentionMaskInterface.register(NAME, flash_attention_mask)
