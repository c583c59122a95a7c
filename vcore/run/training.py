"""``train(cfg)``: the whole training job, from a composed Hydra config to ``metrics.json``.

    python run.py                                  # the default: tiny model, synthetic task, VCORE
    python run.py method=dft trainer.max_steps=50  # any override
    torchrun --nproc_per_node=4 run.py ...         # data parallel (docs/distributed.md)
Tests and sweepers call :func:`train` directly with a config from ``hydra.compose``.

Long runs: ``trainer.resume=auto`` (default) continues from the newest complete checkpoint in
``<output_dir>/checkpoints``; SIGTERM writes one and exits with status 75 (:mod:`vcore.run.preemption`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from vcore.checks import ConfigError
from vcore.config import to_object
from vcore.data.build import DataBundle, build_data
from vcore.data.collate import Collator
from vcore.distributed import (
    barrier,
    broadcast_object,
    check_parallel_backend,
    init_distributed,
    launcher_backends,
    probe_settings,
    rank,
    rank_zero_first,
    same_on_all_ranks,
)
from vcore.ops.forward import model_token_loss
from vcore.run.loggers import LoggerCallback, NullLogger, build_logger
from vcore.methods import build_method
from vcore.run.modeling import load_model, load_tokenizer, resolve_model
from vcore.run.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCallback
from vcore.run.checkpoints import resolve_resume
from vcore.run.rundir import RunDirBusy, check_resume, fingerprint, hold
from vcore.run.trainer import METHOD_STATE, WeightedTrainer

log = logging.getLogger(__name__)


def hydra_job() -> tuple[list[str], str | None]:
    """The job's command-line overrides and, in a multirun, the sweep's name (W&B group)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    return list(hc.overrides.task), sweep


def run(cfg: DictConfig) -> dict[str, Any]:
    """``run.py``'s job: ``task=train`` (default), ``task=eval`` or ``task=pretrain``."""
    return train(cfg)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or, with ``task=eval``, evaluate; with ``task=pretrain``, build the tiny base) as configured; metrics
    also go to ``<output_dir>/metrics.json``."""
    c = to_object(cfg)  # every schema check runs here, before anything is loaded
    if c.task == "train":  # refuse unsupported backends before anything is loaded
        generates = bool(c.eval.after_train and c.benchmark)
        check_parallel_backend(
            c.method.name, generates_after_training=generates, **probe_settings(c.method), **launcher_backends()
        )
    init_distributed()  # under torchrun: the group run.py made, or a new one when train() is called directly
    out = Path(c.output_dir)
    if not same_on_all_ranks(str(out.resolve())):
        raise ConfigError(
            f"output_dir differs between ranks (this rank: {out}); launch through run.py, which gives every rank "
            "rank 0's Hydra dir, or set hydra.run.dir / output_dir explicitly (docs/distributed.md)"
        )
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with _hold_run_dir(out):
        checkpoint = None
        if c.task == "train":  # before config.yaml is rewritten: a run dir continues only the run it holds
            checkpoint = broadcast_object(resolve_resume(c.trainer.resume, out / "checkpoints"))  # rank 0's view decides
            if checkpoint is not None:
                check_resume(checkpoint, resolved, allow=c.trainer.resume_config_change == "allow")
        if rank() == 0:
            (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        overrides, sweep = hydra_job()
        logger = build_logger(c.logger, resolved, out, overrides, sweep)
        try:
            if c.task == "train":
                metrics = _train(c, resolved, out, logger, checkpoint)
            else:
                metrics = {"eval": _evaluate_only, "pretrain": _pretrain_only}[c.task](c, resolved, out, logger)
        except Preempted:
            logger.finish(exit_code=PREEMPTED_EXIT_CODE)
            raise
        except BaseException:
            logger.finish(exit_code=1)
            raise
        logger.finish(exit_code=0)
    return metrics


@contextlib.contextmanager
def _hold_run_dir(out: Path):
    """Rank 0 holds the run dir's lock for the job; every rank stops when another job holds it."""
    with contextlib.ExitStack() as stack:
        busy = None
        if rank() == 0:
            try:
                stack.enter_context(hold(out))
            except RunDirBusy as err:
                busy = str(err)
        busy = broadcast_object(busy)
        if busy:
            raise RunDirBusy(busy)
        yield


