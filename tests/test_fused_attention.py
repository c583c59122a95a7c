"""The fused attention JVP (jvp-flash-attention's Triton kernel) against the blocked reference, on CPU through
Triton's interpreter, and its fallback to the blocked path where it does not apply (logged once, with the reason).

The interpreter must be switched on before Triton compiles anything, so the kernel runs in a subprocess (this file
is its worker script) with ``TRITON_INTERPRET=1``. There it runs the package's Hopper (tensor-descriptor) kernel,
the one H100/H200 take: its other kernel uses block pointers, which Triton 3.9 no longer has. The CUDA versions of
these checks are in tests/gpu/.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # as a worker script, this file is not imported from the repo root

from tests.helpers import random_lm_batch, subprocess_env, varied_rows


def qkv(B=2, H=4, Hkv=2, T=40, D=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def mk(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return (mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D)), (mk(B, H, T, D), mk(B, Hkv, T, D), mk(B, Hkv, T, D))


def max_errors(fused, ref, valid=None) -> list[float]:
    """Largest |fused - ref| of output and tangent, relative to the reference's largest magnitude."""
    out = []
    for a, b in zip(fused, ref):
        a, b = (a, b) if valid is None else (a[valid], b[valid])
        out.append(float((a.double() - b.double()).abs().max() / b.double().abs().max()))
    return out


def kernel_checks() -> dict[str, list[float]]:
    """Fused vs blocked (float32 kernel, float64 reference): GQA with a length that is not a multiple of 32, a
    missing tangent (a frozen input), packed segments."""
    from vcore.ops.attention import blocked_attention, packed_segments
    from vcore.ops.fused_attention import fused_attention

    res = {}
    (q, k, v), (dq, dk, dv) = qkv()
    ref = torch.func.jvp(
        lambda a, b, c: blocked_attention(a, b, c, block=16),
        (q.double(), k.double(), v.double()),
        (dq.double(), dk.double(), dv.double()),
    )
    res["gqa_T40"] = max_errors(torch.func.jvp(fused_attention, (q, k, v), (dq, dk, dv)), ref)
    ref = torch.func.jvp(
        lambda a, c: blocked_attention(a, k.double(), c), (q.double(), v.double()), (dq.double(), dv.double())
    )
    res["no_key_tangent"] = max_errors(torch.func.jvp(lambda a, c: fused_attention(a, k, c), (q, v), (dq, dv)), ref)
    positions = torch.tensor([list(range(13)) + list(range(20)) + list(range(7)), list(range(40))])
    segments = packed_segments(positions)
    ref = torch.func.jvp(
        lambda a, b, c: blocked_attention(a, b, c, segments=segments),
        (q.double(), k.double(), v.double()),
        (dq.double(), dk.double(), dv.double()),
    )
    res["packed"] = max_errors(
        torch.func.jvp(lambda a, b, c: fused_attention(a, b, c, segments=segments), (q, k, v), (dq, dk, dv)), ref
    )
    # float16: the low-precision path (probabilities rounded before the value products). bf16 cannot be checked
    # here: Triton 3.9's interpreter turns a float32 -> bf16 cast feeding tl.dot into garbage (a 10-line kernel
    # shows it); tests/gpu/ checks bf16 on CUDA.
    half = [x.half() for x in (q, k, v, dq, dk, dv)]
    ref = torch.func.jvp(
        blocked_attention, (q.double(), k.double(), v.double()), (dq.double(), dk.double(), dv.double())
    )
    res["fp16"] = max_errors(torch.func.jvp(fused_attention, tuple(half[:3]), tuple(half[3:])), ref)
    return res


def probe_checks() -> dict[str, list[float]]:
    """The probe's losses and scores with ``fused`` against ``vcore_blocked`` on a float32 Qwen3 model (head dim 32,
    GQA), a right-padded batch and a packed one."""
    import tempfile

    from transformers import AutoModelForCausalLM, Qwen3Config

    from vcore.data.collate import Collator
    from vcore.methods.probe import jvp_scores, trainable_parameters
    from vcore.ops import fused_attention

    config = Qwen3Config(
        vocab_size=37,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
    )
    with tempfile.TemporaryDirectory() as d, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
    params = trainable_parameters(model)
    g = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 1e-2 for i, p in enumerate(params.values())]
    out: dict = {}
    for name, batch in (
        ("probe_padded", random_lm_batch(B=3, T=40, pad_from=25)),
        ("probe_packed", Collator(0, pack=True)(varied_rows(4, spread=11))),
    ):
        fused = jvp_scores(model, params, g, [batch], attention="fused")
        ref = jvp_scores(model, params, g, [batch], attention="vcore_blocked")
        out[name] = max_errors([fused[0][0], fused[1][0]], [ref[0][0], ref[1][0]])
    out["fallbacks"] = sorted(fused_attention._reported)  # every call must have taken the kernel
    return out


