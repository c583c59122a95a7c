"""One Hydra output dir for every rank of a ``torchrun`` / ``accelerate launch`` job.

Every rank runs ``run.py`` and therefore Hydra. Left alone, each would resolve ``${now:...}`` in
``hydra.run.dir`` with its own clock (ranks started a second apart make two run dirs) and write its own
``.hydra/`` and job log. :func:`hydra_argv` runs before Hydra: rank 0 reads the clock once and broadcasts it;
every rank then passes the same explicit ``hydra.run.dir`` (``hydra.sweep.dir`` under ``-m``), with the
``${now:FORMAT}`` parts of the configured (or overridden) pattern filled in from that one time. Ranks > 0 write
no ``.hydra/`` and log to stdout only; only rank 0 writes ``config.yaml``, ``metrics.json``, checkpoints'
metadata and talks to W&B (:mod:`vcore.run.training`).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from omegaconf import OmegaConf

from vcore.distributed import broadcast_object, init_distributed, launched_world_size, rank

_NOW = re.compile(r"\$\{now:([^}]*)\}")


_DEFAULTS = {
    "hydra.run.dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}",
    "hydra.sweep.dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}",
}


def _flag(argv: list[str], *names: str) -> str | None:
    """The value of a Hydra command-line flag (``--config-name x`` or ``--config-name=x``), if given."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def configured_dir(key: str, argv: list[str], conf_dir: Path) -> str:
    """The unresolved ``hydra.run.dir`` / ``hydra.sweep.dir``: the command line's, else the primary config's
    (``--config-dir`` / ``--config-name`` honoured, e.g. ``sweeps/``), else ``conf/train.yaml``'s, else Hydra's."""
    for arg in reversed(argv):
        if arg.startswith(f"{key}="):
            return arg.split("=", 1)[1]
    name = _flag(argv, "--config-name", "-cn") or "train"
    extra = _flag(argv, "--config-dir", "-cd")
    candidates = ([Path(extra) / f"{name}.yaml"] if extra else []) + [
        conf_dir / f"{name}.yaml",
        conf_dir / "train.yaml",
    ]
    for path in candidates:
        if path.is_file():
            node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, str):
                return node
    return _DEFAULTS[key]


def hydra_argv(argv: list[str], conf_dir: Path) -> list[str]:
    """``argv`` (without the program name) plus the overrides that make all ranks share rank 0's output dir."""
    if launched_world_size() <= 1:
        return argv
    init_distributed()
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    now = time.localtime(broadcast_object(time.time() if rank() == 0 else None))
    shared = _NOW.sub(lambda m: time.strftime(m.group(1), now), configured_dir(key, argv, conf_dir))
    extra = [f"{key}={shared}"]
    if rank() != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return [a for a in argv if not a.startswith(f"{key}=")] + extra
