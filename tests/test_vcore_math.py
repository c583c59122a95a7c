"""VCORE against references written from SPEC §4 (not from the implementation)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import random_lm_batch, reference_paper_alpha, reference_weights, tiny_causal_lm
from vcore.config import ConfigError, LossNormalization, ProbeConfig, ProbeMode, VarianceControl, VCOREConfig
from vcore.methods import gibbs_weights, loss_ratio_alpha, paper_alpha
from vcore.methods.base import micro_batches
from vcore.methods.precision import check_finite_difference_precision
from vcore.methods.probe import finite_difference_scores, trainable_parameters
from vcore.methods.vcore import VCORE
from vcore.ops.forward import model_token_loss
from vcore.ops.losses import supervised_mask


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
    got = paper_alpha(
        [torch.tensor(scores[p]) for p in parts],
        [torch.tensor(q[p]) for p in parts],
        [torch.tensor(mask[p]) for p in parts],
        alpha_max,
    )
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
    step = micro_batches(batches)
    diag = method.prepare_step(model, step)
    assert model.training  # mode restored
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None  # the probe gradient never lands in .grad
    # The step's weights and α against the float64 references, from the scores the probe stored (α over both
    # micro-batches: wrong if α were computed per micro-batch, or if the weights left the SPEC formula).
    scores = np.concatenate([m.state.scores.double().numpy() for m in step])
    mask = np.concatenate([supervised_mask(b["labels"]).numpy() for b in batches])
    w_ref, q_ref = reference_weights(scores, mask, 1.0)
    w = np.concatenate([m.state.weights.double().numpy() for m in step])
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)
    assert (w[~mask] == 0).all()
    uncapped = reference_paper_alpha(scores, q_ref, mask, None)
    assert diag["vcore/alpha"].item() == pytest.approx(min(uncapped, 1.0), rel=1e-5)  # alpha_max=1 (the default)


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
        cfg = VCOREConfig(
            tau=2.0, variance_control=vc, alpha_max=None, probe=ProbeConfig(epsilon=1e-3, batch_size=3, accumulation=1)
        )
        step = micro_batches([random_lm_batch(seed=4)])
        VCORE(cfg, model, dataset, collate).prepare_step(model, step)
        out[vc.value] = step[0].state
    assert out["none"].alpha.item() == 1.0
    assert torch.equal(out["none"].weights, out["paper"].weights)
    assert torch.equal(out["none"].weights, out["loss_ratio"].weights)
    # Each α against its definition, uncapped (alpha_max=null), from float64 sums of this batch's values: fails if
    # a variant computed another quantity, or swapped with the other.
    batch = random_lm_batch(seed=4)
    with torch.no_grad():
        loss, m = model_token_loss(model.eval(), batch)
    loss, m = loss.double().numpy(), m.numpy()
    w = out["loss_ratio"].weights.double().numpy()
    expected = min(1.0, (loss * m).sum() / (w * loss * m).sum())
    assert expected < 0.999  # the case where min(1, ·) does not decide the value
    assert out["loss_ratio"].alpha.item() == pytest.approx(expected, rel=1e-5)
    scores = out["paper"].scores.double().numpy()
    q = reference_weights(scores, m, 2.0)[1]
    assert out["paper"].alpha.item() == pytest.approx(reference_paper_alpha(scores, q, m, None), rel=1e-5)


@pytest.mark.parametrize("variance_control", ["paper", "loss_ratio"])
def test_tau_zero_trains_bit_for_bit_like_sft(make_cfg, tmp_path, variance_control):
    """τ = 0 is SFT exactly: same losses, weights and final parameters, bit for bit (the probe still runs, so this
    also shows it leaves no trace: parameters restored, no RNG drawn from the Trainer's streams)."""
    from omegaconf import OmegaConf

    from vcore.run.training import train

    common = ["trainer.max_steps=3", "eval.after_train=false", "trainer.eval_at_end=false"]
    runs = {}
    for name, overrides, method in (
        ("sft", common, "sft"),
        ("vcore", common + ["method.tau=0", f"method.variance_control={variance_control}"], "vcore"),
    ):
        cfg = make_cfg(*overrides, method=method)
        OmegaConf.update(cfg, "output_dir", str(tmp_path / name))
        train(cfg)
        history = [json.loads(x) for x in (tmp_path / name / "history.jsonl").read_text().splitlines()]
        weights = load_file(tmp_path / name / "final" / "model.safetensors")
        runs[name] = ([h for h in history if "train/nll" in h], weights)
    (h_sft, w_sft), (h_vc, w_vc) = runs["sft"], runs["vcore"]
    assert len(h_sft) == len(h_vc) == 3
    for a, b in zip(h_sft, h_vc):
        assert (a["loss"], a["train/nll"], a["grad_norm"]) == (b["loss"], b["train/nll"], b["grad_norm"])
        assert b["weights/min"] == b["weights/max"] == 1.0 and b["vcore/alpha"] == 1.0
    assert w_sft.keys() == w_vc.keys() and all(torch.equal(w_sft[k], w_vc[k]) for k in w_sft)


def reference_ess(w: np.ndarray, mask: np.ndarray) -> float:
    """Kish: (Σw)² / (N Σw²) over the supervised tokens."""
    x = w[mask]
    return float(x.sum() ** 2 / (x.size * (x**2).sum()))


def test_weights_ess_matches_kish_on_the_reference_weights():
    from vcore.methods.vcore import weights_ess

    scores, mask = make_scores(seed=4)
    taus = [0.0, 0.3, 1.0, 5.0, 40.0]
    got = weights_ess([torch.tensor(scores)], [torch.tensor(mask)], torch.tensor(taus, dtype=torch.float64))
    expected = [reference_ess(reference_weights(scores, mask, t)[0], mask) for t in taus]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert got[0] == 1.0 and all(a >= b for a, b in zip(got.tolist(), got.tolist()[1:]))  # non-increasing in τ
    # Split over micro-batches: the same step-level value.
    halves = weights_ess(
        [torch.tensor(scores[:3]), torch.tensor(scores[3:])],
        [torch.tensor(mask[:3]), torch.tensor(mask[3:])],
        torch.tensor(taus, dtype=torch.float64),
    )
    torch.testing.assert_close(halves, got)


@pytest.mark.parametrize("target", [0.95, 0.7, 0.3])
def test_tau_for_ess_hits_the_target(target):
    from vcore.methods.vcore import tau_for_ess

    scores, mask = make_scores(seed=5)
    tau = float(tau_for_ess([torch.tensor(scores)], [torch.tensor(mask)], target))
    ess = lambda t: reference_ess(reference_weights(scores, mask, t)[0], mask)  # noqa: E731
    assert ess(tau) >= target - 1e-9 and ess(tau * 1.01) < target + 0.01  # the largest such τ, to within ~1%
    # Scores that carry no preference cannot be sharpened: the upper end of the range.
    flat = torch.zeros(3, 6, dtype=torch.float64)
    assert float(tau_for_ess([flat], [torch.ones(3, 6, dtype=torch.bool)], 0.5)) == pytest.approx(1e6)


def test_target_ess_training_holds_the_weights_at_that_sharpness(make_cfg, tmp_path):
    from vcore.run.training import train

    train(
        make_cfg("trainer.max_steps=3", "eval.after_train=false", "trainer.eval_at_end=false", "method.target_ess=0.6")
    )
    steps = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    steps = [h for h in steps if "weights/ess_frac" in h]
    assert len(steps) == 3
    for h in steps:  # one step per log line: the logged ESS is that step's, and τ moved to keep it at the target
        assert h["weights/ess_frac"] == pytest.approx(0.6, abs=0.01) and h["vcore/tau"] > 0
    with pytest.raises(ConfigError, match="method.target_ess"):
        from vcore.config import to_object

        to_object(make_cfg("method.target_ess=1.5"))


def loss_ratio_case():
    """A step of two micro-batches whose examples have 1 to 8 supervised tokens (one has none), per-token losses, and
    scores that lean towards the high-loss tokens (so the weighted loss exceeds the uniform one and α < 1)."""
    rng = np.random.default_rng(7)
    counts = [[2, 7, 0], [4, 8, 1]]
    T = 10
    batches, losses, scores = [], [], []
    for micro in counts:
        labels = torch.full((len(micro), T), -100, dtype=torch.long)
        for i, n in enumerate(micro):
            labels[i, 1 : 1 + n] = 5  # position 0 is never supervised
        loss = torch.tensor(rng.uniform(0.1, 4.0, size=(len(micro), T)))
        batches.append({"labels": labels})
        losses.append(loss)
        scores.append(loss + torch.tensor(rng.normal(scale=0.5, size=(len(micro), T))))
    return batches, losses, scores


def reference_loss_ratio(losses, scores, masks, tau, normalization):
    """min(1, L_uniform / L_weighted), both normalised as SPEC §2 says, in float64 over the whole step."""
    per_token_u, per_token_w, per_example_u, per_example_w = [], [], [], []
    for loss, s, m in zip(losses, scores, masks):
        w, _ = reference_weights(s, m, tau)
        for i in range(m.shape[0]):
            if m[i].any():
                per_token_u += list(loss[i][m[i]])
                per_token_w += list((w[i] * loss[i])[m[i]])
                per_example_u.append(loss[i][m[i]].mean())
                per_example_w.append((w[i] * loss[i])[m[i]].mean())
    if normalization == "token":  # (1/N) Σ over tokens; N cancels in the ratio but is kept for clarity
        u, wl = np.sum(per_token_u) / len(per_token_u), np.sum(per_token_w) / len(per_token_w)
    else:  # (1/|B|) Σ_i (1/n_i) Σ_t, over the examples with a supervised token
        u, wl = np.mean(per_example_u), np.mean(per_example_w)
    return min(1.0, u / wl)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_loss_ratio_alpha_is_normalised_as_the_loss_is(tmp_path, normalization):
    """variance_control=loss_ratio: α = min(1, L_uniform / L_weighted) with both losses normalised like the training
    loss (method.loss_normalization), over every micro-batch of the step. Fails if α ignored the normalisation
    (the two cases differ by far more than the tolerance), or were computed per micro-batch."""
    batches, losses, scores = loss_ratio_case()
    masks = [supervised_mask(b["labels"]).numpy() for b in batches]
    expected = {
        norm: reference_loss_ratio([x.numpy() for x in losses], [s.numpy() for s in scores], masks, 1.5, norm)
        for norm in ("token", "sequence")
    }
    assert abs(expected["token"] - expected["sequence"]) > 0.01 and expected[normalization] < 0.99
    cfg = VCOREConfig(
        tau=1.5,
        variance_control=VarianceControl.loss_ratio,
        alpha_max=None,
        loss_normalization=LossNormalization(normalization),
    )
    method = VCORE(cfg, tiny_causal_lm(tmp_path, dtype=torch.float32), [1], lambda rows: rows)  # the probe is not run
    step = micro_batches(batches)
    diag = method.weigh_step(step, losses, scores)
    assert diag["vcore/alpha"].item() == pytest.approx(expected[normalization], rel=1e-6)
    for m in step:  # every micro-batch of the step carries the one step-level α
        assert m.state.alpha.item() == pytest.approx(expected[normalization], rel=1e-12)
