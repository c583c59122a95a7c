"""The training step through the real Trainer hooks: accumulation equivalence, empty micro-batches, updates."""

import pytest
import torch
from transformers import TrainingArguments

from tests.helpers import step_method_config, tiny_causal_lm, varied_rows
from vcore.config import to_object
from vcore.data.collate import Collator
from vcore.methods import MethodContext, build_method, method_names
from vcore.run.trainer import WeightedTrainer
from vcore.run.training import build_job


def step_gradients(tmp_path, method: str, k: int, b: int, normalization="token"):
    """Gradients of one optimizer step over 8 examples as k micro-batches of b, via the Trainer's hooks."""
    model = tiny_causal_lm(tmp_path / f"m{k}", arch="gpt2")  # float64 throughout
    data = varied_rows()
    collate = Collator(pad_token_id=0)
    cfg = step_method_config(method)
    weighting = build_method(cfg, MethodContext(model, data, collate))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=b,
        gradient_accumulation_steps=k,
        use_cpu=True,
        report_to="none",
    )
    trainer = WeightedTrainer(model=model, args=args, weighting=weighting, loss_normalization=normalization)
    micro = [collate(data[i * b : (i + 1) * b]) for i in range(k)]
    batches, _ = trainer.get_batch_samples(iter(micro), k, torch.device("cpu"))
    model.train()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        total += loss.item()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, total


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_accumulation_equals_one_big_batch(tmp_path, method, normalization):
    g_big, loss_big = step_gradients(tmp_path, method, k=1, b=8, normalization=normalization)
    g_acc, loss_acc = step_gradients(tmp_path, method, k=4, b=2, normalization=normalization)
    assert loss_acc == pytest.approx(loss_big, rel=1e-9)
    for name, g in g_big.items():
        rel = (g_acc[name] - g).norm() / g.norm().clamp(min=1e-30)
        assert rel < 1e-6, (name, rel.item())


@pytest.mark.parametrize("method", method_names())
def test_micro_batch_without_supervised_tokens(tmp_path, method):
    """No NaN, no hang, and a graph-connected loss (DDP/ZeRO would hang on a detached one)."""
    model = tiny_causal_lm(tmp_path, arch="gpt2")
    data = varied_rows()
    for r in data[:2]:
        r["labels"] = [-100] * len(r["labels"])
    collate = Collator(pad_token_id=0)
    weighting = build_method(step_method_config(method), MethodContext(model, data, collate))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        use_cpu=True,
        report_to="none",
    )
    trainer = WeightedTrainer(model=model, args=args, weighting=weighting)
    batches, _ = trainer.get_batch_samples(iter([collate(data[:2]), collate(data[2:4])]), 2, torch.device("cpu"))
    model.train()
    empty = trainer.compute_loss(model, batches[0])
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    full = trainer.compute_loss(model, batches[1])
    assert torch.isfinite(full) and full.item() > 0


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("method", method_names())
def test_every_trainable_parameter_changes_after_two_steps(make_cfg, tmp_path, method, lora):
    cfg = make_cfg(
        f"model.lora.enabled={lora}",
        "model.lora.dropout=0.0",
        "trainer.learning_rate=1e-2",
        "trainer.warmup_ratio=0",
        method=method,
    )
    c = to_object(cfg)
    job = build_job(c, tmp_path)
    model = job.trainer.model
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and (bool(frozen) == lora)
    job.trainer.train()
    params = dict(model.named_parameters())
    unchanged = [n for n, before in trainable.items() if torch.equal(params[n].detach(), before)]
    assert not unchanged, unchanged
    assert all(torch.equal(params[n].detach(), before) for n, before in frozen.items())
    history = [h for h in job.trainer.state.log_history if "train/nll" in h]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["train/nll"])) for h in history)
    assert all(
        k in history[-1]
        for k in (
            "weights/mean",
            "weights/std",
            "weights/min",
            "weights/max",
            "weights/frac_below_0_1",
            "weights/ess_frac",
            "learning_rate",
            "grad_norm",
            "train/tokens_per_s",
        )
    )
    if method == "vcore":
        assert all(
            k in history[-1]
            for k in (
                "vcore/alpha",
                "vcore/q_entropy_over_log_n",
                "vcore/score_mean",
                "vcore/score_std",
                "vcore/probe_grad_norm",
            )
        )
