"""``evaluate``: generate on every benchmark, grade, write results, return the summary; killed, it continues.

Layout of ``out_dir``::

    <benchmark>.jsonl           one record per (item, sample): prompt, output, extracted answer, verdict,
                                tokens, truncated, the seed it was drawn with
    <benchmark>.manifest.json   the sampled ids (benchmarks with sample.size, e.g. SGPQA-1k)
    summary.json / summary.md   metrics per benchmark, the Table 1 layout, decoding settings, prompt templates,
                                seeds, harness version, sandbox isolation level
    journal/                    each generation and grade as soon as it exists (vcore/eval/journal.py)

Preemption: rerunning the same evaluation into the same ``out_dir`` generates and grades only what the journal does
not hold yet, and writes the per-item files and a summary equal to an uninterrupted run's (``created``, the time the
evaluation started, aside). Other settings (model, benchmarks, decoding, chat template, grader) stop it, naming the
keys that differ; one evaluation at a time holds the dir (a lock). SIGTERM stops it with exit status 75
(:mod:`vcore.eval.preemption`).

Typical calls::

    from vcore.eval import evaluate, evaluate_checkpoint
    summary = evaluate(model, tokenizer, benchmarks, decoding, out_dir)              # in-memory model
    summary = evaluate_checkpoint("outputs/run/final", benchmarks, decoding)          # a saved checkpoint
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError
from vcore.eval.benchmarks import LoadedBenchmark, load_benchmark
from vcore.eval.config import BenchmarkConfig, DecodingConfig, GradingConfig
from vcore.eval.generate import Generation, chat_prompts, make_generator, plan_batches
from vcore.eval.grading import CODE_GRADERS, check_ready, grade_samples
from vcore.eval.journal import EvalJournal, flat, item_seed, weights_digest
from vcore.eval.metrics import benchmark_metrics
from vcore.eval.preemption import EvaluationPreempted, StopOnSigterm
from vcore.eval.progress import Progress
from vcore.eval.results import jsonable, summary_markdown, table1, write_json, write_jsonl, write_whole
from vcore.eval.sandbox import isolation_report
from vcore.prompts import PROMPT_TEMPLATES

log = logging.getLogger(__name__)

# 0.2.0: per-item seeds and fixed generation batches (sampled decoding draws other samples than 0.1.0), the journal
HARNESS_VERSION = "0.2.0"


# ------------------------------------------------------------------------------------------------ model
class _Model:
    """The model to generate with: loaded (from a path or hub id) and wrapped in its generator only when an item
    still needs generating, so an evaluation that only has grading or writing left never loads it."""

    def __init__(self, model: Any, tokenizer: Any, backend: str, decoding: DecodingConfig) -> None:
        self.model, self.backend, self.decoding = model, backend, decoding
        if isinstance(model, (str, Path)):
            self.identifier = str(model)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.identifier)
        else:
            if tokenizer is None:
                raise ConfigError("evaluate: an in-memory model needs its tokenizer (pass tokenizer=...)")
            self.identifier = str(getattr(model, "name_or_path", "") or type(model).__name__)
        self.tokenizer = tokenizer
        self._generator = None

    def generator(self):
        if self._generator is None:
            model = self.model
            if isinstance(model, (str, Path)) and self.backend == "hf":
                import torch

                from vcore.modeling import load_pretrained

                model = load_pretrained(str(model), self.decoding.dtype)
                model.to("cuda" if torch.cuda.is_available() else "cpu")
            self._generator = make_generator(self.backend, model, self.tokenizer, self.decoding)
        return self._generator


def _settings(
    model_id: str,
    weights: str | None,
    backend: str,
    loaded: list[LoadedBenchmark],
    decoding: DecodingConfig,
    grading: GradingConfig,
    tokenizer: Any,
    sandbox_level: str | None,
) -> dict[str, Any]:
    """What an evaluation's results depend on, flat (``decoding.temperature``...): a resumed run must match it.
    Left out: where the data and tests are read from, and what only changes how fast it runs (vLLM engine options,
    grading workers)."""
    benchmarks = {}
    for lb in loaded:
        cfg = jsonable(lb.config)
        cfg.pop("data_root")
        cfg["code"].pop("tests_root")
        items = json.dumps([[it.id, it.prompt, it.gold] for it in lb.items])
        benchmarks[lb.name] = {**cfg, "items_sha256": hashlib.sha256(items.encode()).hexdigest()[:16]}
    template = str(getattr(tokenizer, "chat_template", "") or "")
    return flat(
        "",
        {
            "model": model_id,
            "weights": weights,
            "backend": backend,
            "decoding": {k: v for k, v in jsonable(decoding).items() if k != "vllm"},
            "benchmarks": {"selected": [lb.name for lb in loaded], **benchmarks},
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
            "grader": {
                "harness_version": HARNESS_VERSION,
                "math_verify": _versions().get("math-verify"),
                "math_timeout_s": grading.math_timeout_s,
                "code_item_timeout_s": grading.code_item_timeout_s,
                "sandbox_level": sandbox_level,
            },
        },
        {},
    )


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate(
    model: Any,
    tokenizer: Any,
    benchmarks: Sequence[BenchmarkConfig],
    decoding: DecodingConfig,
    out_dir: Path | str,
    *,
    backend: str = "hf",
    logger: Any = None,
    grading: GradingConfig | None = None,
    progress: bool = True,
    model_name: str | None = None,
    weights: Path | str | None = None,
) -> dict:
    """Evaluate ``model`` on ``benchmarks``; writes ``out_dir`` (see the module docstring), returns the summary.

    ``model``: an in-memory HF causal LM (with ``tokenizer``) or a path / hub id (``tokenizer`` None: its own).
    ``backend``: ``hf`` | ``vllm``. ``logger``: anything with ``.log(dict)`` and ``.log_table(name, columns, rows)``
    (W&B via vcore.run.loggers), or None. ``model_name``: how the summary names the model (default: the path or id;
    for an in-memory model, where it was loaded from, which after training is the start model, not the trained one).
    ``weights``: the folder holding the model's weights (default: ``model`` when it is one), so that a resumed
    evaluation can tell they are still the same (:func:`vcore.eval.journal.weights_digest`).
    """
    grading = grading or GradingConfig()
    out_dir = Path(out_dir)
    backend = str(getattr(backend, "value", backend))  # a config enum or its string
    loaded = [load_benchmark(b) for b in benchmarks]  # load and check everything before the expensive part
    for lb in loaded:
        check_ready(lb)
    source = _Model(model, tokenizer, backend, decoding)
    if weights is None and isinstance(model, (str, Path)):
        weights = model
    code = any(lb.config.grader in CODE_GRADERS for lb in loaded)
    sandbox = isolation_report(grading.sandbox_isolation) if code else None
    model_id = model_name or source.identifier
    digest = weights_digest(weights)
    level = sandbox.level if sandbox is not None else None
    settings = _settings(model_id, digest, backend, loaded, decoding, grading, source.tokenizer, level)
    journal = EvalJournal(out_dir)
    with journal.hold(), StopOnSigterm(out_dir) as stop:
        try:
            created = journal.check_settings(settings)
            per_bench = {
                lb.name: _benchmark(lb, source, journal, stop, decoding, grading, logger, progress) for lb in loaded
            }
        except EvaluationPreempted:
            log.warning(
                "SIGTERM: evaluation stopped; what it finished is in %s: rerun it into %s to continue",
                journal.dir,
                out_dir,
            )
            raise
        finally:
            journal.close()
        accuracy = {name: b["metrics"]["accuracy"] for name, b in per_bench.items()}
        sample_seeds = {b.name: b.config.sample.seed for b in loaded if b.config.sample.size is not None}
        summary = {
            "harness_version": HARNESS_VERSION,
            "created": created,
            "model": model_id,
            "backend": backend,
            "decoding": decoding,
            "prompt_templates": PROMPT_TEMPLATES,
            "seeds": {"decoding": decoding.seed, **sample_seeds},
            "grading": {
                "config": grading,
                "sandbox": sandbox or {"level": "n/a (no code benchmark)"},
                "versions": _versions(),
            },
            "benchmarks": per_bench,
            "table1": table1([lb.config for lb in loaded], accuracy),
        }
        summary = jsonable(summary)
        write_whole(out_dir / "summary.md", summary_markdown(summary))
        write_json(out_dir / "summary.json", summary)  # last: its presence says the evaluation is complete
    if logger is not None:
        for domain, row in summary["table1"].items():
            cols = list(row["columns"]) + ["ID avg", "OOD avg"]
            values = list(row["columns"].values()) + [row["id_avg"], row["ood_avg"]]
            logger.log_table(f"eval/table1_{domain}", cols, [values])
    return summary


def _benchmark(
    lb: LoadedBenchmark,
    source: _Model,
    journal: EvalJournal,
    stop: StopOnSigterm,
    decoding: DecodingConfig,
    grading: GradingConfig,
    logger: Any,
    progress: bool,
) -> dict:
    """One benchmark: generate and grade what the journal lacks, then its per-item file and metrics."""
    cfg, items = lb.config, lb.items
    prompts = [it.prompt for it in items]
    gens = _generate(lb, source, journal, stop, decoding, logger, progress)
    grades = _grade(lb, gens, journal, stop, decoding.n, grading, logger, progress)
    chat = chat_prompts(source.tokenizer, prompts, decoding.enable_thinking)
    records = []
    for item, chat_prompt in zip(items, chat):
        for s, g in enumerate(gens[item.id]):
            gr = grades[(item.id, s)]
            records.append(
                {
                    "benchmark": cfg.name,
                    "id": item.id,
                    "sample": s,
                    "seed": g.seed,
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
    out_dir = journal.out_dir
    write_jsonl(out_dir / f"{cfg.name}.jsonl", records)
    files = {"samples": f"{cfg.name}.jsonl"}
    if lb.manifest is not None:
        write_json(out_dir / f"{cfg.name}.manifest.json", lb.manifest)
        files["manifest"] = f"{cfg.name}.manifest.json"
    per_item = [records[k : k + decoding.n] for k in range(0, len(records), decoding.n)]
    metrics = benchmark_metrics(
        [[r["correct"] for r in row] for row in per_item],
        [[r["truncated"] for r in row] for row in per_item],
        [[r["n_tokens"] for r in row] for row in per_item],
        [[r["verdict"] for r in row] for row in per_item],
        decoding.pass_k,
    )
    notes = []
    whole = cfg.limit is None and cfg.sample.size is None
    if cfg.expected_size is not None and lb.population != cfg.expected_size and whole:
        notes.append(f"{lb.population} items loaded; the paper reports {cfg.expected_size}")
    if cfg.limit is not None:
        notes.append(f"limited to the first {cfg.limit} items (not comparable to the paper)")
    if lb.manifest is not None:
        notes.append(lb.manifest["note"])
    if logger is not None:
        _log_benchmark(logger, cfg.name, metrics, records, grading.table_rows)
    return {
        "config": cfg,
        "metrics": metrics,
        "population": lb.population,
        "expected_size": cfg.expected_size,
        "files": files,
        "notes": notes,
    }


def _generate(
    lb: LoadedBenchmark,
    source: _Model,
    journal: EvalJournal,
    stop: StopOnSigterm,
    decoding: DecodingConfig,
    logger: Any,
    progress: bool,
) -> dict[str, list[Generation]]:
    """Item id -> its samples: those in the journal, then the batches that still lack some, each recorded as it ends.

    Batches are fixed by the whole item list (:func:`vcore.eval.generate.plan_batches`): a batch is generated whole
    even when the journal holds some of its items (a kill mid-write), so that its samples are the ones an
    uninterrupted run draws."""
    name, items = lb.name, lb.items
    prompts = [it.prompt for it in items]
    seeds = [item_seed(decoding.seed, name, it.id) for it in items]
    file = journal.file(name, "generations")
    gens = {
        rec["id"]: [Generation(o["text"], o["n_tokens"], o["truncated"], rec["seed"]) for o in rec["outputs"]]
        for rec in file.read()
    }
    bar = Progress(name, "generate", len(items), sum(it.id in gens for it in items), logger, progress)
    for batch in plan_batches(source.backend, source.tokenizer, prompts, decoding):
        if all(items[i].id in gens for i in batch):
            continue
        out = source.generator().generate([prompts[i] for i in batch], [seeds[i] for i in batch], progress=False)
        new = {items[i].id: g for i, g in zip(batch, out) if items[i].id not in gens}
        with stop.deferred():  # a SIGTERM now takes effect once these are recorded
            file.append(
                [{"id": item_id, "seed": g[0].seed, "outputs": [_output(x) for x in g]} for item_id, g in new.items()]
            )
        gens.update(new)
        bar.advance(len(new))
    file.sync()
    bar.close()
    return gens


def _grade(
    lb: LoadedBenchmark,
    gens: dict[str, list[Generation]],
    journal: EvalJournal,
    stop: StopOnSigterm,
    n: int,
    grading: GradingConfig,
    logger: Any,
    progress: bool,
) -> dict[tuple[str, int], dict]:
    """(item id, sample) -> its grade: those in the journal, then the rest, each recorded as the grader returns it."""
    file = journal.file(lb.name, "grades")
    grades = {(rec["id"], rec["sample"]): rec for rec in file.read()}
    pending = [(i, s) for i, it in enumerate(lb.items) for s in range(n) if (it.id, s) not in grades]
    total = len(lb.items) * n
    bar = Progress(lb.name, "grade", total, total - len(pending), logger, progress, unit="sample")

    def record(k: int, grade: dict) -> None:
        i, s = pending[k]
        rec = json.loads(json.dumps(jsonable({"id": lb.items[i].id, "sample": s, **grade}), ensure_ascii=False))
        with stop.deferred():
            file.append([rec])
        grades[(rec["id"], s)] = rec  # as read back from the journal, so a resumed run builds the same records
        bar.advance()

    if pending:
        grade_samples(lb, [(i, gens[lb.items[i].id][s].text) for i, s in pending], grading, record, progress=False)
    file.sync()
    bar.close()
    return grades


def _output(g: Generation) -> dict:
    return {"text": g.text, "n_tokens": g.n_tokens, "truncated": g.truncated}


def _log_benchmark(logger: Any, name: str, metrics: dict, records: list[dict], max_rows: int) -> None:
    scalars = {f"eval/{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    scalars.update({f"eval/{name}/pass@{k}": v for k, v in (metrics.get("pass@k") or {}).items()})
    if metrics.get("accuracy_ci95"):
        scalars[f"eval/{name}/accuracy_ci95_low"], scalars[f"eval/{name}/accuracy_ci95_high"] = metrics["accuracy_ci95"]
    logger.log(scalars)
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
    *,
    backend: str = "hf",
    logger: Any = None,
    grading: GradingConfig | None = None,
    progress: bool = True,
    model_name: str | None = None,
    weights: Path | str | None = None,
) -> dict:
    """:func:`evaluate` on a saved model folder (``save_pretrained`` output with its tokenizer), with the same options;
    results go to ``out_dir`` or ``<checkpoint_dir>/eval/<decoding.name>``."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no config.json: pass the folder written by save_pretrained")
    out = Path(out_dir) if out_dir is not None else checkpoint_dir / "eval" / decoding.name
    return evaluate(
        str(checkpoint_dir),
        None,
        benchmarks,
        decoding,
        out,
        backend=backend,
        logger=logger,
        grading=grading,
        progress=progress,
        model_name=model_name,
        weights=weights,
    )
