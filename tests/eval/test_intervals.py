"""Intervals and tests against independent references: scipy's t tests and binomial intervals, sums of squares from
a least-squares fit, exact Holm values, and the degenerate inputs the report can meet."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vcore.eval.intervals import (
    NotPaired,
    Scope,
    accuracy,
    combined,
    difference,
    from_run_values,
    half_width,
    holm,
    mcnemar,
    pair_seeds,
)


def _study(seed=0, s=4, n=60, run_sd=0.4):
    rng = np.random.default_rng(seed)
    item = rng.normal(0, 1.2, n)
    run = rng.normal(0, run_sd, (s, 1))
    return (rng.random((s, n)) < 1 / (1 + np.exp(-(item + run)))).astype(float)


def test_one_binary_run_gets_wilsons_interval():
    correct = np.array([1] * 13 + [0] * 187)
    est = accuracy(correct)
    ref = stats.binomtest(13, 200).proportion_ci(0.95, method="wilson")
    assert est.scope is Scope.ONE_RUN and est.mean == pytest.approx(0.065)
    assert (est.low, est.high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    # All wrong: Wilson still has width, where mean ± t·se would collapse to a point.
    zero = accuracy(np.zeros(50))
    assert zero.low == 0 and zero.high == pytest.approx(stats.binomtest(0, 50).proportion_ci(method="wilson").high)


def test_one_run_of_fractions_and_one_paired_run_are_t_tests_over_items():
    rng = np.random.default_rng(1)
    frac = rng.integers(0, 5, 80) / 4  # avg@4
    ref = stats.ttest_1samp(frac, 0.0).confidence_interval(0.95)
    est = accuracy(frac)
    assert est.scope is Scope.ONE_RUN and (est.low, est.high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    a, b = (rng.random(300) < 0.55).astype(float), (rng.random(300) < 0.5).astype(float)
    d = difference(a, b)
    tt = stats.ttest_rel(a, b)
    assert d.p_value == pytest.approx(tt.pvalue, rel=1e-6)
    assert (d.low, d.high) == pytest.approx(tuple(tt.confidence_interval(0.95)), rel=1e-9)


def test_paired_01_items_never_get_less_variance_than_agresti_min_on_the_pooled_pairs():
    # One run of 20 items, no item changed: the t over items would give a point; the floor gives 1/22 (df 19).
    one = difference(np.ones(20), np.ones(20))
    assert one.se == pytest.approx(1 / 22) and one.high == pytest.approx(stats.t.ppf(0.975, 19) / 22)
    # 3 discordant pairs one way, 1 the other, in 60: (3.5 + 1.5 - 2² / 62) / 62².
    a = np.zeros((3, 20))
    b = np.zeros((3, 20))
    a[0, 0] = a[1, 1] = a[2, 2] = 1
    b[0, 5] = 1
    floor = (3.5 + 1.5 - 4 / 62) / 62**2
    assert difference(a, b).se ** 2 >= floor - 1e-15


def test_runs_that_differ_only_as_wholes_give_the_paired_t_over_seeds():
    # Each run's difference is the same on every item: no item term, and the test is the t over per-seed means.
    per_seed = np.array([0.03, -0.01, 0.05, 0.02])
    d = np.repeat(per_seed[:, None], 40, axis=1)
    est = combined([d], [1.0])
    ref = stats.ttest_1samp(per_seed, 0.0)
    assert est.scope is Scope.RUNS_AND_ITEMS and est.runs == 4 and est.items == 40
    assert est.terms[1][0] == pytest.approx(0.0, abs=1e-18)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert (est.low, est.high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)


def test_identical_runs_give_the_t_over_items():
    x = np.tile(_study(2, 1, 90), (3, 1))
    est = accuracy(x)
    ref = stats.ttest_1samp(x[0], 0.0).confidence_interval(0.95)
    assert est.terms[0][0] == 0.0 and (est.low, est.high) == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_variance_terms_match_sums_of_squares_from_a_least_squares_fit():
    x = _study(3, s=5, n=30, run_sd=1.0)
    s, n = x.shape
    y = x.ravel()
    seed_dummies = np.kron(np.eye(s), np.ones((n, 1)))
    item_dummies = np.kron(np.ones((s, 1)), np.eye(n))

    def rss(design):
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((y - design @ beta) ** 2))

    ones = np.ones((s * n, 1))
    ss_total = rss(ones)
    ss_seed = ss_total - rss(np.hstack([ones, seed_dummies]))
    ss_item = ss_total - rss(np.hstack([ones, item_dummies]))
    ms_resid = rss(np.hstack([ones, seed_dummies, item_dummies])) / ((s - 1) * (n - 1))
    ms_seed, ms_item = ss_seed / (s - 1), ss_item / (n - 1)
    est = accuracy(x)
    (run_term, df_run), (item_term, df_item) = est.terms
    assert (df_run, df_item) == (s - 1, n - 1)
    assert run_term == pytest.approx(ms_seed / (s * n), rel=1e-10)
    assert item_term == pytest.approx((ms_item - ms_resid) / (s * n), rel=1e-10)
    # The components reproduce the same terms at the same design (what the power analysis projects from)...
    assert ms_seed > ms_resid
    np.testing.assert_allclose(est.components.terms(s, n), [(run_term, s - 1), (item_term, n - 1)], rtol=1e-10)
    # ... unless the runs vary less than the residual noise says they must: sigma2_seed is then taken as 0 and the
    # projection keeps the noise floor ms_resid / (S N).
    calm = _study(3, s=5, n=30)
    c = accuracy(calm)
    assert c.terms[0][0] < c.components.resid / (s * n) == pytest.approx(c.components.terms(s, n)[0][0])
    q = stats.t.ppf(0.975, [s - 1, n - 1])
    assert est.high - est.mean == pytest.approx(math.sqrt(q[0] ** 2 * run_term + q[1] ** 2 * item_term), rel=1e-12)


def test_p_value_tost_and_mde_agree_with_the_interval():
    rng = np.random.default_rng(4)
    a, b = _study(5, 3, 120), _study(6, 3, 120)
    b[:, rng.random(120) < 0.1] = 0
    d = difference(a, b)
    p = d.p_value
    # At level 1 - p the interval's edge touches 0.
    assert float(half_width(d.terms, 1 - p)) == pytest.approx(abs(d.mean), rel=1e-6)
    assert (p < 0.05) == (d.low > 0 or d.high < 0)
    # TOST: equivalent at 5% exactly when the 90% interval lies inside the margin.
    half90 = float(half_width(d.terms, 0.90))
    for margin in (abs(d.mean) + 0.5 * half90, abs(d.mean) + 2 * half90):
        assert (d.tost(margin) < 0.05) == (abs(d.mean) + half90 < margin)
    # One term: TOST and MDE are the textbook one-sample formulas.
    per_seed = np.array([0.01, 0.03, -0.02, 0.04, 0.00])
    one = from_run_values(per_seed)
    se, df = per_seed.std(ddof=1) / math.sqrt(5), 4
    m = 0.05
    ref = max(stats.t.sf((per_seed.mean() + m) / se, df), stats.t.sf((m - per_seed.mean()) / se, df))
    assert one.tost(m) == pytest.approx(ref, rel=1e-6)
    assert one.mde() == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * se, rel=1e-12)
    assert one.tost(abs(per_seed.mean()) / 2) == 1.0  # a margin inside the estimate can never be equivalent
    with pytest.raises(ValueError, match="margin"):
        one.tost(0)


def test_an_average_over_benchmarks_keeps_their_covariance_through_the_runs():
    # Two benchmarks that rise and fall together from run to run: their average varies as much as each one, which an
    # average of independent intervals would understate by a factor of two in variance.
    shift = np.array([0.0, 0.1, -0.1, 0.05])[:, None]
    a, b = np.full((4, 50), 0.5) + shift, np.full((4, 80), 0.3) + shift
    est = combined([a, b], [0.5, 0.5])
    ref = stats.ttest_1samp(0.5 * a.mean(1) + 0.5 * b.mean(1), 0.0)
    assert est.mean == pytest.approx(0.4125) and est.items == 130
    assert (est.low, est.high) == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-9)
    with pytest.raises(ValueError, match="same runs"):
        combined([a, b[:3]], [0.5, 0.5])


def test_holm_matches_hand_computed_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 2 x 0.8 capped at 1, and never below an earlier step
    assert holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert holm([]) == []


def test_degenerate_inputs_have_defined_answers_or_clear_errors():
    full = accuracy(np.ones((3, 40)))  # every run right on every item: Wilson's interval for 120 of 120, not a point
    assert (full.mean, full.high) == (1.0, 1.0) and full.low == pytest.approx(
        stats.binomtest(120, 120).proportion_ci(method="wilson").low
    )
    same = difference(np.ones((3, 40)), np.ones((3, 40)))  # no discordant pair in 120: the floor, ±1.6 points
    assert same.p_value == 1.0 and same.tost(0.05) < 0.01 and same.tost(0.01) > 0.05 and same.mde() > 0
    frac = difference(np.full((3, 40), 0.5), np.full((3, 40), 0.5))  # avg@n fractions: no floor, no noise at all
    assert frac.se == 0 and frac.p_value == 1.0 and frac.tost(0.01) == 0.0 and frac.mde() == 0.0
    flip = difference(np.ones((2, 40)), np.zeros((2, 40)))  # every item right vs wrong in both runs
    assert flip.mean == 1.0 and flip.p_value < 1e-6
    two = difference(_study(7, 2, 50), _study(8, 2, 50))  # S = 2: one df for the run term, and it works
    assert two.terms[0][1] == 1 and two.low < two.mean < two.high
    one_item = accuracy(np.array([[1.0], [0.0], [1.0]]))
    assert one_item.scope is Scope.RUNS_ONLY and one_item.items == 1 and one_item.low < one_item.high
    single = from_run_values([0.4])
    assert single.runs == 1 and math.isnan(single.low) and math.isnan(single.p_value) and single.fmt() == "40.0"
    bad = np.ones((2, 5))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="run 1, item 3 has no value"):
        accuracy(bad)
    with pytest.raises(ValueError, match="at least one run and one item"):
        accuracy([])
    with pytest.raises(ValueError, match="same runs and items"):
        difference(np.ones((2, 5)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="at least 2 runs"):
        accuracy(_study(9, 3, 20)).components.terms(1, 20)


def test_unequal_seed_sets_pair_what_pairs_and_refuse_the_rest():
    pairing = pair_seeds({1: "a1", 2: "a2", 3: "a3"}, {2: "b2", 3: "b3", 4: "b4"})
    assert pairing.seeds == [2, 3] and pairing.only_a == [1] and pairing.only_b == [4]
    assert pairing.note == "paired on seeds 2, 3; unpaired runs left out: first arm's seed 1; second arm's seed 4"
    assert pair_seeds({1: 0}, {1: 0}).note == ""
    with pytest.raises(NotPaired, match=r"no seed in common \(first arm: 1, 2; second arm: 5\)"):
        pair_seeds({1: 0, 2: 0}, {5: 0})


def test_mcnemar_is_the_exact_binomial_test_on_discordant_items():
    a = np.array([1] * 30 + [0] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    b = np.array([0] * 30 + [1] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    assert mcnemar(a, b) == pytest.approx(stats.binomtest(12, 42, 0.5).pvalue, rel=1e-12)
    assert mcnemar(a, a) == 1.0
    assert mcnemar(np.ones(5, bool), np.zeros(5, bool)) == pytest.approx(2 / 32)
