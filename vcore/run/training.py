"""Training jobs: ``train(cfg)`` from a composed Hydra config to ``metrics.json``; ``task=pretrain``: the tiny base.

    python run.py                                  # the default: tiny model, synthetic task, VCORE
    python run.py method=dft trainer.max_steps=50  # any override
    torchrun --nproc_per_node=4 run.py ...         # data parallel (docs/distributed.md)
Tests and sweepers call :func:`train` directly with a config from ``hydra.compose``.

Long runs: ``trainer.resume=auto`` (default) continues from the newest complete checkpoint in
``<output_dir>/checkpoints``; SIGTERM writes one and exits with status 75 (:mod:`vcore.run.preemption`). A job stopped
during its final evaluation (SIGTERM: status 75 too) continues with it, without training again, from what the
evaluation had recorded (``final/vcore_trained.json``, ``eval/journal/``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import TrainingArguments, set_seed

from vcore.checks import ConfigError
from vcore.config import ModelConfig, TinyModelConfig
from vcore.data.build import DataBundle, build_data
from vcore.data.collate import Collator
from vcore.distributed import barrier, launcher_backend, rank, rank_zero_first
from vcore.methods import MethodContext, build_method
from vcore.methods.base import METHOD_STATE
from vcore.modeling import load_checkpoint, load_model, load_tokenizer
from vcore.ops.forward import model_token_loss
from vcore.run.benchmarks import evaluate_start_model, on_eval_device, run_benchmarks, set_aside_replaced_results
from vcore.run.checkpoints import fingerprint, mark_trained, trained_metrics
from vcore.run.heatmap import TokenWeightsCallback, heatmap_examples
from vcore.run.lifecycle import run_job, write_metrics
from vcore.run.loggers import LoggerCallback, NullLogger
from vcore.run.preemption import PreemptionCallback, Pruned
from vcore.run.tiny import ensure_tiny
from vcore.run.trainer import WeightedTrainer
from vcore.run.validation import validation_callback

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """``task=train``: train as configured, then evaluate if asked; metrics also go to ``<output_dir>/metrics.json``."""
    return run_job(cfg, _fit)


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """``task=pretrain``: build (or find) the tiny base and evaluate it zero-shot on ``cfg.benchmark``."""
    return run_job(cfg, _pretrain)


def resolve_model(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``name_or_path`` pointing at files: the tiny model (``model.tiny``) is built (pretrained through
    this module's own training, :func:`pretrain_tiny_base`) or found in its cache first, one writer under data
    parallelism. The result has no ``tiny`` left, so it loads with :mod:`vcore.modeling` directly."""
    if cfg.tiny is None:
        return cfg
    with rank_zero_first():
        path = ensure_tiny(cfg, pretrain_tiny_base)
    return dataclasses.replace(cfg, name_or_path=str(path), tiny=None)


def prepare_model(c):
    """Tokenizer and model as configured (building the tiny default first if asked)."""
    model_cfg = resolve_model(c.model)
    return load_tokenizer(model_cfg), load_model(model_cfg)


def schedule_args(s) -> dict[str, Any]:
    """The ``TrainingArguments`` that ``trainer.*`` and ``rl.*`` share (same field names): length, optimizer schedule,
    logging and saving."""
    return dict(
        max_steps=s.max_steps,
        num_train_epochs=s.num_train_epochs,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler_type,
        warmup_steps=s.warmup_ratio,  # a float < 1 is a fraction of the training steps
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if s.save_steps > 0 else "no",
        save_steps=s.save_steps if s.save_steps > 0 else 500,
        save_total_limit=s.save_total_limit,
    )


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
    backend = launcher_backend(packing=t.packing, lora=c.model.lora.enabled, weights_dtype=c.model.dtype)
    context = MethodContext(model, data.train, collator, c.model.loss_chunk_size, backend=backend, tokenizer=tokenizer)
    weighting = build_method(c.method, context)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        **schedule_args(t),
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
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
        loss_chunk_size=c.model.loss_chunk_size,
    )
    return Job(trainer, tokenizer, data, collator, str(model_cfg.name_or_path))


def _fit(c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None) -> dict[str, Any]:
    def load_final(final: Path):
        tokenizer, model = load_checkpoint(resolve_model(c.model), final)
        return tokenizer, on_eval_device(model, c.trainer.use_cpu)

    return train_then_evaluate(
        c, resolved, out, logger, checkpoint, "trainer", _train, load_final, lambda m: f"trained from {m['model']}"
    )


