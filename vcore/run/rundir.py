"""A run dir holds one run: a lock while a job uses it, and the settings its checkpoints were written under.

- :func:`hold` takes an exclusive lock on ``<run dir>/.vcore.lock`` for the life of the job (rank 0; the kernel
  releases it when the process dies, so a crash never leaves it held). A second job on the same dir stops at once
  with a message naming the holder, instead of both writing the same checkpoints.
- :func:`fingerprint` is the part of a resolved config that decides what a checkpoint contains (model, data,
  method, optimiser...). Each checkpoint carries it (:data:`CONFIG_FILE`); :func:`check_resume` refuses to continue a
  checkpoint under different settings and names the keys that differ, before the run dir's ``config.yaml`` is
  rewritten. ``trainer.resume_config_change=allow`` continues anyway (say, on purpose with a new learning rate).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".vcore.lock"
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
)


class RunDirBusy(RuntimeError):
    """Another job holds the run dir."""


@contextmanager
def hold(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body (no-op when not ``enabled``, e.g. on ranks other than 0)."""
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunDirBusy(
                f"{run_dir} is in use by {holder}: two jobs on one run dir would write the same checkpoints. "
                "Wait for it, or give this job its own dir (hydra.run.dir=...)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as flat ``{"a.b.c": value}``, without :data:`RESUMABLE_CHANGES`."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", resolved)
    return {
        k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)
    }


def save_fingerprint(checkpoint: Path, resolved: dict[str, Any]) -> None:
    (checkpoint / CONFIG_FILE).write_text(json.dumps(fingerprint(resolved), indent=1, sort_keys=True, default=str))


def check_resume(checkpoint: Path, resolved: dict[str, Any], allow: bool) -> None:
    """Refuse to continue ``checkpoint`` under settings other than those it was written with (unless ``allow``)."""
    saved_file = checkpoint / CONFIG_FILE
    if not saved_file.is_file():
        log.warning("%s records no settings (%s; written by an older version): resuming without checking them", checkpoint, CONFIG_FILE)
        return
    saved = json.loads(saved_file.read_text())
    now = json.loads(json.dumps(fingerprint(resolved), default=str))  # same JSON round trip as the saved side
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if not differ:
        return
    lines = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in differ[:8])
    more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
    message = (
        f"{checkpoint} was written by a run with other settings: {lines}{more}. Resuming would continue that run "
        "under this config. Use another run dir (hydra.run.dir=...), start afresh here with trainer.resume=never, "
        "or continue on purpose with trainer.resume_config_change=allow"
    )
    if not allow:
        raise ConfigError(message)
    log.warning("%s", message.replace("Resuming would", "Resuming anyway (trainer.resume_config_change=allow) will"))
