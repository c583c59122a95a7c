"""Hostile programs are contained, judged as failures, and leave the machine as it was.

Each program is run twice: directly in a Sandbox (to check what happened) and through the LiveCodeBench judge
on an A+B problem (to check it is reported as a failure, never as a harness crash).
"""

import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest

from vcore.eval.code_grader import CPP_COMPILE, PYTHON_RUN, judge_lcb
from vcore.eval.sandbox import MARKER_VAR, Limits, Sandbox, probe_isolation

pytestmark = [
    pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="g++ not installed"),
    pytest.mark.alone,  # hostile programs, and checks of every process on the machine (tests/conftest.py)
]
ISO = probe_isolation()
FULL = ISO.level == "full"
OUTSIDE_TMP = Path(f"/tmp/vcore-sandbox-escape-{secrets.token_hex(4)}")


def hostile_programs(outside: Path, port: int) -> dict[str, dict[str, str]]:
    return {
        "infinite_loop": {
            "python": "while True:\n    pass",
            "cpp": "int main(){ volatile unsigned long x = 0; for(;;) x++; }",
        },
        "fork_bomb": {
            "python": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            "cpp": "#include <unistd.h>\nint main(){ for(;;) fork(); }",
        },
        "allocate_10gb": {
            "python": "x = bytearray(10 * 1024 ** 3)\nprint(len(x))",
            "cpp": "#include <cstdlib>\n#include <cstring>\n"
            "int main(){ size_t n = 10ULL << 30; char* p = (char*)std::malloc(n); if(!p) return 3; "
            "std::memset(p, 1, n); return 0; }",
        },
        "output_1gb": {
            "python": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
            "cpp": "#include <cstdio>\nstatic char b[1 << 20];\n"
            "int main(){ for(int i = 0; i < (1 << 20); i++) b[i] = 'x'; "
            "for(int i = 0; i < 1024; i++) fwrite(b, 1, sizeof b, stdout); }",
        },
        "write_outside": {
            "python": f"for p in [{str(outside)!r}, {str(OUTSIDE_TMP)!r}]:\n"
            "    try:\n        open(p, 'w').write('escaped')\n    except OSError:\n        pass",
            "cpp": (
                "#include <cstdio>\nint main(){ const char* ps[] = {%s, %s}; "
                'for(auto p : ps){ FILE* f = std::fopen(p, "w"); if(f){ std::fputs("escaped", f); std::fclose(f);} } }'
            )
            % (json.dumps(str(outside)), json.dumps(str(OUTSIDE_TMP))),
        },
        "network": {
            "python": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'hello')",
            "cpp": (
                "#include <arpa/inet.h>\n#include <netinet/in.h>\n#include <sys/socket.h>\n#include <unistd.h>\n"
                "int main(){ int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{}; a.sin_family = AF_INET;"
                " a.sin_port = htons(%d);"
                ' inet_pton(AF_INET, "127.0.0.1", &a.sin_addr); if(connect(s, (sockaddr*)&a, sizeof a) != 0) return 4;'
                ' write(s, "hello", 5); return 0; }'
            )
            % port,
        },
    }


