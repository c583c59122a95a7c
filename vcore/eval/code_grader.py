"""Judging model-written programs: LiveCodeBench and OJBench semantics, C++17 and Python.

A candidate passes only if every test passes; judging stops at the first failure (both LiveCodeBench and
DMOJ do). Verdicts: AC, WA, TLE, RE, CE (compile error, or no code block), SE (judge error: missing tests,
unsupported checker). Every program runs through vcore/eval/sandbox.py.

LiveCodeBench (``code_lcb``):
- stdin tests: the output and the expected output are split into stripped lines (after stripping both
  texts); line counts must agree; each line pair must be equal as text or, failing that, as a list of Decimal
  tokens.
- functional (LeetCode) tests: each input line is one JSON argument of ``Solution().<func_name>``
  (``func_name`` from the problem's metadata); the return value must ``==`` the JSON-decoded expected output.
  Python candidates are called through a small driver. C++ candidates (our convention, not LiveCodeBench's,
  stated in the ``code_functional_cpp`` prompt) read the JSON arguments from stdin and print the JSON result.
- private tests are stored as JSON, or as base64 -> zlib -> pickle -> JSON; the pickle is read with an
  unpickler that refuses every class, so a tampered file cannot run code here.
- 6 s per test (``benchmark.<name>.code.time_limit_s``).

OJBench (``code_ojbench``): DMOJ problem folders ``<tests_root>/<NOI|ICPC>/<id>/`` with ``init.yml``
(``test_cases`` of ``in``/``out`` files, optionally in ``archive`` zip and ``batched``), or bare ``*.in`` /
``*.out`` (``*.ans``) pairs. Checkers: ``standard`` (whitespace-separated tokens), ``identical``, ``floats*``
(``precision`` digits) and ``bridged`` testlib checkers (compiled in the sandbox). 10 s and 1 GB per test.
Python runs on CPython, not the PyPy that OJBench's DMOJ setup uses.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from vcore.boxed import answer_region
from vcore.eval.config import AnswerScope
from vcore.eval.sandbox import Limits, RunResult, Sandbox, probe_isolation

AC, WA, TLE, RE, CE, SE = "AC", "WA", "TLE", "RE", "CE", "SE"
SIGXCPU = 24

LANG_TAGS = {"cpp": ("cpp", "c++", "cc", "cxx", "c"), "python": ("python", "python3", "py")}
_FENCE_RE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.DOTALL)

CPP_COMPILE = ["g++", "-std=c++17", "-O2", "-pipe", "-DONLINE_JUDGE", "-o", "prog", "main.cpp"]
PYTHON_RUN = ["python3", "-E", "-s", "-B"]
# Imports made available to Python candidates, as LiveCodeBench's harness also does: model solutions often
# use typing names (List, Optional) or collections without importing them.
PYTHON_PRELUDE = (
    "import sys, math, re, heapq, bisect, itertools, functools, collections, string\n"
    "from typing import *\n"
    "from collections import *\n"
    "from itertools import *\n"
    "from functools import *\n"
    "from heapq import *\n"
    "from bisect import *\n"
    "sys.setrecursionlimit(1 << 20)\n"
)
_RESULT_MARK = "\n@@vcore-result@@"
PYTHON_FUNCTIONAL_DRIVER = (
    "import importlib.util, io, json, sys\n"
    "func = sys.argv[1]\n"
    "raw = sys.stdin.read()\n"
    "out = sys.stdout\n"
    "sys.stdin = io.StringIO('')\n"
    "spec = importlib.util.spec_from_file_location('solution', 'solution.py')\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(mod)\n"
    "cls = getattr(mod, 'Solution', None)\n"
    "target = getattr(cls(), func) if cls is not None else getattr(mod, func)\n"
    "args = [json.loads(line) for line in raw.split('\\n') if line.strip()]\n"
    "result = target(*args)\n"
    f"out.write({_RESULT_MARK!r} + json.dumps(result))\n"
    "out.flush()\n"
)


@dataclass
class CodeVerdict:
    verdict: str
    passed: int = 0
    total: int = 0
    detail: str | None = None
    isolation: str | None = None
    tests: list[str] = field(default_factory=list)  # per-test verdicts, up to the first failure

    @property
    def correct(self) -> bool:
        return self.verdict == AC


# ------------------------------------------------------------------------------------------------ extraction
def extract_code(output: str, language: str, scope: AnswerScope | str = AnswerScope.after_think) -> str | None:
    """The last fenced block tagged with ``language`` (cpp: cpp/c++/cc/cxx/c; python: python/py), else the last
    fenced block of any tag; None when there is none (or the thinking never closed, for ``after_think``)."""
    region = answer_region(output, scope)
    if region is None:
        return None
    blocks = [(m.group(1).strip().lower(), m.group(2)) for m in _FENCE_RE.finditer(region)]
    if not blocks:
        return None
    tagged = [code for tag, code in blocks if tag in LANG_TAGS[language]]
    code = tagged[-1] if tagged else blocks[-1][1]
    return code if code.strip() else None


# ------------------------------------------------------------------------------------------------ test data
class _NoClassesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test data")


def decode_tests(raw: str | list | None) -> list[dict]:
    """LiveCodeBench test lists: JSON text, or base64 -> zlib -> pickle -> JSON text."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    inner = _NoClassesUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(raw)))).load()
    return json.loads(inner) if isinstance(inner, (str, bytes)) else inner


