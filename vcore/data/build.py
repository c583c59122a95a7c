"""Dataset config -> tokenized train and eval sets, with every drop and skip counted.

    bundle = build_data(cfg.dataset, tokenizer)
    bundle.train          # datasets.Dataset: input_ids, labels, answer_mask, example_id
    bundle.eval           # {"id": Dataset, "ood": Dataset} held-out splits (NLL)
    bundle.eval_records   # {"id": [...], "ood": [...]} normalised records with answers (accuracy)
    bundle.stats          # counts and response-length percentiles, logged to W&B
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset

from vcore.data.encode import BadRecord, encode_example

log = logging.getLogger(__name__)


@dataclass
class Record:
    """A source record normalised for training: prompt text (before the chat template), response, answer."""

    id: str
    prompt: str
    response: str
    answer: str | None = None


@dataclass
class DataBundle:
    train: Dataset
    eval: dict[str, Dataset] = field(default_factory=dict)
    eval_records: dict[str, list[Record]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def require_str(record: dict[str, Any], name: str, where: str) -> str:
    """``record[name]`` as a string, or a :class:`BadRecord` naming the record and the field."""
    if name not in record:
        raise BadRecord(f"{where}: missing field {name!r} (fields present: {', '.join(sorted(record)) or 'none'})")
    value = record[name]
    if not isinstance(value, str):
        raise BadRecord(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def format_prompt(template: str, problem: str) -> str:
    if template == "none":
        return problem
    from vcore.prompts import format_prompt as fmt  # the paper's templates, shared with evaluation

    return fmt(template, problem)


def normalise_openmath(rows: Iterable[dict[str, Any]], template: str, on_bad_record: str, source: str, stats: dict) -> list[Record]:
    """OpenMathReasoning-schema rows (``problem``, ``generated_solution``, ``expected_answer``) -> records."""
    out = []
    for i, row in enumerate(rows):
        where = f"{source} record {i}"
        try:
            out.append(
                Record(
                    id=str(i),
                    prompt=format_prompt(template, require_str(row, "problem", where)),
                    response=require_str(row, "generated_solution", where),
                    answer=require_str(row, "expected_answer", where),
                )
            )
        except BadRecord as err:
            skip_or_raise(err, on_bad_record, stats)
    return out


def skip_or_raise(err: BadRecord, on_bad_record: str, stats: dict) -> None:
    if on_bad_record == "error":
        raise BadRecord(f"{err} (set dataset.on_bad_record=skip to skip and count such records)") from None
    stats["skipped_bad_records"] = stats.get("skipped_bad_records", 0) + 1
    log.warning("skipping %s", err)


def tokenize_records(records: list[Record], tokenizer, cfg, name: str, stats: dict) -> Dataset:
    """Encode ``records``; length drops and bad records are counted in ``stats`` under ``name``."""
    columns: dict[str, list] = {"input_ids": [], "labels": [], "answer_mask": [], "example_id": []}
    dropped = 0
    for i, rec in enumerate(records):
        try:
            enc = encode_example(
                tokenizer,
                rec.prompt,
                rec.response,
                max_length=cfg.max_length,
                overlength=cfg.overlength,
                enable_thinking=cfg.enable_thinking,
                record=f"{name} {rec.id}",
            )
        except BadRecord as err:
            skip_or_raise(err, cfg.on_bad_record, stats)
            continue
        if enc is None:
            dropped += 1
            continue
        columns["input_ids"].append(enc.input_ids)
        columns["labels"].append(enc.labels)
        columns["answer_mask"].append(enc.answer_mask)
        columns["example_id"].append(i)
    stats[f"{name}/dropped_overlength"] = dropped
    stats[f"{name}/examples"] = len(columns["input_ids"])
    if dropped:
        log.warning(
            "%s: dropped %d of %d examples longer than dataset.max_length=%d (or truncated to nothing)",
            name, dropped, len(records), cfg.max_length,
        )
    if columns["input_ids"]:
        lengths = np.array([sum(l != -100 for l in labels) for labels in columns["labels"]])
        for p in (50, 90, 99, 100):
            stats[f"{name}/response_tokens_p{p}"] = float(np.percentile(lengths, p))
    return Dataset.from_dict(columns)


def build_data(cfg, tokenizer) -> DataBundle:
    """Build the tokenized splits for a dataset config (see :mod:`vcore.config`)."""
    stats: dict[str, Any] = {}
    if cfg.name == "synthetic":
        from vcore.data.synthetic import make_split

        kw = dict(seed=cfg.seed, id_steps=cfg.id_steps, id_max_number=cfg.id_max_number, ood_steps=cfg.ood_steps, ood_max_number=cfg.ood_max_number)
        raw = {
            "train": make_split("train", cfg.num_examples, **kw),
            "id": make_split("test", cfg.eval_examples, **kw),
            "ood": make_split("ood", cfg.eval_examples, **kw),
        }
        records = {k: normalise_openmath(v, cfg.prompt_template, cfg.on_bad_record, f"synthetic/{k}", stats) for k, v in raw.items()}
    else:
        raise ValueError(f"dataset.name: unknown dataset {cfg.name!r}")

    train = tokenize_records(records["train"], tokenizer, cfg, "train", stats)
    if len(train) == 0:
        raise ValueError(
            f"dataset {cfg.name!r}: no training example left ({len(records['train'])} records; "
            f"{stats.get('train/dropped_overlength', 0)} dropped for length, {stats.get('skipped_bad_records', 0)} bad). "
            "Check dataset.num_examples / the source, or raise dataset.max_length."
        )
    evals = {k: tokenize_records(v, tokenizer, cfg, k, stats) for k, v in records.items() if k != "train"}
    return DataBundle(train, evals, {k: v for k, v in records.items() if k != "train"}, stats)
