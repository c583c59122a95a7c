"""Validation during training (``eval.every``, vcore.run.validation): when it runs, what it writes and logs, that it
leaves training exactly as it was, and the ways a search stops a run (a pruner, W&B's stop request, SIGTERM under a
W&B sweep agent): a checkpoint at that step, the run's W&B record finished with status 0."""

from __future__ import annotations

import itertools
import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from tests.helpers import finished_wandb_run
from vcore.checks import ConfigError
from vcore.run.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCallback, Pruned, Stopped
from vcore.run.validation import VALIDATION_FILE, ValidationCallback

# A quick validation: 4 items of the validation split, 8 new tokens each.
QUICK = ["benchmark=synthetic_val", "dataset.eval_examples=4", "decoding.max_new_tokens=8", "trainer.eval_at_end=false"]


def _steps(callback: ValidationCallback, max_steps: int) -> list[int]:
    """Drive the callback through ``max_steps`` optimizer steps; the steps at which it evaluated."""
    seen = []
    callback.evaluate = lambda step: seen.append(step) or {"eval/b/accuracy": 0.5}
    args = TrainingArguments(output_dir="unused", use_cpu=True)
    for step in range(1, max_steps + 1):
        callback.on_step_end(args, TrainerState(global_step=step, max_steps=max_steps), TrainerControl())
    return seen


