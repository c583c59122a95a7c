"""pass@k against brute-force enumeration; per-benchmark metric aggregation."""

import itertools
import math

import pytest

from vcore.eval.metrics import benchmark_metrics, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_1_is_the_fraction_correct_and_bad_arguments_fail():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)


def test_benchmark_metrics():
    correct = [[True, False, False, True], [False] * 4, [True] * 4]
    truncated = [[False, True, False, False], [False] * 4, [False] * 4]
    tokens = [[10, 20, 10, 10], [5] * 4, [1] * 4]
    verdicts = [["correct", "wrong", "no_answer", "correct"], ["wrong"] * 4, ["correct"] * 4]
    m = benchmark_metrics(correct, truncated, tokens, verdicts, pass_k=[1, 2, 4, 8])
    assert m["n_items"] == 3 and m["n_samples"] == 4
    assert m["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3) == m["avg@4"]
    assert m["pass@k"]["1"] == pytest.approx(m["accuracy"])
    assert m["pass@k"]["4"] == pytest.approx(2 / 3)
    assert "8" not in m["pass@k"]  # k > n is not reported
    assert m["truncation_rate"] == pytest.approx(1 / 12)
    assert m["verdicts"] == {"correct": 6, "wrong": 5, "no_answer": 1}
    single = benchmark_metrics([[True], [False]], [[False], [True]], [[3], [4]], [["correct"], ["wrong"]])
    assert single["accuracy"] == 0.5 and "pass@k" not in single and single["truncation_rate"] == 0.5
