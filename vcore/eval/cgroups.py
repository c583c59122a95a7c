"""One memory limit for a whole sandboxed run, and a reliable "every process of the run" set.

``RLIMIT_AS`` binds each process separately: a run that forks 20 children may use 20 times its limit. A memory
cgroup bounds the run as a whole (the kernel OOM-kills inside it at the limit) and lists every process it holds,
however it got there (setsid, double fork), so the run can be killed completely. Where this host offers one:

- cgroup v2: a child of our own cgroup, when that cgroup delegates the ``memory`` controller to its children;
- cgroup v1: a child of our cgroup in the ``memory`` hierarchy (containers often mount it writable);
- otherwise nothing (:func:`support` returns None); sandbox.py then polls the run's resident memory instead.

Each run's cgroup is named ``vcore-sbx-<pid of the grading process>-<n>``, so that when a grading worker is killed
the harness can find and remove what it left behind (:func:`reclaim`).
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "vcore-sbx-"
_counter = itertools.count()


@dataclass(frozen=True)
class Support:
    version: int  # 1 or 2
    parent: Path  # where run cgroups are created

    @property
    def description(self) -> str:
        return f"cgroup v{self.version} memory controller under {self.parent}"


def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every mount of this process."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 3:
            rows.append((fields[4], rest[0], rest[2]))
    return rows


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> our cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _usable(parent: Path) -> bool:
    """Can we create, limit and remove a child cgroup here?"""
    probe = parent / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        limit = probe / ("memory.max" if (probe / "memory.max").exists() else "memory.limit_in_bytes")
        limit.write_text(str(64 << 20))
        return True
    except OSError:
        return False
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


@functools.cache
def support() -> Support | None:
    """Where this process can create memory-limited cgroups (probed once per process); None where it cannot."""
    try:
        mounts, own = _mountinfo(), _own_paths()
    except OSError:
        return None
    for point, fstype, opts in mounts:
        if fstype == "cgroup2" and "" in own:
            parent = Path(point + own[""].rstrip("/"))
            try:
                delegated = "memory" in (parent / "cgroup.subtree_control").read_text().split()
            except OSError:
                delegated = False
            if delegated and _usable(parent):
                return Support(2, parent)
    for point, fstype, opts in mounts:
        if fstype == "cgroup" and "memory" in opts.split(",") and "memory" in own:
            # Without a cgroup namespace our path is relative to the host's root, which may not be mounted here.
            for parent in (Path(point + own["memory"].rstrip("/")), Path(point)):
                if parent.is_dir() and _usable(parent):
                    return Support(1, parent)
    return None


class RunCgroup:
    """The cgroup of one run: created with its limit, joined by the run's first process, removed after."""

    def __init__(self, sup: Support, limit_bytes: int) -> None:
        self.support = sup
        self.path = sup.parent / f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.path.mkdir()
        try:
            if sup.version == 2:
                (self.path / "memory.max").write_text(str(limit_bytes))
                if (self.path / "memory.swap.max").exists():
                    (self.path / "memory.swap.max").write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                memsw = self.path / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    try:
                        memsw.write_text(str(limit_bytes))  # no swapping around the limit
                    except OSError:
                        pass
        except OSError:
            self.remove()
            raise
        self.procs_file = str(self.path / "cgroup.procs")

    def join_from_child(self) -> None:
        """preexec_fn: move the forked child into the cgroup before it execs (plain C-call wrappers only)."""
        fd = os.open(self.procs_file, os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def oom_killed(self) -> bool:
        """Did the kernel kill a process of this run for memory?"""
        name, key = ("memory.events", "oom_kill") if self.support.version == 2 else ("memory.oom_control", "oom_kill")
        try:
            for line in (self.path / name).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v) > 0
            if self.support.version == 1:  # kernels without the oom_kill counter
                return int((self.path / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            pass
        return False

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.support.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def kill_all(self, patience_s: float = 2.0) -> None:
        _kill_cgroup(self.path, patience_s)

    def remove(self) -> None:
        self.kill_all()
        _rmdir(self.path)


def _kill_cgroup(path: Path, patience_s: float) -> None:
    """SIGKILL every process in ``path`` until it is empty (a fork in flight can add one after a pass)."""
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
        except OSError:
            pass
    deadline = time.monotonic() + patience_s
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _rmdir(path: Path, patience_s: float = 2.0) -> None:
    deadline = time.monotonic() + patience_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # still busy: exiting processes are not yet out of it
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def reclaim(pid: int) -> int:
    """Kill and remove every run cgroup that grading process ``pid`` left (it was killed mid-run); returns how many."""
    sup = support()
    if sup is None:
        return 0
    n = 0
    for path in sup.parent.glob(f"{PREFIX}{pid}-*"):
        _kill_cgroup(path, 2.0)
        _rmdir(path)
        n += 1
    return n