def test_validation_runs_every_k_steps_not_at_the_end_the_final_evaluation_covers(tmp_path):
    def make(**kw):
        return ValidationCallback(lambda step: {}, 2, tmp_path, **kw)

    assert _steps(make(skip_final=True), 6) == [2, 4]
    assert _steps(make(skip_final=False), 6) == [2, 4, 6]
    assert _steps(make(skip_final=False), 5) == [2, 4]
    assert _steps(make(skip_final=False, stopping=lambda: True), 6) == []  # SIGTERM: checkpoint first, no evaluation
    lines = [json.loads(x) for x in (tmp_path / VALIDATION_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 2, 4, 6, 2, 4] and lines[0]["eval/b/accuracy"] == 0.5


def test_a_pruner_stops_the_run_at_its_validation_step(tmp_path):
    reports = []
    stop_from_4 = lambda s, m: reports.append(s) or s >= 4  # noqa: E731
    callback = ValidationCallback(lambda step: {}, 2, tmp_path, skip_final=True, report=stop_from_4)
    control, args = TrainerControl(), TrainingArguments(output_dir="unused", use_cpu=True)
    callback.evaluate = lambda step: {"eval/b/accuracy": 0.1}
    for step in (1, 2, 3):
        control = callback.on_step_end(args, TrainerState(global_step=step, max_steps=10), control)
    assert reports == [2] and not control.should_training_stop and callback.pruned_at is None
    control = callback.on_step_end(args, TrainerState(global_step=4, max_steps=10), control)
    assert reports == [2, 4] and callback.pruned_at == 4
    assert control.should_save and control.should_training_stop and control.should_log  # a checkpoint at step 4


def test_an_evaluation_leaves_the_global_rngs_as_they_were():
    import random

    import numpy as np

    from vcore.run.validation import preserved_rng

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with preserved_rng():
        torch.manual_seed(42), np.random.seed(42), random.seed(42)  # what generation or grading might do
        torch.rand(5), np.random.rand(5), random.random()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and (got[1] == expected[1]).all() and got[2] == expected[2]


def test_eval_every_is_checked(make_cfg):
    from vcore.config import to_object

    with pytest.raises(ConfigError, match="eval.every"):
        to_object(make_cfg("eval.every=-1"))


def _weights(out) -> dict[str, torch.Tensor]:
    (file,) = (out / "final").glob("*.safetensors")
    return load_file(file)


def test_validation_during_training_leaves_training_bit_identical(make_cfg, tmp_path):
    """LoRA dropout draws from the global RNG every step (an evaluation that reseeded it would change every later
    mask: this test fails then). Validation after steps 1 and 2 of 3 leaves every weight as a run without it."""
    from vcore.run.training import train

    run = ["trainer.max_steps=3", "model.lora.enabled=true", "model.lora.dropout=0.1", *QUICK]
    train(make_cfg(*run, "eval.every=0", "eval.after_train=false", f"output_dir={tmp_path / 'plain'}", method="sft"))
    metrics = train(make_cfg(*run, "eval.every=1", f"output_dir={tmp_path / 'validated'}", method="sft"))
    plain, validated = _weights(tmp_path / "plain"), _weights(tmp_path / "validated")
    assert plain.keys() == validated.keys() and all(torch.equal(plain[k], validated[k]) for k in plain)

    lines = [json.loads(x) for x in (tmp_path / "validated" / VALIDATION_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]  # step 3 is the evaluation after training
    assert all(0.0 <= x["eval/synthetic_val/accuracy"] <= 1.0 for x in lines)
    assert (tmp_path / "validated" / "eval_steps" / "step-2" / "summary.json").is_file()
    assert "synthetic_val/accuracy" in metrics["eval"]


@pytest.fixture
def hydra_sweeper(tmp_path):
    """A Hydra config whose sweeper has a pruner, as a trial's job sees it (HydraConfig), reset afterwards."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    def install(pruner: dict):
        hydra = OmegaConf.structured(HydraConf)
        hydra.sweeper, hydra.mode = {"pruner": pruner}, "MULTIRUN"
        hydra.sweep.dir = str(tmp_path / "sweep")
        HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))

    yield install
    HydraConfig.instance().cfg = None


def test_an_optuna_trial_is_pruned_with_a_checkpoint_and_a_finished_wandb_run(
    make_cfg, tmp_path, monkeypatch, hydra_sweeper
):
    """The job side of pruning: the validation is reported to the trial in the study's storage; the study's pruner
    (the sweeper's config) stops the run there; the run ends with Pruned after its checkpoint."""
    optuna = pytest.importorskip("optuna", minversion="4.0")
    from vcore.run.training import train
    from vcore.search.trial import ENV_STORAGE, ENV_STUDY, ENV_TRIAL_ID, open_storage, storage_spec

    storage = storage_spec(f"journal:{tmp_path / 'study.journal'}")
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    trial = study.ask()
    for name, value in {ENV_STORAGE: storage, ENV_STUDY: "s", ENV_TRIAL_ID: str(trial._trial_id)}.items():
        monkeypatch.setenv(name, value)
    hydra_sweeper({"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0})  # below 2: every accuracy is
    out = tmp_path / "run"
    cfg = make_cfg(
        *QUICK,
        "trainer.max_steps=4",
        "eval.every=2",
        "logger=wandb",
        "objective=eval/synthetic_val/accuracy",
        f"output_dir={out}",
        method="sft",
    )
    with pytest.raises(Pruned) as pruned:
        train(cfg)
    assert pruned.value.step == 2
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "final").exists()
    (reported,) = [t for t in study.get_trials() if t.number == trial.number]
    accuracy = json.loads((out / VALIDATION_FILE).read_text())["eval/synthetic_val/accuracy"]
    assert reported.intermediate_values == {2: accuracy}
    run, exit_code = finished_wandb_run(out)
    assert run.summary["stopped/step"] == 2 and run.summary["stopped/reason"] == "pruned" and exit_code == 0


def test_a_wandb_stop_request_stops_at_a_step_end_with_a_checkpoint(make_cfg, tmp_path, monkeypatch):
    """W&B's stop request (Stop in the UI; a sweep's early termination) reaches training at the end of an optimizer
    step: a checkpoint there, the W&B run finished with status 0, Stopped (exit status 0)."""
    from vcore.run.loggers import WandbLogger
    from vcore.run.training import train

    calls = itertools.count()
    monkeypatch.setattr(WandbLogger, "stop_requested", lambda self: next(calls) >= 1)  # asked during step 2
    out = tmp_path / "run"
    with pytest.raises(Stopped) as stopped:
        train(
            make_cfg("trainer.max_steps=4", "logger=wandb", "eval.after_train=false", f"output_dir={out}", method="sft")
        )
    assert stopped.value.code == 0 and stopped.value.step == 2
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "final").exists()
    run, exit_code = finished_wandb_run(out)
    assert run.summary["stopped/step"] == 2 and run.summary["stopped/reason"] == "stopped by W&B" and exit_code == 0


def test_wandb_stop_requests_wait_for_the_step_end_only_while_training(tmp_path):
    """Outside training a stop request does what W&B does by default (Ctrl+C in the main thread)."""
    from vcore.config import WandbConfig
    from vcore.run.loggers import WandbLogger

    # Python's own Ctrl+C handler, SIGINT unblocked, as a user's process has them: a library used by an earlier test
    # in this worker process may have left others (the full suite once failed here; the file alone never did).
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    logger = WandbLogger(WandbConfig(mode="offline"), {"task": "train"}, tmp_path, [], None)
    try:
        with logger.stops_at_step_end():
            logger._on_stop()  # what W&B calls (settings.stop_fn)
            time.sleep(0.05)
        assert logger.stop_requested()
        with pytest.raises(KeyboardInterrupt):
            logger._on_stop()
            time.sleep(1)
    finally:
        logger.finish()
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_sigterm_means_preempted_except_under_a_wandb_sweep_agent(monkeypatch):
    args = TrainingArguments(output_dir="unused", use_cpu=True)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    sigterm = PreemptionCallback()
    sigterm.requested = True
    sigterm.on_step_end(args, TrainerState(global_step=5), TrainerControl())
    assert isinstance(sigterm.exit(5), Preempted) and sigterm.exit(5).code == PREEMPTED_EXIT_CODE
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")  # the agent's way of stopping a run (Hyperband, Stop in the UI)
    assert isinstance(sigterm.exit(5), Stopped) and sigterm.exit(5).code == 0
    monkeypatch.delenv("WANDB_SWEEP_ID")
    asked = PreemptionCallback(stop_requested=lambda: True)
    control = asked.on_step_end(args, TrainerState(global_step=3), TrainerControl())
    assert control.should_save and control.should_training_stop
    assert isinstance(asked.exit(3), Stopped) and asked.exit(3).step == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
