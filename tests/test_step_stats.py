"""The per-step diagnostics (vcore.ops.stats.StepStats) against float64 sums written out here, one token at a time."""

import math

import numpy as np
import pytest
import torch

from vcore.ops.stats import StepStats

EOS = 3


def micro_batches(seed: int = 0):
    """Two micro-batches: float32 weights over [0, 3) (some below 0.1), EOS labels on and off the mask, padding."""
    rng = np.random.default_rng(seed)
    out = []
    for B, T in ((3, 7), (2, 9)):
        labels = torch.tensor(rng.integers(0, 8, size=(B, T)))
        mask = torch.tensor(rng.uniform(size=(B, T)) < 0.75)
        mask[:, 0] = False
        labels[0, 1] = EOS  # an EOS on the mask...
        mask[0, 1] = True
        labels[1, 2] = EOS  # ...and one off it: not an EOS token of the loss
        mask[1, 2] = False
        labels = torch.where(mask | (labels == EOS), labels, torch.full_like(labels, -100))
        weights = torch.tensor(rng.uniform(0, 3, size=(B, T)), dtype=torch.float32) * mask
        weights[0, 2] = 0.05 if mask[0, 2] else weights[0, 2]
        token_loss = torch.tensor(rng.uniform(0.1, 5, size=(B, T)), dtype=torch.float32) * mask
        loss = torch.tensor(float(rng.uniform(0.5, 2)))
        out.append((token_loss, weights, mask, loss, labels, torch.tensor(B * T)))
    return out


def reference(batches, num_steps: int) -> dict[str, float]:
    """Every statistic from a flat float64 list of the supervised tokens' values."""
    w, nll, w_eos = [], [], []
    for token_loss, weights, mask, _, labels, _ in batches:
        for b, t in mask.nonzero().tolist():
            w.append(float(weights[b, t]))
            nll.append(float(token_loss[b, t]))
            if int(labels[b, t]) == EOS:
                w_eos.append(float(weights[b, t]))
    n = len(w)
    mean = math.fsum(w) / n
    return {
        "train/nll": math.fsum(nll) / n,
        "train/weighted_loss": math.fsum(float(x[3]) for x in batches) / num_steps,
        "weights/mean": mean,
        "weights/std": math.sqrt(math.fsum((x - mean) ** 2 for x in w) / n),  # population std, two-pass
        "weights/min": min(w),
        "weights/max": max(w),
        "weights/frac_below_0_1": sum(x < 0.1 for x in w) / n,
        "weights/ess_frac": math.fsum(w) ** 2 / (n * math.fsum(x * x for x in w)),  # Kish
        "weights/eos_mean": math.fsum(w_eos) / len(w_eos),
    }


@pytest.mark.parametrize("num_steps", [1, 2])
def test_step_stats_match_float64_reference(num_steps):
    """Fails if any of the logged values leaves its definition (e.g. std as a sample std, ESS without the 1/N, the
    EOS mean over EOS labels off the loss mask, a weighted loss not averaged over the steps of the log line)."""
    batches = micro_batches()
    stats = StepStats(eos_token_id=EOS)
    for b in batches:
        stats.add_micro_batch(*b)
    stats.add_step({"vcore/alpha": torch.tensor(0.5)})
    stats.add_step({"vcore/alpha": torch.tensor(float("nan"))})  # a step without the diagnostic: left out of the mean
    out = stats.flush(num_steps)
    expected = reference(batches, num_steps)
    assert expected["weights/frac_below_0_1"] > 0 and 0.5 < expected["weights/ess_frac"] < 0.95  # the test can tell
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert out["vcore/alpha"] == 0.5
    assert stats.flush(1) == {}  # flushed: the next log line starts from nothing


def test_uniform_weights_give_zero_std_and_full_ess_and_no_eos_key_without_eos():
    batches = micro_batches(seed=1)
    stats = StepStats(eos_token_id=None)
    for token_loss, weights, mask, loss, labels, tokens in batches:
        stats.add_micro_batch(token_loss, mask.float(), mask, loss, labels, tokens)
    out = stats.flush(1)
    assert out["weights/std"] == 0.0 and out["weights/ess_frac"] == 1.0 and out["weights/mean"] == 1.0
    assert out["weights/min"] == out["weights/max"] == 1.0 and out["weights/frac_below_0_1"] == 0.0
    assert "weights/eos_mean" not in out
