"""Rows of a training source, streamed through ``datasets.load_dataset``: a hub id or local files, one code path.

``dataset.source`` is either a hub id (``nvidia/OpenMathReasoning``: ``load_dataset(id, split=...)``) or a local
file or directory (the ``text``/``json``/``parquet`` builders). Everything streams (``streaming=True``): a
multi-million-row source is never held in memory.

Local files:
- ``.jsonl`` (also ``.ndjson``, ``.gz``): read line by line with the ``text`` builder and decoded here, so one
  undecodable line is one bad record named by file and line (the ``json`` builder would fail the whole file).
  Bytes that are not UTF-8 are escaped on read, which makes their line undecodable JSON: a bad record too.
- ``.json`` (one JSON array, the LLaMA-Factory layout) and ``.parquet``: the ``json``/``parquet`` builders.
- a directory: its data files; those named after ``dataset.split`` (``cot-00000-of-00144.parquet``,
  ``train/cpp/...``, ``cpp.jsonl``) if any, so a snapshot of a hub repo works as is; ``dataset.data_files``
  (globs relative to the directory) picks files explicitly.

    python -m vcore.data.sources /path/to/file.jsonl    # prints the first row
"""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError
from vcore.data.encode import BadRecord

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "lines", ".ndjson": "lines", ".json": "json", ".parquet": "parquet"}
# Which local formats each dataset config reads; the paper's sources accept whatever their copy is stored as.
ACCEPTS = {"jsonl": {"lines", "json"}, "parquet": {"parquet"}}


def file_format(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def is_local(source: str) -> bool:
    """A path (existing, or written like one) rather than a hub id ``org/name``."""
    path = Path(source).expanduser()
    return path.exists() or source.startswith(("/", "./", "../", "~")) or file_format(path) is not None


def local_files(cfg) -> list[Path]:
    """The data files of a local ``dataset.source``, checked to share one format the config accepts."""
    root = Path(cfg.source).expanduser()
    if not root.exists():
        raise ConfigError(f"dataset.source: {cfg.source!r} does not exist")
    if root.is_file():
        files = [root]
    else:
        found = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and file_format(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if cfg.data_files:
            files = [p for p in found if any(fnmatch.fnmatch(str(p.relative_to(root)), g) for g in cfg.data_files)]
        else:
            files = [p for p in found if _named_after(p.relative_to(root), cfg.split)]
            if not files:
                files = found
                if found:
                    log.warning(
                        "dataset.source %s: no file named after split %r; reading all %d data files",
                        root,
                        cfg.split,
                        len(found),
                    )
        if not files:
            raise ConfigError(
                f"dataset.source: no .jsonl/.json/.parquet files in {root} (dataset.data_files={cfg.data_files})"
            )
    formats = {file_format(p) for p in files}
    if None in formats:
        raise ConfigError(f"dataset.source: {files[0]} is not .jsonl, .json or .parquet")
    if len(formats) > 1:
        raise ConfigError(
            f"dataset.source: {root} mixes file formats ({', '.join(sorted(formats))}); "
            "narrow it with dataset.data_files"
        )
    fmt = formats.pop()
    if fmt not in ACCEPTS.get(cfg.name, {fmt}):
        raise ConfigError(
            f"dataset.source: dataset={cfg.name} reads {', '.join(sorted(ACCEPTS[cfg.name]))} files, "
            f"not {files[0].name}"
        )
    return files


def _named_after(rel: Path, split: str) -> bool:
    stem = rel.name.split(".")[0]
    return split in rel.parts[:-1] or stem == split or stem.startswith((f"{split}-", f"{split}_"))


def source_identity(cfg) -> dict[str, Any]:
    """What the curation cache is keyed on: the files (path, size, mtime) or the hub id and revision."""
    if not cfg.source:
        raise ConfigError(f"dataset.source: dataset={cfg.name} needs a source: a local file or directory (or a hub id)")
    if is_local(cfg.source):
        return {"files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in local_files(cfg)]}
    return {
        "hub": cfg.source,
        "split": cfg.split,
        "revision": cfg.revision,
        "config": cfg.hub_config,
        "data_files": cfg.data_files,
    }


def iter_rows(cfg) -> Iterator[tuple[int, str, dict[str, Any] | BadRecord]]:
    """``(index, where, row)`` for every row of the source in a fixed order; ``row`` is a :class:`BadRecord` for
    a line that does not decode to a JSON object (the caller applies ``dataset.on_bad_record``).
    """
    from datasets import load_dataset

    if not is_local(cfg.source):
        ds = load_dataset(
            cfg.source,
            cfg.hub_config,
            split=cfg.split,
            revision=cfg.revision,
            data_files=cfg.data_files,
            streaming=True,
        )
        for i, row in enumerate(ds):
            yield i, f"{cfg.source}[{cfg.split}] row {i}", row
        return
    index = 0
    for path in local_files(cfg):
        fmt = file_format(path)
        if fmt == "lines":
            ds = load_dataset(
                "text", data_files=[str(path)], split="train", streaming=True, encoding_errors="backslashreplace"
            )
            for line_no, row in enumerate(ds, start=1):
                line = row["text"]
                if not line.strip():
                    continue  # a blank line is not a record
                yield index, f"{path.name} line {line_no}", decode_line(line, f"{path.name} line {line_no}")
                index += 1
        else:
            ds = load_dataset(fmt, data_files=[str(path)], split="train", streaming=True)
            try:
                for i, row in enumerate(ds):
                    yield index, f"{path.name} row {i}", row
                    index += 1
            except (ValueError, OSError) as err:  # a broken JSON array or parquet file cannot be read in part
                raise BadRecord(f"{path}: cannot be read as {fmt}: {err}") from err


def decode_line(line: str, where: str) -> dict[str, Any] | BadRecord:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return BadRecord(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(row, dict):
        return BadRecord(f"{where}: a JSON {type(row).__name__}, not an object with fields")
    return row


if __name__ == "__main__":
    from types import SimpleNamespace

    kind = "parquet" if sys.argv[1].endswith(".parquet") else "jsonl"
    spec = SimpleNamespace(
        name=kind, source=sys.argv[1], split="train", data_files=None, hub_config=None, revision=None
    )
    print(next(iter_rows(spec)))
