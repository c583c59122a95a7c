"""``task=eval``: a run of ours (a run dir or a checkpoint, full or LoRA) or any model, on ``cfg.benchmark``.

    python run.py task=eval eval.model=outputs/<run> benchmark=synthetic   # a run dir or a checkpoint of ours
    python run.py task=eval eval.model=Qwen/Qwen3-4B benchmark=table1_math  # any hub id or model dir

Preempted (SIGTERM: exit status 75) or killed, the same command continues where the evaluation stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vcore.checks import ConfigError
from vcore.modeling import load_checkpoint, load_pretrained, load_tokenizer
from vcore.run.benchmarks import on_eval_device, run_benchmarks
from vcore.run.checkpoints import find_run
from vcore.run.lifecycle import run_job, write_metrics
from vcore.run.loggers import NullLogger
from vcore.run.training import resolve_model

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """``task=eval``: generate and grade ``cfg.benchmark`` with the model ``eval.model``."""
    return run_job(cfg, _evaluate)


def _evaluate(
    c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None = None
) -> dict[str, Any]:
    """A run dir or checkpoint of ours (LoRA adapters included), or any hub id / model dir."""
    t_start = time.perf_counter()
    if not c.benchmark:
        raise ValueError("task=eval: no benchmark selected; pick one with benchmark=<name> (see conf/benchmark/)")
    source = Path(c.eval.model)
    vllm = c.eval.backend == "vllm"
    # Ours: a run dir (model in final/) or a LoRA checkpoint (adapters only) need the run's config to load;
    # a full model dir (config.json) or a hub id loads by itself.
    ours = source.exists() and ((source / "adapter_config.json").exists() or not (source / "config.json").exists())
    if ours:
        from vcore.config import load_run_config

        run_dir, weights = find_run(source)
        if vllm and not (weights / "config.json").is_file():
            raise ConfigError(
                f"eval.backend=vllm loads a full model dir, and {weights} holds LoRA adapters: evaluate "
                "it with eval.backend=hf, or merge the adapters into their base first"
            )
        if vllm:
            tokenizer, model = load_tokenizer(str(weights)), str(weights)
        else:
            tokenizer, model = load_checkpoint(resolve_model(load_run_config(run_dir / "config.yaml").model), weights)
    else:
        weights = source if source.is_dir() else None
        tokenizer = load_tokenizer(str(c.eval.model))
        model = str(c.eval.model) if vllm else load_pretrained(str(c.eval.model))
    if not vllm:
        model = on_eval_device(model)
    # Killed or stopped by SIGTERM (exit 75), the same command continues the evaluation from out/eval/journal.
    summary = run_benchmarks(c, model, tokenizer, out / "eval", logger, weights=weights)
    metrics = {"eval": summary, "model": str(c.eval.model)}
    metrics["runtime_s"] = time.perf_counter() - t_start
    write_metrics(out, metrics, logger)
    return metrics
