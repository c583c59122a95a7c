"""How well the report's intervals and tests hold up, measured on simulated studies with a known truth.

    python -m vcore.eval.calibration                         # the grid the test suite checks (about 10 s)
    python -m vcore.eval.calibration --runs 3 --items 500 --seed-sd 6 --datasets 4000   # one design of yours

A simulated study is two methods, each run with ``S`` seeds and scored on the same ``N`` items; outcomes are 0/1
draws from a logistic model with what real evaluations have: item difficulty (shared by the methods), a method x item
effect (each method finds other items easy), a per-run seed effect (optionally shared between the two methods' runs of
one seed, as when a seed fixes the data order of both), and Bernoulli noise. The seed effect is set so that the
run-to-run standard deviation of the paired difference is ``seed_sd`` points. The truth (the expected difference, or
accuracy, over new seeds and new items) is 0 under the null and computed by Monte Carlo under the alternative.

For each design it reports the paired test's false-positive rate at 5% (null: same distribution for both
methods), the coverage of the difference's interval under the null and under an alternative of ``effect`` points, the
test's power against that alternative, and the coverage of one method's accuracy interval.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vcore.eval.intervals import LEVEL, crossed, half_width

MU, ITEM_SD, METHOD_ITEM_SD, SHARED_SEED_RATIO = 0.3, 1.5, 0.5, 2.0
# An interval function over R simulated studies: a, b [R, S, N] -> (mean, low, high, rejected at alpha), each [R].
IntervalFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


@functools.cache
def _gauss() -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights (summing to 1) for expectations over a standard normal."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    return nodes, weights / weights.sum()


@functools.cache
def _slope() -> float:
    """Mean of p(1-p) over items and methods: turns a logit-scale seed SD into accuracy points."""
    nodes, weights = _gauss()
    p = _expit(MU + math.hypot(ITEM_SD, METHOD_ITEM_SD) * nodes)
    return float(np.sum(weights * p * (1 - p)))


@dataclass(frozen=True)
class Design:
    runs: int
    items: int
    seed_sd: float  # points: run-to-run SD of the paired difference
    correlated: bool  # seed effects shared by the two methods' runs of one seed

    def seed_scales(self) -> tuple[float, float]:
        """(own, shared) logit-scale SDs of a run's seed effect."""
        own = self.seed_sd / 100 / _slope() / math.sqrt(2)
        return own, SHARED_SEED_RATIO * own if self.correlated else 0.0


def simulate(
    design: Design, datasets: int, rng: np.random.Generator, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """``datasets`` studies of ``design``: per-item correctness ``a, b`` ``[R, S, N]`` (``shift``: logit added to a)."""
    r, s, n = datasets, design.runs, design.items
    own, shared = design.seed_scales()
    item = rng.normal(0, ITEM_SD, (r, 1, n))
    common = rng.normal(0, shared, (r, s, 1)) if shared else 0.0
    logit_a = MU + item + rng.normal(0, METHOD_ITEM_SD, (r, 1, n)) + common + rng.normal(0, own, (r, s, 1)) + shift
    logit_b = MU + item + rng.normal(0, METHOD_ITEM_SD, (r, 1, n)) + common + rng.normal(0, own, (r, s, 1))
    a = (rng.random((r, s, n)) < _expit(logit_a)).astype(np.float64)
    b = (rng.random((r, s, n)) < _expit(logit_b)).astype(np.float64)
    return a, b


def truth(design: Design, shift: float) -> tuple[float, float]:
    """(expected accuracy of b, expected difference a - b) over new items and seeds. Every effect is normal on the
    logit scale, so each expectation is one Gauss-Hermite integral over their summed variance."""
    own, shared = design.seed_scales()
    sd = math.sqrt(ITEM_SD**2 + METHOD_ITEM_SD**2 + own**2 + shared**2)
    nodes, weights = _gauss()
    acc_b = float(np.sum(weights * _expit(MU + sd * nodes)))
    return acc_b, float(np.sum(weights * _expit(MU + shift + sd * nodes))) - acc_b


def shift_for(design: Design, effect: float) -> float:
    """The logit shift whose expected difference is ``effect`` (a fraction) for this design."""
    lo, hi = 0.0, 5.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if truth(design, mid)[1] < effect else (lo, mid)
    return (lo + hi) / 2


def anova_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL):
    """The report's paired difference (:func:`vcore.eval.intervals.difference`), over a batch of studies."""
    return _interval(a - b, level)


