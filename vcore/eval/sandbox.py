"""Running untrusted, model-written programs.

Every program runs in its own subprocess, never in the harness (EVAL.md, "Running untrusted code"). The threat
model, what each isolation level defends against and what it does not, is in docs/sandbox.md. In short:

- a fresh working directory per run (the box), seeded with the candidate's files; cwd, HOME and TMPDIR point
  into it; the environment is minimal;
- per-process limits set with ``resource.setrlimit`` in ``preexec_fn`` (address space, CPU time, file size,
  number of processes), a wall-clock timeout, stdout read with a cap (the run is killed past it);
- one memory limit for the run as a whole: a memory cgroup where the host offers one (vcore/eval/cgroups.py),
  else a watchdog that sums the resident memory of the run's processes every few milliseconds;
- a new session, killed as a whole on timeout or overflow; every process still in the run's cgroup, PID
  namespace or uid is killed after the run, and the run's first process dies with the grading process
  (parent-death signal), so nothing outlives a grader that is itself killed (the harness then removes what that
  grader left: :func:`vcore.eval.sandbox_cleanup.reclaim`);
- "full" isolation (root, ``unshare``): new network, PID, mount and IPC namespaces; the program
  runs chrooted into a minimal root (system directories read-only, fresh /proc and /dev/shm, a private /tmp, the
  box as a size-limited tmpfs) under an unprivileged uid of its own, with no-new-privileges. Test data, other
  boxes, unix sockets and the host's /tmp are not in that root; SysV IPC objects die with the namespace;
- otherwise the strongest level that works: "net" (network, PID and IPC namespaces, uid drop; the host's
  filesystem is visible) or "none" (limits and uid drop only). After such runs the sandbox uid's IPC objects
  and files in /tmp, /var/tmp and /dev/shm are removed. Every RunResult records the level used, and ``auto``
  warns once when it settles for less than "full".
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vcore.eval import cgroups
from vcore.eval.sandbox_cleanup import (
    MARKER_VAR,
    OUTER_PREFIX,
    after_run,
    become_subreaper,
    ipc_objects,
    kill_pids,
    libc,
    proc_table,
    processes_of,
    uid_for,
)

log = logging.getLogger(__name__)

MIN_PATH = "/usr/local/bin:/usr/bin:/bin"
STDERR_CAP = 1 << 20
WATCHDOG_PERIOD_S = 0.005

INIT = Path(__file__).with_name("sandbox_init.py")  # PID 1 of a namespaced run: starts the program, records its status


@dataclass
class Limits:
    time_s: float = 6.0  # wall clock
    cpu_s: float | None = None  # RLIMIT_CPU; default: time_s + 1
    memory_mb: int = 1024  # the whole run (cgroup or watchdog) and RLIMIT_AS of each process
    file_size_mb: int = 64  # RLIMIT_FSIZE: largest file the program may write
    max_processes: int = 32  # RLIMIT_NPROC for the sandbox uid (threads count too)
    max_output_bytes: int = 32 << 20  # stdout cap; more kills the run
    box_size_mb: int = 256  # tmpfs size of the box and of /tmp ("full" isolation), on top of the seed files


@dataclass
class RunResult:
    returncode: int | None  # exit status; None when the program was killed by a signal
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_limit: bool
    signal: int | None
    wall_s: float
    isolation: str
    memory_limit: bool = False  # the run as a whole went over Limits.memory_mb and was killed
    peak_memory_mb: float | None = None  # the run's peak (cgroup accounting, or the watchdog's largest sample)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_limit and not self.memory_limit


@dataclass(frozen=True)
class Isolation:
    level: str  # full | net | none
    uid: int | None  # uid the program runs as (None: ours)


def probe_isolation(requested: str = "auto") -> Isolation:
    """The strongest isolation level that works here (probed once per process)."""
    return _probe(requested)


@functools.cache
def _probe(requested: str) -> Isolation:
    root = os.geteuid() == 0
    # As root, programs always run under their own uid (RLIMIT_NPROC does not bind root); without setpriv the
    # uid is dropped in preexec_fn, which rules out the namespace levels (unshare needs root).
    uid = uid_for(os.getpid()) if root else None
    levels = [("full", ("unshare",)), ("net", ("unshare", "setpriv"))] if root else [("net", ("unshare",))]
    for level, tools in levels if requested != "none" else []:
        if not all(shutil.which(t) for t in tools):
            continue
        box = Sandbox(isolation=Isolation(level, uid))
        try:
            res = box.run(["true"], limits=Limits(time_s=10))
        except OSError:
            res = None
        finally:
            box.close()
        if res is not None and res.returncode == 0:
            return _chosen(Isolation(level, uid), requested)
    return _chosen(Isolation("none", uid), requested)


def _chosen(iso: Isolation, requested: str) -> Isolation:
    """Say once per process (probe_isolation is cached) when ``auto`` settled for less than ``full``, or when the
    run's memory limit is only a watchdog."""
    if requested == "auto" and iso.level != "full":
        log.warning(
            "code sandbox: isolation %r, weaker than 'full' (which needs root and unshare): %s",
            iso.level,
            "; ".join(ISOLATION_NOTES[iso.level]),
        )
    if cgroups.support() is None:
        log.warning("code sandbox: %s", WATCHDOG_NOTE)
    return iso


