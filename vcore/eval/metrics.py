"""Per-benchmark metrics from per-sample correctness.

- accuracy = avg@n: the mean over items of the fraction of an item's n samples that are correct (n = 1: plain
  accuracy);
- pass@k, unbiased (Chen et al., 2021): ``1 - C(n-c, k) / C(n, k)`` per item, averaged; computed as a
  product to avoid huge binomials;
- truncation rate: the fraction of samples stopped by the length limit;
- ``accuracy_ci95``: a 95% interval of the accuracy over items, one run's item noise only (Wilson's for 0/1 items,
  a t interval for avg@n fractions; :func:`vcore.eval.intervals.accuracy`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vcore.eval.intervals import accuracy


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def benchmark_metrics(
    correct: Sequence[Sequence[bool]],
    truncated: Sequence[Sequence[bool]],
    n_tokens: Sequence[Sequence[int]],
    verdicts: Sequence[Sequence[str]],
    pass_k: Sequence[int] = (1,),
) -> dict:
    """Metrics of one benchmark; every argument is indexed [item][sample]."""
    n_items = len(correct)
    if n_items == 0:
        return {"n_items": 0, "n_samples": 0, "accuracy": None, "truncation_rate": None}
    n = len(correct[0])
    if any(len(c) != n for c in correct):
        raise ValueError("every item needs the same number of samples")
    flat_trunc = [t for row in truncated for t in row]
    flat_tokens = [t for row in n_tokens for t in row]
    per_item = [sum(c) / n for c in correct]
    ci = accuracy(per_item)
    out: dict = {
        "n_items": n_items,
        "n_samples": n,
        "accuracy": sum(per_item) / n_items,
        "accuracy_ci95": [ci.low, ci.high],
        "truncation_rate": sum(flat_trunc) / len(flat_trunc),
        "mean_tokens": sum(flat_tokens) / len(flat_tokens),
        "verdicts": dict(Counter(v for row in verdicts for v in row)),
    }
    if n > 1:
        out[f"avg@{n}"] = out["accuracy"]
        out["pass@k"] = {
            str(k): sum(pass_at_k(n, sum(c), k) for c in correct) / n_items for k in sorted(set(pass_k)) if k <= n
        }
    return out
