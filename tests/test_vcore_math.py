"""VCORE against references written from SPEC §4 (not from the implementation)."""

import math

import numpy as np
import pytest
import torch

from tests.conftest import random_lm_batch, tiny_causal_lm
from vcore.config import ConfigError, ProbeConfig, ProbeMode, VarianceControl, VCOREConfig
from vcore.forward import model_token_loss
from vcore.losses import supervised_mask
from vcore.methods import gibbs_weights, loss_ratio_alpha, paper_alpha
from vcore.methods.vcore import VCORE
from vcore.precision import check_finite_difference_precision
from vcore.probe import finite_difference_scores, trainable_parameters


def reference_weights(scores: np.ndarray, mask: np.ndarray, tau: float):
    """SPEC §4.4-5, one example at a time, float64: q = softmax(τ s) over supervised tokens, w = n q."""
    w, q = np.zeros_like(scores), np.zeros_like(scores)
    for i in range(scores.shape[0]):
        idx = np.flatnonzero(mask[i])
        if idx.size == 0:
            continue
        z = tau * scores[i, idx]
        e = np.exp(z - z.max())
        q[i, idx] = e / e.sum()
        w[i, idx] = idx.size * q[i, idx]
    return w, q


def reference_paper_alpha(scores, q, mask, alpha_max):
    """SPEC §4.6: V_q = Var(Σ q s), V_u = Var(mean s) over examples; α = sqrt(V_u / V_q)."""
    keep = mask.sum(1) > 0
    a = (q * scores * mask).sum(1)[keep]
    u = ((scores * mask).sum(1) / np.maximum(mask.sum(1), 1))[keep]
    if a.size < 2 or np.var(a) == 0:
        return 1.0
    alpha = math.sqrt(np.var(u) / np.var(a))
    return alpha if alpha_max is None else min(alpha, alpha_max)


def make_scores(seed=0, B=5, T=9):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(B, T)) * rng.uniform(0.1, 3, size=(B, 1))
    mask = rng.uniform(size=(B, T)) < 0.7
    mask[1] = False  # an example with no supervised token
    mask[2, :] = False
    mask[2, 3] = True  # an example with exactly one
    return scores, mask


@pytest.mark.parametrize("tau", [0.01, 0.7, 3.0, 50.0])
def test_gibbs_weights_match_reference(tau):
    scores, mask = make_scores()
    w, q = gibbs_weights(torch.tensor(scores), torch.tensor(mask), tau)
    w_ref, q_ref = reference_weights(scores, mask, tau)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(q.numpy(), q_ref, rtol=1e-12, atol=1e-300)
    rows = mask.sum(1) > 0
    np.testing.assert_allclose(w.numpy()[rows].sum(1), mask.sum(1)[rows], rtol=1e-12)  # mean weight 1 per example


@pytest.mark.parametrize("alpha_max", [None, 1.0, 0.3])
def test_paper_alpha_matches_reference_across_micro_batches(alpha_max):
    scores, mask = make_scores(seed=3, B=6)
    _, q = reference_weights(scores, mask, 2.0)
    expected = reference_paper_alpha(scores, q, mask, alpha_max)
    # the step batch split into micro-batches of 2: α must still be computed over all six examples
    parts = [slice(0, 2), slice(2, 4), slice(4, 6)]
    got = paper_alpha([torch.tensor(scores[p]) for p in parts], [torch.tensor(q[p]) for p in parts], [torch.tensor(mask[p]) for p in parts], alpha_max)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert expected != 1.0 or alpha_max is not None


def test_paper_alpha_degenerate_cases():
    s = torch.randn(1, 5, dtype=torch.float64)
    m = torch.ones(1, 5, dtype=torch.bool)
    assert paper_alpha([s], [torch.full_like(s, 0.2)], [m], None).item() == 1.0  # fewer than 2 examples
    s2 = torch.ones(3, 4, dtype=torch.float64)  # all scores equal: V_q = 0
    assert paper_alpha([s2], [torch.full_like(s2, 0.25)], [torch.ones(3, 4, dtype=torch.bool)], None).item() == 1.0


def test_loss_ratio_alpha():
    assert loss_ratio_alpha(torch.tensor(2.0), torch.tensor(4.0), None).item() == 0.5
    assert loss_ratio_alpha(torch.tensor(4.0), torch.tensor(2.0), None).item() == 1.0  # min(1, ·)
    assert loss_ratio_alpha(torch.tensor(4.0), torch.tensor(0.0), None).item() == 1.0  # L_weighted = 0 is safe


