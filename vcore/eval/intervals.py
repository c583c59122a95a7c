"""Uncertainty of accuracies: bootstrap intervals, paired comparisons, McNemar's test.

Accuracy tables without intervals invite reading noise as effects: 500 items at 50% accuracy give a 95% interval of
about ±4.4 points, and 128 items about ±8.7. Everything here takes per-item correctness ``[S, N]`` (``S`` seeds
or runs, ``N`` items shared by every run; a 1-D array is one run) with values in [0, 1] (a fraction for avg@n).

- :func:`bootstrap_ci`: mean accuracy with a percentile interval from a two-level bootstrap: each resample draws
  seeds (with replacement) and items (with replacement), so the interval covers both the test set's sampling and
  the run-to-run spread (with one run it is the plain item bootstrap).
- :func:`paired_bootstrap`: a method against a reference on the *same* items and seeds (seed s of one paired with
  seed s of the other): the mean difference, its interval, and a two-sided bootstrap p-value.
- :func:`mcnemar`: McNemar's exact test for two single runs on the same items (binary correctness).

Resampling uses its own seeded generator: the same inputs give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"51.2 [46.8, 55.6]"`` (percent by default)."""
        m, lo, hi = (round(x * scale, digits) for x in (self.mean, self.low, self.high))
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    diff: Interval  # mean(a) - mean(b) with its interval
    p_value: float  # two-sided: 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)), at least 1/resamples


def _as_runs(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(f"expected per-item values [runs, items] with at least one run and one item, got shape {a.shape}")
    return a


def _resampled_means(runs: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """For each array ``[S, N]`` in ``runs`` (same S and N), its mean under the same ``resamples`` draws of seeds and
    items: shape ``[resamples]`` each. Sharing the draws is what makes a paired comparison paired."""
    s, n = runs[0].shape
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n, size=(resamples, n))
    seeds = rng.integers(0, s, size=(resamples, s)) if s > 1 else np.zeros((resamples, 1), dtype=np.int64)
    out = []
    for a in runs:
        per_seed = np.stack([a[k][items].mean(axis=1) for k in range(s)])  # [S, R]
        out.append(per_seed[seeds, np.arange(resamples)[:, None]].mean(axis=1))
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(correct, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """Mean of ``correct`` (``[S, N]`` or ``[N]``) and its percentile interval (two-level bootstrap)."""
    a = _as_runs(correct)
    (samples,) = _resampled_means([a], resamples, seed)
    return Interval(float(a.mean()), *_percentiles(samples, level))


def paired_bootstrap(a, b, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """``mean(a) - mean(b)`` for runs on the same items (``a[s]`` paired with ``b[s]``), its interval and p-value."""
    a, b = _as_runs(a), _as_runs(b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same runs and items: {a.shape} vs {b.shape}")
    sa, sb = _resampled_means([a, b], resamples, seed)
    d = sa - sb
    p = 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0)))
    return Comparison(Interval(float(a.mean() - b.mean()), *_percentiles(d, level)), min(1.0, max(p, 1.0 / resamples)))


def mcnemar(a, b) -> float:
    """Two-sided exact McNemar p-value for binary correctness of two runs on the same items.

    Only the discordant items count: ``b01`` (a wrong, b right) and ``b10``; under the null each is Binomial(b01 + b10,
    1/2). p = min(1, 2 · P(X ≤ min(b01, b10))).
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two 1-D boolean arrays over the same items: {a.shape} vs {b.shape}")
    b10, b01 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = b10 + b01, min(b10, b01)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
