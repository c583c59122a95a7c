"""What an evaluation has done so far, kept on disk as it happens, so a killed evaluation continues where it stopped.

Layout, under the evaluation's output dir::

    journal/settings.json                 what the results depend on (:func:`settings`); a resumed run must match
    journal/<benchmark>.generations.jsonl one line per item: {id, seed, outputs: [{text, n_tokens, truncated}, ...]}
    journal/<benchmark>.grades.jsonl      one line per sample: {id, sample, extracted, correct, verdict, detail}
    .vcore.lock                           held while an evaluation writes here (:mod:`vcore.locks`)

Each line is written and flushed as soon as it exists (an item's samples when its generation batch ends, a grade when
the grader returns it), and fsync'ed at most every second and when a benchmark's phase ends, so a SIGKILL loses no
flushed line and a power loss at most the last second. A line cut short by the kill (or a power loss) is the file's
tail: it is dropped, with a warning, and the file truncated to its last whole line before anything is appended. A bad
line followed by good ones is not something a kill produces; that stops the evaluation, naming the file and line.
The journal stays after the evaluation ends: rerunning it then only rewrites the per-item files and the summary.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError
from vcore.eval.results import jsonable
from vcore.locks import hold

log = logging.getLogger(__name__)

JOURNAL_DIR = "journal"
SETTINGS_FILE = "settings.json"
FSYNC_EVERY_S = 1.0
EVAL_DIR_BUSY = "two evaluations writing one dir would mix their records. Wait for it, or evaluate into another dir"


class JournalFile:
    """One append-only JSONL file. :meth:`read` first (it repairs a torn tail), then :meth:`append`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._synced = time.monotonic()

    def read(self) -> list[dict[str, Any]]:
        """Every whole record; a torn tail is dropped and cut off the file."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        records, end, bad = [], 0, None  # end: the byte after the last good line
        pos = 0
        for number, line in enumerate(data.split(b"\n")[:-1], start=1):  # the piece after the last newline: torn
            pos += len(line) + 1
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                bad = bad or number
                continue
            if bad is not None:
                raise ConfigError(
                    f"{self.path}, line {bad}: not a whole record, yet whole ones follow it (a kill only cuts the last "
                    "line, so something else damaged the file). Remove that line to regenerate its item, or the file "
                    "to regenerate the benchmark's items"
                )
            records.append(rec)
            end = pos
        if end < len(data):
            log.warning(
                "%s: dropping the record cut short at its end (%d bytes: a kill or power loss mid-write)",
                self.path,
                len(data) - end,
            )
            with open(self.path, "r+b") as f:
                f.truncate(end)
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` as lines and flush them; fsync at most every :data:`FSYNC_EVERY_S`."""
        if not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the journal's life)
        self._file.write("".join(json.dumps(jsonable(r), ensure_ascii=False) + "\n" for r in records))
        self._file.flush()
        if time.monotonic() - self._synced >= FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def item_seed(seed: int, benchmark: str, item_id: str) -> int:
    """The sampling seed of one item: fixed by the decoding seed, the benchmark and the item's id, so an item draws
    the same samples whichever items run before it or beside it (vLLM seeds each request with it)."""
    digest = hashlib.sha256(f"{seed}/{benchmark}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def weights_digest(path: str | Path | None) -> str | None:
    """A cheap digest of a saved model's weight files (name, size, first and last 64 KiB of each): it changes when the
    weights do (retrained into the same folder), not when the folder is copied. None when ``path`` is not a folder
    (a hub id) or holds no weight files."""
    if path is None or not Path(path).is_dir():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file())
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 16))
            f.seek(max(0, size - (1 << 16)))
            h.update(f.read(1 << 16))
    return h.hexdigest()[:16] if files else None


def flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


class EvalJournal:
    """The journal of one output dir: its lock, its settings and a :class:`JournalFile` pair per benchmark."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.dir = out_dir / JOURNAL_DIR
        self.files: dict[str, JournalFile] = {}

    def hold(self):
        return hold(self.out_dir, EVAL_DIR_BUSY)

    def check_settings(self, current: dict[str, Any]) -> str:
        """Record ``current`` (flat, JSON) for a new evaluation; refuse to continue one made under other settings.
        Returns when the evaluation was first started (UTC, ISO 8601)."""
        path = self.dir / SETTINGS_FILE
        now = json.loads(json.dumps(jsonable(current), default=str))
        if not path.is_file():
            created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"created": created, "settings": now}, indent=1, sort_keys=True))
            os.replace(tmp, path)
            return created
        recorded = json.loads(path.read_text())
        saved = recorded["settings"]
        differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "<unset>") != now.get(k, "<unset>"))
        if differ:
            shown = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in differ[:8])
            more = f" (and {len(differ) - 8} more)" if len(differ) > 8 else ""
            raise ConfigError(
                f"{self.out_dir} holds an evaluation made with other settings: {shown}{more}. Continuing it would mix "
                f"results of two evaluations. Evaluate into another dir, or delete {self.dir} to start this one afresh"
            )
        log.info("continuing the evaluation recorded in %s (started %s)", self.dir, recorded["created"])
        return recorded["created"]

    def file(self, benchmark: str, kind: str) -> JournalFile:
        key = f"{benchmark}.{kind}"
        if key not in self.files:
            self.files[key] = JournalFile(self.dir / f"{key}.jsonl")
        return self.files[key]

    def close(self) -> None:
        for f in self.files.values():
            f.close()
