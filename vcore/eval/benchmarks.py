"""Loading a benchmark config into a list of :class:`EvalItem` (prompt, gold answer, grading inputs).

Hub and local copies go through the same call, ``datasets.load_dataset(path, name, split=..., data_files=...)``
(a local copy is ``path: json`` or ``parquet`` plus files under ``data_root``, by default ``$VCORE_DATA_ROOT``); a
``synthetic`` source calls a Python function for its records. Then one field mapping, gold clean-up and prompt
formatting for all.

Data quirks handled by ``answer_transforms`` (each benchmark's YAML lists the ones it needs):
- ``join_list``: OlympiadBench ``final_answer`` is a list (always one element in OE_TO_maths_en_COMP): joined
  with ", ".
- ``gsm8k_final``: GSM8K answers are worked solutions ending ``#### <number>``: keep the number.
- ``strip_thousands_commas``: ``1,000`` -> ``1000`` (math-verify would read ``1,000`` as the set {1, 0}).
- ``strip_leading_zeros``: AIME answers such as ``025`` -> ``25``.
- ``strip_degrees``: AIME 2025 II problem 5 is ``336^\\circ`` -> ``336``.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError
from vcore.eval.config import (
    DATA_ROOT_ENV,
    BenchmarkConfig,
    DataSource,
    FieldMap,
    GraderKind,
    SourceKind,
    is_relative_file,
)
from vcore.eval.stratified import stratified_sample
from vcore.prompts import format_prompt


@dataclass
class EvalItem:
    id: str
    question: str
    prompt: str  # the user turn (before the chat template)
    gold: str | None = None  # math: cleaned answer; multiple choice: letter; code: None
    options: list[str] | None = None
    code: dict[str, Any] | None = None  # grading inputs for code (tests, language, problem folder)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedBenchmark:
    config: BenchmarkConfig
    items: list[EvalItem]
    population: int  # items before sampling / limit
    manifest: dict[str, Any] | None = None  # the sample's ids (when sample.size is set)

    @property
    def name(self) -> str:
        return self.config.name


# ------------------------------------------------------------------------------------------------ answers
def transform_answer(value: Any, transforms: list[str], where: str) -> str:
    """Apply the gold clean-ups in order (see the module docstring)."""
    for t in transforms:
        if t == "join_list":
            if isinstance(value, (list, tuple)):
                value = ", ".join(str(v).strip() for v in value)
        elif not isinstance(value, str):
            raise ValueError(f"{where}: answer {value!r} is not text; add join_list to answer_transforms")
        elif t == "gsm8k_final":
            if "####" not in value:
                raise ValueError(f"{where}: GSM8K answer without '#### <number>'")
            value = value.rsplit("####", 1)[1].strip()
        elif t == "strip_thousands_commas":
            value = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", value)
        elif t == "strip_leading_zeros":
            if re.fullmatch(r"\s*0+\d+\s*", value):
                value = str(int(value))
        elif t == "strip_degrees":
            value = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", value).strip()
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: answer {value!r} is not text; add join_list to answer_transforms")
    return value.strip()


# ------------------------------------------------------------------------------------------------ rows
def _load_rows(src: DataSource, cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    import datasets

    data_files: list[str] | None = None
    if src.data_files:
        data_files = []
        for f in src.data_files:
            if not is_relative_file(f):
                data_files.append(f)
                continue
            p = cfg.resolved_data_root(needed_for=f) / f  # only relative files need a data root
            if not p.exists():
                raise FileNotFoundError(
                    f"benchmark {cfg.name}: {p} not found; set benchmark.{cfg.name}.data_root (or ${DATA_ROOT_ENV}) "
                    f"to the folder holding {f}, or use source=hub"
                )
            data_files.append(str(p))
    ds = datasets.load_dataset(src.path, src.name, split=src.split, data_files=data_files, revision=src.revision)
    rows = list(ds)
    if src.where:
        rows = [r for r in rows if all(r.get(k) == v for k, v in src.where.items())]
    return rows


def _synthetic_rows(cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    assert cfg.synthetic is not None
    module, _, attr = cfg.synthetic.function.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"benchmark.{cfg.name}.synthetic.function: cannot import {cfg.synthetic.function!r} ({err})"
        ) from err
    return list(fn(**cfg.synthetic.kwargs))


def _get(row: dict[str, Any], column: str | None, role: str, where: str) -> Any:
    if column is None:
        raise ConfigError(f"{where}: the field mapping has no column for {role}")
    if column not in row:
        raise ConfigError(f"{where}: column {column!r} ({role}) not in the data; columns: {', '.join(sorted(row))}")
    return row[column]


LCB_TEMPLATES = {
    ("cpp", False): "code",
    ("python", False): "code_python",
    ("python", True): "code_functional_python",
    ("cpp", True): "code_functional_cpp",
}


def _make_item(row: dict[str, Any], index: int, fields: FieldMap, id_prefix: str, cfg: BenchmarkConfig) -> EvalItem:
    where = f"benchmark {cfg.name} row {index}"
    item_id = id_prefix + str(row[fields.id] if fields.id else index)
    question = str(_get(row, fields.prompt or fields.question, "question", where))
    meta: dict[str, Any] = {}
    if fields.stratum:
        meta["stratum"] = str(_get(row, fields.stratum, "stratum", where))

    if cfg.grader == GraderKind.math:
        gold = transform_answer(_get(row, fields.answer, "answer", where), cfg.answer_transforms, where)
        return EvalItem(item_id, question, format_prompt(cfg.prompt_domain, question), gold=gold, meta=meta)

    if cfg.grader == GraderKind.multiple_choice:
        if fields.options:
            options = list(_get(row, fields.options, "options", where))
        else:
            options = [row[c] for c in fields.option_columns if row.get(c) not in (None, "")]
        if not options:
            raise ConfigError(f"{where}: no options; set fields.options or fields.option_columns")
        options = [str(o) for o in options]
        gold = str(_get(row, fields.answer, "answer letter", where)).strip().upper()
        if len(gold) != 1 or not ("A" <= gold < chr(ord("A") + len(options))):
            raise ValueError(f"{where}: gold {gold!r} is not a letter among {len(options)} options")
        return EvalItem(
            item_id,
            question,
            format_prompt("multiple_choice", question, options),
            gold=gold,
            options=options,
            meta=meta,
        )

    if cfg.grader == GraderKind.code_lcb:
        public = _get(row, fields.public_tests, "public tests", where)
        public_list = json.loads(public) if isinstance(public, str) else list(public or [])
        functional = bool(public_list) and public_list[0].get("testtype") == "functional"
        language = cfg.code.functional_language if functional else cfg.code.language
        problem = question
        starter = row.get(fields.starter_code) if fields.starter_code else None
        if functional and starter:
            label = (
                "Starter code" if language == "python" else "The function to implement (LeetCode's Python signature)"
            )
            problem = f"{question}\n\n{label}:\n```python\n{starter.rstrip()}\n```"
        code = {
            "kind": "code_lcb",
            "language": cfg.code.language,
            "functional_language": cfg.code.functional_language,
            "functional": functional,
            "public_tests": public,
            "private_tests": row.get(fields.private_tests) if fields.private_tests else None,
            "metadata": row.get(fields.metadata) if fields.metadata else None,
        }
        return EvalItem(
            item_id, question, format_prompt(LCB_TEMPLATES[(language, functional)], problem), code=code, meta=meta
        )

    if cfg.grader == GraderKind.code_ojbench:
        language = str(_get(row, fields.language, "language", where)) if fields.language else cfg.code.language
        group = str(_get(row, fields.group, "test folder", where)) if fields.group else ""
        prompt = question if cfg.prompt_domain == "none" else format_prompt(cfg.prompt_domain, question)
        code = {
            "kind": "code_ojbench",
            "language": language,
            "group": group,
            "problem_id": str(row[fields.id] if fields.id else index),
        }
        return EvalItem(item_id, question, prompt, code=code, meta=meta)

    raise ConfigError(f"benchmark.{cfg.name}.grader: unknown {cfg.grader}")


def ojbench_problem_dir(tests_root: str | Path, group: str, problem_id: str) -> Path:
    """``<tests_root>/<NOI|ICPC>/<id>``; the prompt file spells the group ``icpc`` while the folder is ``ICPC``."""
    root = Path(tests_root)
    for g in (group, group.upper(), group.lower()):
        if (root / g / problem_id).is_dir():
            return root / g / problem_id
    return root / group.upper() / problem_id


# ------------------------------------------------------------------------------------------------ load
def load_benchmark(cfg: BenchmarkConfig) -> LoadedBenchmark:
    """Items of ``cfg`` after sampling and ``limit``; the sample's manifest when ``sample.size`` is set."""
    items: list[EvalItem] = []
    if cfg.source == SourceKind.synthetic:
        assert cfg.synthetic is not None
        for i, row in enumerate(_synthetic_rows(cfg)):
            items.append(_make_item(row, i, cfg.synthetic.fields, cfg.synthetic.id_prefix, cfg))
    else:
        for src in cfg.active_sources():
            for i, row in enumerate(_load_rows(src, cfg)):
                items.append(_make_item(row, i, src.fields, src.id_prefix, cfg))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"benchmark.{cfg.name}: duplicate item ids; set fields.id or an id_prefix per source")
    population = len(items)
    manifest = None
    if cfg.sample.size is not None:
        strata = [it.meta.get("stratum") for it in items]
        if cfg.sample.stratify and any(s is None for s in strata):
            raise ConfigError(
                f"benchmark.{cfg.name}.sample.stratify: set fields.stratum on every source (or stratify: false)"
            )
        keep, quotas = stratified_sample(ids, strata if cfg.sample.stratify else None, cfg.sample.size, cfg.sample.seed)
        items = [items[i] for i in keep]
        manifest = {
            "benchmark": cfg.name,
            "size": len(items),
            "seed": cfg.sample.seed,
            "stratified": cfg.sample.stratify,
            "population": population,
            "quotas": quotas,
            "ids": [it.id for it in items],
            "note": "deterministic proportional stratified sample (largest remainder); not the paper's own subset",
        }
    if cfg.limit is not None:
        items = items[: cfg.limit]
    return LoadedBenchmark(cfg, items, population, manifest)