def encode_private_tests(tests: list[dict]) -> str:
    """The inverse of :func:`decode_tests` for the compressed form (used to write test fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


# ------------------------------------------------------------------------------------------------ comparison
def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except InvalidOperation:
        return None


def lcb_stdout_match(output: str, expected: str) -> bool:
    got = [line.strip() for line in output.strip().split("\n")]
    want = [line.strip() for line in expected.strip().split("\n")]
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        da, db = _decimals(a), _decimals(b)
        if da is None or db is None or da != db:
            return False
    return True


def functional_match(output_text: str, expected: str) -> bool:
    try:
        return json.loads(output_text) == json.loads(expected)
    except (json.JSONDecodeError, TypeError):
        return False


def tokens_match(output: bytes, expected: bytes) -> bool:
    """DMOJ ``standard`` checker: equal whitespace-separated tokens."""
    return output.split() == expected.split()


def floats_match(output: bytes, expected: bytes, precision: int = 6, mode: str = "default") -> bool:
    """DMOJ ``floats`` checkers: numeric tokens within 10^-precision (absolute, relative or either)."""
    got, want = output.split(), expected.split()
    if len(got) != len(want):
        return False
    eps = 10.0 ** (-precision)
    for a, b in zip(got, want):
        try:
            fa, fb = float(a), float(b)
        except ValueError:
            if a != b:
                return False
            continue
        abs_ok = abs(fa - fb) <= eps
        rel_ok = abs(fa - fb) <= eps * abs(fb)
        ok = {"absolute": abs_ok, "relative": rel_ok}.get(mode, abs_ok or rel_ok)
        if not ok:
            return False
    return True


# ------------------------------------------------------------------------------------------------ running
def _run_verdict(res: RunResult) -> str | None:
    """TLE/RE from how the run ended; None when it exited 0 within its limits (the output decides). Going over
    the run's memory limit is RE, as LiveCodeBench reports it (the detail says which limit)."""
    if res.memory_limit:
        return RE
    if res.timed_out or res.signal == SIGXCPU:
        return TLE
    if res.output_limit or res.returncode != 0:
        return RE
    return None


def _why(verdict: str, res: RunResult) -> str:
    """ " (how the run ended)" for a TLE or RE verdict's detail, else ""."""
    return f" ({_ending(res)})" if verdict in (RE, TLE) else ""


def _ending(res: RunResult) -> str:
    if res.memory_limit:
        return f"memory limit exceeded (peak {res.peak_memory_mb or 0:.0f} MB)"
    if res.timed_out:
        return f"wall-clock limit ({res.wall_s:.1f} s)"
    if res.output_limit:
        return "output limit"
    if res.signal is not None:
        return f"killed by signal {res.signal}"
    return f"exit status {res.returncode}"