def prepare_model(c):
    """Tokenizer and model as configured (building the tiny default first if asked)."""
    model_cfg = resolve_model(c.model)
    return load_tokenizer(model_cfg), load_model(model_cfg)


@dataclass
class Job:
    """Everything a training run is made of; tests build one to drive the real Trainer step by step."""

    trainer: WeightedTrainer
    tokenizer: Any
    data: DataBundle
    collator: Collator
    model_path: str  # where the starting weights were loaded from (the tiny base's cache entry, a hub id, a dir)


def build_job(c, out: Path, logger: NullLogger | None = None) -> Job:
    """Model, data, method and Trainer for a validated config ``c`` (see :func:`vcore.config.to_object`)."""
    # LoRA adapters are initialised from the global RNG, which the Trainer only seeds after the model exists: seed
    # it first, so two runs of one config (and every DDP rank) start from the same adapters.
    set_seed(c.seed)
    model_cfg = resolve_model(c.model)
    tokenizer, model = load_tokenizer(model_cfg), load_model(model_cfg)
    with rank_zero_first():  # dataset caches are written once, by rank 0
        data = build_data(c.dataset, tokenizer, out_dir=out)
    log.info("data: %s", data.stats)
    t = c.trainer
    collator = Collator(tokenizer.pad_token_id, pack=t.packing, pack_length=t.pack_length)
    weighting = build_method(c.method, model, data.train, collator)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a fraction of the training steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        seed=c.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=t.use_cpu,
        remove_unused_columns=False,  # labels, answer_mask and example_id are ours, not the model's
        report_to="none",  # W&B is driven by vcore.run.loggers (naming, grouping, finishing)
    )
    trainer = WeightedTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[LoggerCallback(logger or NullLogger())],
        weighting=weighting,
        loss_normalization=c.method.loss_normalization.value,
        precision=t.precision,
        lr_floor=t.lr_floor,
    )
    return Job(trainer, tokenizer, data, collator, str(model_cfg.name_or_path))


def _train(c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    job = build_job(c, out, logger)
    log.info("model: %s", job.model_path)
    logger.log({f"data/{k}": v for k, v in job.data.stats.items()}, step=0)
    before = evaluate_start_model(c, job.trainer.model, job.tokenizer, job.model_path, out) if c.eval.before_train and c.benchmark else {}
    if before:
        logger.log({f"eval_before/{k}": v for k, v in before.items()}, step=0)
    trainer = job.trainer
    trainer.run_fingerprint = fingerprint(resolved)  # into every checkpoint (vcore.run.rundir.check_resume)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    preemption = PreemptionCallback()
    trainer.add_callback(preemption)
    with preemption.handle_sigterm():
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    if preemption.stopped:
        raise Preempted(trainer.state.global_step)
    save_final_model(trainer, out / "final")
    if rank() == 0:  # the probe generator's state: the inspector weighs examples as the next step would (under FSDP
        # with probe.every > 1 the stored direction stays in the checkpoints' per-rank files: a fresh probe instead)
        torch.save(trainer.weighting.state_dict(), out / "final" / METHOD_STATE)

    if rank() == 0:  # every logged step, for loss curves in reports without W&B
        with (out / "history.jsonl").open("w") as f:
            for line in trainer.state.log_history:
                f.write(json.dumps(line) + "\n")
    metrics: dict[str, Any] = {
        "train": summarize_train(trainer.state.log_history, result.metrics),
        "method": resolved["method"],
        "data": job.data.stats,
        "model": job.model_path,
    }
    if before:
        metrics["eval_before"] = before
    if c.trainer.eval_at_end:
        metrics["eval"] = {
            f"{name}/nll": heldout_nll(trainer.model, ds, Collator(job.tokenizer.pad_token_id), c.trainer.per_device_eval_batch_size)
            for name, ds in job.data.eval.items()
        }
    if c.eval.after_train and c.benchmark:
        trained = f"{out / 'final'} (trained from {job.model_path})"
        summary = run_benchmarks(c, trainer.model, job.tokenizer, out / "eval", logger, model_name=trained)
        metrics.setdefault("eval", {}).update(summary)
    metrics["runtime_s"] = time.perf_counter() - t_start
    logger.summary(flatten(metrics))
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def save_final_model(trainer: WeightedTrainer, path: Path) -> None:
    """The trained model as a ``from_pretrained`` directory (with the tokenizer), from rank 0.

    Under FSDP the Trainer writes ``from_pretrained`` weights only with FULL_STATE_DICT, whose checkpoints we do not
    use (docs/distributed.md); here every rank joins one gather of the whole weights onto rank 0's CPU instead.
    """
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(path))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank() == 0:
        trainer.model.save_pretrained(path, state_dict=state)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(path)
    barrier()


