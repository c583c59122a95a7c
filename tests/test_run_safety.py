"""A run never silently trains on NaN, continues another run's checkpoint, shares its dir or W&B run with another
job, or resumes from a damaged checkpoint; bad options and model paths get one clear error. Tiny CPU runs."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from vcore.checks import ConfigError
from vcore.config import to_object
from vcore.run.checkpoints import (
    CONFIG_FILE,
    RunDirBusy,
    damaged_file,
    fingerprint,
    hold,
    latest_checkpoint,
    resolve_resume,
)
from vcore.run.loggers import run_id
from vcore.run.trainer import NonFiniteTraining


def train(make_cfg, *overrides, method="sft"):
    from vcore.run.training import train as run

    return run(make_cfg("eval.after_train=false", "trainer.eval_at_end=false", *overrides, method=method))


def test_a_diverging_run_stops_at_the_first_nan_step_and_saves_nothing_as_final(make_cfg, tmp_path, monkeypatch):
    import vcore.run.trainer as trainer_module

    calls = []
    real = trainer_module.weighted_loss

    def diverges_at_step_3(*args, **kwargs):  # 2 micro-batches per step (TINY_TEST)
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss

    monkeypatch.setattr(trainer_module, "weighted_loss", diverges_at_step_3)
    with pytest.raises(
        NonFiniteTraining, match=r"step 3: the loss is not finite.*trainer\.learning_rate \(now 0\.003\)"
    ):
        train(make_cfg, "trainer.max_steps=6", "trainer.save_steps=1", "trainer.learning_rate=3e-3")
    assert not (tmp_path / "final").exists() and not (tmp_path / "metrics.json").exists()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint-2"  # the last finite step's


def test_an_infinite_gradient_is_caught_before_the_optimizer_applies_it(make_cfg, tmp_path):
    from vcore.run.training import build_job

    job = build_job(to_object(make_cfg("trainer.max_steps=3", method="sft")), tmp_path)
    first = next(p for p in job.trainer.model.parameters() if p.requires_grad)
    before = first.detach().clone()
    first.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteTraining, match=r"step 1: the gradient norm is not finite"):
        job.trainer.train()
    assert torch.equal(first.detach(), before)  # the step was never applied


@pytest.mark.parametrize(
    ("override", "option"),
    [
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.max_steps=-5", "trainer.max_steps"),
        ("trainer.learning_rate=-1", "trainer.learning_rate"),
        ("trainer.resume_config_change=maybe", "trainer.resume_config_change"),
    ],
)
def test_bad_run_options_fail_at_compose_time_naming_the_option(make_cfg, override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        to_object(make_cfg(override))


def test_a_second_job_on_a_held_run_dir_stops_naming_the_holder(make_cfg, tmp_path):
    with hold(tmp_path):
        with pytest.raises(RunDirBusy, match=rf"in use by pid {os.getpid()} on .*hydra.run.dir"):
            train(make_cfg)
        assert not (tmp_path / "config.yaml").exists()
    train(make_cfg)  # released: the dir is usable again
    assert (tmp_path / "final").is_dir()


def test_resuming_under_other_settings_stops_and_names_them(make_cfg, tmp_path):
    train(make_cfg, "trainer.save_steps=1", "trainer.max_steps=2")
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert checkpoint is not None and (checkpoint / CONFIG_FILE).is_file()
    config_before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(
        ConfigError, match=r"other settings: .*method\.name: 'sft' -> 'vcore'.*trainer\.resume_config_change=allow"
    ):
        train(make_cfg, "trainer.save_steps=1", "trainer.max_steps=3", method="vcore")
    with pytest.raises(ConfigError, match=r"seed: 42 -> 7"):
        train(make_cfg, "trainer.save_steps=1", "trainer.max_steps=3", "seed=7")
    assert (tmp_path / "config.yaml").read_text() == config_before  # the run dir still describes its run
    # Training longer, saving and logging differently are the same run; on purpose, anything goes.
    metrics = train(make_cfg, "trainer.save_steps=1", "trainer.max_steps=3", "trainer.logging_steps=2")
    assert metrics["train"]["epoch"] > 0 and latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint-3"
    train(
        make_cfg,
        "trainer.save_steps=1",
        "trainer.max_steps=4",
        "trainer.learning_rate=1e-3",
        "trainer.resume_config_change=allow",
    )
    assert latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint-4"


def test_a_setting_added_since_the_checkpoint_at_a_null_default_is_no_change(tmp_path):
    """A checkpoint written before a setting existed (method._target_) resumes while the setting is null."""
    from vcore.run.checkpoints import check_resume

    old = {"task": "train", "method": {"name": "sft", "loss_normalization": "token"}, "seed": 1}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(fingerprint(old)))
    check_resume(tmp_path, {**old, "method": {**old["method"], "_target_": None}}, allow=False)
    with pytest.raises(ConfigError, match=r"method\._target_: '<unset>' -> 'my.Method'"):
        check_resume(tmp_path, {**old, "method": {**old["method"], "_target_": "my.Method"}}, allow=False)


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(make_cfg, tmp_path, caplog):
    train(make_cfg, "trainer.save_steps=1", "trainer.max_steps=2", "trainer.save_total_limit=null")
    checkpoints = tmp_path / "checkpoints"
    good, bad = checkpoints / "checkpoint-1", checkpoints / "checkpoint-2"
    assert damaged_file(good) is None and damaged_file(bad) is None
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING, logger="vcore.run.checkpoints"):
        assert latest_checkpoint(checkpoints) == good
    assert "model.safetensors" in caplog.text and "header announces" in caplog.text
    with pytest.raises(ConfigError, match=r"checkpoint-2: the checkpoint is damaged: .*model\.safetensors"):
        resolve_resume(str(bad), checkpoints)
    optimizer = good / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-100])
    assert "optimizer.pt" in damaged_file(good)
    with pytest.raises(ConfigError, match="every checkpoint .* is damaged"):
        latest_checkpoint(checkpoints)


def test_a_missing_model_path_is_one_clear_line(tmp_path):
    from vcore.config import ModelConfig
    from vcore.modeling import load_model, load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    for source, says in (
        (tmp_path / "no_such_model", "no such directory, and not a hub id"),
        ("../models/qwen", "no such directory, and not a hub id"),
        (tmp_path / "config.json", "a file, not a model directory"),
    ):
        for load in (load_model, load_tokenizer):
            with pytest.raises(ConfigError, match=rf"^model\.name_or_path={source}: {says}"):
                load(ModelConfig(name_or_path=str(source)))


def test_wandb_run_ids_are_stable_per_run_dir_and_distinct_across_dirs(tmp_path):
    resolved = {"method": {"name": "vcore"}, "seed": 1, "output_dir": str(tmp_path / "a")}
    assert run_id(resolved, tmp_path / "a") == run_id(dict(resolved), tmp_path / "a")  # a requeue
    assert run_id(resolved, tmp_path / "a") != run_id({**resolved, "output_dir": str(tmp_path / "b")}, tmp_path / "b")
    assert run_id(resolved, tmp_path / "a") != run_id({**resolved, "seed": 2}, tmp_path / "a")


def test_the_fingerprint_leaves_out_what_a_resumed_run_may_change():
    resolved = {
        "trainer": {"max_steps": 5, "learning_rate": 1e-3, "save_steps": 1},
        "eval": {"after_train": True},
        "logger": {"name": "wandb"},
        "model": {"tiny": {"cache_dir": "/x", "hidden_size": 8}},
        "seed": 1,
    }
    assert fingerprint(resolved) == {"trainer.learning_rate": 1e-3, "model.tiny.hidden_size": 8, "seed": 1}


def test_run_means_do_not_depend_on_where_the_log_lines_fell():
    """A preempted-and-resumed run logs an extra line at the signal; its summary equals the uninterrupted run's."""
    from vcore.run.training import summarize_train

    per_step = [{"train/nll": 1.0 / s, "weights/ess_frac": 0.5 + s / 100, "loss": 2.0 / s} for s in range(1, 9)]

    def logged(at: list[int]) -> list[dict]:
        out, previous = [], 0
        for step in at:
            chunk = per_step[previous:step]
            out.append(
                {
                    "step": step,
                    **{k: sum(d[k] for d in chunk) / len(chunk) for k in chunk[0]},
                    "train/weighted_loss": 0.0,
                }
            )
            previous = step
        return out

    every_four, preempted_at_5 = summarize_train(logged([4, 8]), {}), summarize_train(logged([4, 5, 8]), {})
    assert every_four.keys() == preempted_at_5.keys()
    for key, value in every_four.items():
        if key.startswith("mean/") or key == "train_loss":
            assert preempted_at_5[key] == pytest.approx(value, rel=1e-12), key
    assert every_four["train_loss"] == pytest.approx(sum(2.0 / s for s in range(1, 9)) / 8, rel=1e-12)


def test_a_preemption_logs_the_steps_since_the_last_log_line_before_its_checkpoint():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from vcore.run.preemption import PreemptionCallback

    callback = PreemptionCallback()
    callback.requested = True
    control = callback.on_step_end(
        TrainingArguments(output_dir="unused", use_cpu=True), TrainerState(global_step=5), TrainerControl()
    )
    assert control.should_log and control.should_save and control.should_training_stop