def _tail(data: bytes, n: int = 600) -> str:
    return data[-n:].decode("utf-8", "replace")


def prepare(sb: Sandbox, code: str, language: str, compile_timeout_s: float) -> str | None:
    """Put the candidate into the sandbox (compiling C++); returns a CE message or None."""
    if language == "cpp":
        sb.add_file("main.cpp", code)
        res = sb.run(
            CPP_COMPILE,
            limits=Limits(time_s=compile_timeout_s, memory_mb=4096, max_processes=64, file_size_mb=256),
            export=["prog"],
        )
        if res.timed_out:
            return f"compilation exceeded {compile_timeout_s:.0f} s"
        if res.returncode != 0 or not sb.has_file("prog"):
            return "compilation failed:\n" + _tail(res.stderr, 2000)
        return None
    if language == "python":
        sb.add_file("main.py", PYTHON_PRELUDE + code)
        sb.add_file("solution.py", PYTHON_PRELUDE + code)
        sb.add_file("driver.py", PYTHON_FUNCTIONAL_DRIVER)
        # A syntax error is Python's compile error: check it without running anything.
        try:
            compile(PYTHON_PRELUDE + code, "main.py", "exec")
        except (SyntaxError, ValueError) as err:
            return f"syntax error: {err}"
        except (
            RecursionError,
            MemoryError,
        ) as err:  # nesting too deep for CPython's compiler: still the program's fault
            return f"does not compile: {type(err).__name__} (expressions nested or chained too deeply)"
        return None
    raise ValueError(f"unknown language {language!r}: use cpp or python (option code.language)")


def _stdin_argv(language: str) -> list[str]:
    return ["./prog"] if language == "cpp" else [*PYTHON_RUN, "main.py"]


def judge_lcb(payload: dict) -> dict:
    """Grade one candidate on one LiveCodeBench problem. Runs in a grading worker; returns a CodeVerdict dict.

    payload: code (str | None), language (stdin problems), functional_language, public_tests, private_tests,
    metadata, time_limit_s, memory_mb, compile_timeout_s, stop_at_first_failure, isolation.
    """
    tests = decode_tests(payload.get("public_tests")) + decode_tests(payload.get("private_tests"))
    if not tests:
        return asdict(CodeVerdict(SE, detail="problem has no tests"))
    functional = tests[0].get("testtype") == "functional"
    language = payload["functional_language"] if functional else payload["language"]
    code = payload.get("code")
    if code is None:
        return asdict(CodeVerdict(CE, total=len(tests), detail=f"no ```{language} code block in the output"))
    func_name = None
    if functional:
        meta = payload.get("metadata") or "{}"
        func_name = (json.loads(meta) if isinstance(meta, str) else meta).get("func_name")
        if not func_name:
            return asdict(CodeVerdict(SE, total=len(tests), detail="functional problem without metadata.func_name"))
    limits = Limits(time_s=payload["time_limit_s"], memory_mb=payload["memory_mb"])
    with Sandbox(isolation=probe_isolation(payload.get("isolation", "auto"))) as sb:
        err = prepare(sb, code, language, payload["compile_timeout_s"])
        if err:
            return asdict(CodeVerdict(CE, total=len(tests), detail=err, isolation=sb.isolation.level))
        per_test, first_fail = [], None
        for i, test in enumerate(tests):
            if functional and language == "python":
                res = sb.run([*PYTHON_RUN, "driver.py", func_name], stdin=test["input"], limits=limits)
            else:
                res = sb.run(_stdin_argv(language), stdin=test["input"], limits=limits)
            verdict = _run_verdict(res)
            if verdict is None:
                text = res.stdout.decode("utf-8", "replace")
                if functional:
                    text = (
                        text.rsplit(_RESULT_MARK, 1)[-1]
                        if language == "python"
                        else (text.strip().split("\n") or [""])[-1]
                    )
                    ok = functional_match(text, test["output"])
                else:
                    ok = lcb_stdout_match(text, test["output"])
                verdict = AC if ok else WA
            per_test.append(verdict)
            if verdict != AC and first_fail is None:
                first_fail = (i, verdict, res)
                if payload.get("stop_at_first_failure", True):
                    break
        passed = sum(v == AC for v in per_test)
        if first_fail is None:
            return asdict(CodeVerdict(AC, passed, len(tests), isolation=sb.isolation.level, tests=per_test))
        i, verdict, res = first_fail
        detail = f"test {i}: {verdict}{_why(verdict, res)}" + (f"; stderr: {_tail(res.stderr)}" if res.stderr else "")
        return asdict(CodeVerdict(verdict, passed, len(tests), detail, sb.isolation.level, per_test))