def interpreted(tmp_path: Path, group: str) -> dict:
    """Run ``group`` (kernel | probe) of the checks in a subprocess under Triton's interpreter."""
    pytest.importorskip("triton")
    pytest.importorskip("jvp_flash_attention")
    out = tmp_path / f"{group}.json"
    proc = subprocess.run(
        [sys.executable, __file__, group, str(out)],
        env=subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(out.read_text())


def test_fused_kernel_equals_the_blocked_reference_under_the_interpreter(tmp_path):
    """Outputs and tangents agree to float32 rounding (GQA at T = 40, a frozen key, packed segments), and to float16
    rounding in float16."""
    errors = interpreted(tmp_path, "kernel")
    assert errors.keys() == {"gqa_T40", "no_key_tangent", "packed", "fp16"}
    for case, (out_err, tangent_err) in errors.items():
        tol = 5e-3 if case == "fp16" else 1e-5
        assert out_err < tol and tangent_err < tol, (case, errors)


@pytest.mark.slow  # ~12 s: a Qwen3 model built and run twice under the interpreter
def test_probe_scores_with_the_fused_kernel_equal_the_blocked_ones_under_the_interpreter(tmp_path):
    errors = interpreted(tmp_path, "probe")
    assert errors.pop("fallbacks") == []  # every attention call took the kernel
    for case, (loss_err, score_err) in errors.items():
        assert loss_err < 1e-5 and score_err < 1e-5, (case, errors)


def test_calls_the_kernel_cannot_take_are_named():
    from vcore.ops.fused_attention import call_reason

    (q, k, _), _ = qkv()
    right = torch.ones(2, 40, dtype=torch.long)
    right[1, 30:] = 0
    assert call_reason(q, k, None, None) is None
    assert call_reason(q, k, right, None) is None  # right padding: causal attention never sees it
    left = right.flip(-1)
    assert "not right padding" in call_reason(q, k, left, None)
    assert "head dim 16" in call_reason(q[..., :16], k[..., :16], None, None)
    assert "float64" in call_reason(q.double(), k.double(), None, None)
    assert "sliding-window" in call_reason(q, k, None, 8)
    assert "different lengths" in call_reason(q[:, :, :1], k, None, None)


def test_without_cuda_the_probe_falls_back_to_blocked_and_says_so_once(tmp_path, caplog, monkeypatch):
    """On CPU (no interpreter) ``fused`` gives exactly the blocked scores, and one log line names the reason."""
    from tests.helpers import tiny_causal_lm
    from vcore.methods.probe import jvp_scores, trainable_parameters
    from vcore.ops import fused_attention

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fused_attention, "_reported", set())
    fused_attention._kernel_or_reason.cache_clear()
    model = tiny_causal_lm(tmp_path, dtype=torch.float32).eval()
    params = trainable_parameters(model)
    g = [torch.full_like(p, 1e-2) for p in params.values()]
    batches = [random_lm_batch(seed=s) for s in range(2)]
    with caplog.at_level(logging.WARNING, logger="vcore.ops.fused_attention"):
        fused = jvp_scores(model, params, g, batches, attention="fused")
    ref = jvp_scores(model, params, g, batches, attention="vcore_blocked")
    for a, b in zip(fused[1], ref[1]):
        assert torch.equal(a, b)
    notes = [r.getMessage() for r in caplog.records if "fused kernel not used" in r.getMessage()]
    assert len(notes) == 1 and "needs CUDA" in notes[0], notes  # 2 batches × 2 layers of calls, one line
    assert model.config._attn_implementation == "sdpa"


def test_an_unknown_jvp_attention_is_refused_at_compose_time(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:  # an enum: Hydra names the key and the choices
        make_cfg("method.probe.jvp_attention=flash")
    cause = str(err.value.__cause__)
    assert "method.probe.jvp_attention" in cause and "vcore_blocked, eager, fused" in cause


if __name__ == "__main__":
    import jvp_flash_attention.jvp_attention as jvp

    # CPU tensors: the package would take its block-pointer kernel; the interpreter runs the Hopper kernel instead.
    jvp.supports_tma = lambda: True
    torch.set_num_threads(1)
    checks = {"kernel": kernel_checks, "probe": probe_checks}[sys.argv[1]]
    Path(sys.argv[2]).write_text(json.dumps(checks()))
