"""The attacks that used to get through the sandbox (issue 13), each written as a hostile program and run through
the public API, with the host checked afterwards. docs/sandbox.md lists what each isolation level defends.

Every test here failed on the sandbox before this file: IPC objects outlived the run, a run's children could
together use many times its memory limit, a killed grader left its program and box behind, test data and checker
files were readable from the box, unix sockets were reachable, exit status 152 read as SIGXCPU (TLE), and a binary
over 64 MB could not be copied into the box.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vcore.eval import cgroups
from vcore.eval.code_grader import CPP_COMPILE, PYTHON_RUN, judge, judge_lcb, judge_ojbench
from vcore.eval.sandbox import Isolation, Limits, Sandbox, probe_isolation
from vcore.eval.sandbox_cleanup import MARKER_VAR, OUTER_PREFIX, ipc_objects, reclaim, uid_for
from vcore.eval.workers import map_with_timeout

# Each test looks at the whole machine (every process, box folder, cgroup, IPC object): none runs beside another
# worker's tests (tests/conftest.py).
pytestmark = pytest.mark.alone

ISO = probe_isolation()
FULL = ISO.level == "full"
ROOT = os.geteuid() == 0
needs_full = pytest.mark.skipif(not FULL, reason=f"needs 'full' isolation (root, unshare, setpriv); have {ISO.level!r}")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
# A forced "none" level with our own sandbox uid: what a host without namespaces gets.
NONE = Isolation("none", uid_for(os.getpid()) if ROOT else None)


def run_python(code: str, *, isolation=ISO, stdin: str = "", **limits) -> object:
    with Sandbox({"main.py": code}, isolation=isolation) as sb:
        return sb.run([*PYTHON_RUN, "main.py"], stdin=stdin, limits=Limits(**limits) if limits else None)


def lcb_payload(
    code: str, language: str = "python", time_limit_s: float = 3.0, memory_mb: int = 256, isolation: str = "auto"
) -> dict:
    return {
        "kind": "code_lcb",
        "code": code,
        "language": language,
        "functional_language": language,
        "public_tests": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_tests": None,
        "metadata": "{}",
        "time_limit_s": time_limit_s,
        "memory_mb": memory_mb,
        "compile_timeout_s": 60.0,
        "stop_at_first_failure": True,
        "isolation": isolation,
    }


def sandbox_processes() -> list[int]:
    """Processes of any sandbox run: the marker variable, or a sandbox uid."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{d}").st_uid
            marked = f"{MARKER_VAR}=".encode() in Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if marked or 1_500_000_000 <= uid < 1_501_000_000:
            found.append(int(d))
    return found


