"""Benchmarks inside a run: the accuracy of the start model (cached for the tiny base) and of the trained model.

Generation and grading are :mod:`vcore.eval`'s; this module maps its summaries to a run's metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from vcore.distributed import rank
from vcore.locks import LOCK_FILE
from vcore.run.loggers import NullLogger

log = logging.getLogger(__name__)


def run_benchmarks(
    c, model, tokenizer, out: Path, logger: NullLogger, model_name: str | None = None, weights: Path | str | None = None
) -> dict[str, float]:
    """Generate and grade ``cfg.benchmark`` with ``cfg.decoding`` (rank 0); ``{"<bench>/accuracy": ...}``.

    ``weights``: where the model's weights are saved (a run's ``final/``, the start model's folder), which tells a
    resumed evaluation they are the same (:func:`vcore.eval.harness.evaluate`). Killed or stopped by SIGTERM (exit 75),
    the evaluation continues from ``out``'s journal when the job is rerun."""
    if rank() != 0:
        return {}
    from vcore.eval import GradingConfig, evaluate

    benchmarks = [b for b in c.benchmark.values() if not (b.synthetic and b.synthetic.kwargs.get("num_examples") == 0)]
    if len(benchmarks) < len(c.benchmark):  # the synthetic preset follows dataset.eval_examples; real data sets 0
        log.info(
            "skipping synthetic benchmarks with 0 examples (dataset.eval_examples=0); choose others with benchmark=..."
        )
    if not benchmarks:
        return {}
    was_training = model.training
    model.eval()
    try:
        summary = evaluate(
            model,
            tokenizer,
            benchmarks,
            c.decoding,
            out,
            backend=c.eval.backend,
            logger=logger,
            grading=GradingConfig(num_workers=c.eval.num_workers),
            model_name=model_name,
            weights=weights,
        )
    finally:
        model.train(was_training)
    return benchmark_summary(summary)


def benchmark_summary(summary: dict) -> dict[str, float]:
    """``{"<bench>/accuracy", "<bench>/accuracy_ci95_low|high", "<bench>/truncation_rate"}`` from an eval summary."""
    result = {}
    for name, bench in summary["benchmarks"].items():
        m = bench["metrics"]
        for key in ("accuracy", "truncation_rate"):
            if m.get(key) is not None:
                result[f"{name}/{key}"] = m[key]
        if m.get("accuracy_ci95"):
            result[f"{name}/accuracy_ci95_low"], result[f"{name}/accuracy_ci95_high"] = m["accuracy_ci95"]
    return result


EVAL_BEFORE_SPEC = "vcore_start_model.json"  # in eval_before/: which model and settings its results are of


def evaluate_start_model(c, model, tokenizer, model_path: str, out: Path, cacheable: bool = True) -> dict[str, float]:
    """``eval.before_train``: accuracy of the model training starts from, in ``<out>/eval_before/``.

    For the tiny base (``cacheable``) the results are cached in its directory, keyed by the benchmarks and decoding, so
    every run from one base (a sweep's seeds and methods) evaluates it once. A resumed run reuses its own earlier
    results, and continues them where an earlier job was stopped.
    """
    import shutil

    from vcore.eval.harness import HARNESS_VERSION
    from vcore.eval.results import jsonable

    dest = out / "eval_before"
    spec = json.dumps(
        jsonable({"benchmarks": c.benchmark, "decoding": c.decoding, "harness": HARNESS_VERSION}), sort_keys=True
    )
    cache = None
    if cacheable and c.model.tiny is not None:
        cache = Path(model_path) / "zero_shot" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    # What eval_before/ holds: a results dir reused by a run dir only for the same start model and settings (a run
    # dir reused with another base or other benchmarks would otherwise report the old model's accuracy).
    marker = json.dumps({"model": str(model_path), "spec": spec}, sort_keys=True)
    if rank() == 0 and (dest / "summary.json").is_file():
        held = (dest / EVAL_BEFORE_SPEC).read_text() if (dest / EVAL_BEFORE_SPEC).is_file() else None
        if held != marker:
            aside = out / f"eval_before.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            log.warning("eval_before/ holds another start model's or other settings' results: moved to %s", aside)
            dest.rename(aside)
    if not (dest / "summary.json").is_file() and rank() == 0:
        if cache is not None and (cache / "summary.json").is_file():
            log.info("start model's accuracy: cached in %s", cache)
            shutil.copytree(cache, dest, dirs_exist_ok=True)
        else:
            log.info("evaluating the start model (eval.before_train=true)")
            run_benchmarks(c, model, tokenizer, dest, NullLogger(), weights=model_path)
            if cache is not None and (dest / "summary.json").is_file():
                tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
                shutil.copytree(dest, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_FILE))
                os.replace(tmp, cache) if not cache.exists() else shutil.rmtree(tmp)
        if (dest / "summary.json").is_file():
            (dest / EVAL_BEFORE_SPEC).write_text(marker)
    if rank() != 0 or not (dest / "summary.json").is_file():
        return {}
    return benchmark_summary(json.loads((dest / "summary.json").read_text()))


def on_eval_device(model, use_cpu: bool = False):
    """``model`` on the device generation runs on: the GPU when there is one (as training's), unless ``use_cpu``."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() and not use_cpu else model


def set_aside_replaced_results(out: Path) -> None:
    """A job that has just trained ``final/`` anew (``trainer.resume=never``, a longer run): the run dir's ``eval/`` is
    of the model it replaced. Moved aside (``eval.replaced-<time>``), not continued and not deleted."""
    import time

    old = out / "eval"
    if old.exists():
        aside = out / f"eval.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("%s holds the evaluation of the model this job's new final/ replaces: moved to %s", old, aside)
        old.rename(aside)