def test_tau_zero_is_exactly_uniform_and_huge_tau_is_finite():
    scores, mask = make_scores(seed=5, B=8, T=53)
    m = torch.tensor(mask)
    w0, _ = gibbs_weights(torch.tensor(scores), m, 0.0)
    assert torch.equal(w0, m.to(w0.dtype))  # exactly 1 on every supervised token, not approximately
    w_big, q_big = gibbs_weights(torch.tensor(scores), m, 1e8)
    assert torch.isfinite(w_big).all() and torch.isfinite(q_big).all()
    for i in np.flatnonzero(mask.sum(1) > 0):  # all mass on the best token
        best = np.flatnonzero(mask[i])[np.argmax(scores[i][mask[i]])]
        assert q_big[i, best].item() == pytest.approx(1.0)


def test_finite_difference_scores_match_exact_inner_products(tmp_path):
    """s_t = (l_t(θ) - l_t(θ - εg)) / ε ≈ <g, ∇l_t> on a float64 model; and θ comes back bit for bit.

    GPT-2 architecture: it computes in float64 throughout (Qwen3's RMSNorm upcasts to float32 only).
    """
    model = tiny_causal_lm(tmp_path, arch="gpt2").eval()
    batch = random_lm_batch()
    params = list(trainable_parameters(model).values())
    g = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    norm = math.sqrt(sum(float((x * x).sum()) for x in g))
    g = [x / norm for x in g]
    before = [p.detach().clone() for p in params]
    _, (scores,) = finite_difference_scores(model, params, g, [batch], epsilon=1e-7)
    assert all(torch.equal(p, b) for p, b in zip(params, before))

    token_loss, mask = model_token_loss(model, batch)
    for b, t in mask.nonzero().tolist():
        grads = torch.autograd.grad(token_loss[b, t], params, retain_graph=True, allow_unused=True)
        exact = sum(float((gi * gr).sum()) for gi, gr in zip(g, grads) if gr is not None)
        assert scores[b, t].item() == pytest.approx(exact, rel=1e-5, abs=1e-9), (b, t)
    assert (scores[~mask] == 0).all()


def test_vcore_step_restores_parameters_bit_for_bit(tmp_path):
    model = tiny_causal_lm(tmp_path, dtype=torch.float32)
    batches = [random_lm_batch(seed=s) for s in range(2)]
    dataset = [{k: v[i] for k, v in batches[0].items()} for i in range(3)]
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    cfg = VCOREConfig(tau=1.0, probe=ProbeConfig(epsilon=1e-3, batch_size=2, accumulation=2))
    method = VCORE(cfg, model, dataset, collate)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    diag = method.prepare_step(model, batches)
    assert model.training  # mode restored
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None  # the probe gradient never lands in .grad
    for b in batches:
        w = b["weighting"]["weights"]
        m = supervised_mask(b["labels"])
        assert torch.isfinite(w).all() and (w[~m] == 0).all()
    assert 0 < diag["vcore/alpha"].item() <= 1.0


def test_precision_guard_names_the_fix(tmp_path):
    model = tiny_causal_lm(tmp_path, dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="model.dtype=float32"):
        check_finite_difference_precision(model, allow_low_precision=False)
    check_finite_difference_precision(model, allow_low_precision=True)  # forced on purpose: allowed
    with pytest.raises(ConfigError, match="allow_low_precision"):
        VCORE(VCOREConfig(probe=ProbeConfig(mode=ProbeMode.finite_difference)), model, [1], lambda rows: rows)


def test_auto_probe_mode_is_the_faithful_one_for_the_weights(tmp_path):
    bf16 = tiny_causal_lm(tmp_path / "b", dtype=torch.bfloat16)
    fp32 = tiny_causal_lm(tmp_path / "f", dtype=torch.float32)
    assert VCORE(VCOREConfig(), bf16, [1], lambda rows: rows).mode == ProbeMode.jvp
    assert VCORE(VCOREConfig(), fp32, [1], lambda rows: rows).mode == ProbeMode.finite_difference


def test_variance_control_choices_change_only_alpha(tmp_path):
    model = tiny_causal_lm(tmp_path, dtype=torch.float32)
    dataset = [{k: v[i] for k, v in random_lm_batch(seed=9).items()} for i in range(3)]
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    out = {}
    for vc in VarianceControl:
        cfg = VCOREConfig(tau=2.0, variance_control=vc, alpha_max=None, probe=ProbeConfig(epsilon=1e-3, batch_size=3, accumulation=1))
        batches = [random_lm_batch(seed=4)]
        VCORE(cfg, model, dataset, collate).prepare_step(model, batches)
        out[vc.value] = batches[0]["weighting"]
    assert out["none"]["alpha"].item() == 1.0
    assert torch.equal(out["none"]["weights"], out["paper"]["weights"])
    assert torch.equal(out["none"]["weights"], out["loss_ratio"]["weights"])
    assert 0 < out["loss_ratio"]["alpha"].item() <= 1.0
