"""The ``rl`` config group: GRPO from a fine-tuned checkpoint, with TRL's ``GRPOTrainer`` (``task=rl``).

Each field says which setting of verl (the paper's RL framework, Table 8) it stands for, so a preset can be read
against the paper. :func:`vcore.run.rl.grpo_args` turns this into TRL's ``GRPOConfig``; the settings verl has and
TRL lacks are listed in :data:`VERL_WITHOUT_TRL_EQUIVALENT` (and in ``conf/rl/paper.yaml``).

Batch sizes are counted the way verl counts them (prompts per rollout batch, prompts per optimizer step,
completions per device per forward) and converted to TRL's (completions per device per forward, gradient
accumulation, micro-steps per generation) for the number of processes the job runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from vcore.checks import check as _check
from vcore.eval.config import BenchmarkConfig, GraderKind


class LossAggregation(str, Enum):
    """verl's ``actor.loss_agg_mode`` and the TRL ``loss_type`` that aggregates the same way."""

    token_mean = (
        "token_mean"  # verl token-mean (its default): every token of the mini-batch weighs the same -> TRL dapo
    )
    seq_mean_token_mean = "seq_mean_token_mean"  # verl seq-mean-token-mean: the original GRPO -> TRL grpo
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"  # verl seq-mean-token-sum-norm (Dr. GRPO) -> TRL dr_grpo


TRL_LOSS_TYPE = {
    LossAggregation.token_mean: "dapo",
    LossAggregation.seq_mean_token_mean: "grpo",
    LossAggregation.seq_mean_token_sum_norm: "dr_grpo",
}

# verl settings of the paper's Table 8 (or verl defaults it relies on) that TRL 1.x cannot express, and what we do.
VERL_WITHOUT_TRL_EQUIVALENT = {
    "data.max_prompt_length": "TRL has no prompt limit: prompts longer than rl.max_prompt_length tokens are dropped "
    "before training (verl's filter_overlong_prompts), and their count is logged",
    "actor.kl_loss_type=low_var_kl": "TRL's KL term is the same k3 estimator, exp(ref - logp) - (ref - logp) - 1, "
    "but verl also clamps it to [-10, 10]; TRL does not",
    "algorithm.use_kl_in_reward=false": "nothing to set: TRL never puts a KL penalty into the reward",
    "trainer.n_gpus_per_node=8": "the launcher's choice (accelerate / torchrun processes), not a config value",
    "lr scheduler steps": "verl steps the schedule once per rollout batch, TRL once per update (4x as often with "
    "rl=paper); the warm-up covers the same share of training",
}


