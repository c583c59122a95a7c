"""Running untrusted, model-written programs.

Every program runs in its own subprocess, never in the harness (EVAL.md, "Running untrusted code"):

- a fresh working directory per run (the box), seeded with the candidate's files; cwd, HOME and TMPDIR point
  into it; the environment is minimal;
- resource limits set with ``resource.setrlimit`` in ``preexec_fn``: address space, CPU time, file size and
  number of processes; wall-clock timeout; stdout read with a cap (the run is killed when it is exceeded);
- a new session, whose whole process group is SIGKILLed on timeout or output overflow;
- when we are root and ``unshare`` works ("full" isolation): new network, PID and mount namespaces. Inside them
  the box is a size-limited tmpfs, the root filesystem is remounted read-only (so nothing outside the box can be
  written, /tmp included), /dev/shm is a fresh tmpfs, and the program runs under an unprivileged uid of its own
  (so RLIMIT_NPROC, which root ignores, holds). When the PID namespace's first process exits, the kernel kills
  every process left in it, so nothing outlives a run.
- otherwise the strongest level that works: "net" (network + PID namespaces, uid drop) or "none" (limits and
  uid drop only). Every RunResult records the level used.

What this cannot guarantee (it is not a container or a VM): kernel exploits; reading world-readable files (the
filesystem is visible, read-only); CPU and memory contention with the harness (no cgroups, so a fork bomb runs
until RLIMIT_NPROC or the timeout stops it); in "none" mode, writes to world-writable directories such as /tmp,
network access, and processes that leave the process group and change their environment before we sweep
(after each run we SIGKILL every process that still carries the run's marker variable). Use the "full" level
(root, or a container that allows namespaces) for real evaluations; results record which level ran.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MIN_PATH = "/usr/local/bin:/usr/bin:/bin"
MARKER_VAR = "VCORE_SANDBOX_RUN"
STDERR_CAP = 1 << 20

# Runs as root inside fresh mount/PID/network namespaces, then drops to the sandbox uid.
# Arguments: outer dir, box size (MiB), uid, export names joined by ":", then the program's argv.
_FULL_SCRIPT = r"""
set -e
outer=$1; size=$2; uid=$3; exports=$4; shift 4
mount --make-rprivate /
mount -t tmpfs -o "size=${size}m,mode=0700,uid=${uid},gid=${uid},nosuid,nodev" vcore-box "$outer/box"
cp -R "$outer/seed/." "$outer/box/"
chown -R "$uid:$uid" "$outer/box"
mount --bind "$outer/export" "$outer/export"
mount -o remount,bind,ro /
mount -t tmpfs -o size=1m,mode=1777,nosuid,nodev tmpfs /dev/shm 2>/dev/null || true
mount -t proc proc /proc 2>/dev/null || true
cd "$outer/box"
set +e
setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "$@"
rc=$?
IFS=:
for f in $exports; do
  if [ -f "$outer/box/$f" ]; then cp "$outer/box/$f" "$outer/export/$f"; fi
