"""Uncertainty of accuracies over runs (seeds) and items, and the tests a report draws on them.

Everything takes per-item correctness ``[S, N]``: ``S`` runs (seeds) scored on the same ``N`` items, values in [0, 1]
(a fraction for avg@n); a 1-D array is one run. A paired difference takes two such arrays, run ``s`` of one paired
with run ``s`` of the other (same seed) and item ``i`` with item ``i``.

**The model.** A run's score on an item is ``x_si = mu + a_s + b_i + e_si``: a run effect (seed: data order, dropout,
what the run happened to learn; variance ``sigma2_seed``), an item effect (difficulty; ``sigma2_item``) and their
interaction plus sampling noise (``sigma2_resid``). The target is ``mu``: the accuracy (or difference) expected from a
new run of the same recipe on a new item from the same population. The mean over ``S x N`` has variance
``sigma2_seed/S + sigma2_item/N + sigma2_resid/(S N)``, estimated without bias from the two-way ANOVA as two terms:
the *run term* ``var_s(run means) / S`` (it holds ``sigma2_seed/S + sigma2_resid/(S N)``; ``S - 1`` degrees of
freedom) and the *item term* ``(MS_item - MS_resid) / (S N)`` (``sigma2_item/N``; ``N - 1`` df; taken as 0 when
negative). With a paired difference the same formula applies to ``d_si = a_si - b_si``: a seed effect the two methods
share cancels, one they do not share is in the run term.

**The interval** is ``mean ± sqrt(t(S-1)² · run term + t(N-1)² · item term)``: each term is scaled by the t quantile
of its own degrees of freedom (the "modified large-sample" combination of Graybill and Wang). Two alternatives were
measured and rejected (by :mod:`vcore.eval.calibration`, 1,000 simulated studies per design, 2-10 runs, run-to-run
SD of the difference 0-9 points): a percentile bootstrap over seeds and items keeps ``(S-1)/S`` of the run variance
and reads normal quantiles where ``t(S-1)`` belongs (4.30 at ``S = 3``), and called a true null significant in up to
a fifth of studies at 3 seeds; one t with Satterthwaite's df was anticonservative with 2-3 runs (false positives up to
7.8%, accuracy coverage down to 86%), because a run term that came out small by chance also raised the df. The
combination used here kept false positives at 2-6% and coverage at 94% or more in every design, with power close to
Satterthwaite's from 5 runs on. p-values, TOST and the minimum detectable effect are computed from the same
half-width, so an interval that excludes 0 is exactly a p below ``1 - level``.

**What an interval covers**: run-to-run variation of the recipe (``S >= 2``) and the sampling of test items from a
population like them. **What it does not cover**: the base model (every run starts from one), the hyperparameters
(chosen once, treated as fixed), a shift to other benchmarks, other decoding settings, or bugs. Scopes, which every
table prints:

- ``RUNS_AND_ITEMS`` (``S >= 2``, ``N >= 2``): the above.
- ``ONE_RUN`` (``S = 1``): "one run: item noise only". Run-to-run variation is not estimable and not included; for a
  single accuracy with 0/1 items the interval is Wilson's score interval, otherwise ``mean ± t(N-1) · sd/sqrt(N)``
  (for two runs on the same items this is the paired t over items, McNemar's comparison in t form).
- ``RUNS_ONLY`` (only per-run numbers, e.g. a W&B summary, or ``N = 1``): ``t(S-1)`` over the runs; item sampling is
  not covered (the items are taken as fixed).

Tests drawn from an :class:`Estimate`: two-sided p (``mean = 0``), TOST equivalence within a margin, and the minimum
detectable effect at 80% power given the same variance and df. :func:`holm` adjusts a family of p-values.
Degenerate inputs have defined answers: no variation at all gives ``se = 0``, a point interval, ``p = 1`` for a zero
mean and ``0`` otherwise; NaN is an error naming the run and item.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8


class Scope(str, Enum):
    RUNS_AND_ITEMS = "runs and items"
    ONE_RUN = "one run: item noise only"
    RUNS_ONLY = "runs only: item sampling not covered"


# A variance term: (its estimate, its degrees of freedom). Arrays over leading axes in the calibration's batches.
Term = tuple[Any, float]


def half_width(terms: Sequence[Term], level):
    """``sqrt(sum_k t_k(level)² · v_k)``, ``t_k`` the two-sided quantile with term k's df (arrays broadcast)."""
    return _half(terms, 1 - np.asarray(level, dtype=np.float64))


