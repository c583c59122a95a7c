"""Run dirs and checkpoints: everything about what a run dir holds and which checkpoint a run continues.

A run dir holds one run: a lock while a job uses it, and the settings its checkpoints were written under.

- :func:`hold` takes an exclusive lock on ``<run dir>/.vcore.lock`` (:mod:`vcore.locks`) for the life of the job
  (rank 0; the kernel releases it when the process dies, so a crash never leaves it held). A second job on the same
  dir stops at once with a message naming the holder, instead of both writing the same checkpoints.
- :func:`fingerprint` is the part of a resolved config that decides what a checkpoint contains (model, data,
  method, optimiser...). Each checkpoint carries it (:data:`CONFIG_FILE`); :func:`check_resume` refuses to continue a
  checkpoint under different settings and names the keys that differ, before the run dir's ``config.yaml`` is
  rewritten. ``trainer.resume_config_change=allow`` continues anyway (say, on purpose with a new learning rate).

Which checkpoint a run resumes from: ``trainer.resume: auto | never | <checkpoint dir>``.

``auto`` takes the newest *complete* and *readable* checkpoint in ``<output_dir>/checkpoints``, so a requeued job
(same output dir) continues where it stopped. Complete means its method-state file is there: rank 0 writes it last,
after every rank has written its part (:class:`vcore.run.trainer._MethodStateCallback`), so a job killed while saving
falls back to the previous checkpoint instead of loading a partial one. Readable means no file is visibly cut short
(a full disk, a copy interrupted afterwards): safetensors files hold every tensor their header announces, torch
files keep their zip directory. A damaged newest checkpoint is named in a warning and the one before it is used; a
damaged checkpoint given explicitly is an error naming the file.

When training ends, ``final/`` gets a record of it (:func:`mark_trained`): a job stopped during its final evaluation
(SIGTERM, a kill) continues with that evaluation, which continues from its journal, instead of training again.

:func:`find_run` maps a run dir or a checkpoint inside one to both (the inspector, ``task=eval``).
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from vcore import locks
from vcore.checks import ConfigError
from vcore.locks import DirBusy
from vcore.methods.base import METHOD_STATE

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- run dirs
CONFIG_FILE = "vcore_config.json"

# Settings a resumed run may change without becoming another run: how long it trains (a longer max_steps continues
# the same run; the schedule is then stretched from the resumed step on), how often it saves and logs, where its
# results go, and everything about evaluation and logging.
RESUMABLE_CHANGES = (
    "trainer.max_steps",
    "trainer.num_train_epochs",
    "trainer.save_steps",
    "trainer.save_total_limit",
    "trainer.logging_steps",
    "trainer.resume",
    "trainer.resume_config_change",
    "trainer.eval_at_end",
    "trainer.per_device_eval_batch_size",
    "trainer.dataloader_num_workers",
    "output_dir",
    "model.tiny.cache_dir",  # where the tiny base is cached, not what it is (its settings are part of the key)
    "task",
    "eval",
    "logger",
    "decoding",
    "benchmark",
    "rl.max_steps",
    "rl.num_train_epochs",
    "rl.save_steps",
    "rl.save_total_limit",
    "rl.logging_steps",
    "rl.resume",
    "rl.resume_config_change",
    "rl.eval_before",
    "rl.grading_workers",
)
# Config groups a task does not read: they never decide what its checkpoints contain.
UNUSED_BY_TASK = {"train": ("rl",), "rl": ("method", "dataset", "trainer")}


RunDirBusy = DirBusy  # another job holds the run dir
RUN_DIR_BUSY = (
    "two jobs on one run dir would write the same checkpoints. "
    "Wait for it, or give this job its own dir (hydra.run.dir=...)"
)


def hold(run_dir: Path, enabled: bool = True) -> AbstractContextManager[None]:
    """Hold ``run_dir``'s lock for the job (no-op when not ``enabled``, e.g. on ranks other than 0)."""
    return locks.hold(run_dir, RUN_DIR_BUSY, enabled)


def fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as flat ``{"a.b.c": value}``, without :data:`RESUMABLE_CHANGES` and the groups its task
    does not read (:data:`UNUSED_BY_TASK`)."""
    flat: dict[str, Any] = {}
    unused = UNUSED_BY_TASK.get(str(resolved.get("task", "train")), ())
    resolved = {k: v for k, v in resolved.items() if k not in unused}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", resolved)
    return {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)}


def seal(checkpoint: Path, settings: dict[str, Any] | None, method_state: Any) -> None:
    """Rank 0, after every rank has written its part of ``checkpoint``: the run's :func:`fingerprint` (the settings it
    was written under), then the method's state, last: its presence marks the checkpoint complete
    (:func:`latest_checkpoint`). SFT's trainer and RL (whose method state is empty) both seal this way."""
    import torch

    if settings is not None:
        (checkpoint / CONFIG_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
    torch.save(method_state, checkpoint / METHOD_STATE)


def check_resume(checkpoint: Path, resolved: dict[str, Any], allow: bool, group: str = "trainer") -> None:
    """Refuse to continue ``checkpoint`` under settings other than those it was written with (unless ``allow``);
    ``group`` holds the resume options the message names (``trainer``, or ``rl`` for task=rl)."""
    saved_file = checkpoint / CONFIG_FILE
    if not saved_file.is_file():
        log.warning(
            "%s records no settings (%s; written by an older version): resuming without checking them",
            checkpoint,
            CONFIG_FILE,
        )
        return
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(fingerprint(resolved), default=str))  # same JSON round trip as the saved side
    # A setting added since the checkpoint was written, at a null default (method._target_, say), changes nothing.
    added_unset = {k for k in now.keys() - saved.keys() if now[k] is None}
    keys = (saved.keys() | now.keys()) - added_unset
    differ = sorted(k for k in keys if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if not differ:
        return
    lines = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in differ[:8])
    more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
    message = (
        f"{checkpoint} was written by a run with other settings: {lines}{more}. Resuming would continue that run "
        f"under this config. Use another run dir (hydra.run.dir=...), start afresh here with {group}.resume=never, "
        f"or continue on purpose with {group}.resume_config_change=allow"
    )
    if not allow:
        raise ConfigError(message)
    log.warning("%s", message.replace("Resuming would", f"Resuming anyway ({group}.resume_config_change=allow) will"))


# ---------------------------------------------------------------------------------------------------- final/
TRAINED_FILE = "vcore_trained.json"


def mark_trained(final: Path, settings: dict[str, Any], length: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Rank 0, once ``final/`` holds the trained model and the run's training metrics are known (before its final
    evaluation): the settings it was trained under (:data:`CONFIG_FILE`) and a record of the training's length and
    metrics. A job stopped during the final evaluation then continues there without training again
    (:func:`trained_metrics`)."""
    (final / CONFIG_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
    tmp = final / f".{TRAINED_FILE}.tmp"
    tmp.write_text(json.dumps({"length": length, "metrics": metrics}, indent=1, default=str))
    tmp.replace(final / TRAINED_FILE)


def trained_metrics(
    final: Path, length: dict[str, Any], resolved: dict[str, Any], allow: bool, group: str
) -> dict[str, Any] | None:
    """The metrics :func:`mark_trained` recorded in ``final``, when training ended there; None when it must (still)
    run. Other settings stop the job as resuming a checkpoint does (:func:`check_resume`); another length (a longer
    ``max_steps``) trains on from the newest checkpoint."""
    path = final / TRAINED_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["length"] != json.loads(json.dumps(length)):
        log.info("%s was trained for %s; this run asks for %s: training continues", final, record["length"], length)
        return None
    check_resume(final, resolved, allow=allow, group=group)
    return record["metrics"]


# ---------------------------------------------------------------------------------------------------- resume
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TORCH_FILES = (".pt", ".pth", ".bin")


def damaged_file(checkpoint: Path) -> str | None:
    """The first file of ``checkpoint`` that is visibly cut short or unreadable, with the reason; None if all are whole.

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
        (
            (int(m.group(1)), p)
            for p in checkpoints.iterdir()
            if (m := _CHECKPOINT.match(p.name))
            and (p / "trainer_state.json").is_file()
            and (p / METHOD_STATE).is_file()
        ),
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


def resolve_resume(option: str, checkpoints: Path, name: str = "trainer.resume") -> Path | None:
    """The checkpoint to resume from, or None to start fresh (``name``: the option, for messages)."""
    if option == "never":
        return None
    if option == "auto":
        return latest_checkpoint(checkpoints)
    path = Path(option)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError(
            f"{name}={option}: not a checkpoint dir (no trainer_state.json); give a "
            "<output_dir>/checkpoints/checkpoint-<step> dir, or auto | never"
        )
    problem = damaged_file(path)
    if problem is not None:
        raise ConfigError(f"{name}={option}: the checkpoint is damaged: {problem}")
    return path


def find_run(path: Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint_dir)`` for a run dir (its ``final/``) or a checkpoint inside a run."""
    path = Path(path).resolve()
    if (path / "config.yaml").exists():
        return path, path / "final"
    for parent in path.parents:
        if (parent / "config.yaml").exists():
            return parent, path
    raise FileNotFoundError(
        f"{path}: no config.yaml here or above; pass a run dir (outputs/...) or a checkpoint in one"
    )
