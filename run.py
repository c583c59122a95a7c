"""Entry point: ``python run.py [overrides]`` (see README). Hydra composes ``conf/train.yaml``; ``train`` does the rest."""

import hydra
from omegaconf import DictConfig

from vcore.config import register_configs
from vcore.train import run

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
