"""CUDA numerics against float64 CPU references: the fused attention JVP (bf16 and float32 inputs, head dim 128,
GQA, a length that is not a multiple of 32, packed rows), the jvp probe's scores with each attention under bf16
autocast, and chunked CE at Qwen3's vocabulary against full logits (values, gradients, memory).

The float64 versions of these on CPU: tests/test_attention.py, tests/test_jvp.py, tests/test_chunked_ce.py (their
device-parametrised tests also run here under ``-m gpu``), tests/test_fused_attention.py (the kernel interpreted).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import needs_cuda, random_lm_batch, varied_rows

pytestmark = needs_cuda()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_fused_attention_jvp_on_cuda_against_float64(dtype, packed):
    pytest.importorskip("jvp_flash_attention")
    from vcore.ops.attention import blocked_attention, packed_segments
    from vcore.ops.fused_attention import fused_attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, D = 2, 16, 8, 300, 128
    prim = [torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv)]
    tang = [torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv)]
    segments = (
        packed_segments(torch.tensor([list(range(100)) + list(range(150)) + list(range(50)), list(range(300))]))
        if packed
        else None
    )
    ref = torch.func.jvp(lambda q, k, v: blocked_attention(q, k, v, segments=segments), tuple(prim), tuple(tang))
    seg = None if segments is None else segments.cuda()
    got = torch.func.jvp(
        lambda q, k, v: fused_attention(q, k, v, segments=seg),
        tuple(x.to("cuda", dtype) for x in prim),
        tuple(x.to("cuda", dtype) for x in tang),
    )
    assert got[0].dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 5e-3  # float32 dots run in TF32 in the kernel
    for name, a, b in (("output", got[0], ref[0]), ("tangent", got[1], ref[1])):
        assert rel_max(a.cpu(), b) < tol, (name, rel_max(a.cpu(), b))
        assert pearson(a.cpu(), b) > 0.9999, (name, pearson(a.cpu(), b))


@pytest.mark.parametrize("attention", ["vcore_blocked", "fused"])
def test_jvp_probe_on_cuda_in_bf16_matches_float64_scores(tmp_path, attention):
    """Scores of a Qwen3-shaped model (head dim 128, GQA) on CUDA under bf16 autocast against the same probe in
    float64 on CPU (itself equal to autograd inner products, tests/test_jvp.py): Pearson ≥ 0.99 (SPEC §6: 1.000)."""
    if attention == "fused":
        pytest.importorskip("jvp_flash_attention")
    from transformers import AutoModelForCausalLM, Qwen3Config

    from vcore.data.collate import Collator
    from vcore.methods.probe import jvp_scores, trainable_parameters
    from vcore.ops import fused_attention
    from vcore.ops.losses import supervised_mask

    config = Qwen3Config(
        vocab_size=37,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    ref_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64, attn_implementation="sdpa").eval()
    model = (
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="sdpa").cuda().eval()
    )
    params, ref_params = trainable_parameters(model), trainable_parameters(ref_model)
    g = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) * 1e-2
        for i, p in enumerate(ref_params.values())
    ]
    batches = [random_lm_batch(B=3, T=70, pad_from=40), Collator(0, pack=True)(varied_rows(6, spread=11))]
    fused_attention._reported.clear()
    for batch in batches:
        _, (ref,) = jvp_scores(ref_model, ref_params, g, [batch])
        cuda_batch = {k: v.cuda() for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, (got,) = jvp_scores(model, params, [x.float().cuda() for x in g], [cuda_batch], attention=attention)
        mask = supervised_mask(batch["labels"])
        assert pearson(got.cpu()[mask], ref[mask]) >= 0.99
    assert not fused_attention._reported  # the fused runs took the kernel for every call


def test_chunked_ce_at_qwen3_vocab_on_cuda_equals_full_logits_in_less_memory():
    """T = 2,048, vocabulary 151,936, bf16 autocast: per-token losses and both gradients as full logits give, and the
    chunked peak memory is well under the full one."""
    from vcore.ops.chunked_ce import chunked_token_cross_entropy
    from vcore.ops.losses import token_cross_entropy

    g = torch.Generator().manual_seed(0)
    T, H, V = 2048, 1024, 151936
    hidden0 = torch.randn(1, T, H, generator=g).cuda()
    weight0 = (torch.randn(V, H, generator=g) * 0.02).cuda()
    labels = torch.randint(V, (1, T), generator=g).cuda()
    labels[0, :16] = -100
    out = {}
    for kind in ("full", "chunked"):
        hidden, weight = hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "full":
                loss = token_cross_entropy(torch.nn.functional.linear(hidden, weight), labels)
            else:
                loss = chunked_token_cross_entropy(hidden, weight, labels, 256)
        loss.sum().backward()
        torch.cuda.synchronize()
        out[kind] = (loss.detach(), hidden.grad, weight.grad, torch.cuda.max_memory_allocated() - base)
    (lf, hf, wf, mf), (lc, hc, wc, mc) = out["full"], out["chunked"]
    torch.testing.assert_close(lc, lf, rtol=1e-3, atol=1e-3)
    assert pearson(hc, hf) > 0.999 and pearson(wc, wf) > 0.999
    assert mc < mf / 2, (mc, mf)  # both hold the lm-head gradient; the benchmark measures the loss's own memory
