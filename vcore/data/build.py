"""Dataset config -> tokenized train and eval sets, with every drop and skip counted.

    bundle = build_data(cfg.dataset, tokenizer, out_dir=run_dir)
    bundle.train          # datasets.Dataset: input_ids, labels, answer_mask, example_id
    bundle.eval           # {"id": Dataset, ...} held-out splits (NLL)
    bundle.stats          # counts and token-length percentiles, logged to W&B

Two paths:
- ``synthetic``: generated in memory; eval splits ``id`` and ``ood``.
- a source config (``openmath``, ``opencode``, ``vcore_data``, ``jsonl``, ``parquet``): curated once and cached
  (:mod:`vcore.data.curation`), ordered by the seeded subset keys (:mod:`vcore.data.subsets`), then each record
  is templated (prompt template, then the tokenizer's chat template), checked against ``dataset.think``
  (:mod:`vcore.data.think`) and encoded (:mod:`vcore.data.encode`) until ``num_examples`` usable examples are
  in; the held-out tail becomes eval split ``id``. With ``out_dir`` the selected ids go to
  ``<out_dir>/selected_ids.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Features, Sequence, Value, concatenate_datasets

from vcore.checks import ConfigError
from vcore.data.encode import BadRecord, encode_example, end_of_turn_id
from vcore.data.records import Record, require_str, skip_or_raise
from vcore.data.think import apply_think_policy

log = logging.getLogger(__name__)

# int32 ids halve the memory of long-trace datasets (32k examples x 3k tokens) against Python/int64 lists.
FEATURES = Features(
    {
        "input_ids": Sequence(Value("int32")),
        "labels": Sequence(Value("int32")),
        "answer_mask": Sequence(Value("bool")),
        "example_id": Value("int64"),
    }
)
CHUNK = 512  # examples per Arrow chunk while encoding
PROGRESS_EVERY_S = 30.0


@dataclass
class DataBundle:
    train: Dataset
    eval: dict[str, Dataset] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def format_prompt(template: str, problem: str) -> str:
    if template == "none":
        return problem
    from vcore.prompts import format_prompt as fmt  # the paper's templates, shared with evaluation

    return fmt(template, problem)


def normalise_openmath(
    rows: Iterable[dict[str, Any]], template: str, on_bad_record: str, source: str, stats: dict
) -> list[Record]:
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


def tokenize_records(
    records: Iterable[Record],
    tokenizer,
    cfg,
    name: str,
    stats: dict,
    *,
    limit: int | None = None,
    trace: dict[str, list[str]] | None = None,
    end_of_turn: int | None = None,
) -> Dataset:
    """Encode ``records`` in order (up to ``limit`` kept examples); length drops, truncations and bad records are
    counted in ``stats`` under ``name``, and their ids appended to ``trace`` lists when given.
    """
    eot = end_of_turn if end_of_turn is not None else end_of_turn_id(tokenizer, cfg.end_of_turn)
    response_field = getattr(cfg, "response_field", "response")
    trace = trace if trace is not None else {}
    for key in ("kept", "dropped_overlength", "skipped_bad_records"):
        trace.setdefault(key, [])
    parts: list[Dataset] = []
    columns: dict[str, list] = {k: [] for k in FEATURES}
    response_lens: list[int] = []
    prompt_lens: list[int] = []
    seen = dropped = truncated = 0
    t_last = time.perf_counter()
    for i, rec in enumerate(records):
        seen += 1
        where = f"{name} {rec.id}"
        try:
            response = apply_think_policy(rec.response, cfg.think, f"record {where}", response_field, stats)
            enc = encode_example(
                tokenizer,
                rec.prompt,
                response,
                max_length=cfg.max_length,
                overlength=cfg.overlength,
                enable_thinking=cfg.enable_thinking,
                supervise_inserted_think=cfg.think == "train_empty",
                end_of_turn=eot,
                record=where,
            )
        except BadRecord as err:
            skip_or_raise(err, cfg.on_bad_record, stats)
            trace["skipped_bad_records"].append(rec.id)
            continue
        if enc is None:
            dropped += 1
            trace["dropped_overlength"].append(rec.id)
            continue
        truncated += enc.truncated
        trace["kept"].append(rec.id)
        columns["input_ids"].append(enc.input_ids)
        columns["labels"].append(enc.labels)
        columns["answer_mask"].append(enc.answer_mask)
        columns["example_id"].append(i)
        response_lens.append(sum(l != -100 for l in enc.labels))
        prompt_lens.append(enc.prompt_tokens)
        if len(columns["input_ids"]) >= CHUNK:
            parts.append(Dataset.from_dict(columns, features=FEATURES))
            columns = {k: [] for k in FEATURES}
        if time.perf_counter() - t_last >= PROGRESS_EVERY_S:
            t_last = time.perf_counter()
            log.info("%s: %d examples encoded (%d records read)", name, len(response_lens), seen)
        if limit is not None and len(response_lens) >= limit:
            break  # the next records are not read: a larger limit continues this same sequence (nested subsets)
    if columns["input_ids"] or not parts:
        parts.append(Dataset.from_dict(columns, features=FEATURES))
    stats[f"{name}/records_read"] = seen
    stats[f"{name}/dropped_overlength"] = dropped
    stats[f"{name}/truncated"] = truncated
    stats[f"{name}/examples"] = len(response_lens)
    if dropped or truncated:
        log.warning(
            "%s: %d of %d examples longer than dataset.max_length=%d were %s",
            name,
            dropped + truncated,
            seen,
            cfg.max_length,
            "dropped (or truncated to nothing)"
            if cfg.overlength == "drop"
            else f"truncated ({dropped} left with nothing to learn were dropped)",
        )
    if response_lens:
        stats[f"{name}/supervised_tokens"] = int(sum(response_lens))
        for p in (50, 90, 99, 100):
            stats[f"{name}/response_tokens_p{p}"] = float(np.percentile(response_lens, p))
        for p in (50, 100):
            stats[f"{name}/prompt_tokens_p{p}"] = float(np.percentile(prompt_lens, p))
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def build_data(cfg, tokenizer, out_dir: str | Path | None = None) -> DataBundle:
    """Build the tokenized splits for a dataset config (see :mod:`vcore.data.config`).

    ``out_dir``: the run directory; source datasets save the ids they selected there (``selected_ids.json``).
    """
    from vcore.data.config import SourceDatasetConfig

    if cfg.name == "synthetic":
        return _synthetic(cfg, tokenizer)
    if isinstance(cfg, SourceDatasetConfig):
        return _from_source(cfg, tokenizer, out_dir)
    raise ValueError(f"dataset.name: unknown dataset {cfg.name!r}")


def _no_examples_error(cfg, read: int, stats: dict) -> ValueError:
    return ValueError(
        f"dataset {cfg.name!r}: no training example left ({read} records; "
        f"{stats.get('train/dropped_overlength', 0)} dropped for length, {stats.get('skipped_bad_records', 0)} bad). "
        "Check dataset.num_examples / the source, or raise dataset.max_length."
    )


def _synthetic(cfg, tokenizer) -> DataBundle:
    from vcore.data.synthetic import make_split

    stats: dict[str, Any] = {}
    kw = dict(
        seed=cfg.seed,
        id_steps=cfg.id_steps,
        id_max_number=cfg.id_max_number,
        ood_steps=cfg.ood_steps,
        ood_max_number=cfg.ood_max_number,
    )
    raw = {"train": make_split(cfg.train_split, cfg.num_examples, **kw)}
    raw.update({split: make_split(split, cfg.eval_examples, **kw) for split in cfg.eval_splits if cfg.eval_examples})
    records = {
        k: normalise_openmath(v, cfg.prompt_template, cfg.on_bad_record, f"synthetic/{k}", stats)
        for k, v in raw.items()
    }
    eot = end_of_turn_id(tokenizer, cfg.end_of_turn)
    train = tokenize_records(records["train"], tokenizer, cfg, "train", stats, end_of_turn=eot)
    if len(train) == 0:
        raise _no_examples_error(cfg, len(records["train"]), stats)
    evals = {
        k: tokenize_records(v, tokenizer, cfg, k, stats, end_of_turn=eot) for k, v in records.items() if k != "train"
    }
    return DataBundle(train, evals, stats)


def _from_source(cfg, tokenizer, out_dir: str | Path | None) -> DataBundle:
    from vcore.data.curation import curate
    from vcore.data.subsets import save_selected_ids, subset_order
    from vcore.distributed import rank

    stats: dict[str, Any] = {}
    curated = curate(cfg)
    try:
        stats.update({f"source/{k}": v for k, v in curated.counts.items()})
        stats["skipped_bad_records"] = curated.counts.get("skipped_bad_records", 0)
        ids = curated.ids()
        candidates, held_out = subset_order(ids, cfg.seed, cfg.eval_examples)
        k = cfg.num_examples
        if k is not None and k > len(candidates):
            raise ConfigError(
                f"dataset.num_examples={k}: the curated source has {len(candidates)} records "
                f"({len(curated)} curated, dataset.eval_examples={cfg.eval_examples} held out)"
            )

        def templated(positions: list[int]) -> Iterator[Record]:
            for p in positions:
                rec = curated[p]
                yield Record(rec.id, format_prompt(cfg.prompt_template, rec.prompt), rec.response, rec.answer)

        eot = end_of_turn_id(tokenizer, cfg.end_of_turn)
        trace: dict[str, list[str]] = {}
        train = tokenize_records(
            templated(candidates), tokenizer, cfg, "train", stats, limit=k, trace=trace, end_of_turn=eot
        )
        if len(train) == 0:
            raise _no_examples_error(cfg, stats["train/records_read"], stats)
        if k is not None and len(train) < k:
            raise ValueError(
                f"dataset.num_examples={k}: only {len(train)} usable records ({stats['train/dropped_overlength']} of "
                f"{stats['train/records_read']} dropped for length, {len(trace['skipped_bad_records'])} bad); "
                "lower dataset.num_examples or raise dataset.max_length"
            )
        evals: dict[str, Dataset] = {}
        eval_trace: dict[str, list[str]] = {}
        if held_out:
            evals["id"] = tokenize_records(
                templated(held_out), tokenizer, cfg, "id", stats, trace=eval_trace, end_of_turn=eot
            )
        if out_dir is not None and rank() == 0:
            path = save_selected_ids(
                out_dir,
                {
                    "dataset": cfg.name,
                    "source": cfg.source,
                    "split": cfg.split,
                    "curated_cache": str(curated.path),
                    "curated_records": len(curated),
                    "seed": cfg.seed,
                    "num_examples": k,
                    "eval_examples": cfg.eval_examples,
                    "train": trace["kept"],
                    "eval": eval_trace.get("kept", []),
                    "dropped_overlength": trace["dropped_overlength"] + eval_trace.get("dropped_overlength", []),
                    "skipped_bad_records": trace["skipped_bad_records"] + eval_trace.get("skipped_bad_records", []),
                },
            )
            log.info("dataset %s: %d training ids saved to %s", cfg.name, len(train), path)
    finally:
        curated.close()
    return DataBundle(train, evals, stats)
