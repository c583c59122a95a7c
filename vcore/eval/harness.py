"""``evaluate``: generate on every benchmark, grade, write results, return the summary.

Layout of ``out_dir``::

    <benchmark>.jsonl           one record per (item, sample): prompt, output, extracted answer, verdict,
                                tokens, truncated
    <benchmark>.manifest.json   the sampled ids (benchmarks with sample.size, e.g. SGPQA-1k)
    summary.json / summary.md   metrics per benchmark, the Table 1 layout, decoding settings, prompt templates,
                                seeds, harness version, sandbox isolation level

Typical calls::

    from vcore.eval import evaluate, evaluate_checkpoint
    summary = evaluate(model, tokenizer, benchmarks, decoding, out_dir)              # in-memory model
    summary = evaluate_checkpoint("outputs/run/final", benchmarks, decoding)          # a saved checkpoint
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcore.boxed import extract_boxed
from vcore.checks import ConfigError
from vcore.eval import code_grader, math_grader
from vcore.eval.benchmarks import EvalItem, LoadedBenchmark, load_benchmark, ojbench_problem_dir
from vcore.eval.choice import grade_choice
from vcore.eval.config import BenchmarkConfig, DecodingConfig, GraderKind, GradingConfig
from vcore.eval.generate import Generation, chat_prompts, make_generator
from vcore.eval.metrics import benchmark_metrics
from vcore.eval.results import jsonable, summary_markdown, table1, write_json, write_jsonl
from vcore.eval.sandbox import isolation_report
from vcore.eval.sandbox_cleanup import reclaim as sandbox_reclaim
from vcore.eval.workers import map_with_timeout
from vcore.prompts import PROMPT_TEMPLATES

HARNESS_VERSION = "0.1.0"


# ------------------------------------------------------------------------------------------------ grading
def _check_ready(lb: LoadedBenchmark) -> None:
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


def grade_benchmark(lb: LoadedBenchmark, gens: list[list[Generation]], grading: GradingConfig, progress: bool = True) -> list[list[dict]]:
    """Per item, per sample: ``{extracted, correct, verdict, detail}``."""
    cfg = lb.config
    flat = [(i, s, g) for i, per_item in enumerate(gens) for s, g in enumerate(per_item)]
    graded: list[dict] = []
    if cfg.grader == GraderKind.math:
        preds = [extract_boxed(g.text, cfg.answer_scope) for _, _, g in flat]
        golds = [lb.items[i].gold or "" for i, _, _ in flat]
        verdicts = math_grader.grade_many(golds, preds, workers=grading.num_workers, timeout_s=grading.math_timeout_s, progress=progress)
        for pred, v in zip(preds, verdicts):
            verdict = v.status if v.status != "ok" else ("correct" if v.correct else "wrong")
            graded.append({"extracted": pred, "correct": v.correct, "verdict": verdict, "detail": v.detail})
    elif cfg.grader == GraderKind.multiple_choice:
        for i, _, g in flat:
            item = lb.items[i]
            ok, letter, raw = grade_choice(g.text, item.gold or "", len(item.options or []), cfg.answer_scope)
            verdict = "correct" if ok else ("no_answer" if letter is None else "wrong")
            graded.append({"extracted": letter, "correct": ok, "verdict": verdict, "detail": raw})
    else:
        payloads, codes = [], []
        for i, _, g in flat:
            payload, code = _code_payload(lb.items[i], cfg, g.text, grading)
            payloads.append(payload)
            codes.append(code)
        results = map_with_timeout(
            code_grader.judge, payloads, workers=grading.num_workers, timeout_s=grading.code_item_timeout_s,
            desc=f"judge {cfg.name}", progress=progress, after_worker_exit=sandbox_reclaim,
        )
        for code, res in zip(codes, results):
            if res.status == "ok":
                v = res.value
                graded.append({"extracted": code, "correct": v["verdict"] == code_grader.AC, "verdict": v["verdict"], "detail": {k: v[k] for k in ("passed", "total", "detail", "isolation")}})
            else:
                graded.append({"extracted": code, "correct": False, "verdict": code_grader.SE, "detail": f"grading {res.status}: {res.error}"})
    out: list[list[dict]] = [[] for _ in gens]
    for (i, _, _), g in zip(flat, graded):
        out[i].append(g)
    return out


# ------------------------------------------------------------------------------------------------ model
def _resolve_model(model: Any, tokenizer: Any, backend: str, decoding: DecodingConfig) -> tuple[str, Any, Any]:
    """(identifier, model, tokenizer); loads from a path / hub id when given one."""
    if isinstance(model, (str, Path)):
        model_id = str(model)
        if backend == "hf":
            import torch
            from transformers import AutoTokenizer

            from vcore.modeling import load_pretrained

            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(model_id)
            model = load_pretrained(model_id, decoding.dtype)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
        return model_id, model, tokenizer
    if tokenizer is None:
        raise ConfigError("evaluate: an in-memory model needs its tokenizer (pass tokenizer=...)")
    return str(getattr(model, "name_or_path", "") or type(model).__name__), model, tokenizer


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate(
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[BenchmarkConfig],
    decoding: DecodingConfig,
    out_dir: Path | str,
    backend: str = "hf",
    logger: Any = None,
    *,
    grading: GradingConfig | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> dict:
    """Evaluate ``model`` on ``benchmarks``; writes ``out_dir`` (see the module docstring), returns the summary.

    ``model``: an in-memory HF causal LM (with ``tokenizer``) or a path / hub id. ``logger``: anything with
    ``.log(dict)`` and ``.log_table(name, columns, rows)`` (W&B via vcore.run.loggers), or None. ``model_name``: how the
    summary names the model (default: the path or id; for an in-memory model, where it was loaded from, which after
    training is the start model, not the trained one).
    """
    grading = grading or GradingConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [load_benchmark(b) for b in benchmarks]  # load and check everything before the expensive part
    for lb in loaded:
        _check_ready(lb)
    model_id, model, tokenizer = _resolve_model(model, tokenizer, backend, decoding)
    model_id = model_name or model_id
    generator = make_generator(backend, model, tokenizer, decoding)
    tokenizer = generator.tokenizer
    sandbox = isolation_report(grading.sandbox_isolation) if any(lb.config.grader in (GraderKind.code_lcb, GraderKind.code_ojbench) for lb in loaded) else None

    per_bench: dict[str, dict] = {}
    for lb in loaded:
        cfg = lb.config
        prompts = [it.prompt for it in lb.items]
        gens = generator.generate(prompts, desc=f"generate {cfg.name}")
        graded = grade_benchmark(lb, gens, grading, progress)
        chat = chat_prompts(tokenizer, prompts, decoding.enable_thinking)
        records = []
        for item, chat_prompt, per_item, per_grade in zip(lb.items, chat, gens, graded):
            for s, (g, gr) in enumerate(zip(per_item, per_grade)):
                records.append(
                    {
                        "benchmark": cfg.name,
                        "id": item.id,
                        "sample": s,
                        "prompt": chat_prompt,
                        "output": g.text,
                        "extracted": gr["extracted"],
                        "gold": item.gold,
                        "verdict": gr["verdict"],
                        "correct": gr["correct"],
                        "n_tokens": g.n_tokens,
                        "truncated": g.truncated,
                        "detail": gr["detail"],
                    }
                )
        write_jsonl(out_dir / f"{cfg.name}.jsonl", records)
        files = {"samples": f"{cfg.name}.jsonl"}
        if lb.manifest is not None:
            write_json(out_dir / f"{cfg.name}.manifest.json", lb.manifest)
            files["manifest"] = f"{cfg.name}.manifest.json"
        metrics = benchmark_metrics(
            [[g["correct"] for g in row] for row in graded],
            [[g.truncated for g in row] for row in gens],
            [[g.n_tokens for g in row] for row in gens],
            [[g["verdict"] for g in row] for row in graded],
            decoding.pass_k,
        )
        notes = []
        if cfg.expected_size is not None and lb.population != cfg.expected_size and cfg.limit is None and cfg.sample.size is None:
            notes.append(f"{lb.population} items loaded; the paper reports {cfg.expected_size}")
        if cfg.limit is not None:
            notes.append(f"limited to the first {cfg.limit} items (not comparable to the paper)")
        if lb.manifest is not None:
            notes.append(lb.manifest["note"])
        per_bench[cfg.name] = {
            "config": cfg,
            "metrics": metrics,
            "population": lb.population,
            "expected_size": cfg.expected_size,
            "files": files,
            "notes": notes,
        }
        if logger is not None:
            _log_benchmark(logger, cfg.name, metrics, records, grading.table_rows)

    accuracy = {name: b["metrics"]["accuracy"] for name, b in per_bench.items()}
    summary = {
        "harness_version": HARNESS_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_id,
        "backend": backend,
        "decoding": decoding,
        "prompt_templates": PROMPT_TEMPLATES,
        "seeds": {"decoding": decoding.seed, **{lb.name: lb.config.sample.seed for lb in loaded if lb.config.sample.size is not None}},
        "grading": {
            "config": grading,
            "sandbox": sandbox or {"level": "n/a (no code benchmark)"},
            "versions": _versions(),
        },
        "benchmarks": per_bench,
        "table1": table1([lb.config for lb in loaded], accuracy),
    }
    summary = jsonable(summary)
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    if logger is not None:
        for domain, row in summary["table1"].items():
            cols = list(row["columns"]) + ["ID avg", "OOD avg"]
            logger.log_table(f"eval/table1_{domain}", cols, [list(row["columns"].values()) + [row["id_avg"], row["ood_avg"]]])
    return summary


def _log_benchmark(logger: Any, name: str, metrics: dict, records: list[dict], max_rows: int) -> None:
    flat = {f"eval/{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    flat.update({f"eval/{name}/pass@{k}": v for k, v in (metrics.get("pass@k") or {}).items()})
    if metrics.get("accuracy_ci95"):
        flat[f"eval/{name}/accuracy_ci95_low"], flat[f"eval/{name}/accuracy_ci95_high"] = metrics["accuracy_ci95"]
    logger.log(flat)
    cols = ["id", "sample", "verdict", "correct", "extracted", "gold", "n_tokens", "truncated", "output"]
    rows = [[str(r[c]) if c in ("extracted", "gold", "output") else r[c] for c in cols] for r in records[:max_rows]]
    logger.log_table(f"eval/{name}/samples", cols, rows)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("math-verify", "transformers", "datasets", "torch", "vllm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def evaluate_checkpoint(
    checkpoint_dir: Path | str,
    benchmarks: Sequence[BenchmarkConfig],
    decoding: DecodingConfig,
    out_dir: Path | str | None = None,
    backend: str = "hf",
    logger: Any = None,
    *,
    grading: GradingConfig | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> dict:
    """Evaluate a saved model folder (``save_pretrained`` output with its tokenizer); results go to
    ``out_dir`` or ``<checkpoint_dir>/eval/<decoding.name>``."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json: pass the folder written by save_pretrained")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint_dir))
    out = Path(out_dir) if out_dir is not None else checkpoint_dir / "eval" / decoding.name
    return evaluate(str(checkpoint_dir), tokenizer, benchmarks, decoding, out, backend, logger, grading=grading, progress=progress)
