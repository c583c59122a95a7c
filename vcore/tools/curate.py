"""Curate a dataset (and cache it) without training: ``python -m vcore.tools.curate dataset=<name> [overrides]``.

Useful before a data-parallel job, so the ranks find the curated cache instead of all curating at once.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf

from vcore.config import compose_config
from vcore.data.curation import curate


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dataset_cfg = OmegaConf.to_object(compose_config(args).dataset)  # the dataset group alone: no run dir
    print(curate(dataset_cfg).path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
