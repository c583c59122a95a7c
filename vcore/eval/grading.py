"""Grading generated samples: math (math-verify in worker processes), multiple choice, and code (sandboxed judges).

A grade is ``{extracted, correct, verdict, detail}``; each is handed to ``on_grade`` as soon as it is known, so the
evaluation journal keeps it even if the job is killed before the benchmark's other samples are graded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vcore.boxed import extract_boxed
from vcore.checks import ConfigError
from vcore.eval import code_grader, math_grader
from vcore.eval.benchmarks import EvalItem, LoadedBenchmark, ojbench_problem_dir
from vcore.eval.choice import grade_choice
from vcore.eval.config import BenchmarkConfig, GraderKind, GradingConfig
from vcore.eval.sandbox_cleanup import reclaim as sandbox_reclaim
from vcore.eval.workers import TaskResult, map_with_timeout

CODE_GRADERS = (GraderKind.code_lcb, GraderKind.code_ojbench)


def check_ready(lb: LoadedBenchmark) -> None:
    """Fail before generating when grading could not run."""
    cfg = lb.config
    if cfg.grader == GraderKind.code_ojbench:
        root = cfg.code.tests_root
        if not root or not Path(root).is_dir():
            raise ConfigError(
                f"benchmark.{cfg.name}.code.tests_root is {root!r}: point it at a checkout of He-Ren/OJBench_testdata "
                "(the folder holding NOI/ and ICPC/)"
            )
    if not lb.items:
        raise ConfigError(f"benchmark.{cfg.name}: no items (check its source, fields and where filters)")


def _code_payload(item: EvalItem, cfg: BenchmarkConfig, output: str, grading: GradingConfig) -> tuple[dict, str | None]:
    spec = item.code or {}
    if cfg.grader == GraderKind.code_lcb:
        language = spec["functional_language"] if spec["functional"] else spec["language"]
    else:
        language = spec["language"]
    code = code_grader.extract_code(output, language, cfg.answer_scope)
    payload = {
        **spec,
        "code": code,
        "time_limit_s": cfg.code.time_limit_s,
        "memory_mb": cfg.code.memory_mb,
        "compile_timeout_s": cfg.code.compile_timeout_s,
        "stop_at_first_failure": cfg.code.stop_at_first_failure,
        "isolation": grading.sandbox_isolation,
    }
    if cfg.grader == GraderKind.code_ojbench:
        payload["problem_dir"] = str(ojbench_problem_dir(cfg.code.tests_root or "", spec["group"], spec["problem_id"]))
    return payload, code


def grade_samples(
    lb: LoadedBenchmark,
    samples: list[tuple[int, str]],
    grading: GradingConfig,
    on_grade: Callable[[int, dict], None],
    progress: bool = True,
) -> None:
    """Grade ``samples`` (``(item index, output text)``); ``on_grade(k, grade)`` for the k-th, in the order grades
    become known."""
    cfg = lb.config
    if cfg.grader == GraderKind.math:
        preds = [extract_boxed(text, cfg.answer_scope) for _, text in samples]
        golds = [lb.items[i].gold or "" for i, _ in samples]

        def math_grade(k: int, v: math_grader.MathVerdict) -> None:
            verdict = v.status if v.status != "ok" else ("correct" if v.correct else "wrong")
            on_grade(k, {"extracted": preds[k], "correct": v.correct, "verdict": verdict, "detail": v.detail})

        workers, timeout_s = grading.num_workers, grading.math_timeout_s
        math_grader.grade_many(
            golds, preds, workers=workers, timeout_s=timeout_s, progress=progress, on_verdict=math_grade
        )
    elif cfg.grader == GraderKind.multiple_choice:
        for k, (i, text) in enumerate(samples):
            item = lb.items[i]
            ok, letter, raw = grade_choice(text, item.gold or "", len(item.options or []), cfg.answer_scope)
            verdict = "correct" if ok else ("no_answer" if letter is None else "wrong")
            on_grade(k, {"extracted": letter, "correct": ok, "verdict": verdict, "detail": raw})
    else:
        payloads, codes = [], []
        for i, text in samples:
            payload, code = _code_payload(lb.items[i], cfg, text, grading)
            payloads.append(payload)
            codes.append(code)

        def code_grade(k: int, res: TaskResult) -> None:
            if res.status == "ok":
                v = res.value
                detail = {key: v[key] for key in ("passed", "total", "detail", "isolation")}
                grade = {"correct": v["verdict"] == code_grader.AC, "verdict": v["verdict"], "detail": detail}
            else:
                grade = {"correct": False, "verdict": code_grader.SE, "detail": f"grading {res.status}: {res.error}"}
            on_grade(k, {"extracted": codes[k], **grade})

        map_with_timeout(
            code_grader.judge,
            payloads,
            workers=grading.num_workers,
            timeout_s=grading.code_item_timeout_s,
            desc=f"judge {cfg.name}",
            progress=progress,
            after_worker_exit=sandbox_reclaim,
            on_result=code_grade,
        )
