"""Entry point: ``python run.py [overrides]`` (see README).

Hydra composes ``conf/train.yaml``; ``cfg.task`` picks the job.
Multi-GPU: ``torchrun --nproc_per_node=N run.py [overrides]`` (docs/distributed.md); all ranks share one output dir.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vcore.config import register_configs
from vcore.run.launch import hydra_argv
from vcore.run.lifecycle import objective_value
from vcore.run.tasks import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # A sweeper that optimises (Optuna, sweeps/optuna_*.yaml) reads the returned metric named by cfg.objective.
    return objective_value(run_task(cfg), cfg.objective)


if __name__ == "__main__":
    sys.argv[1:] = hydra_argv(sys.argv[1:], Path(__file__).parent / "conf")
    main()
