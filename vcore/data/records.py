"""The normalised training record and the bad-record rules shared by every source.

A source row becomes a :class:`Record` (prompt text before the chat template, response, optional answer). A row
that cannot (a missing or non-string field, an empty response, an undecodable line) is a :class:`BadRecord`
whose message names the record and the field; ``dataset.on_bad_record`` decides between stopping (``error``) and
counting + logging it (``skip``). Nothing is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vcore.data.encode import BadRecord

log = logging.getLogger(__name__)


@dataclass
class Record:
    """A source record normalised for training: prompt text (before the chat template), response, answer."""

    id: str
    prompt: str
    response: str
    answer: str | None = None


def require_str(record: dict[str, Any], name: str, where: str) -> str:
    """``record[name]`` as a string, or a :class:`BadRecord` naming the record and the field."""
    if name not in record:
        raise BadRecord(f"{where}: missing field {name!r} (fields present: {', '.join(sorted(record)) or 'none'})")
    value = record[name]
    if not isinstance(value, str):
        raise BadRecord(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def skip_or_raise(err: BadRecord, on_bad_record: str, stats: dict) -> None:
    """Raise ``err`` (``on_bad_record=error``) or count and log it (``skip``)."""
    if on_bad_record == "error":
        raise BadRecord(f"{err} (set dataset.on_bad_record=skip to skip and count such records)") from None
    stats["skipped_bad_records"] = stats.get("skipped_bad_records", 0) + 1
    log.warning("skipping %s", err)
