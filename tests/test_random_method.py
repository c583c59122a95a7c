"""The paper's Random baseline: 20% kept per example, the boxed answer always kept, independent of batching."""

import math

import torch

from vcore.methods import random_weights


def example_masks(n_rows=6, T=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n_rows, T, dtype=torch.bool)
    answer = torch.zeros(n_rows, T, dtype=torch.bool)
    for b in range(n_rows):
        start, stop = 3 + b, T - 2 * b
        mask[b, start:stop] = True
        answer[b, stop - 3 : stop - 1] = True
    return mask, answer, torch.randint(1000, (n_rows,), generator=g)


def test_keeps_twenty_percent_with_the_answer_and_normalises_over_kept():
    mask, answer, ids = example_masks()
    w = random_weights(mask, answer, ids, keep_fraction=0.2, seed=0)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        kept = w[b] > 0
        assert int(kept.sum()) == max(1, math.floor(0.2 * n + 0.5))
        assert kept[answer[b]].all(), "answer tokens are always kept"
        assert not kept[~mask[b]].any()
        assert torch.allclose(w[b][kept], torch.full((int(kept.sum()),), n / int(kept.sum())))
        assert math.isclose(float(w[b].sum()), n, rel_tol=1e-6)  # mean weight 1 over the example


def test_draws_depend_on_example_not_on_batching_or_global_rng():
    mask, answer, ids = example_masks()
    full = random_weights(mask, answer, ids, keep_fraction=0.2, seed=5)
    torch.manual_seed(123)  # the global RNG plays no part
    parts = torch.cat(
        [
            random_weights(mask[i : i + 2], answer[i : i + 2], ids[i : i + 2], keep_fraction=0.2, seed=5)
            for i in range(0, 6, 2)
        ]
    )
    assert torch.equal(full, parts)
    other = random_weights(mask, answer, ids, keep_fraction=0.2, seed=6)
    assert not torch.equal(full, other)


def test_without_forced_answer_and_with_empty_rows():
    mask, answer, ids = example_masks()
    mask[2] = False
    w = random_weights(mask, answer, ids, keep_fraction=0.5, seed=0, always_keep_answer=False)
    assert (w[2] == 0).all() and torch.isfinite(w).all()