def _half(terms: Sequence[Term], alpha):
    """:func:`half_width` at level ``1 - alpha``, from upper-tail quantiles (exact for alpha far below 1e-16)."""
    return np.sqrt(
        sum(stats.t.isf(np.asarray(alpha) / 2, df) ** 2 * np.asarray(v, dtype=np.float64) for v, df in terms)
    )


SMALLEST_P = 1e-100  # p-values below this are reported as this (the quantiles' squares stay finite)


def _alpha_where(gap) -> float:
    """The alpha at which ``gap(alpha)`` (decreasing in alpha) crosses 0, by Brent's method on log(alpha)."""
    if gap(SMALLEST_P) <= 0:
        return SMALLEST_P
    high = 1.0 if gap(1.0) <= 0 else None
    if high is None:
        return 1.0
    return float(np.exp(optimize.brentq(lambda la: gap(np.exp(la)), np.log(SMALLEST_P), 0.0, xtol=1e-12)))


def p_value(mean, terms: Sequence[Term]) -> float:
    """Two-sided p of ``mean = 0``: the alpha at which the ``1 - alpha`` interval's edge reaches 0."""
    mean = abs(float(mean))
    if sum(float(v) for v, _ in terms) == 0:
        return 0.0 if mean > 0 else 1.0
    if mean == 0:
        return 1.0
    return _alpha_where(lambda a: float(_half(terms, a)) - mean)


