"""The blocked forward-mode attention equals eager attention and its JVP (float64): causal, padded, GQA, blocks."""

import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from vcore.ops.attention import blocked_attention


def eager_attention(q, k, v, key_mask):
    """Reference: materialised causal softmax attention with repeated KV heads (as transformers' eager path)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = q.shape[2]
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
    return torch.softmax(s, -1) @ v


def inputs(B=2, H=4, Hkv=2, T=10, D=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    prim = (mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D))
    tang = (mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D))
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[1, 7:] = False  # right padding
    return prim, tang, key_mask


@pytest.mark.parametrize("block", [1, 3, 7, 10, 64])
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("padded", [True, False])
def test_blocked_jvp_equals_eager_jvp(block, heads, padded):
    (q, k, v), (dq, dk, dv), key_mask = inputs(H=heads[0], Hkv=heads[1])
    key_mask = key_mask if padded else None
    ref_out, ref_tan = torch.func.jvp(lambda a, b, c: eager_attention(a, b, c, key_mask), (q, k, v), (dq, dk, dv))
    out, tan = torch.func.jvp(
        lambda a, b, c: blocked_attention(a, b, c, key_mask, block=block), (q, k, v), (dq, dk, dv)
    )
    valid = torch.ones_like(out, dtype=torch.bool) if key_mask is None else key_mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref_out[valid], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tan[valid], ref_tan[valid], rtol=1e-11, atol=1e-11)


def test_dual_tensor_api_and_partial_tangents():
    (q, k, v), (dq, dk, dv), key_mask = inputs()
    with fwAD.dual_level():
        out = blocked_attention(fwAD.make_dual(q, dq), k, fwAD.make_dual(v, dv), key_mask, block=4)
        tan = fwAD.unpack_dual(out).tangent
    _, ref = torch.func.jvp(lambda a, c: eager_attention(a, k, c, key_mask), (q, v), (dq, dv))
    valid = key_mask[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(tan[valid], ref[valid], rtol=1e-11, atol=1e-11)


def test_bf16_inputs_accumulate_in_float32():
    (q, k, v), (dq, dk, dv), key_mask = inputs(dtype=torch.float32, T=64)
    _, ref = torch.func.jvp(
        lambda a, b, c: eager_attention(a, b, c, key_mask),
        (q.double(), k.double(), v.double()),
        (dq.double(), dk.double(), dv.double()),
    )
    bf = [t.bfloat16() for t in (q, k, v, dq, dk, dv)]
    out, tan = torch.func.jvp(
        lambda a, b, c: blocked_attention(a, b, c, key_mask, block=16), tuple(bf[:3]), tuple(bf[3:])
    )
    assert out.dtype == tan.dtype == torch.bfloat16
    valid = key_mask[:, None, :, None].expand_as(ref)
    corr = torch.corrcoef(torch.stack([tan.double()[valid], ref[valid]]))[0, 1]
    assert corr > 0.999


def test_backward_is_refused_with_a_clear_message():
    (q, k, v), _, _ = inputs()
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-mode"):
        blocked_attention(q, k, v).sum().backward()
