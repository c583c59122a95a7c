"""Bootstrap intervals and paired tests against independent references (closed forms, exact binomials, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vcore.eval.intervals import bootstrap_ci, mcnemar, paired_bootstrap


def test_item_bootstrap_matches_the_binomial_standard_error():
    # One run of 500 items at 50%: the percentile interval must be close to p ± 1.96·sqrt(p(1-p)/n) = ±4.38 points.
    correct = np.array([1] * 250 + [0] * 250)
    ci = bootstrap_ci(correct, resamples=4000)
    half = 1.959964 * math.sqrt(0.25 / 500)
    assert ci.mean == 0.5
    assert ci.low == pytest.approx(0.5 - half, abs=0.006) and ci.high == pytest.approx(0.5 + half, abs=0.006)


def test_item_bootstrap_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    correct = (rng.random(300) < 0.3).astype(float)
    ours = bootstrap_ci(correct, resamples=4000, seed=1)
    ref = stats.bootstrap((correct,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(2)).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.01) and ours.high == pytest.approx(ref.high, abs=0.01)


def test_constant_runs_have_zero_width_and_seed_spread_widens_the_interval():
    assert bootstrap_ci(np.ones((3, 50))) == bootstrap_ci(np.ones((3, 50)))
    ci = bootstrap_ci(np.ones((3, 50)))
    assert (ci.mean, ci.low, ci.high) == (1.0, 1.0, 1.0)
    # Three seeds that disagree completely on the same items (two all right, one all wrong): each item's mean is 2/3,
    # so an item-only bootstrap would give a zero-width interval; resampling the seeds too must see the spread.
    runs = np.stack([np.ones(200), np.zeros(200), np.ones(200)])
    ci = bootstrap_ci(runs)
    assert ci.mean == pytest.approx(2 / 3)
    assert ci.low == 0.0 and ci.high == 1.0


def test_paired_bootstrap_sees_a_small_consistent_gain_that_unpaired_intervals_hide():
    rng = np.random.default_rng(0)
    base = (rng.random(500) < 0.5).astype(float)
    better = base.copy()
    flip = np.flatnonzero(base == 0)[:25]  # 25 items go from wrong to right, nothing else changes: +5 points
    better[flip] = 1.0
    cmp = paired_bootstrap(better, base)
    assert cmp.diff.mean == pytest.approx(0.05)
    assert cmp.diff.low > 0 and cmp.p_value < 0.01
    # The unpaired intervals overlap: the paired test is the one that can tell them apart.
    assert bootstrap_ci(better).low < bootstrap_ci(base).high
    # No difference at all: p = 1 and a zero-width interval.
    same = paired_bootstrap(base, base)
    assert same.p_value == 1.0 and same.diff.low == same.diff.high == 0.0
    with pytest.raises(ValueError, match="same runs and items"):
        paired_bootstrap(base, base[:10])


def test_mcnemar_is_the_exact_binomial_test_on_discordant_items():
    stats = pytest.importorskip("scipy.stats")
    a = np.array([1] * 30 + [0] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    b = np.array([0] * 30 + [1] * 12 + [1] * 50 + [0] * 8, dtype=bool)
    expected = stats.binomtest(12, 42, 0.5).pvalue  # 30 a-only, 12 b-only
    assert mcnemar(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar(a, a) == 1.0
    # A tiny closed form: 5 discordant items all one way -> p = 2 / 2^5.
    assert mcnemar(np.ones(5, bool), np.zeros(5, bool)) == pytest.approx(2 / 32)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="at least one run and one item"):
        bootstrap_ci([])
