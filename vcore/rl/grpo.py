"""TRL's ``GRPOConfig`` from ``cfg.rl``, and the names RL metrics are logged under.

verl's settings map to TRL's as ``conf/rl/paper.yaml`` lists them; :meth:`vcore.rl.config.RLConfig.batch_plan`
converts the batch sizes for the number of processes. What TRL cannot express is in
:data:`vcore.rl.config.VERL_WITHOUT_TRL_EQUIVALENT`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from vcore.checks import ConfigError
from vcore.rl.config import TRL_LOSS_TYPE, RLConfig

# TRL's metric names -> ours (rl/...), for the ones a reader looks at first. Other TRL metrics get an ``rl/`` prefix;
# the Trainer's own (loss, grad_norm, learning_rate, epoch, train_*) keep their names.
RL_LOG_KEYS = {
    "reward": "rl/reward_mean",
    "reward_std": "rl/reward_std",
    "rewards/accuracy/mean": "rl/accuracy",  # the reward is 0/1 correctness: its mean is the rollouts' accuracy
    "rewards/accuracy/std": "rl/accuracy_std",
    "no_answer_rate": "rl/no_answer_rate",
    "grading_failure_rate": "rl/grading_failure_rate",
    "frac_reward_zero_std": "rl/frac_groups_zero_std",  # groups whose completions all scored the same: no signal
    "kl": "rl/kl",
    "entropy": "rl/entropy",
    "completions/mean_length": "rl/completion_length",
    "completions/max_length": "rl/completion_length_max",
    "completions/clipped_ratio": "rl/truncation_rate",
    "clip_ratio/region_mean": "rl/clip_ratio",
    "policy_loss": "rl/policy_loss",
    "step_time": "rl/step_time_s",
}
TRAINER_KEYS = ("loss", "grad_norm", "learning_rate", "epoch", "step", "total_flos")


def rl_log_key(key: str) -> str:
    """The name a TRL/Trainer log key is logged under (see :data:`RL_LOG_KEYS`)."""
    if key in RL_LOG_KEYS:
        return RL_LOG_KEYS[key]
    if key in TRAINER_KEYS or key.startswith(("train_", "rl/")):
        return key
    return f"rl/{key}"


def use_vllm(rl: RLConfig) -> bool:
    """Whether rollouts come from vLLM (``rl.generation``); an explicit ``vllm`` without it installed is an error."""
    installed = importlib.util.find_spec("vllm") is not None
    if rl.generation == "vllm":
        if not installed:
            raise ConfigError('rl.generation=vllm: vLLM is not installed (pip install -e ".[vllm]"), or use rl.generation=hf')
        if not torch.cuda.is_available():
            raise ConfigError("rl.generation=vllm needs a CUDA device; on CPU use rl.generation=hf")
        return True
    return rl.generation == "auto" and installed and torch.cuda.is_available()


def grpo_args(rl: RLConfig, out: Path, seed: int, world_size: int, vllm: bool) -> Any:
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
        learning_rate=rl.learning_rate,
        lr_scheduler_type=rl.lr_scheduler_type,
        warmup_steps=rl.warmup_ratio,  # a float < 1 is a fraction of the training steps
        weight_decay=rl.weight_decay,
        max_grad_norm=rl.max_grad_norm,
        num_train_epochs=rl.num_train_epochs,
        max_steps=rl.max_steps,
        bf16=rl.precision == "bf16",
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 without a GPU unless told it is on the CPU
        activation_checkpointing=rl.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        use_vllm=vllm,
        vllm_mode="colocate",  # generation on the training GPUs, as verl's hybrid engine does
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=rl.vllm_importance_sampling_correction,
        seed=seed if rl.seed is None else rl.seed,
        logging_steps=rl.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if rl.save_steps > 0 else "no",
        save_steps=rl.save_steps if rl.save_steps > 0 else 500,
        save_total_limit=rl.save_total_limit,
        log_completions=False,  # per-step completion tables go through TRL's own W&B hook; ours logs scalars
        remove_unused_columns=False,  # the reward reads the answer column
        report_to="none",  # W&B is driven by vcore.run.loggers, as for SFT runs
        dataloader_pin_memory=torch.cuda.is_available(),
    )
