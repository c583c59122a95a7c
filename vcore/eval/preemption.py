"""SIGTERM during an evaluation (SLURM preemption, or ``--signal=TERM@120`` before the time limit): stop, exit 75.

Everything an evaluation has finished is already on disk (:mod:`vcore.eval.journal`), so stopping needs no
checkpoint: the handler raises :class:`EvaluationPreempted` at once (a generation batch in flight is dropped; on a
long batch, waiting for it would outlast SLURM's grace period), except while a record is being written, which
finishes first (:meth:`StopOnSigterm.deferred`). The process then exits with :data:`PREEMPTED_EXIT_CODE`
(sysexits' EX_TEMPFAIL, as training's SIGTERM stop, :mod:`vcore.run.preemption`), which a batch script tells apart
from success and from a crash to requeue itself; the requeued job continues the evaluation (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75


class EvaluationPreempted(SystemExit):
    """An evaluation stopped on SIGTERM; what it finished is recorded: rerun it into the same output dir to continue."""

    def __init__(self, out_dir: Path | None = None) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.out_dir = out_dir


class StopOnSigterm:
    """Turns SIGTERM into :class:`EvaluationPreempted` while active (``with StopOnSigterm(out_dir) as stop:``).

    Signal handlers can only be installed from the main thread: elsewhere (an evaluation started in a thread) SIGTERM
    keeps its previous action, and the journal still holds what was finished.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.requested = False
        self._deferring = 0
        self._previous = None

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self._deferring:
            raise EvaluationPreempted(self.out_dir)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A SIGTERM during the body (a record being written) takes effect when the body has finished."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        self.check()

    def check(self) -> None:
        if self.requested and not self._deferring:
            raise EvaluationPreempted(self.out_dir)
