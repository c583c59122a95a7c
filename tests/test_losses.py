"""Exact maths of the shared loss (SPEC §2) and of the simple weightings (SPEC §3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vcore.methods import dft_weights, iw_sft_weights, sft_weights
from vcore.ops.losses import IGNORE_INDEX, supervised_mask, token_cross_entropy, weighted_loss


def random_batch(B=3, T=7, V=11, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=dtype)
    labels = torch.randint(V, (B, T), generator=g)
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[2, 5:] = IGNORE_INDEX  # padding
    return logits, labels


def test_uniform_loss_equals_cross_entropy():
    logits, labels = random_batch()
    token_loss = token_cross_entropy(logits, labels)
    mask = supervised_mask(labels)
    loss = weighted_loss(token_loss, sft_weights(mask), mask, mask.sum())
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)


def test_token_loss_alignment_and_float32_upcast():
    logits, labels = random_batch(dtype=torch.bfloat16)
    token_loss = token_cross_entropy(logits, labels)
    assert token_loss.dtype == torch.float32 and token_loss.shape == labels.shape
    assert (token_loss[:, 0] == 0).all()
    b, t = 1, 4
    expected = -torch.log_softmax(logits[b, t - 1].float(), -1)[labels[b, t]]
    assert torch.allclose(token_loss[b, t], expected, atol=1e-6)


def test_dft_is_half_ce_for_uniform_two_token_vocabulary():
    logits = torch.zeros(2, 5, 2, dtype=torch.float64)  # p = 1/2 for every token
    labels = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 0, IGNORE_INDEX, IGNORE_INDEX]])
    token_loss = token_cross_entropy(logits, labels)
    mask = supervised_mask(labels)
    ce = weighted_loss(token_loss, sft_weights(mask), mask, mask.sum())
    dft = weighted_loss(token_loss, dft_weights(token_loss, mask), mask, mask.sum())
    assert ce.item() == pytest.approx(math.log(2), abs=1e-15)
    assert dft.item() == pytest.approx(ce.item() / 2, abs=1e-15)


def test_sequence_normalisation():
    logits, labels = random_batch()
    token_loss = token_cross_entropy(logits, labels)
    mask = supervised_mask(labels)
    w = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = weighted_loss(token_loss, w, mask, mask.sum(), normalization="sequence", num_examples=3)
    per_example = [(token_loss[i] * w[i])[mask[i]].sum() / mask[i].sum() for i in range(3)]
    assert torch.allclose(got, sum(per_example) / 3, rtol=1e-12)


def test_step_normalisation_splits_over_micro_batches():
    # Summing micro-batch losses normalised by the step's N equals the full-batch loss: no per-micro-batch mean.
    logits, labels = random_batch(B=4, T=9)
    token_loss = token_cross_entropy(logits, labels)
    mask = supervised_mask(labels)
    w = dft_weights(token_loss, mask)
    full = weighted_loss(token_loss, w, mask, mask.sum())
    parts = sum(weighted_loss(token_loss[i : i + 1], w[i : i + 1], mask[i : i + 1], mask.sum()) for i in range(4))
    assert torch.allclose(full, parts, rtol=1e-13)


def test_no_supervised_token_gives_graph_connected_zero():
    logits = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.full((2, 4), IGNORE_INDEX)
    mask = supervised_mask(labels)
    for norm in ("token", "sequence"):
        token_loss = token_cross_entropy(logits, labels)
        loss = weighted_loss(token_loss, sft_weights(mask), mask, mask.sum(), normalization=norm, num_examples=0)
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_iw_sft_matches_authors_formula():
    logits, labels = random_batch()
    mask = supervised_mask(labels)
    l_theta = token_cross_entropy(logits, labels)
    l_ref = token_cross_entropy(logits * 0.7, labels)
    w = iw_sft_weights(l_theta, l_ref, mask, temperature=1.0, clip_min=0.0, clip_max=16.0)
    for i in range(3):
        m = mask[i]
        expected = min(max(math.exp(float((l_ref[i][m] - l_theta[i][m]).mean())), 0.0), 16.0)
        assert torch.allclose(w[i][m], torch.full_like(w[i][m], expected, dtype=torch.float32))
        assert (w[i][~m] == 0).all()
    assert (iw_sft_weights(l_theta, l_theta, mask)[mask] == 1).all()  # policy == reference: exactly 1
    big = iw_sft_weights(l_theta, l_theta + 100, mask)
    assert (big[mask] == 16).all()  # clipped
