"""Curate a dataset (and cache it) without training; prints the cache dir.

    python -m vcore.tools.curate dataset=openmath dataset.num_proc=16

Useful before a data-parallel job, so the ranks find the curated cache instead of all curating at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from omegaconf import OmegaConf

from vcore.config import compose_config
from vcore.data.curation import curate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vcore.tools.curate", description="Curate (and cache) a dataset only; prints the cache dir."
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/train.yaml (dataset=..., dataset.num_proc=...)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dataset_cfg = OmegaConf.to_object(compose_config(args.overrides).dataset)  # the dataset group alone: no run dir
    print(curate(dataset_cfg).path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
