"""Read an offline W&B run back from its files: history rows, summary, config and run settings, no network.

    python -m vcore.tools.wandb_files outputs/<date>/<time>/wandb/offline-run-*   # prints keys and the run's group

An offline run (``logger.mode=offline``, the default) is one ``run-<id>.wandb`` file: W&B's transaction log, records
of ``wandb.proto.wandb_internal_pb2.Record`` in LevelDB's log format (32 KiB blocks; each fragment a 7-byte header
of checksum, length and type: full, first, middle, last) after a 7-byte file header (``:W&B``, 0xBEE1, version 0).
The wandb package itself no longer ships a Python reader (its core reads and syncs them), so this one is here: the
dashboard's tests check its panels against what a real run wrote, and a user can check an offline run before
``wandb sync``. Media (the token-weight page, tables) sit next to it under ``files/media/``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32 * 1024
FRAGMENT_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step (``_step`` included)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # as passed to wandb.init (nested), without "_wandb"
    run: dict[str, Any] = field(default_factory=dict)  # id, group, job_type, tags, display_name, project
    media_dir: Path | None = None  # files/media of the run

    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row if not k.startswith("_")}


def records(path: Path) -> Iterator[bytes]:
    """The serialized records of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = len(HEADER), b""
    while pos + FRAGMENT_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < FRAGMENT_HEADER:  # a block's tail too short for a header is zero padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += FRAGMENT_HEADER
        if kind == 0 and length == 0:  # zero fill: the rest of the block
            pos += left_in_block - FRAGMENT_HEADER
            continue
        if pos + length > len(data):  # a fragment still being written (a live run's file): stop before it
            return
        chunk = data[pos : pos + length]
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: unknown fragment type {kind} at byte {pos - length - FRAGMENT_HEADER}")


def _items(items) -> dict[str, Any]:
    """Record items as a dict; W&B splits a nested value (a media object: ``{"_type", "path", ...}``) into one item per
    leaf with a ``nested_key`` path: put it back together."""
    out: dict[str, Any] = {}
    for item in items:
        value = json.loads(item.value_json)
        if not item.nested_key:
            out[item.key] = value
            continue
        node = out
        for part in item.nested_key[:-1]:
            node = node.setdefault(part, {})
        node[item.nested_key[-1]] = value
    return out


def read_offline_run(path: str | Path) -> OfflineRun:
    """``path``: an ``offline-run-*`` dir or its ``run-*.wandb`` file. Later summary/config updates win."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    file = path if path.suffix == ".wandb" else next(path.glob("run-*.wandb"))
    out = OfflineRun(media_dir=file.parent / "files" / "media")
    for raw in records(file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out.history.append(_items(rec.history.item))
        elif kind == "summary":
            out.summary.update(_items(rec.summary.update))
            for key in _items(rec.summary.remove):
                out.summary.pop(key, None)
        elif kind == "config":
            out.config.update(_items(rec.config.update))
        elif kind == "run":
            r = rec.run
            out.config.update(_items(r.config.update))
            out.run = {
                "id": r.run_id,
                "project": r.project,
                "group": r.run_group,
                "job_type": r.job_type,
                "tags": list(r.tags),
                "display_name": r.display_name,
            }
    out.config.pop("_wandb", None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.tools.wandb_files", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="an offline-run-* dir or its run-*.wandb file")
    args = parser.parse_args(argv)
    run = read_offline_run(args.run)
    print(
        json.dumps(
            {
                "run": run.run,
                "steps": len(run.history),
                "history_keys": sorted(run.history_keys()),
                "summary_keys": sorted(run.summary),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
