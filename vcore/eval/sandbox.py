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
  grader left: :func:`reclaim`);
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

import ctypes
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

log = logging.getLogger(__name__)

MIN_PATH = "/usr/local/bin:/usr/bin:/bin"
MARKER_VAR = "VCORE_SANDBOX_RUN"
STDERR_CAP = 1 << 20
OUTER_PREFIX = "vcore-sbx-"  # + pid of the grading process + "-": reclaim() finds a killed grader's boxes by it
WATCHDOG_PERIOD_S = 0.005

INIT = Path(__file__).with_name("sandbox_init.py")  # PID 1 of a "full" run: builds its root, starts the program


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


def uid_for(pid: int) -> int:
    """The sandbox uid of grading process ``pid``. One uid per grading process: sandboxes of different workers
    neither share an RLIMIT_NPROC budget nor can signal each other, and a killed worker's leftovers can be found
    by it. No passwd entry is needed."""
    return 1_500_000_000 + pid % 1_000_000


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
            iso.level, "; ".join(ISOLATION_NOTES[iso.level]),
        )
    if cgroups.support() is None:
        log.warning("code sandbox: %s", WATCHDOG_NOTE)
    return iso


def _run_cgroup(sup: cgroups.Support, limit_bytes: int) -> cgroups.RunCgroup | None:
    try:
        return cgroups.RunCgroup(sup, limit_bytes)
    except OSError as err:  # e.g. a cgroup limit on the number of children: this run falls back to the watchdog
        log.warning("code sandbox: cannot create a memory cgroup under %s (%s); this run uses the watchdog", sup.parent, err)
        return None


def _processes_of(uid: int) -> list[int]:
    return [pid for pid, (_, u) in _proc_table().items() if u == uid]


