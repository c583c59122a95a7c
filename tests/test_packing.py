"""Packed (padding-free) batches give the same losses, weights and gradients as padded ones, for every method."""

import pytest
import torch
from transformers import TrainingArguments

from tests.helpers import step_method_config, tiny_causal_lm, varied_rows
from vcore.data.collate import Collator
from vcore.methods import MethodContext, build_method, method_names
from vcore.ops.forward import model_forward
from vcore.run.trainer import WeightedTrainer


def run_step(tmp_path, method, pack, attn="sdpa", normalization="token", pack_length=0):
    model = tiny_causal_lm(tmp_path / f"{pack}", attn=attn)  # Qwen3, float64 weights
    data = varied_rows()
    collate = Collator(pad_token_id=0, pack=pack, pack_length=pack_length)
    weighting = build_method(step_method_config(method), MethodContext(model, data, collate))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        use_cpu=True,
        report_to="none",
    )
    trainer = WeightedTrainer(model=model, args=args, weighting=weighting, loss_normalization=normalization)
    micro = [collate(data[:4]), collate(data[4:])]
    batches, _ = trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    model.train()
    losses, weights = [], []
    for batch in batches:
        forward = model_forward(model, batch, weighting.needs)
        weights.append(weighting.weights(forward, trainer.micro_batch(batch)))
        losses.append(forward.token_loss.detach())
        trainer.compute_loss(model, batch).backward()
    return losses, weights, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("pack_length", [0, 16], ids=["one-row", "rows-of-16"])
@pytest.mark.parametrize("method", method_names())
def test_packed_equals_padded(tmp_path, method, pack_length):
    padded, packed = run_step(tmp_path, method, False), run_step(tmp_path, method, True, pack_length=pack_length)
    for a, b in zip(padded[0], packed[0]):
        torch.testing.assert_close(a, b[:, : a.shape[1]], rtol=1e-6, atol=1e-7)
    for a, b in zip(padded[1], packed[1]):
        torch.testing.assert_close(a.float(), b[:, : a.shape[1]].float(), rtol=1e-4, atol=1e-6)
    for n, g in padded[2].items():
        rel = (packed[2][n] - g).norm() / g.norm()
        assert rel < 1e-5, (n, rel.item())


def test_packed_rows_have_no_padding_and_restarting_positions():
    batch = Collator(0, pack=True)(varied_rows()[:3])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    lengths = [len(r["input_ids"]) for r in varied_rows()[:3]]
    assert batch["input_ids"].shape[1] == sum(lengths)
    starts = (batch["position_ids"][0] == 0).nonzero().squeeze(1).tolist()
    assert starts == [0, lengths[0], lengths[0] + lengths[1]]
    assert (batch["packed_labels"][0, starts] == -100).all()
    assert batch["labels"].shape == (3, max(lengths)) and (batch["pack_index"] >= 0).sum() == sum(lengths)


def test_rows_of_bounded_length_fill_in_order_with_a_separate_padding_segment():
    data = varied_rows()[:4]  # lengths 5, 8, 11, 7
    batch = Collator(9, pack=True, pack_length=16)(data)
    # 5 + 8 fit in 16; 11 does not fit after them; 11 then 7 would be 18: three rows, padded to the widest (13).
    assert batch["input_ids"].shape == (3, 13)
    assert batch["position_ids"][0].tolist() == list(range(5)) + list(range(8))
    assert batch["position_ids"][1].tolist() == list(range(11)) + [0, 1]  # the tail restarts: its own segment
    assert batch["input_ids"][1, 11:].tolist() == [9, 9] and (batch["packed_labels"][1, 11:] == -100).all()
    flat = batch["input_ids"].reshape(-1)
    for i, e in enumerate(data):  # every example is found where pack_index says
        n = len(e["input_ids"])
        assert flat[batch["pack_index"][i, :n]].tolist() == e["input_ids"]
        assert (batch["pack_index"][i, n:] == -1).all()
    # An example longer than pack_length gets a row of its own rather than being cut.
    assert Collator(0, pack=True, pack_length=4)(data[:2])["input_ids"].shape == (2, 8)


@pytest.mark.parametrize("pack_length", [0, 16], ids=["one-row", "rows-of-16"])
def test_packed_jvp_probe_keeps_attention_inside_examples(tmp_path, pack_length):
    from vcore.methods.probe import jvp_scores, trainable_parameters

    out = {}
    for pack in (False, True):
        model = tiny_causal_lm(tmp_path / f"j{pack}").eval()
        batch = Collator(0, pack=pack, pack_length=pack_length)(varied_rows()[:4])
        params = trainable_parameters(model)
        g = [torch.ones_like(p) * 1e-2 for p in params.values()]
        _, (s,) = jvp_scores(model, params, g, [batch], block=5)
        out[pack] = s
    torch.testing.assert_close(out[False], out[True][:, : out[False].shape[1]], rtol=1e-5, atol=1e-6)


def test_training_with_packing_and_length_grouping(make_cfg, tmp_path):
    from vcore.config import to_object
    from vcore.run.training import build_job

    job = build_job(to_object(make_cfg("trainer.packing=true", "trainer.group_by_length=true")), tmp_path)
    assert job.trainer.args.train_sampling_strategy == "group_by_length"
    job.trainer.train()
    nll = [h["train/nll"] for h in job.trainer.state.log_history if "train/nll" in h]
    assert len(nll) == 2 and all(x == x for x in nll)