def run_benchmarks(c, model, tokenizer, out: Path, logger: NullLogger, model_name: str | None = None) -> dict[str, float]:
    """Generate and grade ``cfg.benchmark`` with ``cfg.decoding`` (rank 0); ``{"<bench>/accuracy": ...}``."""
    if rank() != 0:
        return {}
    from vcore.eval import GradingConfig, evaluate

    benchmarks = [b for b in c.benchmark.values() if not (b.synthetic and b.synthetic.kwargs.get("num_examples") == 0)]
    if len(benchmarks) < len(c.benchmark):  # the synthetic preset follows dataset.eval_examples; real data sets 0
        log.info("skipping synthetic benchmarks with 0 examples (dataset.eval_examples=0); choose others with benchmark=...")
    if not benchmarks:
        return {}
    was_training = model.training
    model.eval()
    try:
        summary = evaluate(
            model, tokenizer, benchmarks, c.decoding, out, c.eval.backend, logger,
            grading=GradingConfig(num_workers=c.eval.num_workers), model_name=model_name,
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


def evaluate_start_model(c, model, tokenizer, model_path: str, out: Path) -> dict[str, float]:
    """``eval.before_train``: accuracy of the model training starts from, in ``<out>/eval_before/``.

    For the tiny base the results are cached in its directory, keyed by the benchmarks and decoding, so every run
    from one base (a sweep's seeds and methods) evaluates it once. A resumed run reuses its own earlier results.
    """
    import shutil

    from vcore.eval.harness import HARNESS_VERSION
    from vcore.eval.results import jsonable

    dest = out / "eval_before"
    cache = None
    if c.model.tiny is not None:
        spec = json.dumps(jsonable({"benchmarks": c.benchmark, "decoding": c.decoding, "harness": HARNESS_VERSION}), sort_keys=True)
        cache = Path(model_path) / "zero_shot" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    if not (dest / "summary.json").is_file() and rank() == 0:
        if cache is not None and (cache / "summary.json").is_file():
            log.info("start model's accuracy: cached in %s", cache)
            shutil.copytree(cache, dest, dirs_exist_ok=True)
        else:
            log.info("evaluating the start model (eval.before_train=true)")
            run_benchmarks(c, model, tokenizer, dest, NullLogger())
            if cache is not None and (dest / "summary.json").is_file():
                tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}"
                shutil.copytree(dest, tmp, dirs_exist_ok=True)
                os.replace(tmp, cache) if not cache.exists() else shutil.rmtree(tmp)
    if rank() != 0 or not (dest / "summary.json").is_file():
        return {}
    return benchmark_summary(json.loads((dest / "summary.json").read_text()))


