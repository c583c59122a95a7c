"""SIGTERM (SLURM preemption or ``--signal=TERM@120`` before the time limit): checkpoint, then exit with 75.

The handler only sets a flag; :class:`PreemptionCallback` turns it into "save a checkpoint and stop" at the next
optimizer-step end, where the step is complete and a checkpoint resumes exactly. Under data parallelism the ranks
agree on the flag with one tiny all-reduce per step (a signal that reaches one rank first must stop all of them at
the same step, or the others would wait in the next gradient all-reduce forever). :mod:`vcore.run.training` then raises
:class:`Preempted`: the process exits with :data:`PREEMPTED_EXIT_CODE` (sysexits' EX_TEMPFAIL, "try again"), which
a batch script tells apart from success (0) and from a crash (1) to requeue itself (docs/distributed.md). An evaluation
stops on SIGTERM the same way, with the same status (:mod:`vcore.eval.preemption`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

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


class PreemptionCallback(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False  # set by the signal handler
        self.stopped = False  # a checkpoint was written because of it and training stopped

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
        requested = self.requested
        if world_size() > 1:
            requested = bool(all_reduce_max(torch.tensor([float(requested)], device=args.device)).item())
        if requested:
            log.warning("SIGTERM received: saving a checkpoint at step %d and stopping", state.global_step)
            control.should_save = True
            control.should_log = True  # the steps since the last log line go into the checkpoint's history too
            control.should_training_stop = True
            self.stopped = True
        return control
