"""Helpers shared by the evaluation-harness tests: the shared data folder, composing benchmark configs, a local
LiveCodeBench fixture, and reference programs for the code grader. Fixtures live in ``tests/eval/conftest.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("VCORE_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
QWEN3_TOKENIZER = SHARED_DATA / "tokenizers" / "qwen3"

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}")
needs_qwen3 = pytest.mark.skipif(
    not (QWEN3_TOKENIZER / "vocab.json").is_file(), reason=f"Qwen3 tokenizer not found at {QWEN3_TOKENIZER}"
)


def compose_cfg(overrides: list[str]):
    """Compose ``conf/`` with no primary config, e.g. ``["+benchmark=[aime,gsm8k]", "+decoding=paper"]``."""
    from hydra import compose, initialize_config_dir

    from vcore.eval.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=None, overrides=overrides)


def load_benchmarks(names: list[str], extra: list[str] | None = None, local: bool = True):
    """BenchmarkConfig objects for ``names`` composed from conf/benchmark (local copies by default)."""
    from vcore.eval.config import benchmarks_from_cfg

    overrides = ["+benchmark=[" + ",".join(names) + "]"]
    if local:
        overrides += [f"benchmark.{n}.source=local" for n in names if not n.startswith("synthetic")]
        overrides += [f"benchmark.{n}.data_root={SHARED_DATA}" for n in names]
    return benchmarks_from_cfg(compose_cfg(overrides + (extra or [])).benchmark)


def lcb_rows():
    """Two problems in LiveCodeBench's code_generation_lite schema: stdin (A+B) and functional (LeetCode)."""
    from vcore.eval.code_grader import encode_private_tests

    stdin_public = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    stdin_private = [
        {"input": "10 -4\n", "output": "6\n", "testtype": "stdin"},
        {"input": "0 0\n", "output": "0\n", "testtype": "stdin"},
    ]
    fn_public = [{"input": "[1, 2, 3]\n2", "output": "[2, 4, 6]", "testtype": "functional"}]
    fn_private = [
        {"input": "[]\n5", "output": "[]", "testtype": "functional"},
        {"input": "[-1]\n-3", "output": "[3]", "testtype": "functional"},
    ]
    return [
        {
            "question_title": "A+B",
            "question_content": "Read two integers and print their sum.",
            "platform": "atcoder",
            "question_id": "abc000_a",
            "contest_id": "abc000",
            "contest_date": "2025-01-01T00:00:00",
            "starter_code": "",
            "difficulty": "easy",
            "public_test_cases": json.dumps(stdin_public),
            "private_test_cases": encode_private_tests(stdin_private),
            "metadata": "{}",
        },
        {
            "question_title": "Scale",
            "question_content": "Multiply every element of nums by k.",
            "platform": "leetcode",
            "question_id": "9999",
            "contest_id": "weekly-contest-0",
            "contest_date": "2025-01-02T00:00:00",
            "starter_code": "class Solution:\n    def scale(self, nums: List[int], k: int) -> List[int]:\n        ",
            "difficulty": "easy",
            "public_test_cases": json.dumps(fn_public),
            "private_test_cases": json.dumps(fn_private),
            "metadata": json.dumps({"func_name": "scale"}),
        },
    ]


def lcb_local_overrides(tmp_path):
    (tmp_path / "lcb.jsonl").write_text("\n".join(json.dumps(r) for r in lcb_rows()))
    fields = (
        "{question: question_content, answer: null, id: question_id, public_tests: public_test_cases, "
        "private_tests: private_test_cases, metadata: metadata, starter_code: starter_code}"
    )
    return [
        "benchmark.lcb.source=local",
        f"benchmark.lcb.data_root={tmp_path}",
        f"benchmark.lcb.local=[{{path: json, data_files: [lcb.jsonl], fields: {fields}}}]",
    ]


# Reference programs for the code grader: one per verdict, stdin programs (PY) and LeetCode-style classes (FN_PY).
PY = {
    "AC": "a, b = map(int, input().split())\nprint(a + b)",
    "WA": "a, b = map(int, input().split())\nprint(a * b)",
    "RE": "a, b = map(int, input().split())\nassert a <= 5\nprint(a + b)",
    "CE": "a, b = map(int, input().split()\nprint(a + b)",
    "TLE": "a, b = map(int, input().split())\nwhile a > 5:\n    pass\nprint(a + b)",
}
FN_PY = {
    "AC": "class Solution:\n    def scale(self, nums: List[int], k: int) -> List[int]:\n"
    "        return [x * k for x in nums]",
    "WA": "class Solution:\n    def scale(self, nums: List[int], k: int) -> List[int]:\n"
    "        return [x + k for x in nums]",
    "RE": "class Solution:\n    def scale(self, nums, k):\n        return [x * k for x in nums] if nums else 1 / 0",
    "CE": "class Solution:\n    def scale(self, nums, k)\n        return nums",
    "TLE": "class Solution:\n    def scale(self, nums, k):\n        while not nums:\n            pass\n"
    "        return [x * k for x in nums]",
}
