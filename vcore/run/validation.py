"""Validation during training (``eval.every=k``): the run's benchmarks every k optimizer steps, on the model as it is.

This is the curve a hyperparameter search compares while its trials run: W&B Hyperband reads the logged history of
the sweep's metric (``eval/<bench>/accuracy``, the key the final evaluation also logs), Optuna's pruner the values
each evaluation reports to its trial (:mod:`vcore.search.trial`). A trial the pruner stops writes a checkpoint at
that step and ends with :class:`vcore.run.preemption.Pruned`.

The evaluation must not change the training it interrupts (LoRA dropout and the data order draw from the global
RNGs): generation already seeds inside its own fork of torch's RNG; the RNG states of torch (CPU and CUDA), numpy and
``random`` are also put back around the whole evaluation (items, grading, intervals), and the model returns to train
mode. Under data parallelism rank 0 generates (as after training) while the other ranks wait for its decision, so one
evaluation must fit in the process group's timeout (30 min for the CPU group it waits in).

Each evaluation's files go to ``<run dir>/eval_steps/step-<k>/`` and its metrics to ``<run dir>/validation.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from vcore.distributed import broadcast_object, rank
from vcore.run.loggers import NullLogger

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.jsonl"


class StepLogger(NullLogger):
    """Forwards an evaluation's scalars to ``logger`` at optimizer step ``step``; its tables (per-sample outputs) stay
    in the evaluation's files, so a run's W&B page holds one samples table per benchmark, the final one."""

    def __init__(self, logger: NullLogger, step: int) -> None:
        self.logger, self.step = logger, step

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.logger.log(metrics, step=self.step)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """The global RNG states of torch (CPU, every CUDA device), numpy and ``random`` as they were before the body."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


class ValidationCallback(TrainerCallback):
    """Every ``every`` optimizer steps: ``evaluate(step)`` (rank 0's metrics, ``{"<bench>/accuracy": ...}``), appended
    to ``<out>/validation.jsonl`` and offered to ``report(step, metrics)``, which returns True to stop the run there
    (a search's pruner). ``skip_final``: not at the last step (the evaluation after training covers it).
    ``stopping()``: training is already stopping (SIGTERM): no evaluation then."""

    def __init__(
        self,
        evaluate: Callable[[int], dict[str, float]],
        every: int,
        out: Path,
        *,
        skip_final: bool,
        stopping: Callable[[], bool] = lambda: False,
        report: Callable[[int, dict[str, float]], bool] | None = None,
    ) -> None:
        self.evaluate, self.every, self.out = evaluate, every, out
        self.skip_final, self.stopping, self.report = skip_final, stopping, report
        self.pruned_at: int | None = None  # the step at which report() stopped the run

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.every <= 0 or step % self.every or self.stopping() or (self.skip_final and step >= state.max_steps):
            return control
        with preserved_rng():
            metrics = self.evaluate(step)
        stop = False
        if rank() == 0:
            log.info("validation at step %d: %s", step, metrics)
            with (self.out / VALIDATION_FILE).open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            stop = bool(self.report and self.report(step, metrics))
        if broadcast_object(stop):  # every rank stops at the same step, and waits here for rank 0's evaluation
            log.warning("the search stopped this trial at step %d (pruned): saving a checkpoint and stopping", step)
            control.should_save = control.should_log = control.should_training_stop = True
            self.pruned_at = step
        return control


def validation_callback(
    c, trainer, tokenizer, model_path: str, out: Path, logger: NullLogger, stopping: Callable[[], bool]
) -> ValidationCallback | None:
    """``eval.every > 0``: the callback that evaluates ``cfg.benchmark`` during training, reporting to the Optuna
    trial this job runs if a search launched it (:func:`vcore.search.trial.current_trial`)."""
    from vcore.search.trial import ENV_TRIAL_ID, current_trial

    if not (c.eval.every and c.benchmark):
        if os.environ.get(ENV_TRIAL_ID):
            log.warning("this Optuna trial cannot be pruned: it measures no validation during training (eval.every=0)")
        return None
    from vcore.run.benchmarks import run_benchmarks

    def evaluate(step: int) -> dict[str, float]:
        name = f"{out} at step {step} (trained from {model_path})"
        where = out / "eval_steps" / f"step-{step}"
        summary = run_benchmarks(c, trainer.model, tokenizer, where, StepLogger(logger, step), name)
        return {f"eval/{k}": v for k, v in summary.items()}

    trial = current_trial(c.objective) if rank() == 0 else None
    every = c.eval.every
    return ValidationCallback(evaluate, every, out, skip_final=c.eval.after_train, stopping=stopping, report=trial)