done
exit $rc
"""


@dataclass
class Limits:
    time_s: float = 6.0  # wall clock
    cpu_s: float | None = None  # RLIMIT_CPU; default: time_s + 1
    memory_mb: int = 1024  # RLIMIT_AS (address space, so allocations fail instead of swapping)
    file_size_mb: int = 64  # RLIMIT_FSIZE: largest file the program may write
    max_processes: int = 32  # RLIMIT_NPROC for the sandbox uid (threads count too)
    max_output_bytes: int = 32 << 20  # stdout cap; more kills the run
    box_size_mb: int = 256  # tmpfs size of the box ("full" isolation)


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

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_limit


@dataclass(frozen=True)
class Isolation:
    level: str  # full | net | none
    uid: int | None  # uid the program runs as (None: ours)


def _default_uid() -> int:
    # One uid per harness process: sandboxes of different grading workers neither share an RLIMIT_NPROC budget
    # nor can signal each other. No passwd entry is needed.
    return 1_500_000_000 + os.getpid() % 1_000_000


@functools.cache
def probe_isolation(requested: str = "auto") -> Isolation:
    """The strongest isolation level that works here (probed once per process)."""
    root = os.geteuid() == 0
    # As root, programs always run under their own uid (RLIMIT_NPROC does not bind root); without setpriv the
    # uid is dropped in preexec_fn, which rules out the namespace levels (unshare needs root).
    uid = _default_uid() if root else None
    if requested == "none" or not shutil.which("unshare") or (root and not shutil.which("setpriv")):
        return _chosen(Isolation("none", uid), requested)
    for level in ("full", "net") if root else ("net",):
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
    """Say once per process (probe_isolation is cached) when ``auto`` settled for less than ``full``."""
    if requested == "auto" and iso.level != "full":
        log.warning(
            "code sandbox: isolation %r, weaker than 'full' (which needs root, unshare and setpriv): %s",
            iso.level, "; ".join(ISOLATION_NOTES[iso.level]),
        )
    return iso


def _count_processes(uid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _set_limits(limits: Limits, nproc: int, drop_to: int | None = None) -> None:
    """preexec_fn: only thin wrappers of C calls (setrlimit, setuid), nothing that takes Python locks."""
    cpu = int(limits.cpu_s if limits.cpu_s is not None else limits.time_s + 1) + 1
    mem = limits.memory_mb << 20
    fsize = limits.file_size_mb << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_to is not None:
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)


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


def sweep_marker(marker: str) -> int:
    """SIGKILL every process whose environment carries ``marker``; returns how many."""
    needle = f"{MARKER_VAR}={marker}".encode()
    killed = 0
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            try:
                os.kill(int(d), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


@functools.cache
def _become_subreaper() -> bool:
    """Orphans of a sandboxed run get re-parented to us (not to an init that may never reap them), so their
    zombies, which still count against RLIMIT_NPROC, can be reaped. Linux only; False when unavailable."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
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
    me, running = str(os.getpid()), 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid != uid:
                continue
            with open(f"/proc/{d}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid == me and os.waitpid(int(d), os.WNOHANG) == (0, 0):
                running += 1
        except (OSError, IndexError, ChildProcessError):
            pass
    return running


class Sandbox:
    """A scratch area for one candidate program; each :meth:`run` starts from the seeded files.

    >>> with Sandbox({"main.py": "print(input())"}) as sb:
    ...     sb.run(["python3", "main.py"], stdin=b"hi\\n").stdout
    b'hi\\n'
    """

    def __init__(self, files: dict[str, bytes | str] | None = None, *, isolation: Isolation | str = "auto") -> None:
        self.isolation = probe_isolation(isolation) if isinstance(isolation, str) else isolation
        self.outer = Path(tempfile.mkdtemp(prefix="vcore-sbx-"))
        os.chmod(self.outer, 0o711)  # the sandbox uid must traverse it to reach the box
        for sub in ("seed", "export", "box"):
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

    def _prepare_box(self) -> None:
        """Fallback levels: a fresh on-disk box per run (the "full" level mounts a tmpfs instead)."""
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
        setpriv = uid is not None and shutil.which("setpriv") is not None
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if setpriv else []
        if level == "full":
            cmd = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "--", "/bin/sh", "-c", _FULL_SCRIPT, "vcore-sandbox"]
            cmd += [str(self.outer), str(limits.box_size_mb), str(uid), ":".join(export), *argv]
            cwd = str(self.outer)
        else:
            self._prepare_box()
            prefix = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--"] if level == "net" else []
            cmd, cwd = prefix + drop + list(argv), str(box)
        # RLIMIT_NPROC counts every process of the uid; for our own uid leave room for what already runs.
        nproc = limits.max_processes if uid is not None else _count_processes(os.getuid()) + limits.max_processes

        stdin_path = self.outer / "stdin"
        stdin_path.write_bytes(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
        out_chunks: list[bytes] = []
        err_chunks: list[bytes] = []
        overflow = threading.Event()
        start = time.monotonic()
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
                # Only setrlimit/setuid run between fork and exec, and graders call this from single-threaded worker
                # processes, so the usual preexec_fn-with-threads deadlock does not apply.
                preexec_fn=functools.partial(_set_limits, limits, nproc, uid if uid is not None and not setpriv else None),  # noqa: PLW1509
            )

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
        timed_out = False
        try:
            proc.wait(timeout=limits.time_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_group()  # stragglers in the group (and the whole PID namespace with it)
        proc.wait()
        wall = time.monotonic() - start
        if level != "full":
            sweep_marker(marker)
            if uid is not None and uid != os.getuid():
                _reap_orphans(uid)
        for t in readers:
            t.join(timeout=2)  # a process outside our reach may still hold the pipe: do not wait for it
        for stream in (proc.stdout, proc.stderr):
            stream.close()

        rc = proc.returncode
        sig = None
        if rc is not None and rc < 0:
            sig, rc = -rc, None
        elif level == "full" and rc is not None and rc > 128:
            # /bin/sh reports a child killed by signal N as 128 + N
            sig, rc = rc - 128, None
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
            timed_out=timed_out and not overflow.is_set(),
            output_limit=overflow.is_set(),
            signal=sig,
            wall_s=wall,
            isolation=level,
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


def isolation_report(requested: str = "auto") -> IsolationReport:
    iso = probe_isolation(requested)
    return IsolationReport(iso.level, iso.uid, ISOLATION_NOTES[iso.level])


ISOLATION_NOTES = {
    "full": ["network, PID and mount namespaces; read-only root filesystem; tmpfs box; unprivileged uid"],
    "net": ["network and PID namespaces; the filesystem is writable where the uid may write (e.g. /tmp)"],
    "none": ["resource limits and process-group kill only: no network isolation, /tmp is writable"],
}
