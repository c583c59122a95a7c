"""The job of each ``cfg.task``: what ``run.py`` calls, and what tests and sweepers call with a composed config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from vcore.run.evaluation import evaluate
from vcore.run.rl import rl
from vcore.run.training import pretrain, train

TASKS = {"train": train, "eval": evaluate, "pretrain": pretrain, "rl": rl}


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Run the job ``cfg.task`` names (train | eval | pretrain | rl); returns its metrics."""
    return TASKS[cfg.task](cfg)
