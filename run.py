"""Entry point: ``python run.py [overrides]`` (see README). Hydra composes ``conf/train.yaml``; ``cfg.task`` picks the job.

Multi-GPU: ``torchrun --nproc_per_node=N run.py [overrides]`` (docs/distributed.md); all ranks share one output dir.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vcore.config import register_configs
from vcore.run.launch import hydra_argv
from vcore.run.tasks import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_task(cfg)


if __name__ == "__main__":
    sys.argv[1:] = hydra_argv(sys.argv[1:], Path(__file__).parent / "conf")
    main()