@dataclass
class RLConfig:
    """GRPO settings (``conf/rl/``); the ``trainer``, ``method`` and ``dataset`` groups are not used by ``task=rl``."""

    # Where RL starts: a run dir or checkpoint of ours (full or LoRA; its own config.yaml says how to load it), or a
    # hub id / model dir. null: the model group (model=...), e.g. the tiny base itself.
    start: Optional[str] = None
    data: BenchmarkConfig = MISSING  # the prompts and their gold answers (conf/rl/data/: bigmath | synthetic)
    enable_thinking: bool = True  # passed to chat templates that take it (Qwen3), as evaluation does
    # ---- rollouts
    prompts_per_step: int = 128  # verl data.train_batch_size: prompts per rollout batch
    num_generations: int = 4  # verl actor_rollout_ref.rollout.n: completions per prompt (the GRPO group)
    max_prompt_length: int = 4096  # verl data.max_prompt_length (longer prompts are dropped, see above)
    max_completion_length: int = 8192  # verl data.max_response_length
    temperature: float = 1.0  # verl rollout.temperature
    top_p: float = 1.0  # verl rollout.top_p
    # hf: transformers generate (CPU or GPU) | vllm: vLLM colocated on the training GPUs | auto: vllm on CUDA when it
    # is installed (pip install -e ".[vllm]"), else hf
    generation: str = "auto"
    vllm_gpu_memory_utilization: float = 0.5  # verl rollout.gpu_memory_utilization
    # TRL corrects the mismatch between vLLM's and the trainer's token probabilities by importance sampling (its
    # default); verl's GRPO recipe of the paper did not: off, as verl.
    vllm_importance_sampling_correction: bool = False
    # ---- policy update
    mini_batch_prompts: int = 32  # verl actor.ppo_mini_batch_size: prompts (x num_generations completions) per update
    micro_batch_size: int = 2  # verl actor.ppo_micro_batch_size_per_gpu: completions per forward, per device
    num_iterations: int = 1  # verl actor.ppo_epochs: updates per rollout batch
    clip_epsilon: float = 0.2  # verl actor.clip_ratio
    kl_coef: float = 0.02  # verl actor.use_kl_loss=true, actor.kl_loss_coef (0: no reference model is loaded)
    entropy_coef: float = 0.001  # verl actor.entropy_coeff (a bonus: the loss subtracts coef x mean entropy)
    loss_aggregation: LossAggregation = LossAggregation.token_mean  # verl actor.loss_agg_mode
    scale_rewards: str = "group"  # verl algorithm.norm_adv_by_std_in_grpo=true -> group | none (Dr. GRPO) | batch
    mask_truncated_completions: bool = False  # verl has no such option: truncated completions train like the rest
    # ---- optimizer and schedule
    learning_rate: float = 5e-6  # verl actor.optim.lr
    warmup_ratio: float = 0.1  # verl actor.optim.lr_warmup_steps_ratio
    lr_scheduler_type: str = "cosine"  # verl actor.optim.warmup_style=cosine
    weight_decay: float = 0.01  # verl actor.optim.weight_decay (its default)
    max_grad_norm: float = 1.0  # verl actor.grad_clip
    num_train_epochs: float = 2.0  # verl trainer.total_epochs
    max_steps: int = -1  # > 0: optimizer steps, overrides num_train_epochs
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights stay in the start model's dtype)
    gradient_checkpointing: bool = False  # verl model.enable_gradient_checkpointing
    seed: Optional[int] = None  # data order and sampling; null: the job's seed
    # ---- bookkeeping (as trainer.* for task=train)
    logging_steps: int = 1
    save_steps: int = 0  # 0: only the final model is saved
    save_total_limit: Optional[int] = 2
    resume: str = "auto"  # auto | never | a checkpoint dir (see trainer.resume)
    resume_config_change: str = "error"  # error | allow (see trainer.resume_config_change)
    grading_workers: int = 2  # math-verify worker processes kept for the reward
    eval_before: bool = True  # evaluate the start model on cfg.benchmark first (Table 2's "before")

    def __post_init__(self) -> None:
        self.loss_aggregation = LossAggregation(self.loss_aggregation)
        _check(
            self.data.grader == GraderKind.math,
            "rl.data.grader",
            "the RL reward is the math grader's (\\boxed{} + math-verify); use grader: math",
        )
        for name in (
            "prompts_per_step",
            "num_generations",
            "mini_batch_prompts",
            "micro_batch_size",
            "num_iterations",
            "max_prompt_length",
            "max_completion_length",
            "grading_workers",
        ):
            _check(getattr(self, name) >= 1, f"rl.{name}", f"must be >= 1 (got {getattr(self, name)})")
        _check(self.num_generations >= 2, "rl.num_generations", "GRPO compares completions of one prompt: needs >= 2")
        _check(
            self.prompts_per_step % self.mini_batch_prompts == 0,
            "rl.mini_batch_prompts",
            f"must divide rl.prompts_per_step ({self.prompts_per_step}): "
            "each rollout batch is split into whole updates",
        )
        _check(self.generation in ("auto", "hf", "vllm"), "rl.generation", f"{self.generation!r} is not auto|hf|vllm")
        _check(
            self.scale_rewards in ("group", "batch", "none"),
            "rl.scale_rewards",
            f"{self.scale_rewards!r} is not group|batch|none",
        )
        _check(self.precision in ("fp32", "bf16"), "rl.precision", f"{self.precision!r} is not fp32|bf16")
        _check(self.learning_rate > 0, "rl.learning_rate", "must be > 0")
        _check(0 <= self.warmup_ratio < 1, "rl.warmup_ratio", "must be in [0, 1), a fraction of the training steps")
        _check(
            self.kl_coef >= 0 and self.entropy_coef >= 0, "rl.kl_coef", "rl.kl_coef and rl.entropy_coef must be >= 0"
        )
        _check(self.temperature > 0, "rl.temperature", "must be > 0: GRPO needs sampled, different completions")
        _check(
            self.max_steps > 0 or self.max_steps == -1,
            "rl.max_steps",
            "must be > 0, or -1 to train for rl.num_train_epochs",
        )
        _check(
            self.max_steps > 0 or self.num_train_epochs > 0, "rl.num_train_epochs", "must be > 0 when rl.max_steps=-1"
        )
        _check(bool(self.resume), "rl.resume", "must be auto, never or a checkpoint dir")
        k = self.updates_per_rollout
        _check(
            self.save_steps % k == 0,
            "rl.save_steps",
            f"must be a multiple of the {k} updates per rollout batch (rl.prompts_per_step / rl.mini_batch_prompts x "
            "rl.num_iterations): TRL keeps a rollout batch in memory only, so a checkpoint inside one cannot resume it",
        )
        _check(self.resume_config_change in ("error", "allow"), "rl.resume_config_change", "must be error or allow")

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps per rollout batch: the checkpoints a run can resume exactly fall on multiples of it."""
        return self.prompts_per_step // self.mini_batch_prompts * self.num_iterations

    def batch_plan(self, world_size: int) -> dict[str, int]:
        """verl's batch sizes as TRL's for ``world_size`` processes: ``per_device_train_batch_size`` (completions per
        forward), ``gradient_accumulation_steps`` (forwards per update) and ``steps_per_generation`` (forwards per
        rollout batch). Each must come out whole; the error names the setting to change."""
        per_update = self.mini_batch_prompts * self.num_generations
        per_rollout = self.prompts_per_step * self.num_generations
        per_forward = self.micro_batch_size * world_size
        _check(
            per_update % per_forward == 0,
            "rl.micro_batch_size",
            f"{self.mini_batch_prompts} prompts x {self.num_generations} completions per update "
            f"do not split into forwards of {self.micro_batch_size} completions on {world_size} process(es)",
        )
        return {
            "per_device_train_batch_size": self.micro_batch_size,
            "gradient_accumulation_steps": per_update // per_forward,
            "steps_per_generation": per_rollout // per_forward,
        }