def wait_until(pred, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------------------------------------------ 1. IPC
IPC_PROGRAM = """
import ctypes
libc = ctypes.CDLL(None)
IPC_CREAT = 0o1000
ids = [libc.shmget(0, 8 << 20, IPC_CREAT | 0o666) for _ in range(3)]
ids += [libc.semget(0, 1, IPC_CREAT | 0o666), libc.msgget(0, IPC_CREAT | 0o666)]
print(*ids)
"""


@pytest.mark.parametrize("level", ["auto", "none"])
def test_system_v_ipc_objects_do_not_outlive_the_run(level):
    if level == "auto" and ISO.level == "none":
        pytest.skip("no namespaces here: the 'none' case covers it")
    before = set(ipc_objects())
    res = run_python(IPC_PROGRAM, isolation=ISO if level == "auto" else NONE)
    ids = [int(x) for x in res.stdout.split()]
    assert res.returncode == 0 and len(ids) == 5 and min(ids) >= 0, res  # the program did create them
    assert set(ipc_objects()) <= before


# ------------------------------------------------------------------------------------------------ 2. memory
FORKING_HOG = """
import os, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(b"x") * (100 << 20)  # touched: resident, not just reserved
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print("survived")
"""


class ResidentSampler(threading.Thread):
    """An independent measurement: the summed resident memory of the sandbox uid's processes, every 2 ms."""

    def __init__(self, uid: int) -> None:
        super().__init__(daemon=True)
        self.uid, self.peak, self.stop = uid, 0, threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop.wait(0.002):
            total = 0
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        if os.stat(f"/proc/{d}").st_uid == self.uid:
                            total += int(Path(f"/proc/{d}/statm").read_text().split()[1]) * page
                    except (OSError, IndexError, ValueError):
                        pass
            self.peak = max(self.peak, total)


@pytest.mark.parametrize("mode", ["cgroup", "watchdog"])
def test_memory_limit_binds_the_run_as_a_whole(mode, monkeypatch):
    if ISO.uid is None:
        pytest.skip("needs root (a sandbox uid of its own to measure the run by)")
    if mode == "cgroup" and cgroups.support() is None:
        pytest.skip("no usable memory cgroup on this host: the watchdog case covers it")
    if mode == "watchdog":
        monkeypatch.setattr(cgroups, "support", lambda: None)
    sampler = ResidentSampler(ISO.uid)
    sampler.start()
    try:
        res = run_python(FORKING_HOG, time_s=20, memory_mb=256, max_processes=16)
    finally:
        sampler.stop.set()
        sampler.join()
    # Six children of 100 MB each would be 600 MB: the run is stopped near 256 MB, and says why.
    assert res.memory_limit and not res.ok, res
    assert sampler.peak < 400 << 20, f"the run reached {sampler.peak >> 20} MB"
    assert res.wall_s < 15
    verdict = judge_lcb(lcb_payload(FORKING_HOG + "print(3)"))
    assert verdict["verdict"] == "RE" and "memory limit" in verdict["detail"], verdict


def test_run_memory_is_reported():
    res = run_python("block = bytearray(b'x') * (50 << 20)\nprint(len(block))")
    assert res.ok and res.peak_memory_mb is not None and 50 <= res.peak_memory_mb < 200, res


# ------------------------------------------------------------------------------------------------ 3. grader death
STUCK = """
import os, time
if os.fork() == 0:
    os.setsid()  # leaves the process group, as a daemon would
    time.sleep(600)
time.sleep(600)
"""


def _boxes() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{OUTER_PREFIX}*"))


def _run_cgroups() -> set[Path]:
    sup = cgroups.support()
    return set() if sup is None else {p for p in sup.parent.glob(f"{cgroups.PREFIX}*") if "probe" not in p.name}


@pytest.mark.parametrize("level", ["auto", "none"])
def test_a_killed_grader_leaves_nothing_behind(level):
    if level == "none" and not ROOT:
        pytest.skip("outside namespaces only root can find a killed grader's programs (by their uid)")
    boxes_before, cgroups_before = _boxes(), _run_cgroups()
    payload = lcb_payload(STUCK, time_limit_s=120, isolation=level)
    [res] = map_with_timeout(judge, [payload], workers=1, timeout_s=3, progress=False, after_worker_exit=reclaim)
    assert res.status == "timeout"
    assert wait_until(lambda: not sandbox_processes()), f"left running: {sandbox_processes()}"
    assert _boxes() <= boxes_before
    assert _run_cgroups() <= cgroups_before


@needs_full
def test_the_program_dies_with_its_grader_even_without_clean_up():
    """The parent-death signal alone: nothing removes the grader's leftovers, yet its program does not survive."""
    boxes_before = _boxes()
    [res] = map_with_timeout(judge, [lcb_payload(STUCK, time_limit_s=120)], workers=1, timeout_s=3, progress=False)
    assert res.status == "timeout"
    assert wait_until(lambda: not sandbox_processes()), f"left running: {sandbox_processes()}"
    for box in _boxes() - boxes_before:  # what reclaim() is for
        reclaim(int(box.name[len(OUTER_PREFIX) :].split("-")[0]))
    assert _boxes() <= boxes_before


# ------------------------------------------------------------------------------------------------ 4. test data
@pytest.fixture
def public_problem():
    """An OJBench problem in a world-readable folder (the worst case: a shared checkout of the test data)."""
    root = Path(tempfile.mkdtemp(prefix="vcore-ojbench-"))
    os.chmod(root, 0o755)
    problem = root / "NOI" / "42"
    problem.mkdir(parents=True)
    for i, (a, b) in enumerate([(1, 2), (40, 2), (7, -9)], start=1):
        (problem / f"{i}.in").write_text(f"{a} {b}\n")
        (problem / f"{i}.out").write_text(f"{a + b}\n")
    for p in [root / "NOI", *problem.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield problem
    shutil.rmtree(root)


def oj_payload(code: str, problem: Path, language: str = "python") -> dict:
    return {
        "kind": "code_ojbench",
        "code": code,
        "language": language,
        "problem_dir": str(problem),
        "time_limit_s": 5.0,
        "memory_mb": 512,
        "compile_timeout_s": 60.0,
    }


@needs_full
def test_test_data_is_invisible_from_the_box(public_problem):
    # Reads its own input, finds the .in file with the same text, prints the matching .out: Accepted if it can see them.
    cheat = (
        "import glob, sys\n"
        "data = sys.stdin.read()\n"
        f"for path in glob.glob({str(public_problem)!r} + '/*.in'):\n"
        "    if open(path).read() == data:\n"
        "        print(open(path[:-3] + '.out').read())\n"
    )
    assert judge_ojbench(oj_payload(cheat, public_problem))["verdict"] == "WA"
    listing = run_python(f"import os\nprint(os.path.exists({str(public_problem)!r}), sorted(os.listdir('/tmp')))")
    exists, _, names = listing.stdout.decode().partition(" ")
    assert exists == "False" and "vcore-ojbench" not in names, listing


@needs_gxx
def test_checker_files_never_enter_the_candidates_box(public_problem):
    """A bridged checker runs in a box of its own: no test's input/output/answer nor the checker source is in the
    candidate's box on any test. The candidate prints a wrong answer as soon as it sees one of them."""
    (public_problem / "init.yml").write_text(
        "checker: {name: bridged, args: {files: checker.cpp, type: testlib}}\n"
        "test_cases:\n- {in: 1.in, out: 1.out}\n- {in: 2.in, out: 2.out}\n- {in: 3.in, out: 3.out}\n"
    )
    (public_problem / "testlib.h").write_text("#include <fstream>\n")  # our own stand-in: the checker only needs files
    (public_problem / "checker.cpp").write_text(
        '#include "testlib.h"\n#include <string>\n'
        "int main(int argc, char** argv){ std::ifstream out(argv[2]), ans(argv[3]); std::string a, b;"
        " while(ans >> b){ if(!(out >> a) || a != b) return 1; } return (out >> a) ? 1 : 0; }\n"
    )
    honest_but_curious = (
        "import os\n"
        "seen = [f for f in os.listdir('.')"
        " if f in ('input.txt', 'output.txt', 'answer.txt', 'checker', 'testlib.h') or f.startswith('chk_')]\n"
        "a, b = map(int, input().split())\n"
        "print('LEAK', seen) if seen else print(a + b)\n"
    )
    verdict = judge_ojbench(oj_payload(honest_but_curious, public_problem))
    assert verdict["verdict"] == "AC" and verdict["passed"] == 3, verdict


# ------------------------------------------------------------------------------------------------ 6. sockets
@needs_full
def test_unix_sockets_are_unreachable(tmp_path):
    name = f"vcore-test-{secrets.token_hex(4)}"
    path = Path(tempfile.gettempdir()) / f"{name}.sock"
    servers = []
    for address in (str(path), "\0" + name):  # a socket file anyone may connect to, and an abstract socket
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(address)
        srv.listen(4)
        srv.settimeout(0.5)
        servers.append(srv)
    os.chmod(path, 0o777)
    try:
        probe = (
            "import socket\nreached = []\n"
            f"for address in [{str(path)!r}, '\\0' + {name!r}]:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n        s.connect(address)\n        reached.append(address)\n    except OSError:\n        pass\n"
            "print(len(reached))\n"
        )
        res = run_python(probe)
        assert res.returncode == 0 and res.stdout.strip() == b"0", res
        for srv in servers:
            with pytest.raises(socket.timeout):
                srv.accept()
    finally:
        for srv in servers:
            srv.close()
        path.unlink()


# ------------------------------------------------------------------------------------------------ 7. verdicts
def test_exit_status_above_128_is_an_exit_status_not_a_signal():
    res = run_python("import sys\nsys.exit(152)")
    assert (res.returncode, res.signal) == (152, None), res
    verdict = judge_lcb(lcb_payload("import sys\nsys.exit(152)"))
    assert verdict["verdict"] == "RE" and "exit status 152" in verdict["detail"], verdict
    crash = run_python("import ctypes\nctypes.string_at(0)")
    assert crash.returncode is None and crash.signal == 11, crash


def _kill_from_outside(signum: int, stop: threading.Event) -> None:
    """Send ``signum`` to the sandboxed ``sleep`` (found by the run's marker variable) as soon as it runs."""
    while not stop.wait(0.01):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                marked = f"{MARKER_VAR}=".encode() in Path(f"/proc/{d}/environ").read_bytes()
                if marked and Path(f"/proc/{d}/cmdline").read_bytes().startswith(b"sleep\0"):
                    os.kill(int(d), signum)
                    return
            except OSError:
                continue


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.parametrize("level", ["full", "net", "none"])
def test_a_program_killed_from_outside_is_reported_as_that_signal(level, signum):
    """At the namespace levels ``unshare`` passes a child's fatal signal on by re-raising it, which fails for SIGKILL
    ("sigprocmask unblock failed", exit 1): the status must come from the sandbox's own init, whatever unshare says."""
    if level == "full" and not FULL:
        pytest.skip(f"needs 'full' isolation (root, unshare); have {ISO.level!r}")
    if level == "net" and not (ROOT and shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("the 'net' level as tested here needs root, unshare and setpriv")
    iso = ISO if level == ISO.level else Isolation(level, uid_for(os.getpid()) if ROOT else None)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_from_outside, args=(signum, stop), daemon=True)
    killer.start()
    try:
        with Sandbox(isolation=iso) as sb:
            res = sb.run(["sleep", "30"], limits=Limits(time_s=20))
    finally:
        stop.set()
        killer.join()
    assert (res.returncode, res.signal, res.timed_out, res.isolation) == (None, signum, False, level), res
    assert res.wall_s < 15 and b"sigprocmask" not in res.stderr, res


def test_a_program_that_aborts_is_reported_as_sigabrt():
    """The program is not PID 1 of its namespace (the init is), so signals it sends itself are delivered."""
    res = run_python("import os\nos.abort()")
    assert (res.returncode, res.signal) == (None, signal.SIGABRT), res


@needs_gxx
def test_a_binary_over_the_file_size_limit_still_runs():
    big = (
        "#include <iostream>\nchar pad[80 << 20] = {1};  // initialised, so all 80 MB are in the binary\n"
        "int main(){ long a, b; volatile long i = 0; std::cin >> a >> b; "
        "std::cout << a + b + pad[i] - 1 << std::endl; }\n"
    )
    with Sandbox({"main.cpp": big}) as sb:
        assert (
            sb.run(
                CPP_COMPILE,
                limits=Limits(time_s=60, memory_mb=4096, max_processes=64, file_size_mb=256),
                export=["prog"],
            ).returncode
            == 0
        )
        assert (sb.outer / "seed" / "prog").stat().st_size > 64 << 20
        res = sb.run(["./prog"], stdin="1 2\n", limits=Limits(time_s=10))  # file_size_mb 64 binds the program only
    assert res.ok and res.stdout.strip() == b"3", res
    assert judge_lcb(lcb_payload(big, language="cpp", time_limit_s=10))["verdict"] == "AC"
