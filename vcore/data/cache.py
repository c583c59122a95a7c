"""The on-disk cache of curated records: written once, atomically, then read by position.

Layout of ``<cache_dir>/<dataset name>-<settings hash>/``:
- ``records.jsonl``: one normalised record per line (``id``, ``prompt``, ``response``, ``answer``), source order;
- ``offsets.npy``: byte offset of each line, so a subset is read by seeking, never by loading the file;
- ``ids.txt``: the record ids, one per line (the subset order is computed from them alone);
- ``manifest.json``: the settings hashed into the name, the counts of every kept, filtered and skipped row, the
  skip messages, when and how fast it was built.

The directory is written under a temporary name and renamed into place, so a crash leaves no half cache and two
processes curating the same settings at once both end with one complete copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from vcore.data.records import Record

MANIFEST = "manifest.json"


class CacheWriter:
    """``with CacheWriter(final_dir) as w: w.add(record) ...; w.commit(manifest)``; an exception discards it all."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        self.records = open(self.tmp / "records.jsonl", "wb")
        self.ids = open(self.tmp / "ids.txt", "w", encoding="utf-8")
        self.offsets = array("q")

    def add(self, rec: Record) -> None:
        self.offsets.append(self.records.tell())
        line = {"id": rec.id, "prompt": rec.prompt, "response": rec.response, "answer": rec.answer}
        self.records.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        self.ids.write(json.dumps(rec.id) + "\n")  # JSON-quoted: an id may hold any character, newlines included

    def __len__(self) -> int:
        return len(self.offsets)

    def commit(self, manifest: dict[str, Any]) -> Path:
        self.records.close()
        self.ids.close()
        np.save(self.tmp / "offsets.npy", np.frombuffer(self.offsets, dtype=np.int64))
        (self.tmp / MANIFEST).write_text(json.dumps({**manifest, "records": len(self)}, indent=2, ensure_ascii=False))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a shared cache dir should stay readable
        try:
            os.rename(self.tmp, self.final)
        except OSError:  # another process committed the same settings first: its copy is equivalent
            if not (self.final / MANIFEST).exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.records.close()
            self.ids.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


class CachedRecords:
    """Read access to a committed cache: ``len``, ``[i]`` (a :class:`Record`), ``ids``, ``manifest``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest = json.loads((path / MANIFEST).read_text())
        self.offsets = np.load(path / "offsets.npy")
        self._file = open(path / "records.jsonl", "rb")

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    def ids(self) -> list[str]:
        with open(self.path / "ids.txt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Record:
        self._file.seek(int(self.offsets[i]))
        return Record(**json.loads(self._file.readline()))

    def close(self) -> None:
        self._file.close()


def is_committed(path: Path) -> bool:
    return (path / MANIFEST).exists()
