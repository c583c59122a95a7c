"""``task=rl``: GRPO from a fine-tuned checkpoint with TRL's ``GRPOTrainer``, evaluated before and after (Table 2).

    python run.py task=rl rl=tiny rl.start=outputs/<sft run>                     # CPU miniature
    python run.py task=rl rl=paper rl.start=outputs/<sft run> benchmark=table2 decoding=paper
    accelerate launch --num_processes 8 run.py task=rl rl=paper rl.start=...     # the paper's 8 GPUs

The start (``rl.start``) is a run dir or checkpoint of ours (loaded as its own config.yaml says: full weights or LoRA
adapters on their base), a hub id or model dir, or, when unset, the ``model`` group. The job runs like an SFT run:
the run dir is locked, ``config.yaml`` written, W&B offline by default with the same naming; checkpoints every
``rl.save_steps`` carry the settings they were written under, and ``rl.resume=auto`` continues the newest complete
one; SIGTERM saves and exits with status 75, also during the evaluations before and after, which a rerun continues
(a job stopped during its final evaluation does not train again). The reward is evaluation's math grader
(:mod:`vcore.rl.reward`).

Outputs, as an SFT run's: ``final/`` (always a full ``from_pretrained`` model: LoRA adapters are merged, so
``task=eval`` and vLLM load it alone), ``history.jsonl`` (metrics as logged, ``rl/...``), ``eval_before/`` and
``eval/`` (per-item results), ``metrics.json`` with ``start`` (what RL started from: the SFT method, the model),
``rl`` (final and mean of the logged metrics), ``eval_before`` and ``eval``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import TrainerCallback

from vcore.checks import ConfigError
from vcore.distributed import barrier, rank, world_size
from vcore.eval.generate import eos_ids
from vcore.modeling import check_source, load_checkpoint, load_pretrained, load_tokenizer
from vcore.rl.config import TRL_LOSS_TYPE
from vcore.rl.data import build_prompts
from vcore.rl.grpo import rl_log_key, use_vllm
from vcore.rl.reward import BoxedMathReward
from vcore.run.benchmarks import evaluate_start_model, on_eval_device, set_aside_replaced_results
from vcore.run.checkpoints import find_run, fingerprint, mark_trained, seal
from vcore.run.lifecycle import run_job
from vcore.run.loggers import LoggerCallback, NullLogger
from vcore.run.preemption import Preempted, PreemptionCallback
from vcore.run.trainer import NonFiniteTraining, step_is_finite
from vcore.run.training import (
    prepare_model,
    resolve_model,
    schedule_args,
    summarize_train,
    train_then_evaluate,
    write_history,
)

log = logging.getLogger(__name__)


def rl(cfg: DictConfig) -> dict[str, Any]:
    """``task=rl``: GRPO as ``cfg.rl`` says, from ``rl.start``; metrics also go to ``<output_dir>/metrics.json``."""
    return run_job(cfg, _rl)


@dataclass
class Start:
    """The model RL starts from and what it is (for Table 2's rows)."""

    tokenizer: Any
    model: Any
    source: str  # rl.start as given, or the model group's path
    method: str | None  # the SFT method of a run of ours; None for any other model
    model_name: str  # the base model the start was fine-tuned from (or the start itself)
    lora: bool
    seed: int | None = None  # the SFT run's seed (a Table 2 row's repeats are RL runs from SFT runs of several seeds)


def load_start(c) -> Start:
    """The start model: a run of ours (run dir or checkpoint, full or LoRA), a hub id / dir, or the model group."""
    if c.rl.start is None:
        tokenizer, model = prepare_model(c)
        path = str(resolve_model(c.model).name_or_path)
        return Start(tokenizer, model, path, None, model_label(c.model), c.model.lora.enabled)
    source = Path(c.rl.start).expanduser()
    try:  # ours: a config.yaml in the dir or above it (a run dir, its final/, a checkpoint, full or LoRA)
        run_dir, checkpoint = find_run(source) if source.exists() else (None, None)
    except FileNotFoundError:
        run_dir = checkpoint = None
    if run_dir is None:  # a model dir or a hub id
        if source.exists() and not (source / "config.json").is_file():
            raise ConfigError(
                f"rl.start={c.rl.start}: not a run dir or checkpoint of this project (no config.yaml here or above), "
                "nor a model dir (no config.json)"
            )
        check_source(str(c.rl.start), "rl.start")
        return Start(
            load_tokenizer(str(c.rl.start)),
            load_pretrained(str(c.rl.start), c.model.dtype),
            str(c.rl.start),
            None,
            _short(str(c.rl.start)),
            False,
        )
    from vcore.config import load_run_config

    if not checkpoint.is_dir():
        raise ConfigError(
            f"rl.start={c.rl.start}: {run_dir} has no {checkpoint.name}/ (did the run finish?); "
            "pass a checkpoint dir inside it instead"
        )
    run_cfg = load_run_config(run_dir / "config.yaml")
    tokenizer, model = load_checkpoint(resolve_model(run_cfg.model), checkpoint)
    method = run_cfg.method.name if run_cfg.task == "train" else None
    return Start(
        tokenizer, model, str(checkpoint), method, model_label(run_cfg.model), run_cfg.model.lora.enabled, run_cfg.seed
    )


def _short(path: str) -> str:
    return path.rstrip("/").split("/")[-1]


def model_label(model_cfg) -> str:
    """A model group's name in Table 2: the last part of ``name_or_path``, or ``tiny`` for the tiny base (not its
    cache dir's name, so that RL from the base and RL from SFT runs on it share one label)."""
    return _short(str(model_cfg.name_or_path or "tiny"))


class _SealCheckpoints(TrainerCallback):
    """Into every checkpoint: the settings it was written under, then the marker of a complete checkpoint (the
    method-state file, empty for GRPO), as SFT checkpoints have (:mod:`vcore.run.checkpoints`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every rank has written its part
        if state.is_world_process_zero and ckpt.is_dir():
            seal(ckpt, self.settings, {})  # GRPO has no method state: the empty one marks the checkpoint complete
        return control


class _FiniteGradients(TrainerCallback):
    """Stops RL at the first update whose gradients are not finite, before the optimizer applies them (TRL, like the
    Trainer, would go on with NaN weights), so no checkpoint or final model holds them (as SFT's guard does)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        device = next(model.parameters()).device
        _, grad_ok = step_is_finite(model, torch.ones((), dtype=torch.bool, device=device))
        if not grad_ok:
            raise NonFiniteTraining(
                f"RL step {state.global_step + 1}: the gradient norm is not finite (NaN/inf); stopped before the "
                f"optimizer applied it, nothing saved as final. Likely fixes: a lower rl.learning_rate (now "
                f"{args.learning_rate:g}), rl.max_grad_norm > 0, rl.precision=fp32 if it overflowed in bf16"
            )
        return control


def _rl(c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None) -> dict[str, Any]:
    def load_final(final: Path):  # always a full model
        return load_tokenizer(str(final)), on_eval_device(load_pretrained(str(final)))

    return train_then_evaluate(
        c, resolved, out, logger, checkpoint, "rl", _train, load_final, lambda m: f"GRPO from {m['start']['source']}"
    )


def _train(
    c, resolved: dict[str, Any], out: Path, logger: NullLogger, checkpoint: Path | None, length: dict[str, Any]
) -> tuple[dict[str, Any], Any, Any]:
    """GRPO to the end, ``final/`` saved and recorded (:func:`vcore.run.checkpoints.mark_trained`); the run's metrics
    so far, the trained model and its tokenizer."""
    from trl import GRPOTrainer

    start = load_start(c)
    log.info("RL from %s (method %s, model %s)", start.source, start.method, start.model_name)
    info = {
        "source": start.source,
        "method": start.method,
        "model": start.model_name,
        "lora": start.lora,
        "seed": start.seed,
    }
    logger.update_config({"start": info})  # W&B groups RL runs by the SFT method they started from (vcore.dashboard)
    prompts, data_stats = build_prompts(c.rl, start.tokenizer)
    logger.log({f"data/{k}": v for k, v in data_stats.items()}, step=0)
    before = {}
    if c.rl.eval_before and c.benchmark:
        if world_size() > 1:
            log.warning(
                "rl.eval_before: rank 0 evaluates the start model while the other ranks wait at a barrier; an "
                "evaluation longer than the process group's timeout stops the job: then evaluate it with task=eval "
                "and set rl.eval_before=false"
            )
        before = evaluate_start_model(c, start.model, start.tokenizer, start.source, out, cacheable=False)
        logger.log({f"eval_before/{k}": v for k, v in before.items()}, step=0)
        barrier()

    args = grpo_args(c.rl, out, c.seed, world_size(), use_vllm(c.rl))
    reward = BoxedMathReward(
        start.tokenizer,
        c.rl.data.answer_scope.value,
        workers=c.rl.grading_workers,
        eos_token_ids=eos_ids(start.model, start.tokenizer),
    )
    preemption = PreemptionCallback()
    trainer = GRPOTrainer(
        model=start.model,
        reward_funcs=[reward],
        args=args,
        train_dataset=prompts,
        processing_class=start.tokenizer,
        callbacks=[
            LoggerCallback(logger, rename=rl_log_key),
            _SealCheckpoints(fingerprint(resolved)),
            _FiniteGradients(),
            preemption,
        ],
    )
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
        step = json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0)
        if step % c.rl.updates_per_rollout:  # a SIGTERM checkpoint inside a rollout batch
            log.warning(
                "%s is at step %d, inside a rollout batch of %d updates: TRL keeps the batch in memory only, so "
                "the resumed run samples a new one there (not the run it would have been)",
                checkpoint,
                step,
                c.rl.updates_per_rollout,
            )
    try:
        with preemption.handle_sigterm():
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    finally:
        reward.close()
    if preemption.stopped:
        raise Preempted(trainer.state.global_step)

    model = save_final(trainer, start.tokenizer, out / "final")
    history = [{rl_log_key(k): v for k, v in line.items()} for line in trainer.state.log_history]
    if rank() == 0:
        write_history(out / "history.jsonl", history)
    metrics: dict[str, Any] = {
        "start": info,
        "rl": summarize_train(history, result.metrics, marker="rl/reward_mean", prefixes=("rl/",)),
        "data": data_stats,
    }
    if before:
        metrics["eval_before"] = before
    if rank() == 0:
        set_aside_replaced_results(out)
        mark_trained(out / "final", fingerprint(resolved), length, metrics)
    return metrics, model, start.tokenizer


def grpo_args(rl, out: Path, seed: int, world_size: int, vllm: bool) -> Any:
    """``GRPOConfig`` for ``rl``, checkpoints under ``out/checkpoints``, for ``world_size`` processes."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out / "checkpoints"),
        **rl.batch_plan(world_size),
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        top_p=rl.top_p,
        chat_template_kwargs={"enable_thinking": rl.enable_thinking},
        num_iterations=rl.num_iterations,
        epsilon=rl.clip_epsilon,
        beta=rl.kl_coef,
        entropy_coef=rl.entropy_coef,
        loss_type=TRL_LOSS_TYPE[rl.loss_aggregation],
        scale_rewards=rl.scale_rewards,
        mask_truncated_completions=rl.mask_truncated_completions,
        **schedule_args(rl),
        bf16=rl.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told it is on the CPU
        activation_checkpointing=rl.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        use_vllm=vllm,
        vllm_mode="colocate",  # generation on the training GPUs, as verl's hybrid engine does
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=rl.vllm_importance_sampling_correction,
        seed=seed if rl.seed is None else rl.seed,
        log_completions=False,  # per-step completion tables go through TRL's own W&B hook; ours logs scalars
        remove_unused_columns=False,  # the reward reads the answer column
        report_to="none",  # W&B is driven by vcore.run.loggers, as for SFT runs
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def save_final(trainer, tokenizer, path: Path):
    """The trained policy as a full ``from_pretrained`` dir (LoRA adapters merged into their base); returns it."""
    from peft import PeftModel

    model = trainer.model
    if isinstance(model, PeftModel):
        if "ref" in model.peft_config:  # TRL's frozen copy of the start adapters, the KL reference
            model.delete_adapter("ref")
        model = model.merge_and_unload()
        if rank() == 0:
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
        barrier()
    else:
        trainer.save_model(str(path))
        if rank() == 0:
            tokenizer.save_pretrained(path)
    return model
