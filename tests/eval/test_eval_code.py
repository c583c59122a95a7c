"""Code grading with LiveCodeBench and OJBench semantics, in C++17 and Python: AC, WA, RE, CE and TLE programs
for stdin and functional (LeetCode) problems, DMOJ test folders, and the output comparisons."""

import json
import pickle
import zipfile

import pytest

from tests.eval.eval_helpers import FN_PY, PY
from vcore.eval.code_grader import (
    decode_tests,
    encode_private_tests,
    extract_code,
    floats_match,
    judge,
    lcb_stdout_match,
    load_dmoj_problem,
    tokens_match,
)
from vcore.eval.workers import map_with_timeout

pytestmark = pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="g++ not installed")

AB_PUBLIC = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
AB_PRIVATE = [
    {"input": "10 -4\n", "output": "6\n", "testtype": "stdin"},
    {"input": "1000000000 1000000000\n", "output": "2000000000\n", "testtype": "stdin"},
]
FN_PUBLIC = [{"input": "[1, 2, 3]\n2", "output": "[2, 4, 6]", "testtype": "functional"}]
FN_PRIVATE = [
    {"input": "[]\n5", "output": "[]", "testtype": "functional"},
    {"input": "[-1]\n-3", "output": "[3]", "testtype": "functional"},
]

CPP = {
    "AC": '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}',
    "WA": '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a-b<<"\\n";}',
    "RE": "#include <cstdlib>\n#include <iostream>\n"
    'int main(){long long a,b;std::cin>>a>>b; if(a>5) std::abort(); std::cout<<a+b<<"\\n";}',
    "CE": "#include <iostream>\nint main(){ this is not C++ }",
    "TLE": "#include <iostream>\n"
    "int main(){long long a,b;std::cin>>a>>b; volatile unsigned long x=0; if(a>5) for(;;) x++; "
    'std::cout<<a+b<<"\\n";}',
}
_FN_CPP_BODY = (
    "#include <cctype>\n#include <iostream>\n#include <string>\n#include <vector>\n"
    "int main(){std::string line; std::getline(std::cin,line); long long k; std::cin>>k;"
    "std::vector<long long> v; std::string num;"
    "for(char c: line){ if(c=='-'||isdigit((unsigned char)c)) num+=c; "
    "else if(!num.empty()){ v.push_back(std::stoll(num)); num.clear(); } }"
    "if(!num.empty()) v.push_back(std::stoll(num));"
    "%s"
    'std::cout<<"["; for(size_t i=0;i<v.size();i++){ if(i) std::cout<<", "; std::cout<<v[i]*k; } std::cout<<"]\\n";}'
)
FN_CPP = {
    "AC": _FN_CPP_BODY % "",
    "WA": _FN_CPP_BODY % "k += 1;",
    "RE": "#include <cstdlib>\n" + _FN_CPP_BODY % "if(v.empty()) std::abort();",
    "CE": "int main( { return 0; }",
    "TLE": _FN_CPP_BODY % "volatile int spin=0; if(v.empty()) for(;;) spin++;",
}


def fenced(code: str, lang: str) -> str:
    return f"<think>\nplan\n</think>\nHere is my solution:\n```{lang}\n{code}\n```\n"


def lcb_payload(code: str | None, language: str, functional: bool) -> dict:
    public, private = (FN_PUBLIC, FN_PRIVATE) if functional else (AB_PUBLIC, AB_PRIVATE)
    return {
        "kind": "code_lcb",
        "code": code,
        "language": language,
        "functional_language": language,
        "functional": functional,
        "public_tests": json.dumps(public),
        "private_tests": encode_private_tests(private),
        "metadata": json.dumps({"func_name": "scale"}) if functional else "{}",
        "time_limit_s": 1.0,
        "memory_mb": 512,
        "compile_timeout_s": 30.0,
        "stop_at_first_failure": True,
        "isolation": "auto",
    }


