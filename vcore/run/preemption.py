"""SIGTERM (SLURM preemption or ``--signal=TERM@120`` before the time limit): checkpoint, then exit with 75.

The handler only sets a flag; :class:`PreemptionCallback` turns it into "save a checkpoint and stop" at the next
optimizer-step end, where the step is complete and a checkpoint resumes exactly. Under data parallelism the ranks
agree on the flag with one tiny all-reduce per step (a signal that reaches one rank first must stop all of them at
the same step, or the others would wait in the next gradient all-reduce forever). :mod:`vcore.run.training` then raises
:class:`Preempted`: the process exits with :data:`PREEMPTED_EXIT_CODE` (sysexits' EX_TEMPFAIL, "try again"), which
a batch script tells apart from success (0) and from a crash (1) to requeue itself (docs/distributed.md). An evaluation
stops on SIGTERM the same way, with the same status (:mod:`vcore.eval.preemption`).

Runs of a hyperparameter search also stop on purpose, each after the same checkpoint (sweeps/README.md):

- W&B asks the run to stop (the UI's Stop; a sweep's Hyperband through its agent, which sends the run SIGTERM): inside
  a W&B sweep (the agent sets ``WANDB_SWEEP_ID``) a SIGTERM means that too. The run ends with :class:`Stopped`, exit
  status 0: a stopped trial is an outcome of the search, and the agent counts nonzero statuses as failed runs (three
  in its first minute, or five without a success, and it quits).
- Optuna's pruner stops a trial after a validation (:mod:`vcore.run.validation`): :class:`Pruned`, an exception, so
  that in a Hydra multirun it ends this job only and the sweeper records the trial as pruned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator

import torch
from transformers import TrainerCallback

from vcore.distributed import all_reduce_max, world_size
from vcore.eval.preemption import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """Training stopped on SIGTERM after writing a checkpoint; rerun with the same output dir to resume."""

    def __init__(self, checkpoint_step: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.checkpoint_step = checkpoint_step


class Stopped(SystemExit):
    """W&B asked the run to stop (in a W&B sweep also: SIGTERM, its agent's stop); a checkpoint at ``step`` was written.
    Exit status 0."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(0)
        self.step, self.reason = step, reason


class Pruned(Exception):
    """A search's pruner stopped this trial after its validation at ``step``; a checkpoint there was written."""

    def __init__(self, step: int) -> None:
        super().__init__(step)  # args round-trip through pickling (a submitit job's exception reaches the sweeper)
        self.step = step

    def __str__(self) -> str:
        return f"pruned at step {self.step}"


def in_wandb_sweep() -> bool:
    """This process runs under a W&B sweep agent (it sets WANDB_SWEEP_ID for the runs it starts)."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


class PreemptionCallback(TrainerCallback):
    """``stop_requested()``: W&B asked the run to stop (:attr:`vcore.run.loggers.WandbLogger.stop_requested`)."""

    def __init__(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        self.requested = False  # set by the signal handler
        self.stop_requested = stop_requested
        self.stopped = False  # a checkpoint was written because of it and training stopped
        self.by_wandb = False  # ... and W&B asked for it (else: SIGTERM)

    @contextlib.contextmanager
    def handle_sigterm(self) -> Iterator[None]:
        """Install the SIGTERM handler for the body only (outside training the default action, exit, is right)."""

        def handler(signum, frame):
            self.requested = True

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def on_step_end(self, args, state, control, **kwargs):
        flags = [float(self.requested), float(self.stop_requested())]
        if world_size() > 1:  # only rank 0 talks to W&B; a signal may reach one rank first
            flags = all_reduce_max(torch.tensor(flags, device=args.device)).tolist()
        if any(flags):
            self.by_wandb = bool(flags[1])
            what = "W&B asked the run to stop" if self.by_wandb else "SIGTERM received"
            log.warning("%s: saving a checkpoint at step %d and stopping", what, state.global_step)
            control.should_save = True
            control.should_log = True  # the steps since the last log line go into the checkpoint's history too
            control.should_training_stop = True
            self.stopped = True
        return control

    def exit(self, step: int) -> SystemExit:
        """How the process ends after the stop: :class:`Stopped` (0) when W&B asked, or on SIGTERM inside a W&B
        sweep; :class:`Preempted` (75, requeue and resume) otherwise."""
        if self.by_wandb:
            return Stopped(step, "stopped by W&B")
        if in_wandb_sweep():
            return Stopped(step, "SIGTERM in a W&B sweep (its agent stops runs so: Hyperband, or Stop in the UI)")
        return Preempted(step)