def _run_cgroup(sup: cgroups.Support, limit_bytes: int) -> cgroups.RunCgroup | None:
    try:
        return cgroups.RunCgroup(sup, limit_bytes)
    except OSError as err:  # e.g. a cgroup limit on the number of children: this run falls back to the watchdog
        log.warning(
            "code sandbox: cannot create a memory cgroup under %s (%s); this run uses the watchdog", sup.parent, err
        )
        return None


@functools.cache
def _pdeath_option() -> str:
    """setpriv's option that re-arms the parent-death signal after the uid change (util-linux >= 2.33), or ""."""
    try:
        usage = subprocess.run(["setpriv", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "--pdeathsig=KILL" if "--pdeathsig" in usage else ""


PR_SET_PDEATHSIG = 1


def _set_limits(
    limits: Limits, nproc: int, drop_to: int | None, cgroup: cgroups.RunCgroup | None, prctl, file_size: bool
) -> None:
    """preexec_fn: only thin wrappers of C calls (setrlimit, open/write, setuid, prctl), nothing that takes Python
    locks. The cgroup is joined while still root; the parent-death signal is set last, because a uid change
    clears it. ``file_size=False`` leaves RLIMIT_FSIZE to the "full" script, which must first copy the seed
    (a large binary) into the box."""
    if cgroup is not None:
        cgroup.join_from_child()
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.time_s + 1) + 1
    mem = limits.memory_mb << 20
    fsize = limits.file_size_mb << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if file_size:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_to is not None:
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc`` to exit, at most ``timeout_s``; True when it did. Waits on a pidfd where the kernel has
    them: ``Popen.wait(timeout)`` polls with sleeps that grow to 50 ms, which adds up to a run's length to each run."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def _reader(stream, cap: int, kill_on_cap: bool, on_cap, sink: list) -> None:
    """Read ``stream`` into ``sink`` up to ``cap`` bytes; past it, kill the run or drain and discard."""
    size = 0
    while True:
        chunk = stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16)
        if not chunk:
            break
        if size < cap:
            sink.append(chunk[: cap - size])
        size += len(chunk)
        if size > cap and kill_on_cap:
            on_cap()
            break


