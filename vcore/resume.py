"""Which checkpoint a run resumes from: ``trainer.resume: auto | never | <checkpoint dir>``.

``auto`` takes the newest *complete* checkpoint in ``<output_dir>/checkpoints``, so a requeued job (same output
dir) continues where it stopped. Complete means its method-state file is there: rank 0 writes it last, after every
rank has written its part (:class:`vcore.trainer._MethodStateCallback`), so a job killed while saving falls back
to the previous checkpoint instead of loading a partial one.
"""

from __future__ import annotations

import re
from pathlib import Path

from vcore.checks import ConfigError
from vcore.trainer import METHOD_STATE

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The complete ``checkpoint-<step>`` with the highest step, or None."""
    if not checkpoints.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in checkpoints.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file() and (p / METHOD_STATE).is_file()
    ]
    return max(found)[1] if found else None


def resolve_resume(option: str, checkpoints: Path) -> Path | None:
    """The checkpoint to resume from, or None to start fresh."""
    if option == "never":
        return None
    if option == "auto":
        return latest_checkpoint(checkpoints)
    path = Path(option)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(
            f"trainer.resume={option}: not a checkpoint dir (no trainer_state.json); give a "
            "<output_dir>/checkpoints/checkpoint-<step> dir, or auto | never"
        )
    return path
