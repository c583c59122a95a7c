"""Curation: source rows -> normalised, filtered records, streamed once and cached (:mod:`vcore.data.cache`).

For each row, in source order:
1. ``dataset.filters``: keep rows whose ``str(row[field])`` is one of the listed values (the paper: OpenMathReasoning
   ``problem_type == has_answer_extracted`` and ``generation_model == DeepSeek-R1``; OpenCodeReasoning-2
   ``judgement == right``);
2. normalise: prompt, response, answer and id fields (:class:`~vcore.data.records.Record`); a bad row is an error
   or a counted skip (``dataset.on_bad_record``);
3. ``dataset.verify_answer``: the response's final answer, extracted exactly as grading extracts it
   (:func:`vcore.boxed.extract_boxed`: the last complete ``\\boxed{}`` after ``</think>``; none in a think block
   that never closes), must be equivalent to the answer field under math-verify (gold first:
   ``verify(parse(gold), parse(pred))``).

Every row lands in exactly one counter of the manifest (``kept``, ``filtered/<field>``, ``filtered/no_boxed_answer``,
``filtered/answer_mismatch``, ``skipped_bad_records``). The cache directory is named by a hash of the settings that
change the result (source identity, split, revision, fields, filters, answer check, on_bad_record) plus
:data:`CURATION_VERSION`; a rerun with the same settings reuses it. Prompt templates, the chat template, lengths
and subsets are applied later, so changing them never re-curates.

math-verify times out through ``signal.alarm``, which only works in a main thread: ``dataset.num_proc > 1`` (or a
call from another thread) checks answers in worker processes.

    python -m vcore.tools.curate dataset=openmath dataset.source=/data/omr dataset.num_proc=16   # curate only
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vcore.boxed import extract_boxed
from vcore.data.cache import CachedRecords, CacheWriter, is_committed
from vcore.data.encode import BadRecord
from vcore.data.records import Record, require_str, skip_or_raise
from vcore.data.sources import iter_rows, source_identity

log = logging.getLogger(__name__)

CURATION_VERSION = 2  # bump when a change here changes which records a setting keeps (2: the grader's box parser)
PROGRESS_EVERY_S = 30.0
MAX_SKIP_MESSAGES = 1000  # kept in the manifest; every skip is also logged and counted
VERIFY_WINDOW = 512  # answers checked per batch and process: bounds memory while the workers stay busy


def curation_settings(cfg) -> dict[str, Any]:
    """Everything that changes the curated records (and nothing that does not)."""
    return {
        "version": CURATION_VERSION,
        "dataset": cfg.name,
        "source": source_identity(cfg),
        "split": cfg.split,
        "fields": {
            "prompt": cfg.prompt_field,
            "response": cfg.response_field,
            "answer": cfg.answer_field,
            "id": cfg.id_field,
        },
        "prompt_placeholder": cfg.prompt_placeholder,
        "filters": {k: sorted(v) for k, v in sorted(cfg.filters.items())},
        "verify_answer": cfg.verify_answer,
        "on_bad_record": cfg.on_bad_record,
    }


def cache_path(cfg, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return Path(cfg.cache_dir).expanduser() / f"{cfg.name}-{key[:16]}"


def curate(cfg) -> CachedRecords:
    """The curated records of a source config: from the cache when present, else built (and cached) now."""
    settings = curation_settings(cfg)
    path = cache_path(cfg, settings)
    if is_committed(path):
        cached = CachedRecords(path)
        c = cached.counts
        log.info(
            "dataset %s: reusing curated cache %s (%d records of %d rows; "
            "%d bad records were skipped when it was built)",
            cfg.name,
            path,
            len(cached),
            c.get("rows", 0),
            c.get("skipped_bad_records", 0),
        )
        return cached
    log.info("dataset %s: curating %s (split %s) into %s", cfg.name, cfg.source, cfg.split, path)
    t0 = time.perf_counter()
    counts: dict[str, int] = {"rows": 0, "kept": 0, "skipped_bad_records": 0}
    skipped: list[str] = []
    with CacheWriter(path) as writer:
        for rec in _verified(cfg, _normalised(cfg, counts, skipped), counts):
            writer.add(rec)
            counts["kept"] += 1
        manifest = {
            "settings": settings,
            "counts": counts,
            "skipped": skipped,
            "seconds": time.perf_counter() - t0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        writer.commit(manifest)
    log.info("dataset %s: curated in %.0fs: %s", cfg.name, time.perf_counter() - t0, json.dumps(counts))
    return CachedRecords(path)


def _normalised(cfg, counts: dict[str, int], skipped: list[str]) -> Iterator[Record]:
    """Filtered, normalised records; filtered and bad rows are counted (and bad ones logged)."""
    progress = Progress(cfg.name, counts)
    for index, where, row in iter_rows(cfg):
        counts["rows"] += 1
        progress.tick()
        try:
            if isinstance(row, BadRecord):
                raise row
            reason = failed_filter(row, cfg.filters, where)
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
                continue
            yield normalise_row(row, cfg, index, where)
        except BadRecord as err:
            skip_or_raise(err, cfg.on_bad_record, counts)
            if len(skipped) < MAX_SKIP_MESSAGES:
                skipped.append(str(err))


def failed_filter(row: dict[str, Any], filters: dict[str, list[str]], where: str) -> str | None:
    """``filtered/<field>`` for the first filter the row fails, None if it passes them all."""
    for name, allowed in filters.items():
        if name not in row:
            raise BadRecord(f"{where}: missing field {name!r} that dataset.filters.{name} tests")
        if str(row[name]) not in allowed:
            return f"filtered/{name}"
    return None


def normalise_row(row: dict[str, Any], cfg, index: int, where: str) -> Record:
    prompt = require_str(row, cfg.prompt_field, where)
    if cfg.prompt_placeholder is not None and prompt.strip() == cfg.prompt_placeholder:
        # Not a bad record but an unfilled source: skipping would silently skip all of it.
        raise ValueError(
            f"{where}: field {cfg.prompt_field!r} is the placeholder {cfg.prompt_placeholder!r}: "
            "this copy of the source ships no prompt text (nvidia/OpenCodeReasoning-2 on the hub does this for every "
            "question). Fill the field in with the script on the dataset card and point dataset.source at the filled "
            "copy."
        )
    if not prompt.strip():
        raise BadRecord(f"{where}: field {cfg.prompt_field!r} is empty")
    response = require_str(row, cfg.response_field, where)
    if not response.strip():
        raise BadRecord(f"{where}: field {cfg.response_field!r} is empty")
    answer = require_str(row, cfg.answer_field, where) if cfg.answer_field else None
    if cfg.id_field is None:
        rid = str(index)
    elif cfg.id_field not in row or row[cfg.id_field] is None:
        raise BadRecord(f"{where}: missing field {cfg.id_field!r} (dataset.id_field)")
    else:
        rid = str(row[cfg.id_field])
    return Record(rid, prompt, response, answer)


def _verified(cfg, records: Iterator[Record], counts: dict[str, int]) -> Iterator[Record]:
    """``records`` whose final boxed answer math-verify finds equal to ``answer`` (all of them if not asked)."""
    if not cfg.verify_answer:
        yield from records
        return
    in_main = threading.current_thread() is threading.main_thread()
    procs = cfg.num_proc if cfg.num_proc > 1 or in_main else 1
    pool = None if procs == 1 and in_main else multiprocessing.get_context("spawn").Pool(procs)
    try:
        window: list[Record] = []
        for rec in records:
            window.append(rec)
            if len(window) >= VERIFY_WINDOW * procs:
                yield from _check_window(window, cfg.verify_timeout_s, pool, counts)
                window = []
        yield from _check_window(window, cfg.verify_timeout_s, pool, counts)
    finally:
        if pool is not None:
            pool.terminate()


def _check_window(window: list[Record], timeout: int, pool, counts: dict[str, int]) -> Iterator[Record]:
    jobs = [(rec.answer, rec.response, timeout) for rec in window]
    verdicts = pool.map(answer_verdict, jobs, chunksize=16) if pool is not None else [answer_verdict(j) for j in jobs]
    for rec, verdict in zip(window, verdicts):
        if verdict == "ok":
            yield rec
        else:
            counts[f"filtered/{verdict}"] = counts.get(f"filtered/{verdict}", 0) + 1


def final_answer(response: str) -> str | None:
    """The content of the response's final ``\\boxed{}`` (stripped), or None: the grader's own extraction, so a
    kept record is one whose answer grading would read the same way."""
    return extract_boxed(response, "after_think")


def answer_verdict(job: tuple[str, str, int]) -> str:
    """``ok``, ``no_boxed_answer`` or ``answer_mismatch`` for ``(gold, response, timeout_s)``; module level so
    worker processes can import it."""
    from math_verify import parse, verify

    gold, response, timeout = job
    answer = final_answer(response)
    if answer is None:
        return "no_boxed_answer"
    if gold.strip() and answer == gold.strip():
        return "ok"  # identical strings are equivalent: skips the sympy work for most rows
    # Gold answers are bare LaTeX ("\frac{232}{2}"); math-verify's LaTeX extraction wants math delimiters.
    gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=timeout) or parse(
        gold, parsing_timeout=timeout
    )
    # Re-boxed (as the grader does) so that an \fbox answer parses like a \boxed one.
    pred_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return "answer_mismatch"
    return "ok" if verify(gold_parsed, pred_parsed, timeout_seconds=timeout) else "answer_mismatch"


class Progress:
    """Logs rows read and kept every PROGRESS_EVERY_S seconds (visible in batch-job logs, unlike a tty bar)."""

    def __init__(self, name: str, counts: dict[str, int]) -> None:
        self.name, self.counts = name, counts
        self.t0 = self.last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rows = self.counts["rows"]
            log.info(
                "dataset %s: %d rows read, %d kept so far (%.0f rows/s)",
                self.name,
                rows,
                self.counts["kept"],
                rows / (now - self.t0),
            )