def _run_processes(root_pid: int, uid: int | None) -> list[int]:
    """The run's processes without a cgroup: ``root_pid``'s descendants (orphans land on the PID namespace's init,
    or on us as subreaper) and every process of the sandbox uid when it is not ours."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root_pid]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    if uid is not None and uid != os.getuid():
        found.update(pid for pid, (_, u) in table.items() if u == uid)
    found.discard(os.getpid())
    return [pid for pid in found if pid in table]


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


class _Watchdog(threading.Thread):
    """The run's memory limit where there is no memory cgroup: samples the resident memory of all the run's
    processes and kills them all past the limit. Shared pages count once per process (a conservative sum); a
    program that allocates faster than one sampling period can overshoot by what it allocates in that period."""

    def __init__(self, root_pid: int, uid: int | None, limit_bytes: int, kill) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.uid, self.limit, self.kill = root_pid, uid, limit_bytes, kill
        self.done = threading.Event()
        self.tripped = False
        self.peak = 0

    def run(self) -> None:
        while not self.done.wait(WATCHDOG_PERIOD_S):
            pids = _run_processes(self.root_pid, self.uid)
            used = _resident_bytes(pids)
            self.peak = max(self.peak, used)
            if used > self.limit:
                self.tripped = True
                self.kill()
                kill_pids(pids)
                return


# ------------------------------------------------------------------------------------------------ the box
@dataclass
class _Launched:
    """A run that has started."""

    proc: subprocess.Popen
    marker: str  # the value of MARKER_VAR in its environment
    cgroup: cgroups.RunCgroup | None
    ipc_before: dict[tuple[str, int], int]  # at "none": the IPC objects that existed before it
    start: float  # time.monotonic() at launch


@dataclass
class _Ended:
    """What supervising a run saw, once all of it is dead."""

    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_limit: bool
    memory_limit: bool
    peak_bytes: int
    wall_s: float


class Sandbox:
    """A scratch area for one candidate program; each :meth:`run` starts from the seeded files.

    >>> with Sandbox({"main.py": "print(input())"}) as sb:
    ...     sb.run(["python3", "main.py"], stdin=b"hi\\n").stdout
    b'hi\\n'
    """

    def __init__(self, files: dict[str, bytes | str] | None = None, *, isolation: Isolation | str = "auto") -> None:
        self.isolation = probe_isolation(isolation) if isinstance(isolation, str) else isolation
        self.outer = Path(tempfile.mkdtemp(prefix=f"{OUTER_PREFIX}{os.getpid()}-"))
        os.chmod(self.outer, 0o711)  # the sandbox uid must traverse it to reach the box (levels below "full")
        for sub in ("seed", "export", "box", "root"):  # root: the mount point of a "full" run's minimal root
            (self.outer / sub).mkdir(mode=0o700)
        for name, data in (files or {}).items():
            self.add_file(name, data)
        if self.isolation.level != "full":
            become_subreaper()

    # ---------------------------------------------------------------------------------------------- files
    def add_file(self, name: str, data: bytes | str) -> None:
        if "/" in name or name.startswith("."):
            raise ValueError(f"sandbox file names are plain names, got {name!r}")
        (self.outer / "seed" / name).write_bytes(data.encode() if isinstance(data, str) else data)

    def has_file(self, name: str) -> bool:
        return (self.outer / "seed" / name).is_file()

    @property
    def box(self) -> Path:
        return self.outer / "box"

    def _seed_mb(self) -> int:
        return sum(p.stat().st_size for p in (self.outer / "seed").iterdir()) >> 20

    def _prepare_box(self) -> None:
        """Levels below "full": a fresh on-disk box per run ("full" mounts a tmpfs instead)."""
        box = self.box
        if box.exists():
            shutil.rmtree(box, ignore_errors=True)
        shutil.copytree(self.outer / "seed", box)
        uid = self.isolation.uid
        os.chmod(box, 0o700)
        if uid is not None:
            for p in [box, *box.rglob("*")]:
                os.chown(p, uid, uid, follow_symlinks=False)

    # ---------------------------------------------------------------------------------------------- run
    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | str | None = None,
        limits: Limits | None = None,
        export: tuple[str, ...] | list[str] = (),
    ) -> RunResult:
        """Run ``argv`` in a fresh box. Files named in ``export`` are copied back into the seed afterwards
        (a compiler's output becomes available to later runs)."""
        limits = limits or Limits()
        launched = self._launch(argv, stdin, limits, export)
        ended = self._supervise(launched, limits)
        after_run(self.isolation.level, self.isolation.uid, launched.marker, launched.ipc_before)
        return self._collect(launched, ended, export)

    def _command(self, argv: list[str], limits: Limits, export) -> tuple[list[str], str]:
        """The command line of a run and its working directory. At the namespace levels our init script is PID 1:
        it starts the program and records its exact exit status (sandbox_init.py says why)."""
        level, uid = self.isolation.level, self.isolation.uid
        init = [sys.executable, "-I", "-S", str(INIT)]
        if level == "full":
            size = limits.box_size_mb + self._seed_mb()
            cmd = ["unshare", "--net", "--pid", "--mount", "--ipc", "--fork", "--kill-child", "--", *init, "full"]
            return cmd + [
                str(self.outer),
                str(size),
                str(uid),
                str(limits.file_size_mb << 20),
                ":".join(export),
                *argv,
            ], str(self.outer)
        self._prepare_box()
        drop = (
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--no-new-privs",
                *_pdeath_option().split(),
                "--",
            ]
            if self._setpriv
            else []
        )
        namespaces = ["unshare", "--net", "--pid", "--ipc", "--fork", "--kill-child", "--"]
        prefix = [*namespaces, *init, "wait", str(self.outer)] if level == "net" else []
        return prefix + drop + list(argv), str(self.box)

    @property
    def _setpriv(self) -> bool:
        return self.isolation.uid is not None and shutil.which("setpriv") is not None

    def _launch(self, argv: list[str], stdin: bytes | str | None, limits: Limits, export) -> _Launched:
        """Start the run: its environment, command, limits (in ``preexec_fn``), memory cgroup and stdin file."""
        level, uid = self.isolation.level, self.isolation.uid
        marker = secrets.token_hex(8)
        box = self.box
        env = {
            "PATH": MIN_PATH,
            "HOME": str(box),
            "TMPDIR": str(box),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1",
            MARKER_VAR: marker,
        }
        cmd, cwd = self._command(argv, limits, export)
        # RLIMIT_NPROC counts every process of the uid; for our own uid leave room for what already runs.
        nproc = limits.max_processes if uid is not None else len(processes_of(os.getuid())) + limits.max_processes
        sup = cgroups.support()
        cgroup = _run_cgroup(sup, limits.memory_mb << 20) if sup is not None else None
        ipc_before = ipc_objects() if level == "none" else {}
        (self.outer / "status").unlink(missing_ok=True)  # written by the init script of this run only

        stdin_path = self.outer / "stdin"
        stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
        os.chmod(stdin_path, 0o600)  # the program gets it as fd 0, never by name
        drop_in_preexec = uid if level == "none" and uid is not None and not self._setpriv else None
        start = time.monotonic()
        try:
            with open(stdin_path, "rb") as fin:
                proc = subprocess.Popen(
                    cmd,
                    cwd=cwd,
                    env=env,
                    stdin=fin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    close_fds=True,
                    # Only C-call wrappers run between fork and exec, and graders call this from single-threaded
                    # worker processes, so the usual preexec_fn-with-threads deadlock does not apply.
                    preexec_fn=functools.partial(  # noqa: PLW1509
                        _set_limits, limits, nproc, drop_in_preexec, cgroup, libc().prctl, level != "full"
                    ),
                )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        return _Launched(proc, marker, cgroup, ipc_before, start)

    def _supervise(self, run: _Launched, limits: Limits) -> _Ended:
        """Read its output (killing it past the cap), hold its memory limit (the watchdog where there is no cgroup),
        wait for it up to the time limit, then kill whatever is left of its process group and cgroup."""
        proc = run.proc
        out_chunks: list[bytes] = []
        err_chunks: list[bytes] = []
        overflow = threading.Event()

        def kill_group() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        def on_overflow() -> None:
            overflow.set()
            kill_group()

        readers = [
            threading.Thread(
                target=_reader, args=(proc.stdout, limits.max_output_bytes, True, on_overflow, out_chunks), daemon=True
            ),
            threading.Thread(target=_reader, args=(proc.stderr, STDERR_CAP, False, None, err_chunks), daemon=True),
        ]
        for t in readers:
            t.start()
        watchdog = None
        if run.cgroup is None:
            watchdog = _Watchdog(proc.pid, self.isolation.uid, limits.memory_mb << 20, kill_group)
            watchdog.start()
        timed_out = not _wait(proc, limits.time_s)
        kill_group()  # stragglers in the group (and the whole PID namespace with it)
        proc.wait()
        wall = time.monotonic() - run.start
        if watchdog is not None:
            watchdog.done.set()
            watchdog.join()
            memory_limit, peak = watchdog.tripped, watchdog.peak
        else:
            memory_limit, peak = run.cgroup.oom_killed(), run.cgroup.peak_bytes()
            run.cgroup.remove()  # kills whatever is left in it first
        for t in readers:
            t.join(timeout=2)  # a process outside our reach may still hold the pipe: do not wait for it
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        stdout, stderr = b"".join(out_chunks), b"".join(err_chunks)
        return _Ended(stdout, stderr, timed_out, overflow.is_set(), memory_limit, peak, wall)

    def _collect(self, run: _Launched, ended: _Ended, export) -> RunResult:
        """The program's exit status (the init script's record at the namespace levels, whatever the wrapper
        printed; ``unshare``'s own status when there is none, i.e. the whole run was killed), its exports, and
        the result."""
        level = self.isolation.level
        rc = run.proc.returncode
        status = self.outer / "status"
        if level != "none" and status.is_file():
            how, _, n = status.read_text().partition(" ")
            rc = -int(n) if how == "signal" else int(n)
            status.unlink()
        sig = None
        if rc is not None and rc < 0:
            sig, rc = -rc, None
        for name in export:
            src = (self.outer / "export" / name) if level == "full" else (self.box / name)
            if src.is_file():
                shutil.copyfile(src, self.outer / "seed" / name)
                os.chmod(self.outer / "seed" / name, 0o755)
        if level != "full":
            shutil.rmtree(self.box, ignore_errors=True)
        return RunResult(
            returncode=rc,
            stdout=ended.stdout,
            stderr=ended.stderr,
            timed_out=ended.timed_out and not ended.output_limit and not ended.memory_limit,
            output_limit=ended.output_limit,
            signal=sig,
            wall_s=ended.wall_s,
            isolation=level,
            memory_limit=ended.memory_limit,
            peak_memory_mb=None if not ended.peak_bytes else ended.peak_bytes / (1 << 20),
        )

    # ---------------------------------------------------------------------------------------------- cleanup
    def close(self) -> None:
        shutil.rmtree(self.outer, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class IsolationReport:
    """What the sandbox could enforce here; written into the results."""

    level: str
    own_uid: bool  # programs run under a uid of their own (root), not the harness's; the uid itself is per process
    notes: list[str] = field(default_factory=list)
    memory: str = ""


def isolation_report(requested: str = "auto") -> IsolationReport:
    iso = probe_isolation(requested)
    sup = cgroups.support()
    memory = sup.description if sup is not None else WATCHDOG_NOTE
    return IsolationReport(iso.level, iso.uid is not None, ISOLATION_NOTES[iso.level], memory)


ISOLATION_NOTES = {
    "full": [
        "network, PID, mount and IPC namespaces; chrooted into a minimal read-only root (no host files, test data or"
        " unix sockets visible); tmpfs box; unprivileged uid with no-new-privileges"
    ],
    "net": [
        "network, PID and IPC namespaces; the host filesystem is visible (world-readable test data, filesystem unix"
        " sockets) and writable where the uid may write (/tmp, cleaned after each run)"
    ],
    "none": [
        "resource limits and process kill only: no network isolation, the host filesystem is visible and /tmp is"
        " writable (cleaned after each run when running as root)"
    ],
}
WATCHDOG_NOTE = (
    "no usable memory cgroup: the run's memory limit is a watchdog sampling its processes' resident memory"
    f" every {WATCHDOG_PERIOD_S * 1000:.0f} ms (a fast allocator can overshoot by one period's worth)"
)
