"""The report's intervals hold their promise on simulated studies with a known truth (vcore.eval.calibration).

Grid: 2, 3, 5, 10 runs per method x run-to-run SD of the paired difference 0, 3, 6, 9 points x seed effects shared by
the two methods' runs or not; 200 items; 1,000 null studies and 1,000 with a true difference of 5 points per design.
The paired test's false-positive rate at 5% must stay within binomial tolerance (at most 7%), the difference's and the
accuracy's intervals must cover the truth at least 93% of the time, and the power is printed (``-s`` shows the table).
A deliberately overconfident interval (normal quantiles for every term) fails the same check: the test can fail.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from vcore.eval import calibration
from vcore.eval.intervals import crossed


def test_intervals_are_calibrated_for_two_to_ten_runs():
    rows = calibration.grid(items=200, datasets=1000)
    print("\n" + calibration.table(rows))
    assert len(rows) == 32
    bad = [
        r
        for r in rows
        if r.false_positive > 0.07 or r.coverage_null < 0.93 or r.coverage_alt < 0.93 or r.coverage_accuracy < 0.93
    ]
    assert not bad, calibration.table(bad)
    # Power grows with runs and falls with run-to-run spread: the intervals are not simply wide.
    power = {(r.design.runs, r.design.seed_sd, r.design.correlated): r.power for r in rows}
    for sd in calibration.GRID["seed_sd"]:
        for shared in (False, True):
            assert power[(10, sd, shared)] > power[(2, sd, shared)]
    assert power[(10, 0.0, False)] > 0.7  # 10 runs x 200 items find 5 points when runs agree


def _normal_quantiles(a, b):
    mean, terms, _ = crossed([a - b], [1.0])
    half = stats.norm.ppf(0.975) * np.sqrt(sum(v for v, _ in terms))
    return mean, mean - half, mean + half, (mean - half > 0) | (mean + half < 0)


def test_the_check_catches_an_overconfident_interval():
    row = calibration.measure(
        calibration.Design(2, 200, 6.0, False), 1000, difference_fn=_normal_quantiles, accuracy_fn=None
    )
    assert row.false_positive > 0.07 and row.coverage_null < 0.93


def test_the_simulation_checks_the_functions_the_report_calls():
    from vcore.eval.intervals import accuracy, difference

    a, b = calibration.simulate(calibration.Design(3, 50, 6.0, True), 1, np.random.default_rng(0))
    _, low, high, _ = calibration.anova_difference(a, b)
    d = difference(a[0], b[0])
    assert (float(low[0]), float(high[0])) == (d.low, d.high)
    _, low, high, _ = calibration.anova_accuracy(b)
    acc = accuracy(b[0])
    assert (float(low[0]), float(high[0])) == (acc.low, acc.high)
