"""Progress of a long evaluation, for a person: items done / total per benchmark and phase, items per second and the
time left, on a tqdm bar (a terminal), in a log line every minute (SLURM logs, where a bar is unreadable) and as
counts in the logger's run summary (W&B: ``eval_progress/<benchmark>/<phase>_done``, ``..._total``, ``..._per_s``,
``..._eta_s``).

A resumed evaluation starts its counts at what the journal already holds; its rate and time left count only the
items done in this job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """One phase (``generate`` or ``grade``) of one benchmark: :meth:`advance` as items finish, then :meth:`close`."""

    def __init__(
        self,
        benchmark: str,
        phase: str,
        total: int,
        done: int,
        logger: Any = None,
        bar: bool = True,
        unit: str = "item",
    ) -> None:
        self.benchmark, self.phase, self.unit, self.logger = benchmark, phase, unit, logger
        self.total, self.done, self.start_done, self.start = total, done, done, time.monotonic()
        self.last_report = self.start
        self.bar = tqdm(total=total, initial=done, desc=f"{phase} {benchmark}", unit=unit, disable=not bar, leave=False)
        if 0 < done < total:
            log.info("%s %s: %d of %d %ss already done (resuming)", phase, benchmark, done, total, unit)

    @property
    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.start
        return (self.done - self.start_done) / elapsed if elapsed > 0 and self.done > self.start_done else None

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if time.monotonic() - self.last_report >= LOG_EVERY_S:
            self.report()

    def report(self) -> None:
        self.last_report = time.monotonic()
        rate = self.rate
        eta = (self.total - self.done) / rate if rate else None
        pace = f", {rate:.3g} {self.unit}s/s" if rate else ""
        if rate and self.done < self.total:
            pace += f", about {_duration(eta)} left"
        share = 100 * self.done / max(self.total, 1)
        log.info(
            "%s %s: %d/%d %ss (%.1f%%)%s", self.phase, self.benchmark, self.done, self.total, self.unit, share, pace
        )
        if self.logger is not None:
            key = f"eval_progress/{self.benchmark}/{self.phase}"
            counts = {f"{key}_done": self.done, f"{key}_total": self.total}
            if rate:
                counts.update({f"{key}_per_s": rate, f"{key}_eta_s": eta})
            # The run's summary, not its history: a live status that W&B's runs table shows, and no history rows
            # that would move the run's step between the last training step and the evaluation's results.
            self.logger.summary(counts)

    def close(self) -> None:
        if self.done > self.start_done:
            self.report()
        self.bar.close()