@dataclass(frozen=True)
class Components:
    """Variance components of one benchmark's crossed runs x items design (accuracy units, squared)."""

    seed: float
    item: float
    resid: float

    def terms(self, runs: int, items: int) -> list[Term]:
        """The run and item terms a study of ``runs`` x ``items`` would have (their expected values)."""
        if runs < 2 or items < 2:
            raise ValueError(
                f"a study needs at least 2 runs and 2 items to estimate its variance, got {runs} x {items}"
            )
        return [((self.seed + self.resid / items) / runs, runs - 1), (self.item / items, items - 1)]

    def mde(self, runs: int, items: int, alpha: float = ALPHA, power: float = POWER) -> float:
        """Minimum detectable effect of a study of ``runs`` x ``items`` with these components (power analysis)."""
        return mde(self.terms(runs, items), alpha, power)


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy or difference with its variance terms and interval (fractions, not %)."""

    mean: float
    terms: tuple[Term, ...]
    low: float
    high: float
    runs: int
    items: int
    scope: Scope
    components: Components | None = None  # one benchmark with S >= 2 and N >= 2: projects the MDE to other designs
    level: float = LEVEL

    @property
    def se(self) -> float:
        return math.sqrt(sum(v for v, _ in self.terms))

    @property
    def p_value(self) -> float:
        """Two-sided p of ``mean = 0``, consistent with the interval (see the module docstring)."""
        return p_value(self.mean, self.terms) if self.terms else math.nan

    def tost(self, margin: float) -> float:
        """Two one-sided tests of ``|mean| >= margin`` (same units as ``mean``): the alpha at which the
        ``1 - 2 alpha`` interval fits inside ``±margin``. Small p means equivalent within ``±margin``."""
        if margin <= 0:
            raise ValueError(f"the equivalence margin must be positive, got {margin}")
        if not self.terms:
            return math.nan
        room = margin - abs(self.mean)
        if room <= 0:
            return 1.0
        if self.se == 0:
            return 0.0
        return min(_alpha_where(lambda a: float(_half(self.terms, 2 * min(a, 0.5))) - room), 0.5)

    def mde(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The smallest true difference a two-sided test at ``alpha`` finds with probability ``power``, at this
        estimate's variance terms."""
        return mde(self.terms, alpha, power) if self.terms else math.nan

    def fmt(self, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
        """``"51.2 [46.8, 55.6]"`` (percent by default; ``signed``: ``+1.2 [-0.4, +2.8]``)."""
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        if math.isnan(self.low):
            return f.format(self.mean * scale)
        return f"{f.format(self.mean * scale)} [{f.format(self.low * scale)}, {f.format(self.high * scale)}]"


def mde(terms: Sequence[Term], alpha: float = ALPHA, power: float = POWER) -> float:
    """``sqrt(sum_k (t_k(1 - alpha/2) + t_k(power))² · v_k)``: the interval's half-width at ``alpha`` plus the
    distance beyond it a true effect needs to clear it with probability ``power``, term by term."""
    return float(np.sqrt(sum((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) ** 2 * v for v, df in terms)))


# ---------------------------------------------------------------------------------------------------- estimates
def accuracy(correct, *, level: float = LEVEL) -> Estimate:
    """Mean accuracy of ``correct`` (``[S, N]`` or ``[N]``) with its interval (see the module docstring), within
    [0, 1]. For 0/1 items the interval is never narrower than Wilson's for the ``S · N`` answers pooled: runs that all
    agree (every item right in every run, say) do not make a point interval out of a few items."""
    x = as_runs(correct)
    est = combined([x], [1.0], level=level)
    s, n = x.shape
    if not np.all((x == 0) | (x == 1)):
        return dataclasses.replace(est, low=max(est.low, 0.0), high=min(est.high, 1.0))
    low, high = wilson(int(x.sum()), s * n, level)
    if s == 1:
        return dataclasses.replace(est, low=low, high=high)
    return dataclasses.replace(est, low=max(min(est.low, low), 0.0), high=min(max(est.high, high), 1.0))


def difference(a, b, *, level: float = LEVEL) -> Estimate:
    """``mean(a) - mean(b)`` for runs on the same items, run ``s`` of ``a`` paired with run ``s`` of ``b``.

    For 0/1 items the variance is at least that of the ``S · N`` pairs pooled, with Agresti and Min's half-counts
    added to the discordant cells (Biometrics 2005): two arms that never disagree on a few items are not called
    exactly equal (one run of 20 items and no discordant pair: ±9.5 points, not a point)."""
    a, b = as_runs(a), as_runs(b)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs the same runs and items: {a.shape} vs {b.shape}")
    est = combined([a - b], [1.0], level=level)
    if not np.all(((a == 0) | (a == 1)) & ((b == 0) | (b == 1))):
        return est
    n = a.size + 2
    up, down = float(np.sum(a > b)) + 0.5, float(np.sum(a < b)) + 0.5
    floor = (up + down - (up - down) ** 2 / n) / n**2
    total = sum(v for v, _ in est.terms)
    if total >= floor:
        return est
    return _estimate(
        est.mean, [*est.terms, (floor - total, a.size - 1)], est.runs, est.items, est.scope, est.components, level
    )


def combined(parts: Sequence[np.ndarray], weights: Sequence[float], *, level: float = LEVEL) -> Estimate:
    """``sum_k weights[k] · mean(parts[k])`` for benchmarks scored by the same ``S`` runs (``parts[k]``: ``[S, N_k]``,
    row ``s`` of every part from run ``s``; differences go in as ``a - b`` per part). An average over benchmarks
    shares its runs: the run term is the spread of each run's weighted average (so the benchmarks' covariance through
    the runs is kept) and each benchmark adds its own item term."""
    xs = [as_runs(p) for p in parts]
    if len(xs) != len(weights) or not xs:
        raise ValueError(f"need one weight per part: {len(xs)} parts, {len(weights)} weights")
    if len({x.shape[0] for x in xs}) != 1:
        raise ValueError(f"every part must come from the same runs: run counts {[x.shape[0] for x in xs]}")
    mean, terms, comps = crossed(xs, weights)
    s, n = xs[0].shape[0], sum(x.shape[1] for x in xs)
    scope = Scope.ONE_RUN if s == 1 else Scope.RUNS_ONLY if min(x.shape[1] for x in xs) == 1 else Scope.RUNS_AND_ITEMS
    return _estimate(float(mean), terms, s, n, scope, comps[0] if len(xs) == 1 else None, level)


def from_run_values(values: Sequence[float], *, level: float = LEVEL) -> Estimate:
    """Only one number per run (a W&B summary; for a difference, ``a_s - b_s`` of paired runs): ``t(S-1)`` over the
    runs, items taken as fixed. One run gives no interval and no test (NaN)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no runs")
    if np.isnan(v).any():
        raise ValueError(f"run {int(np.flatnonzero(np.isnan(v))[0])} has no value (NaN)")
    if v.size == 1:
        return Estimate(float(v[0]), (), math.nan, math.nan, 1, 0, Scope.RUNS_ONLY, level=level)
    return _estimate(
        float(v.mean()), [(float(v.var(ddof=1) / v.size), v.size - 1)], v.size, 0, Scope.RUNS_ONLY, None, level
    )


def _estimate(mean, terms, runs, items, scope, comps, level) -> Estimate:
    terms = tuple((float(v), float(df)) for v, df in terms)
    half = float(half_width(terms, level)) if terms else 0.0
    return Estimate(mean, terms, mean - half, mean + half, runs, items, scope, comps, level)


# ---------------------------------------------------------------------------------------------------- the ANOVA core
def crossed(parts: Sequence[np.ndarray], weights: Sequence[float]):
    """Mean and variance terms of ``sum_k w_k · mean(parts[k])``; each part ``[..., S, N_k]`` (leading axes:
    independent datasets, as the calibration simulation uses). Returns the mean (array over the leading axes), the
    terms ``[(variance, df)]`` and the per-part :class:`Components` (None where not estimable or batched)."""
    s = parts[0].shape[-2]
    run_avg = sum(w * x.mean(axis=-1) for w, x in zip(weights, parts))  # [..., S]
    mean = run_avg.mean(axis=-1)
    terms: list[Term] = []
    if s > 1:
        terms.append((run_avg.var(axis=-1, ddof=1) / s, s - 1))
    comps = []
    for w, x in zip(weights, parts):
        n = x.shape[-1]
        if n < 2:  # one item: no item term (the runs' spread is all there is)
            comps.append(None)
            continue
        item_means = x.mean(axis=-2)  # [..., N]
        ms_item = s * item_means.var(axis=-1, ddof=1)
        if s == 1:
            terms.append((w * w * ms_item / n, n - 1))
            comps.append(None)
            continue
        resid = x - x.mean(axis=-1, keepdims=True) - item_means[..., None, :] + x.mean(axis=(-2, -1), keepdims=True)
        ms_resid = (resid**2).sum(axis=(-2, -1)) / ((s - 1) * (n - 1))
        item_var = np.maximum(ms_item - ms_resid, 0.0) / s  # sigma2_item; a negative estimate is taken as 0
        terms.append((w * w * item_var / n, n - 1))
        if np.ndim(mean) == 0:
            ms_seed = n * x.mean(axis=-1).var(ddof=1)
            comps.append(Components(max(float(ms_seed - ms_resid) / n, 0.0), float(item_var), float(ms_resid)))
        else:
            comps.append(None)
    return mean, terms, comps


# ---------------------------------------------------------------------------------------------------- helpers
def as_runs(x) -> np.ndarray:
    """``x`` as float64 ``[S, N]`` (1-D: one run); an error names the first NaN's run and item."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(
            f"expected per-item values [runs, items] with at least one run and one item, got shape {a.shape}"
        )
    if np.isnan(a).any():
        s, i = (int(v[0]) for v in np.nonzero(np.isnan(a)))
        raise ValueError(f"run {s}, item {i} has no value (NaN): score every item, or leave the item out of every run")
    return a


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion (good coverage near 0 and 1, where ``p ± z·se`` collapses)."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends where rounding would leave 1e-18
    return low, 1.0 if successes == n else min(1.0, centre + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of one family of p-values (same order as given; NaN stays NaN and is not
    counted)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


@dataclass(frozen=True)
class Pairing:
    """Which runs of two arms pair by seed; ``note`` says what was left out (empty when every run pairs)."""

    seeds: list[Any]
    only_a: list[Any]
    only_b: list[Any]

    @property
    def note(self) -> str:
        left = [
            f"{side} seed {', '.join(map(str, s))}"
            for side, s in (("first arm's", self.only_a), ("second arm's", self.only_b))
            if s
        ]
        return (
            f"paired on seeds {', '.join(map(str, self.seeds))}; unpaired runs left out: {'; '.join(left)}"
            if left
            else ""
        )


class NotPaired(ValueError):
    """Two arms share no run to pair: the message says why."""


def pair_seeds(a: Mapping[Any, Any], b: Mapping[Any, Any]) -> Pairing:
    """Seeds present in both arms (``{seed: run}``) pair; the rest is left out and named. No common seed: NotPaired."""
    common = sorted(set(a) & set(b), key=str)
    if not common:
        raise NotPaired(
            f"no seed in common (first arm: {', '.join(map(str, sorted(a, key=str)))}; second arm: "
            f"{', '.join(map(str, sorted(b, key=str)))}): rerun one arm with the other's seeds to compare them"
        )
    return Pairing(common, sorted(set(a) - set(b), key=str), sorted(set(b) - set(a), key=str))


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
