"""PID 1 of a namespaced sandbox run: starts the program, waits for it and records its exact exit status.

Not imported: vcore/eval/sandbox.py runs this file as a script (``python -I -S sandbox_init.py ...``) as root inside
fresh PID, network and IPC namespaces (and a mount namespace at "full"), so it uses the standard library only. Mounts
are system calls here rather than ``mount`` commands: a shell script doing the same spent about 60 ms per run forking
them.

Two modes:

- ``full``: builds the run's minimal root and starts the program in it. The root holds the system directories
  read-only (/usr, /etc and /bin, /lib... or their symlinks), five device nodes, a fresh /proc and /dev/shm, a
  private /tmp, and the box (a tmpfs seeded with the candidate's files, at the same path as outside so HOME and
  TMPDIR stay valid). Nothing else of the host is there: not the test data, not other boxes, not the harness's files
  or unix sockets. The program runs chrooted into it under the sandbox uid with no-new-privileges and the file-size
  limit (set only here, after the seed copy, so a large binary still enters). Exported files are copied out after it.
- ``wait`` ("net" level): starts the program (``setpriv ... argv``, which drops the uid) as it is.

Either way this process stays PID 1 and the program runs as its child, for two reasons. The exit status: ``unshare``
passes a child's fatal signal on by re-raising it, which fails for SIGKILL ("sigprocmask unblock failed", exit 1), so
a program killed from outside would read as "exit status 1"; here the status goes to ``<outer>/status`` ("exit N" or
"signal N"), which the harness reads first. And PID 1's signal semantics (a signal with the default action that the
process sends itself is ignored) stay with this process, not the program's. This process reaps the orphans that the
namespace hands it while it waits, and its OOM score is lowered so that a memory cgroup's OOM killer takes the program,
not it. The parent-death signal is re-armed after the uid change (which clears it), so the program dies with this
process, and this process with ``unshare`` and the grading process.

Arguments: ``full`` outer dir, tmpfs size of the box and of /tmp (MiB), uid, file-size limit (bytes), export names
joined by ":" (or ""), then the program's argv; or ``wait`` outer dir, then the program's argv.
"""

import ctypes
import os
import resource
import signal
import stat
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)

libc = ctypes.CDLL(None, use_errno=True)


def _c(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags, data=None) -> None:
    if libc.mount(_c(source), _c(target), _c(fstype), flags, _c(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def ro_bind(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    mount(src, dst, None, MS_BIND)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _copy(fin, fout) -> None:
    while chunk := fin.read(1 << 20):
        fout.write(chunk)


def build_root(outer: str, size_mb: int, uid: int) -> tuple[str, str]:
    root, box = outer + "/root", outer + "/root" + outer + "/box"
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
    mount("vcore-root", root, "tmpfs", MS_NOSUID, f"size={size_mb}m,mode=0755")
    for d in ("usr", "etc"):
        ro_bind("/" + d, root + "/" + d)
    for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink("/" + d):
            os.symlink(os.readlink("/" + d), root + "/" + d)
        elif os.path.isdir("/" + d):
            ro_bind("/" + d, root + "/" + d)
    for d in ("dev/shm", "proc", "tmp", box[len(root) + 1 :]):
        os.makedirs(root + "/" + d, exist_ok=True)
    os.chmod(root + "/tmp", 0o1777)
    for name in DEVICES:
        open(root + "/dev/" + name, "w").close()
        mount("/dev/" + name, root + "/dev/" + name, None, MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, root + "/dev/" + name)
    mount("vcore-shm", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("vcore-box", box, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode=0700,uid={uid},gid={uid}")
    seed = outer + "/seed"
    for name in os.listdir(seed):  # flat: Sandbox.add_file takes plain names only
        src, dst = seed + "/" + name, box + "/" + name
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            _copy(fin, fout)
        os.chmod(dst, os.stat(src).st_mode & 0o777)
        os.chown(dst, uid, uid)
    return root, box


def _exec(argv: list[str]) -> None:
    """execvp without os.execvp: that imports modules lazily, which the chroot (no Python library) cannot serve."""
    if "/" in argv[0]:
        os.execv(argv[0], argv)
    err: OSError = FileNotFoundError(2, "not found on PATH", argv[0])
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        try:
            os.execv(d + "/" + argv[0], argv)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
            err = e if isinstance(e, PermissionError) else err
    raise err


def start_program(root: str, inner_box: str, uid: int, fsize: int, argv: list[str]) -> None:
    """Become the program: chroot, limits, uid, then exec (never returns)."""
    try:
        os.chroot(root)
        os.chdir(inner_box)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change, which clears it
        _exec(argv)
    except OSError as err:
        os.write(2, f"vcore-sandbox: cannot run {argv[0]}: {err}\n".encode())
        os._exit(127)


def _protect_from_oom() -> None:
    """The OOM killer of the run's memory cgroup should end the program, not the process that records its status."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass


def wait_for(pid: int) -> int:
    """Reap children (orphans of the namespace land on PID 1) until ``pid`` ends; its wait status."""
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:  # cannot happen while ``pid`` lives; keeps the loop finite regardless
            return 0
        except InterruptedError:
            continue
        if done == pid:
            return status


def write_status(outer: str, status: int) -> None:
    with open(outer + "/status", "w") as f:
        f.write(f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")


def run_full(outer: str, size_mb: int, uid: int, fsize: int, exports: str, argv: list[str]) -> None:
    root, box = build_root(outer, size_mb, uid)
    pid = os.fork()
    if pid == 0:
        start_program(root, outer + "/box", uid, fsize, argv)
    _protect_from_oom()
    status = wait_for(pid)
    for name in exports.split(":") if exports else ():
        try:  # never follow a link the program left: this process is root and sees the host
            fd = os.open(box + "/" + name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with open(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            with open(outer + "/export/" + name, "wb") as fout:
                _copy(fin, fout)
    write_status(outer, status)


def run_wait(outer: str, argv: list[str]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _exec(argv)
        except OSError as err:
            os.write(2, f"vcore-sandbox: cannot run {argv[0]}: {err}\n".encode())
        os._exit(127)
    _protect_from_oom()
    write_status(outer, wait_for(pid))


def main(args: list[str]) -> None:
    if args[0] == "wait":
        run_wait(args[1], args[2:])
    else:
        run_full(args[1], int(args[2]), int(args[3]), int(args[4]), args[5], args[6:])


if __name__ == "__main__":
    main(sys.argv[1:])