def train_then_evaluate(
    c,
    resolved: dict[str, Any],
    out: Path,
    logger: NullLogger,
    checkpoint: Path | None,
    group: str,
    train: Callable,
    load_final: Callable[[Path], tuple[Any, Any]],
    origin: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """The course of a training job (SFT: ``group`` ``trainer``; RL: ``rl``): ``train(c, resolved, out, logger,
    checkpoint, length)`` -> (metrics, model, tokenizer), unless ``final/`` records a training that ended under these
    settings and this length (:func:`vcore.run.checkpoints.trained_metrics`: the job was stopped during its final
    evaluation), in which case rank 0 loads ``final/`` with ``load_final``; then the final evaluation, which continues
    from its journal, and ``metrics.json``. ``origin(metrics)`` says where the model came from, in its name."""
    t_start = time.perf_counter()
    settings = getattr(c, group)
    length = {"max_steps": settings.max_steps, "num_train_epochs": settings.num_train_epochs}
    allow = settings.resume_config_change == "allow"
    final = out / "final"
    # Only auto resumes: "never" trains afresh, and a checkpoint given by path trains on from it.
    metrics = trained_metrics(final, length, resolved, allow, group) if settings.resume == "auto" else None
    model = tokenizer = None
    if metrics is not None:
        log.info("training ended in an earlier job (%s): continuing with the final evaluation", final)
    else:
        metrics, model, tokenizer = train(c, resolved, out, logger, checkpoint, length)
    if c.eval.after_train and c.benchmark:
        if model is None and rank() == 0:  # only rank 0 evaluates
            tokenizer, model = load_final(final)
        name = f"{final} ({origin(metrics)})"
        summary = run_benchmarks(c, model, tokenizer, out / "eval", logger, model_name=name, weights=final)
        metrics.setdefault("eval", {}).update(summary)
    metrics["runtime_s"] = time.perf_counter() - t_start
    write_metrics(out, metrics, logger)
    return metrics


def _train(
    c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None, length: dict[str, Any]
) -> tuple[dict[str, Any], Any, Any]:
    """Train to the end, save ``final/`` and record it (:func:`vcore.run.checkpoints.mark_trained`); the run's metrics
    so far, the trained model and its tokenizer."""
    job = build_job(c, out, logger)
    log.info("model: %s", job.model_path)
    logger.log({f"data/{k}": v for k, v in job.data.stats.items()}, step=0)
    before = (
        evaluate_start_model(c, job.trainer.model, job.tokenizer, job.model_path, out)
        if c.eval.before_train and c.benchmark
        else {}
    )
    if before:
        logger.log({f"eval_before/{k}": v for k, v in before.items()}, step=0)
    trainer = job.trainer
    trainer.run_fingerprint = fingerprint(resolved)  # into every checkpoint (vcore.run.checkpoints.check_resume)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    preemption = PreemptionCallback(stop_requested=logger.stop_requested)
    trainer.add_callback(preemption)
    if rows := heatmap_examples(c.logger, job.data.eval):  # the token-weight heatmap on W&B (vcore.run.heatmap)
        heatmap = TokenWeightsCallback(
            trainer,
            logger,
            rows,
            Collator(job.tokenizer.pad_token_id),
            c.logger.token_weights_every,
            lambda: preemption.stopped,
        )
        trainer.add_callback(heatmap)
    # eval.every: validation during training, what a search's early termination compares (vcore.run.validation)
    validation = validation_callback(c, trainer, job.tokenizer, job.model_path, out, logger, lambda: preemption.stopped)
    if validation is not None:
        trainer.add_callback(validation)
    with preemption.handle_sigterm(), logger.stops_at_step_end():
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    if preemption.stopped:  # Preempted (75, requeue) or, when W&B or its sweep agent stopped the run, Stopped (0)
        raise preemption.exit(trainer.state.global_step)
    if validation is not None and validation.pruned_at is not None:
        raise Pruned(validation.pruned_at)
    save_final_model(trainer, out / "final")
    if rank() == 0:  # the probe generator's state: the inspector weighs examples as the next step would (under FSDP
        # with probe.every > 1 the stored direction stays in the checkpoints' per-rank files: a fresh probe instead)
        torch.save(trainer.weighting.state_dict(), out / "final" / METHOD_STATE)

    if rank() == 0:  # every logged step, for loss curves in reports without W&B
        write_history(out / "history.jsonl", trainer.state.log_history)
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
            f"{name}/nll": heldout_nll(
                trainer.model,
                ds,
                Collator(job.tokenizer.pad_token_id),
                c.trainer.per_device_eval_batch_size,
                c.model.loss_chunk_size,
            )
            for name, ds in job.data.eval.items()
        }
    if rank() == 0:
        set_aside_replaced_results(out)
        mark_trained(out / "final", fingerprint(resolved), length, metrics)
    return metrics, trainer.model, job.tokenizer


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Every logged step, one JSON object per line (loss curves in reports without W&B)."""
    with path.open("w") as f:
        for line in history:
            f.write(json.dumps(line) + "\n")


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


def _pretrain(
    c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None = None
) -> dict[str, Any]:
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
    write_metrics(out, metrics, logger)
    return metrics


def pretrain_tiny_base(init_dir: Path, work: Path, spec: TinyModelConfig) -> dict:
    """Train ``init_dir`` with uniform SFT on the ``corpus`` split through :func:`build_job`; the model goes to
    ``work/model``. Returns a record of what was done. (:func:`vcore.run.tiny.ensure_tiny` calls it when it builds.)"""
    from vcore.config import EvalRunConfig, NoLoggerConfig, SFTConfig, TrainConfig, TrainerConfig
    from vcore.data.config import SyntheticDatasetConfig

    p = spec.pretrain
    c = TrainConfig(
        model=ModelConfig(name_or_path=str(init_dir)),
        dataset=SyntheticDatasetConfig(
            train_split="corpus", num_examples=p.steps * p.batch_size, seed=p.seed, eval_examples=0
        ),
        method=SFTConfig(),
        trainer=TrainerConfig(
            max_steps=p.steps,
            per_device_train_batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            warmup_ratio=p.warmup_ratio,
            packing=p.pack_length > 0,
            pack_length=p.pack_length,
            logging_steps=max(1, min(50, p.steps // 10)),
            save_steps=0,
            resume="never",
            eval_at_end=False,
        ),
        logger=NoLoggerConfig(),
        eval=EvalRunConfig(after_train=False),
        seed=p.seed,
        output_dir=str(work),
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        job = build_job(c, work)
        result = job.trainer.train()
        job.trainer.save_model(str(work / "model"))
    finally:
        torch.set_num_threads(previous_threads)
    history = job.trainer.state.log_history
    write_history(work / "history.jsonl", history)
    nll = [h["train/nll"] for h in history if "train/nll" in h]
    return {
        "steps": p.steps,
        "examples": len(job.data.train),
        "supervised_tokens": job.data.stats.get("train/supervised_tokens"),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "final_nll": nll[-1] if nll else None,
        "torch_threads": p.threads,
    }


def summarize_train(
    history: list[dict[str, Any]],
    run_metrics: dict[str, Any],
    marker: str = "train/nll",
    prefixes: tuple[str, ...] = ("train/", "weights/", "vcore/"),
) -> dict[str, Any]:
    """Final values (last log line) and run means of the per-step diagnostics (keys starting with ``prefixes``, on
    the log lines that hold ``marker``: ``train/nll`` for SFT, ``rl/reward_mean`` for RL).

    Each log line holds the mean over the steps since the line before it, so run means weigh lines by the steps they
    cover: a run that logged an extra line (at a preemption) or resumed from a checkpoint (its history restored from
    it) gives the same means as the uninterrupted run. ``train_loss`` is computed the same way; the Trainer's own
    covers only what this process trained.
    """
    lines = [h for h in history if marker in h]
    if not lines:
        return dict(run_metrics)
    last = lines[-1]
    keys = [k for k in last if k.startswith(prefixes)]
    summary = {f"final/{k}": last[k] for k in keys}
    covered, previous = [], 0
    for h in lines:
        covered.append(max(h.get("step", previous + 1) - previous, 1))
        previous = h.get("step", previous + 1)
    for k in keys:
        pairs = [
            (h[k], n) for h, n in zip(lines, covered) if isinstance(h.get(k), (int, float)) and not math.isnan(h[k])
        ]
        if pairs:
            summary[f"mean/{k}"] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    if "train/nll" in last:
        summary["nll"] = last["train/nll"]
        summary["weighted_loss"] = last["train/weighted_loss"]
        summary["tokens_per_s"] = summary.get("mean/train/tokens_per_s")
    summary.update({k: v for k, v in run_metrics.items() if isinstance(v, (int, float))})
    losses = [(h["loss"], n) for h, n in zip(lines, covered) if "loss" in h and not math.isnan(h["loss"])]
    if losses:
        summary["train_loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    return summary


@torch.no_grad()
def heldout_nll(model, dataset, collator, batch_size: int, chunk_size: int = 0) -> float:
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
        token_loss, mask = model_token_loss(model, batch, chunk_size=chunk_size)
        total += float((token_loss * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)