def write_dmoj(root):
    """NOI/1001 with init.yml (one batch, zip archive), ICPC/2002 with bare .in/.ans pairs."""
    noi = root / "NOI" / "1001"
    noi.mkdir(parents=True)
    with zipfile.ZipFile(noi / "data.zip", "w") as zf:
        for i, case in enumerate(AB_PUBLIC + AB_PRIVATE, 1):
            zf.writestr(f"{i}.in", case["input"])
            zf.writestr(f"{i}.out", case["output"])
    (noi / "init.yml").write_text(
        "archive: data.zip\n"
        "test_cases:\n"
        "- {in: 1.in, out: 1.out, points: 10}\n"
        "- batched:\n  - {in: 2.in, out: 2.out}\n  - {in: 3.in, out: 3.out}\n  points: 90\n"
    )
    icpc = root / "ICPC" / "2002"
    icpc.mkdir(parents=True)
    for i, case in enumerate(AB_PUBLIC + AB_PRIVATE, 1):
        (icpc / f"{i}.in").write_text(case["input"])
        (icpc / f"{i}.ans").write_text("  " + case["output"].strip() + "  \n\n")  # whitespace differences are fine
    return root


def oj_payload(code: str | None, language: str, problem_dir) -> dict:
    return {
        "kind": "code_ojbench",
        "code": code,
        "language": language,
        "problem_dir": str(problem_dir),
        "time_limit_s": 1.0,
        "memory_mb": 512,
        "compile_timeout_s": 30.0,
        "isolation": "auto",
    }