def anova_accuracy(x: np.ndarray, level: float = LEVEL):
    """The report's accuracy interval for S >= 2 (:func:`vcore.eval.intervals.accuracy`), over a batch of studies."""
    return _interval(x, level)


def _interval(x: np.ndarray, level: float):
    """Mean, interval and "significant at 1 - level" (the interval excludes 0; the same as p < 1 - level, which
    tests/eval/test_intervals.py checks, and far cheaper than a p per study)."""
    mean, terms, _ = crossed([x], [1.0])
    half = half_width(terms, level)
    return mean, mean - half, mean + half, (mean - half > 0) | (mean + half < 0)


@dataclass(frozen=True)
class Row:
    design: Design
    false_positive: float  # share of null studies the test calls significant (at 1 - LEVEL)
    coverage_null: float  # share of null studies whose difference interval holds 0
    coverage_alt: float  # ... holds the true difference under the alternative
    power: float  # share of alternative studies called significant
    coverage_accuracy: float  # share of studies whose accuracy interval (method b) holds b's true accuracy
    effect: float  # the alternative's true difference (fraction)


def measure(
    design: Design,
    datasets: int,
    seed: int = 0,
    effect: float = 0.05,
    difference_fn: IntervalFn = anova_difference,
    accuracy_fn=anova_accuracy,
) -> Row:
    """One design's row: ``datasets`` null studies and as many with a true difference of about ``effect``."""
    rng = np.random.default_rng([seed, design.runs, design.items, int(10 * design.seed_sd), design.correlated])
    a, b = simulate(design, datasets, rng)
    _, low, high, rejected = difference_fn(a, b)
    acc_truth, _ = truth(design, 0.0)
    cov_acc = float("nan")
    if accuracy_fn is not None and design.runs > 1:
        _, lo_b, hi_b, _ = accuracy_fn(b)
        cov_acc = float(np.mean((lo_b <= acc_truth) & (acc_truth <= hi_b)))
    shift = shift_for(design, effect)
    true_diff = truth(design, shift)[1]
    a1, b1 = simulate(design, datasets, rng, shift)
    _, low1, high1, rejected1 = difference_fn(a1, b1)
    return Row(
        design,
        float(np.mean(rejected)),
        float(np.mean((low <= 0) & (0 <= high))),
        float(np.mean((low1 <= true_diff) & (true_diff <= high1))),
        float(np.mean(rejected1)),
        cov_acc,
        true_diff,
    )


GRID = dict(runs=(2, 3, 5, 10), seed_sd=(0.0, 3.0, 6.0, 9.0), correlated=(False, True))


def grid(items: int = 200, datasets: int = 1000, seed: int = 0, **kw) -> list[Row]:
    return [measure(Design(s, items, sd, c), datasets, seed, **kw) for s, sd, c in itertools.product(*GRID.values())]


def table(rows: list[Row]) -> str:
    head = (
        "| runs | items | seed SD (pts) | seed effects | false positives | coverage (null) | coverage (effect) | "
        "power | accuracy coverage |"
    )
    out = [head, "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r.design
        out.append(
            f"| {d.runs} | {d.items} | {d.seed_sd:g} | {'shared' if d.correlated else 'independent'} | "
            f"{100 * r.false_positive:.1f}% | {100 * r.coverage_null:.1f}% | {100 * r.coverage_alt:.1f}% | "
            f"{100 * r.power:.0f}% at {100 * r.effect:.1f} pts | "
            + ("–" if math.isnan(r.coverage_accuracy) else f"{100 * r.coverage_accuracy:.1f}%")
            + " |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.eval.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="*", default=None, help="seeds per method (default: 2 3 5 10)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--seed-sd", type=float, nargs="*", default=None, help="points (default: 0 3 6 9)")
    parser.add_argument("--datasets", type=int, default=1000, help="simulated studies per design")
    parser.add_argument(
        "--effect", type=float, default=5.0, help="points, for power and coverage under the alternative"
    )
    args = parser.parse_args(argv)
    runs = args.runs or GRID["runs"]
    sds = args.seed_sd if args.seed_sd is not None else GRID["seed_sd"]
    rows = [
        measure(Design(s, args.items, sd, c), args.datasets, effect=args.effect / 100)
        for s, sd, c in itertools.product(runs, sds, GRID["correlated"])
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
