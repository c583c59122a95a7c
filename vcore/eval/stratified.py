"""Deterministic proportional stratified sampling (how SGPQA-1k is drawn from SuperGPQA).

Each stratum gets ``size * n_s / N`` items, floored; the leftover units go to the strata with the largest
fractional remainders (ties: larger stratum first, then name), so quotas sum to ``size`` exactly. Inside a
stratum the draw is ``random.Random(f"{seed}/{stratum}").sample`` over the ids sorted, so the result depends
only on (ids, strata, size, seed), not on row order or PYTHONHASHSEED. The paper's own 1,000 ids were never
published: this reproduces the recipe, not the paper's subset.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction


def largest_remainder(counts: dict[str, int], size: int) -> dict[str, int]:
    """Integer quotas proportional to ``counts`` that sum to ``min(size, total)``."""
    total = sum(counts.values())
    size = min(size, total)
    exact = {k: Fraction(size * c, total) for k, c in counts.items()}
    quotas = {k: int(v) for k, v in exact.items()}  # floor (values are non-negative)
    left = size - sum(quotas.values())
    order = sorted(counts, key=lambda k: (-(exact[k] - quotas[k]), -counts[k], k))
    for k in order[:left]:
        quotas[k] += 1
    return quotas


def stratified_sample(
    ids: Sequence[str], strata: Sequence[str] | None, size: int, seed: int
) -> tuple[list[int], dict[str, int]]:
    """Indices (in input order) of the sample and the per-stratum quotas. ``strata=None``: one stratum."""
    if len(set(ids)) != len(ids):
        raise ValueError("stratified sampling needs unique ids (check the benchmark's fields.id)")
    strata = list(strata) if strata is not None else ["all"] * len(ids)
    quotas = largest_remainder(dict(Counter(strata)), size)
    chosen: set[int] = set()
    for stratum, quota in quotas.items():
        members = sorted((ids[i], i) for i in range(len(ids)) if strata[i] == stratum)
        rng = random.Random(f"{seed}/{stratum}")
        chosen.update(i for _, i in rng.sample(members, quota))
    return sorted(chosen), quotas
