"""One job per directory: an exclusive ``flock`` on ``<dir>/.vcore.lock`` for as long as a job writes there.

The kernel releases the lock when the process dies, so a crash never leaves it held; a second job on the same dir stops
at once with a message naming the holder (pid, host, start time). Used for run dirs (:mod:`vcore.run.checkpoints`)
and evaluation output dirs (:mod:`vcore.eval.journal`). A filesystem without ``flock`` (some NFS setups) gets no
protection.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".vcore.lock"


class DirBusy(RuntimeError):
    """Another job holds the directory."""


@contextmanager
def hold(directory: Path, why: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``directory``'s lock for the body (no-op when not ``enabled``, e.g. on ranks other than 0). ``why``
    completes the message a second job gets: what two jobs there would break, and what to do instead."""
    if not enabled:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DirBusy(f"{directory} is in use by {holder}: {why}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