def sandbox_uid_processes(uid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def marked_processes():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if f"{MARKER_VAR}=".encode() in Path(f"/proc/{d}/environ").read_bytes():
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def describe(pid: int) -> str:
    """What a leftover process is, for the failure message: its command line, state and parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return f"pid {pid} state {stat[0]} parent {stat[1]}: {cmd}"
    except OSError:
        return f"pid {pid} (gone)"


@pytest.fixture(scope="module")
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def mounts_before():
    return Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize("language", ["python", "cpp"])
@pytest.mark.parametrize(
    "attack", ["infinite_loop", "fork_bomb", "allocate_10gb", "output_1gb", "write_outside", "network"]
)
def test_hostile_program_is_contained(attack, language, tmp_path, listener, mounts_before):
    outside = tmp_path / "escaped.txt"
    code = hostile_programs(outside, listener.getsockname()[1])[attack][language]
    limits = Limits(time_s=1.5, memory_mb=512)
    start = time.monotonic()
    with Sandbox({"main.cpp" if language == "cpp" else "main.py": code}) as sb:
        if language == "cpp":
            assert (
                sb.run(
                    CPP_COMPILE, limits=Limits(time_s=60, memory_mb=4096, max_processes=64), export=["prog"]
                ).returncode
                == 0
            )
            argv = ["./prog"]
        else:
            argv = [*PYTHON_RUN, "main.py"]
        res = sb.run(argv, limits=limits)
        box = sb.outer
    assert time.monotonic() - start < 30
    assert not box.exists()  # the sandbox folder is gone
    if attack in ("infinite_loop", "fork_bomb"):
        assert res.timed_out or res.returncode != 0
    if attack == "allocate_10gb":
        assert res.returncode != 0 and not res.timed_out
    if attack == "output_1gb":
        assert res.output_limit and len(res.stdout) <= limits.max_output_bytes
    if attack == "write_outside":
        if not FULL:
            pytest.skip(f"read-only filesystem needs full isolation (have {ISO.level})")
        assert not outside.exists() and not OUTSIDE_TMP.exists()
    if attack == "network":
        if ISO.level == "none":
            pytest.skip("no network namespace available here")
        assert res.returncode != 0
        with pytest.raises(socket.timeout):
            listener.accept()

    # Through the judge: a failure verdict, and the harness carries on.
    payload = {
        "kind": "code_lcb",
        "code": code,
        "language": language,
        "functional_language": language,
        "public_tests": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_tests": None,
        "metadata": "{}",
        "time_limit_s": 1.5,
        "memory_mb": 512,
        "compile_timeout_s": 60.0,
        "stop_at_first_failure": True,
    }
    assert judge_lcb(payload)["verdict"] in ("WA", "TLE", "RE")

    # The machine is as it was: no processes left, no mounts leaked, the harness can still fork.
    deadline = time.monotonic() + 5
    while (
        marked_processes() or (ISO.uid is not None and sandbox_uid_processes(ISO.uid))
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not marked_processes(), [describe(pid) for pid in marked_processes()]
    if ISO.uid is not None and ISO.uid != os.getuid():
        assert not sandbox_uid_processes(ISO.uid)
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert os.system("true") == 0


def test_environment_is_minimal_and_confined(tmp_path):
    code = (
        "import os, json\nprint(json.dumps({'cwd': os.getcwd(), 'home': os.environ.get('HOME'), "
        "'tmp': os.environ.get('TMPDIR'), 'keys': sorted(os.environ), 'uid': os.getuid()}))"
    )
    os.environ["VCORE_TEST_SECRET"] = "do-not-leak"
    try:
        with Sandbox({"main.py": code}) as sb:
            res = sb.run([*PYTHON_RUN, "main.py"])
            box = str(sb.box)
    finally:
        del os.environ["VCORE_TEST_SECRET"]
    info = json.loads(res.stdout)
    assert info["cwd"] == info["home"] == info["tmp"] == box
    assert "VCORE_TEST_SECRET" not in info["keys"]
    if ISO.uid is not None:
        assert info["uid"] == ISO.uid != 0


def test_each_run_starts_from_the_seed_files():
    with Sandbox({"main.py": "import os\nprint(sorted(os.listdir('.')))\nopen('junk', 'w').write('x')"}) as sb:
        first = sb.run([*PYTHON_RUN, "main.py"]).stdout
        second = sb.run([*PYTHON_RUN, "main.py"]).stdout
    assert first == second and b"junk" not in second


def test_auto_isolation_says_when_it_settles_for_less(monkeypatch, caplog):
    import logging
    import shutil

    import vcore.eval.sandbox as sandbox

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no unshare on this host
    with caplog.at_level(logging.WARNING, logger="vcore.eval.sandbox"):
        iso = sandbox._probe.__wrapped__("auto")
    assert iso.level == "none"
    assert "isolation 'none', weaker than 'full'" in caplog.text and "no network isolation" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vcore.eval.sandbox"):
        sandbox._probe.__wrapped__("none")  # asked for: nothing to warn about
    assert not caplog.text
