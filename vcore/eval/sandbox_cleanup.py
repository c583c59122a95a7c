"""Clean-up after sandboxed runs: whatever a run (or a killed grading process) leaves on the host is removed here.

How leftovers are found, whatever the isolation level (vcore/eval/sandbox.py launches runs with these marks):

- the run's environment carries ``VCORE_SANDBOX_RUN=<marker>`` (:func:`sweep_marker`), a mark a program keeps unless
  it rewrites its own environment;
- as root, every grading process has a sandbox uid of its own (:func:`uid_for`): its processes, System V IPC objects
  and files in the world-writable temp directories are the run's;
- the run's box folders are named ``vcore-sbx-<grading pid>-...`` (:data:`OUTER_PREFIX`).

:func:`after_run` is what :class:`vcore.eval.sandbox.Sandbox` does after each run; :func:`reclaim` is what the harness
does after killing a grading worker mid-run (its runs' clean-up never ran).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from vcore.eval import cgroups

MARKER_VAR = "VCORE_SANDBOX_RUN"
OUTER_PREFIX = "vcore-sbx-"  # + pid of the grading process + "-": reclaim() finds a killed grader's boxes by it
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
PR_SET_CHILD_SUBREAPER = 36


def uid_for(pid: int) -> int:
    """The sandbox uid of grading process ``pid``. One uid per grading process: sandboxes of different workers
    neither share an RLIMIT_NPROC budget nor can signal each other, and a killed worker's leftovers can be found
    by it. No passwd entry is needed."""
    return 1_500_000_000 + pid % 1_000_000


@functools.cache
def libc():
    return ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------------------------------------ processes
def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, uid) of every process we can see."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            table[int(d)] = (ppid, os.stat(f"/proc/{d}").st_uid)
        except (OSError, IndexError, ValueError):
            pass
    return table


def processes_of(uid: int) -> list[int]:
    return [pid for pid, (_, u) in proc_table().items() if u == uid]


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def sweep_marker(marker: str) -> int:
    """SIGKILL every process whose environment carries ``marker``; returns how many."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(d))
    kill_pids(found)
    return len(found)


@functools.cache
def become_subreaper() -> bool:
    """Orphans of a sandboxed run get re-parented to us (not to an init that may never reap them), so their
    zombies, which still count against RLIMIT_NPROC, can be reaped. Linux only; False when unavailable."""
    try:
        return libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(uid: int, patience_s: float = 1.0) -> None:
    """waitpid() our child processes that run as the sandbox ``uid`` (never the harness's own children),
    retrying briefly for those SIGKILLed a moment ago and not yet dead."""
    deadline = time.monotonic() + patience_s
    while _reap_once(uid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _reap_once(uid: int) -> int:
    """One pass; returns how many such children were still running."""
    me, running = os.getpid(), 0
    for pid, (ppid, u) in proc_table().items():
        if u != uid or ppid != me:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                running += 1
        except ChildProcessError:
            pass
    return running


# ------------------------------------------------------------------------------------------------ IPC and files
_IPC = (("shm", "shmid"), ("sem", "semid"), ("msg", "msqid"))
IPC_RMID = 0


def ipc_objects() -> dict[tuple[str, int], int]:
    """(kind, id) -> owner uid of every System V IPC object in our IPC namespace."""
    objects = {}
    for kind, id_col in _IPC:
        try:
            lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        i_id, i_uid = header.index(id_col), header.index("uid")
        for line in lines[1:]:
            cols = line.split()
            if len(cols) > max(i_id, i_uid):
                objects[(kind, int(cols[i_id]))] = int(cols[i_uid])
    return objects


def remove_ipc(keys) -> None:
    lib = libc()
    for kind, ident in keys:
        if kind == "shm":
            lib.shmctl(ident, IPC_RMID, None)
        elif kind == "sem":
            lib.semctl(ident, 0, IPC_RMID)
        else:
            lib.msgctl(ident, IPC_RMID, None)


def remove_files_of(uid: int) -> None:
    """Entries of world-writable temp directories owned by the sandbox uid (never by us: the uid is its own)."""
    for d in TEMP_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------ entry points
def after_run(level: str, uid: int | None, marker: str, ipc_before: dict[tuple[str, int], int]) -> None:
    """What one run may leave once its process group, namespace and cgroup are gone. At "full" nothing: its PID,
    IPC and mount namespaces died with it. Below: processes that left the group (found by the marker and the
    sandbox uid), their zombies, the uid's temp files and, at "none" (no IPC namespace), the IPC objects the run
    created (``ipc_before``: those that existed before it)."""
    if level == "full":
        return
    sweep_marker(marker)
    if uid is not None and uid != os.getuid():
        kill_pids(processes_of(uid))
        reap_orphans(uid)
        remove_files_of(uid)
    if level == "none":
        owner = uid if uid is not None else os.getuid()
        remove_ipc([k for k, u in ipc_objects().items() if u == owner and k not in ipc_before])


def reclaim(pid: int) -> None:
    """Remove what grading process ``pid`` left when it was killed mid-run: the processes of its run (cgroup and
    uid), its run cgroups, its box folders and, outside "full" isolation, its uid's IPC objects and temp files.
    The harness calls this after killing a grading worker."""
    cgroups.reclaim(pid)
    uid = uid_for(pid)
    if os.geteuid() == 0:
        for _ in range(3):  # a fork in flight can add one after a pass
            kill_pids(processes_of(uid))
        remove_ipc([k for k, u in ipc_objects().items() if u == uid])
        remove_files_of(uid)
    for outer in Path(tempfile.gettempdir()).glob(f"{OUTER_PREFIX}{pid}-*"):
        shutil.rmtree(outer, ignore_errors=True)