# ------------------------------------------------------------------------------------------------ OJBench
@dataclass
class DmojProblem:
    tests: list[tuple[str, str]]  # (input name, output name)
    checker: dict
    root: Path
    archive: str | None = None

    def read(self, name: str) -> bytes:
        if self.archive:
            with zipfile.ZipFile(_inside(self.root, self.archive)) as zf:
                return zf.read(name)
        return _inside(self.root, name).read_bytes()


def _inside(root: Path, name: str, where: str = "") -> Path:
    """``root / name``, refusing a name that leads out of ``root`` (``../``, an absolute path, a symlink out): a
    problem's files must never make the harness, which may run as root, read and feed it anything else."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{where or root}: file {name!r} is outside the problem folder {root}")
    return path


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_dmoj_problem(problem_dir: Path) -> DmojProblem:
    """Tests and checker of a DMOJ problem folder (raises FileNotFoundError / ValueError with the reason)."""
    import yaml

    problem_dir = Path(problem_dir)
    if not problem_dir.is_dir():
        raise FileNotFoundError(f"no test folder {problem_dir} (check benchmark.<name>.code.tests_root)")
    init = problem_dir / "init.yml"
    if init.is_file():
        spec = yaml.safe_load(init.read_text()) or {}
        cases = []
        for case in spec.get("test_cases") or []:
            for sub in case.get("batched", [case]):
                if "in" not in sub or "out" not in sub:
                    raise ValueError(f"{init}: test case without in/out files ({sub}) is not supported")
                cases.append((sub["in"], sub["out"]))
        checker = spec.get("checker", "standard")
        checker = (
            {"name": checker, "args": {}}
            if isinstance(checker, str)
            else {"name": checker.get("name", "standard"), "args": checker.get("args") or {}}
        )
        if not cases:
            raise ValueError(f"{init}: no test_cases")
        archive = spec.get("archive")
        if archive is not None:
            _inside(problem_dir, str(archive), str(init))
        else:
            for name in (n for case in cases for n in case):
                _inside(problem_dir, str(name), str(init))
        files = checker["args"].get("files") or []
        for name in [files] if isinstance(files, str) else files:
            _inside(problem_dir, str(name), str(init))
        return DmojProblem(cases, checker, problem_dir, archive)
    ins = sorted((p for p in problem_dir.iterdir() if p.suffix == ".in"), key=lambda p: _natural_key(p.name))
    cases = []
    for p in ins:
        out = next((p.with_suffix(s) for s in (".out", ".ans") if p.with_suffix(s).is_file()), None)
        if out is not None:
            cases.append((p.name, out.name))
    if not cases:
        raise FileNotFoundError(f"{problem_dir}: neither init.yml nor *.in/*.out pairs")
    return DmojProblem(cases, {"name": "standard", "args": {}}, problem_dir)


def _check_output(
    problem: DmojProblem, checker: Sandbox | None, inp: bytes, out: bytes, ans: bytes, limits: Limits
) -> str:
    name, args = problem.checker["name"], problem.checker["args"]
    if name == "standard":
        return AC if tokens_match(out, ans) else WA
    if name == "identical":
        return AC if out == ans else WA
    if name in ("floats", "floatsabs", "floatsrel"):
        mode = {"floatsabs": "absolute", "floatsrel": "relative"}.get(name, args.get("error_mode", "default"))
        return AC if floats_match(out, ans, int(args.get("precision", 6)), mode) else WA
    if name == "bridged" and checker is not None:
        for fname, data in (("input.txt", inp), ("output.txt", out), ("answer.txt", ans)):
            checker.add_file(fname, data)
        res = checker.run(
            ["./checker", "input.txt", "output.txt", "answer.txt"],
            limits=Limits(time_s=max(10.0, limits.time_s), memory_mb=2048),
        )
        if res.timed_out or (res.signal is not None):
            return SE
        return AC if res.returncode == 0 else WA
    return SE


def _prepare_checker(problem: DmojProblem, sb: Sandbox) -> str | None:
    """Compile a bridged (testlib) checker in ``sb``, a sandbox of its own: the candidate's box never holds the
    checker's source or any test's input, output or answer. Returns an error or None."""
    if problem.checker["name"] != "bridged":
        return None
    args = problem.checker["args"]
    files = args.get("files")
    files = [files] if isinstance(files, str) else list(files or [])
    if not files or args.get("type", "testlib") != "testlib":
        return f"unsupported bridged checker {args}"
    for f in files + ["testlib.h"]:
        if _inside(problem.root, f).is_file():
            sb.add_file(f"chk_{f}" if f != "testlib.h" else f, _inside(problem.root, f).read_bytes())
    res = sb.run(
        ["g++", "-std=c++17", "-O2", "-o", "checker", *[f"chk_{f}" for f in files]],
        limits=Limits(time_s=60, memory_mb=4096, max_processes=64, file_size_mb=256),
        export=["checker"],
    )
    if res.returncode != 0 or not sb.has_file("checker"):
        return "checker failed to compile: " + _tail(res.stderr)
    return None


def judge_ojbench(payload: dict) -> dict:
    """Grade one candidate on one OJBench problem. payload: code, language, problem_dir, time_limit_s,
    memory_mb, compile_timeout_s, isolation."""
    try:
        problem = load_dmoj_problem(Path(payload["problem_dir"]))
    except (OSError, ValueError) as err:
        return asdict(CodeVerdict(SE, detail=str(err)))
    language, code, n = payload["language"], payload.get("code"), len(problem.tests)
    if code is None:
        return asdict(CodeVerdict(CE, total=n, detail=f"no ```{language} code block in the output"))
    limits = Limits(time_s=payload["time_limit_s"], memory_mb=payload["memory_mb"])
    with Sandbox(isolation=probe_isolation(payload.get("isolation", "auto"))) as sb:
        err = prepare(sb, code, language, payload["compile_timeout_s"])
        if err:
            return asdict(CodeVerdict(CE, total=n, detail=err, isolation=sb.isolation.level))
        with Sandbox(isolation=sb.isolation) as checker:
            err = _prepare_checker(problem, checker)
            if err:
                return asdict(CodeVerdict(SE, total=n, detail=err, isolation=sb.isolation.level))
            per_test = []
            for i, (fin, fout) in enumerate(problem.tests):
                # Only this test's input enters the candidate's box, as its stdin; the expected output stays here.
                inp, ans = problem.read(fin), problem.read(fout)
                res = sb.run(_stdin_argv(language), stdin=inp, limits=limits)
                verdict = _run_verdict(res) or _check_output(problem, checker, inp, res.stdout, ans, limits)
                per_test.append(verdict)
                if verdict != AC:
                    return asdict(
                        CodeVerdict(
                            verdict,
                            i,
                            n,
                            f"test {i} ({fin}): {verdict}{_why(verdict, res)}",
                            sb.isolation.level,
                            per_test,
                        )
                    )
            return asdict(CodeVerdict(AC, n, n, isolation=sb.isolation.level, tests=per_test))


def judge(payload: dict[str, Any]) -> dict:
    """Worker entry point: dispatch on ``payload["kind"]`` (code_lcb | code_ojbench)."""
    kind = payload["kind"]
    if kind == "code_lcb":
        return judge_lcb(payload)
    if kind == "code_ojbench":
        return judge_ojbench(payload)
    raise ValueError(f"unknown code grader {kind!r}")