CASES = (
    [("lcb-stdin", "cpp", v, c) for v, c in CPP.items()]
    + [("lcb-stdin", "python", v, c) for v, c in PY.items()]
    + [("lcb-functional", "python", v, c) for v, c in FN_PY.items()]
    + [("lcb-functional", "cpp", v, c) for v, c in FN_CPP.items()]
    + [("ojbench-NOI", "cpp", v, c) for v, c in CPP.items()]
    + [("ojbench-ICPC", "python", v, c) for v, c in PY.items()]
)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Every case judged once, in two grading worker processes (the way the harness runs them)."""
    root = write_dmoj(tmp_path_factory.mktemp("ojbench"))
    payloads = []
    for kind, lang, _, code in CASES:
        extracted = extract_code(fenced(code, lang), lang)
        if kind.startswith("lcb"):
            payloads.append(lcb_payload(extracted, lang, kind == "lcb-functional"))
        else:
            group = kind.split("-")[1]
            payloads.append(oj_payload(extracted, lang, root / group / ("1001" if group == "NOI" else "2002")))
    results = map_with_timeout(judge, payloads, workers=2, timeout_s=120, progress=False)
    return {(kind, lang, want): res for (kind, lang, want, _), res in zip(CASES, results)}


@pytest.mark.parametrize("kind, lang, want", [(k, lang, v) for k, lang, v, _ in CASES])
def test_verdicts(judged, kind, lang, want):
    res = judged[(kind, lang, want)]
    assert res.status == "ok", res.error
    assert res.value["verdict"] == want, res.value
    if want == "AC":
        assert res.value["passed"] == res.value["total"] == 3


def test_missing_code_is_a_compile_error_and_missing_tests_a_judge_error(tmp_path):
    assert judge(lcb_payload(None, "cpp", False))["verdict"] == "CE"
    # Programs CPython cannot compile for depth are compile errors, not judge errors.
    for code, error in (("x = " + "1+" * 200000 + "1", "RecursionError"), ("x = " + "-" * 200000 + "1", "MemoryError")):
        verdict = judge(lcb_payload(code, "python", False))
        assert verdict["verdict"] == "CE" and error in verdict["detail"], verdict
    assert judge(oj_payload("int main(){}", "cpp", tmp_path / "nowhere"))["verdict"] == "SE"


@pytest.mark.parametrize(
    "output, expected, ok",
    [
        ("3\n", "3", True),
        ("  3  \n\n", "3\n", True),
        ("1 2\n3 4", "1 2\n3 4\n", True),
        ("1.0 2", "1 2.00", True),  # Decimal fallback per line
        ("1e3", "1000", True),
        ("1 2 3", "1 2", False),
        ("3\n4", "3", False),  # line counts differ
        ("YES", "yes", False),
        ("0.333", "0.3333", False),
    ],
)
def test_lcb_stdout_match(output, expected, ok):
    assert lcb_stdout_match(output, expected) is ok


def test_dmoj_checkers_and_folders(tmp_path):
    assert tokens_match(b"1  2\n3\n", b"1 2 3")
    assert not tokens_match(b"1 2", b"1 2 3")
    assert floats_match(b"0.3333333", b"0.333333", precision=6)
    assert not floats_match(b"0.34", b"0.333333", precision=6)
    assert floats_match(b"1000000.1", b"1000000", precision=6, mode="relative")
    root = write_dmoj(tmp_path)
    noi = load_dmoj_problem(root / "NOI" / "1001")
    assert noi.tests == [("1.in", "1.out"), ("2.in", "2.out"), ("3.in", "3.out")] and noi.read("2.in") == b"10 -4\n"
    assert load_dmoj_problem(root / "ICPC" / "2002").tests[0] == ("1.in", "1.ans")


def test_private_tests_decode_without_running_pickled_code():
    tests = [{"input": "x", "output": "y", "testtype": "stdin"}]
    assert decode_tests(encode_private_tests(tests)) == tests
    assert decode_tests(json.dumps(tests)) == tests

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import base64
    import zlib

    payload = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        decode_tests(payload)


def test_extract_code():
    out = "```python\nprint(1)\n```\ntext\n```cpp\nint main(){}\n```\n```\nplain\n```"
    assert extract_code(out, "cpp", "full") == "int main(){}\n"
    assert extract_code(out, "python", "full") == "print(1)\n"
    assert extract_code("```\nonly untagged\n```", "cpp", "full") == "only untagged\n"
    assert extract_code("no code here", "cpp") is None
    assert extract_code("<think>\n```cpp\nint main(){}\n```\n", "cpp") is None  # thinking never closed
    assert extract_code("<think>\n```cpp\nint main(){}\n```\n", "cpp", "full") == "int main(){}\n"


@pytest.mark.parametrize(
    "init",
    [
        "test_cases:\n- {in: ../../../etc/shadow, out: 1.out}\n",
        "test_cases:\n- {in: /etc/passwd, out: 1.out}\n",
        "test_cases:\n- batched:\n  - {in: 1.in, out: ../secret.out}\n",
        "archive: ../elsewhere.zip\ntest_cases:\n- {in: 1.in, out: 1.out}\n",
        "checker: {name: bridged, args: {files: ../../checker.cpp}}\ntest_cases:\n- {in: 1.in, out: 1.out}\n",
        "test_cases:\n- {in: link.in, out: 1.out}\n",
    ],
    ids=["dotdot", "absolute", "batched", "archive", "checker", "symlink"],
)
def test_problem_files_are_confined_to_the_problem_folder(tmp_path, init):
    problem = tmp_path / "NOI" / "1001"
    problem.mkdir(parents=True)
    (tmp_path / "secret.out").write_text("secret")
    (problem / "1.in").write_text("1 2\n")
    (problem / "1.out").write_text("3\n")
    (problem / "link.in").symlink_to("/etc/passwd")
    (problem / "init.yml").write_text(init)
    with pytest.raises(ValueError, match="outside the problem folder"):
        load_dmoj_problem(problem)
    verdict = judge(oj_payload("print(3)", "python", problem))
    assert verdict["verdict"] == "SE" and "outside the problem folder" in verdict["detail"]