def _pretrain_only(c, resolved: dict[str, Any], out: Path, logger: NullLogger) -> dict[str, Any]:
    """``task=pretrain``: build (or find) the tiny base and evaluate it zero-shot on ``cfg.benchmark``."""
    t_start = time.perf_counter()
    if c.model.tiny is None:
        raise ConfigError("task=pretrain builds the tiny base model (model=tiny); other models come pretrained")
    model_cfg = resolve_model(c.model)
    path = Path(str(model_cfg.name_or_path))
    log.info("tiny base: %s", path)
    record = json.loads((path / "pretrain.json").read_text()) if (path / "pretrain.json").is_file() else {}
    metrics: dict[str, Any] = {"model": str(path), "pretrain": record}
    if c.benchmark:
        tokenizer, model = load_tokenizer(model_cfg), load_model(model_cfg)
        metrics["eval"] = evaluate_start_model(c, model, tokenizer, str(path), out)
    metrics["runtime_s"] = time.perf_counter() - t_start
    logger.summary(flatten(metrics))
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def _evaluate_only(c, resolved: dict[str, Any], out: Path, logger: NullLogger) -> dict[str, Any]:
    """``task=eval``: a run dir or checkpoint of ours (LoRA adapters included), or any hub id / model dir."""
    t_start = time.perf_counter()
    source = Path(c.eval.model)
    # Ours: a run dir (model in final/) or a LoRA checkpoint (adapters only) need the run's config to load;
    # a full model dir (config.json) or a hub id loads by itself.
    ours = source.exists() and ((source / "adapter_config.json").exists() or not (source / "config.json").exists())
    if ours:
        from vcore.config import load_run_config
        from vcore.tools.inspector import find_run, load_checkpoint

        run_dir, checkpoint = find_run(source)
        tokenizer, model = load_checkpoint(load_run_config(run_dir / "config.yaml"), checkpoint)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(c.eval.model)
        model = str(c.eval.model) if c.eval.backend == "vllm" else AutoModelForCausalLM.from_pretrained(c.eval.model, dtype="auto")
    if not c.benchmark:
        raise ValueError("task=eval: no benchmark selected; pick one with benchmark=<name> (see conf/benchmark/)")
    metrics = {"eval": run_benchmarks(c, model, tokenizer, out / "eval", logger), "model": str(c.eval.model)}
    metrics["runtime_s"] = time.perf_counter() - t_start
    logger.summary(flatten(metrics))
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics


def summarize_train(history: list[dict[str, Any]], run_metrics: dict[str, Any]) -> dict[str, Any]:
    """Final values (last log line) and run means of the per-step diagnostics.

    Each log line holds the mean over the steps since the line before it, so run means weigh lines by the steps they
    cover: a run that logged an extra line (at a preemption) or resumed from a checkpoint (its history restored from
    it) gives the same means as the uninterrupted run. ``train_loss`` is computed the same way; the Trainer's own
    covers only what this process trained.
    """
    lines = [h for h in history if "train/nll" in h]
    if not lines:
        return dict(run_metrics)
    last = lines[-1]
    keys = [k for k in last if k.startswith(("train/", "weights/", "vcore/"))]
    summary = {f"final/{k}": last[k] for k in keys}
    covered, previous = [], 0
    for h in lines:
        covered.append(max(h.get("step", previous + 1) - previous, 1))
        previous = h.get("step", previous + 1)
    for k in keys:
        pairs = [(h[k], n) for h, n in zip(lines, covered) if k in h and not math.isnan(h[k])]
        if pairs:
            summary[f"mean/{k}"] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    summary["nll"] = last["train/nll"]
    summary["weighted_loss"] = last["train/weighted_loss"]
    summary["tokens_per_s"] = summary.get("mean/train/tokens_per_s")
    summary.update({k: v for k, v in run_metrics.items() if isinstance(v, (int, float))})
    losses = [(h["loss"], n) for h, n in zip(lines, covered) if "loss" in h and not math.isnan(h["loss"])]
    if losses:
        summary["train_loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    return summary


@torch.no_grad()
def heldout_nll(model, dataset, collator, batch_size: int) -> float:
    """Mean per-token NLL of the supervised tokens of ``dataset`` (eval mode)."""
    if len(dataset) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(dataset), batch_size):
        batch = collator([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        token_loss, mask = model_token_loss(model, batch)
        total += float((token_loss * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out
