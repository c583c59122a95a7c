"""``heldout_nll`` (the ``eval/<split>/nll`` of metrics.json) against a float64 computation written out here."""

import math

import pytest
import torch

from tests.helpers import reference_token_nll, tiny_causal_lm, varied_rows
from vcore.data.collate import Collator
from vcore.run.training import heldout_nll


def test_heldout_nll_is_the_mean_over_supervised_tokens_in_eval_mode(tmp_path):
    """The mean NLL over every supervised token of the split (not a mean of batch means), padding ignored, computed
    with dropout off and the model's mode restored. Fails on any of those, to float64 rounding."""
    model = tiny_causal_lm(tmp_path, arch="gpt2")  # float64 end to end
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5  # a forward in training mode would be visibly random
    data = varied_rows(7, spread=7)  # lengths 5..11: padded batches; 7 rows in batches of 3: a short last batch
    model.eval()
    per_example = [reference_token_nll(model, r["input_ids"], r["labels"]) for r in data]
    tokens = [x for example in per_example for x in example]
    expected = math.fsum(tokens) / len(tokens)
    batch_means = [
        math.fsum(sum(per_example[i : i + 3], [])) / len(sum(per_example[i : i + 3], [])) for i in range(0, 7, 3)
    ]
    assert abs(expected - sum(batch_means) / len(batch_means)) > 1e-4  # the test tells the two apart

    model.train()
    got = heldout_nll(model, data, Collator(pad_token_id=0), batch_size=3)
    assert got == pytest.approx(expected, rel=1e-12)
    assert model.training  # mode restored
    assert math.isnan(heldout_nll(model, [], Collator(pad_token_id=0), batch_size=3))
