"""How RL runs on TRL: the names its metrics are logged under, and where rollouts are generated (HF or vLLM).

The ``GRPOConfig`` itself is built by :func:`vcore.run.rl.grpo_args` from ``cfg.rl``: verl's settings map to TRL's
as ``conf/rl/paper.yaml`` lists them, :meth:`vcore.rl.config.RLConfig.batch_plan` converts the batch sizes for the
number of processes, and what TRL cannot express is in :data:`vcore.rl.config.VERL_WITHOUT_TRL_EQUIVALENT`.
"""

from __future__ import annotations

import importlib.util

import torch

from vcore.checks import ConfigError
from vcore.rl.config import RLConfig

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
            raise ConfigError(
                'rl.generation=vllm: vLLM is not installed (pip install -e ".[vllm]"), or use rl.generation=hf'
            )
        if not torch.cuda.is_available():
            raise ConfigError("rl.generation=vllm needs a CUDA device; on CPU use rl.generation=hf")
        return True
    return rl.generation == "auto" and installed and torch.cuda.is_available()
