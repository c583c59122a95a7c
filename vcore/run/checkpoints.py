"""Which checkpoint a run resumes from: ``trainer.resume: auto | never | <checkpoint dir>``.

``auto`` takes the newest *complete* and *readable* checkpoint in ``<output_dir>/checkpoints``, so a requeued job
(same output dir) continues where it stopped. Complete means its method-state file is there: rank 0 writes it last,
after every rank has written its part (:class:`vcore.run.trainer._MethodStateCallback`), so a job killed while saving
falls back to the previous checkpoint instead of loading a partial one. Readable means no file is visibly cut short
(a full disk, a copy interrupted afterwards): safetensors files hold every tensor their header announces, torch
files keep their zip directory. A damaged newest checkpoint is named in a warning and the one before it is used; a
damaged checkpoint given explicitly is an error naming the file.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from pathlib import Path

from vcore.checks import ConfigError
from vcore.run.trainer import METHOD_STATE

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TORCH_FILES = (".pt", ".pth", ".bin")


def damaged_file(checkpoint: Path) -> str | None:
    """The first file of ``checkpoint`` that is visibly cut short or unreadable, with the reason; None if all look whole.

    Cheap checks only (headers, sizes, zip directories), no tensor is loaded: sharded FSDP checkpoints
    (``pytorch_model_fsdp_*``) are checked for their metadata file.
    """
    for f in sorted(checkpoint.rglob("*")):
        if not f.is_file():
            continue
        try:
            if f.suffix == ".safetensors":
                with f.open("rb") as fh:
                    raw = fh.read(8)
                    if len(raw) < 8:
                        return f"{f}: shorter than a safetensors header"
                    (n,) = struct.unpack("<Q", raw)
                    header = json.loads(fh.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                if f.stat().st_size < 8 + n + end:
                    return f"{f}: {f.stat().st_size} bytes, its header announces {8 + n + end}"
            elif f.suffix in _TORCH_FILES and not zipfile.is_zipfile(f):
                return f"{f}: not a complete torch file (its zip directory is missing: cut short?)"
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except (OSError, ValueError, KeyError, struct.error) as err:
            return f"{f}: unreadable ({err})"
    for shards in checkpoint.glob("pytorch_model_fsdp_*"):
        if shards.is_dir() and not (shards / ".metadata").is_file():
            return f"{shards}: sharded checkpoint without its .metadata file"
    return None


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The complete, readable ``checkpoint-<step>`` with the highest step, or None."""
    if not checkpoints.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p)
         for p in checkpoints.iterdir()
         if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file() and (p / METHOD_STATE).is_file()),
        reverse=True,
    )
    for _, path in found:
        problem = damaged_file(path)
        if problem is None:
            return path
        log.warning("not resuming from %s, it is damaged: %s; trying the checkpoint before it", path, problem)
    if found:  # starting afresh would overwrite them: a person should look first
        raise ConfigError(
            f"every checkpoint in {checkpoints} is damaged (see the warnings above); move them away to start afresh, "
            "or set trainer.resume=never"
        )
    return None


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
    problem = damaged_file(path)
    if problem is not None:
        raise ConfigError(f"trainer.resume={option}: the checkpoint is damaged: {problem}")
    return path