@functools.cache
def _pdeath_option() -> str:
    """setpriv's option that re-arms the parent-death signal after the uid change (util-linux >= 2.33), or ""."""
    try:
        usage = subprocess.run(["setpriv", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return "--pdeathsig=KILL" if "--pdeathsig" in usage else ""


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _set_limits(limits: Limits, nproc: int, drop_to: int | None, cgroup: cgroups.RunCgroup | None, prctl, file_size: bool) -> None:
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


def _proc_table() -> dict[int, tuple[int, int]]:
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


def _run_processes(root_pid: int, uid: int | None) -> list[int]:
    """The run's processes without a cgroup: ``root_pid``'s descendants (orphans land on the PID namespace's init,
    or on us as subreaper) and every process of the sandbox uid when it is not ours."""
    table = _proc_table()
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
                _kill_pids(pids)
                return


def _kill_pids(pids) -> None:
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
    _kill_pids(found)
    return len(found)


@functools.cache
def _become_subreaper() -> bool:
    """Orphans of a sandboxed run get re-parented to us (not to an init that may never reap them), so their
    zombies, which still count against RLIMIT_NPROC, can be reaped. Linux only; False when unavailable."""
    try:
        return _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphans(uid: int, patience_s: float = 1.0) -> None:
    """waitpid() our child processes that run as the sandbox ``uid`` (never the harness's own children),
    retrying briefly for those SIGKILLed a moment ago and not yet dead."""
    deadline = time.monotonic() + patience_s
    while _reap_once(uid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _reap_once(uid: int) -> int:
    """One pass; returns how many such children were still running."""
    me, running = os.getpid(), 0
    for pid, (ppid, u) in _proc_table().items():
        if u != uid or ppid != me:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                running += 1
        except ChildProcessError:
            pass
    return running


# ------------------------------------------------------------------------------------------------ leftovers
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


def _remove_ipc(keys) -> None:
    libc = _libc()
    for kind, ident in keys:
        if kind == "shm":
            libc.shmctl(ident, IPC_RMID, None)
        elif kind == "sem":
            libc.semctl(ident, 0, IPC_RMID)
        else:
            libc.msgctl(ident, IPC_RMID, None)


TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _remove_files_of(uid: int) -> None:
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


def reclaim(pid: int) -> None:
    """Remove what grading process ``pid`` left when it was killed mid-run: the processes of its run (cgroup and
    uid), its run cgroups, its box folders and, outside "full" isolation, its uid's IPC objects and temp files.
    The harness calls this after killing a grading worker."""
    cgroups.reclaim(pid)
    uid = uid_for(pid)
    if os.geteuid() == 0:
        for _ in range(3):  # a fork in flight can add one after a pass
            _kill_pids(_processes_of(uid))
        _remove_ipc([k for k, u in ipc_objects().items() if u == uid])
        _remove_files_of(uid)
    for outer in Path(tempfile.gettempdir()).glob(f"{OUTER_PREFIX}{pid}-*"):
        shutil.rmtree(outer, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the box
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
            _become_subreaper()

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
    def _command(self, argv: list[str], limits: Limits, export) -> tuple[list[str], str]:
        level, uid = self.isolation.level, self.isolation.uid
        if level == "full":
            size = limits.box_size_mb + self._seed_mb()
            cmd = ["unshare", "--net", "--pid", "--mount", "--ipc", "--fork", "--kill-child", "--", sys.executable, "-I", "-S", str(INIT)]
            return cmd + [str(self.outer), str(size), str(uid), str(limits.file_size_mb << 20), ":".join(export), *argv], str(self.outer)
        self._prepare_box()
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", *_pdeath_option().split(), "--"] if self._setpriv else []
        prefix = ["unshare", "--net", "--pid", "--ipc", "--fork", "--kill-child", "--"] if level == "net" else []
        return prefix + drop + list(argv), str(self.box)

    @property
    def _setpriv(self) -> bool:
        return self.isolation.uid is not None and shutil.which("setpriv") is not None

    def run(self, argv: list[str], *, stdin: bytes | str | None = None, limits: Limits | None = None, export: tuple[str, ...] | list[str] = ()) -> RunResult:
        """Run ``argv`` in a fresh box. Files named in ``export`` are copied back into the seed afterwards
        (a compiler's output becomes available to later runs)."""
        limits = limits or Limits()
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
        nproc = limits.max_processes if uid is not None else len(_processes_of(os.getuid())) + limits.max_processes
        sup = cgroups.support()
        cgroup = _run_cgroup(sup, limits.memory_mb << 20) if sup is not None else None
        ipc_before = ipc_objects() if level == "none" else {}

        stdin_path = self.outer / "stdin"
        stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
        os.chmod(stdin_path, 0o600)  # the program gets it as fd 0, never by name
        out_chunks: list[bytes] = []
        err_chunks: list[bytes] = []
        overflow = threading.Event()
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
                        _set_limits, limits, nproc, uid if level == "none" and uid is not None and not self._setpriv else None, cgroup, _libc().prctl, level != "full"
                    ),
                )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise

        def kill_group() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        def on_overflow() -> None:
            overflow.set()
            kill_group()

        readers = [
            threading.Thread(target=_reader, args=(proc.stdout, limits.max_output_bytes, True, on_overflow, out_chunks), daemon=True),
            threading.Thread(target=_reader, args=(proc.stderr, STDERR_CAP, False, None, err_chunks), daemon=True),
        ]
        for t in readers:
            t.start()
        watchdog = None
        if cgroup is None:
            watchdog = _Watchdog(proc.pid, uid, limits.memory_mb << 20, kill_group)
            watchdog.start()
        timed_out = not _wait(proc, limits.time_s)
        kill_group()  # stragglers in the group (and the whole PID namespace with it)
        proc.wait()
        wall = time.monotonic() - start
        if watchdog is not None:
            watchdog.done.set()
            watchdog.join()
        if cgroup is not None:
            memory_limit, peak = cgroup.oom_killed(), cgroup.peak_bytes()
            cgroup.remove()  # kills whatever is left in it first
        else:
            memory_limit, peak = watchdog.tripped, watchdog.peak
        if level != "full":
            sweep_marker(marker)
            if uid is not None and uid != os.getuid():
                _kill_pids(_processes_of(uid))
                _reap_orphans(uid)
                _remove_files_of(uid)
        if level == "none":  # no IPC namespace: remove the objects this run created
            owner = uid if uid is not None else os.getuid()
            _remove_ipc([k for k, u in ipc_objects().items() if u == owner and k not in ipc_before])
        for t in readers:
            t.join(timeout=2)  # a process outside our reach may still hold the pipe: do not wait for it
        for stream in (proc.stdout, proc.stderr):
            stream.close()

        rc = proc.returncode
        if level == "full" and export and (self.outer / "status").is_file():  # the init waited for the program
            how, _, n = (self.outer / "status").read_text().partition(" ")
            rc = -int(n) if how == "signal" else int(n)
            (self.outer / "status").unlink()
        sig = None
        if rc is not None and rc < 0:
            sig, rc = -rc, None
        for name in export:
            src = (self.outer / "export" / name) if level == "full" else (box / name)
            if src.is_file():
                shutil.copyfile(src, self.outer / "seed" / name)
                os.chmod(self.outer / "seed" / name, 0o755)
        if level != "full":
            shutil.rmtree(box, ignore_errors=True)
        return RunResult(
            returncode=rc,
            stdout=b"".join(out_chunks),
            stderr=b"".join(err_chunks),
            timed_out=timed_out and not overflow.is_set() and not memory_limit,
            output_limit=overflow.is_set(),
            signal=sig,
            wall_s=wall,
            isolation=level,
            memory_limit=memory_limit,
            peak_memory_mb=None if not peak else peak / (1 << 20),
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
    uid: int | None
    notes: list[str] = field(default_factory=list)
    memory: str = ""


def isolation_report(requested: str = "auto") -> IsolationReport:
    iso = probe_isolation(requested)
    sup = cgroups.support()
    memory = sup.description if sup is not None else WATCHDOG_NOTE
    return IsolationReport(iso.level, iso.uid, ISOLATION_NOTES[iso.level], memory)


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
