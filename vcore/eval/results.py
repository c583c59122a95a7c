"""Writing results: per-sample JSONL, per-benchmark metrics, and a summary in the paper's Table 1 layout.

Table 1 (per training domain; the layout is :mod:`vcore.eval.layout`): the in-domain columns, then the
out-of-domain ones, then "ID avg" and "OOD avg", plain means of the columns, in percent. Which benchmark fills
which column comes from its config (``domain``, ``role``, ``table1_column``). Averages over an incomplete set of
columns are marked partial.
"""

from __future__ import annotations

import dataclasses
import json
import os
from enum import Enum
from pathlib import Path
from typing import Any

from vcore.eval import layout
from vcore.eval.config import BenchmarkConfig, Domain, Role


def jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a kill mid-write leaves the previous version (or none), never half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_whole(path, "".join(json.dumps(jsonable(rec), ensure_ascii=False) + "\n" for rec in records))


def write_json(path: Path, obj: Any) -> None:
    write_whole(path, json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def table1(configs: list[BenchmarkConfig], accuracy: dict[str, float | None]) -> dict[str, dict]:
    """Rows of Table 1, one per training domain that has an in-domain benchmark in this run.

    A row holds the columns this run has, in the layout's order (a column the layout does not know goes last).
    """
    rows = {}
    ood = [c for c in configs if c.role == Role.ood]
    for domain in layout.IN_DOMAIN:
        in_domain = [c for c in configs if c.role == Role.id and c.domain == Domain(domain)]
        if not in_domain:
            continue
        cols = {c.table1_column: accuracy.get(c.name) for c in _in_layout_order(in_domain + ood, domain)}
        id_vals = [accuracy.get(c.name) for c in in_domain]
        ood_vals = [accuracy.get(c.name) for c in ood]
        rows[domain] = {
            "columns": cols,
            "id_avg": _mean(id_vals),
            "ood_avg": _mean(ood_vals),
            "partial": {c.table1_column for c in in_domain} != {col.title for col in layout.IN_DOMAIN[domain]}
            or {c.table1_column for c in ood} != {col.title for col in layout.OUT_OF_DOMAIN},
        }
    return rows


def _in_layout_order(configs: list[BenchmarkConfig], domain: str) -> list[BenchmarkConfig]:
    """``configs`` in the order of the ``domain`` row's columns; a column the layout does not know goes last."""
    order = [col.title for col in layout.columns(domain)]
    return sorted(configs, key=lambda c: order.index(c.table1_column) if c.table1_column in order else len(order))


def _mean(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def summary_markdown(summary: dict) -> str:
    dec = summary["decoding"]
    lines = [
        f"# Evaluation of `{summary['model']}`",
        "",
        f"- harness {summary['harness_version']}, backend `{summary['backend']}`, {summary['created']}",
        f"- decoding `{dec['name']}`: temperature {dec['temperature']}, top_p {dec['top_p']}, top_k {dec['top_k']}, "
        f"n {dec['n']}, max_new_tokens {dec['max_new_tokens']}, seed {dec['seed']}, thinking {dec['enable_thinking']}",
        f"- code sandbox isolation: `{summary['grading']['sandbox']['level']}`",
        "",
    ]
    for domain, row in summary["table1"].items():
        cols = list(row["columns"])
        lines += [f"## Table 1 layout ({domain})" + (" — partial: some columns missing" if row["partial"] else ""), ""]
        lines.append("| " + " | ".join(cols + ["ID avg", "OOD avg"]) + " |")
        lines.append("|" + "---|" * (len(cols) + 2))
        lines.append(
            "| "
            + " | ".join([_pct(v) for v in row["columns"].values()] + [_pct(row["id_avg"]), _pct(row["ood_avg"])])
            + " |"
        )
        lines.append("")
    lines += [
        "## All benchmarks",
        "",
        "| benchmark | items | expected | accuracy (avg@n) | 95% CI | pass@k | truncated | mean tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, b in summary["benchmarks"].items():
        m = b["metrics"]
        pk = ", ".join(f"@{k} {_pct(v)}" for k, v in (m.get("pass@k") or {}).items()) or "–"
        lines.append(
            f"| {name} | {m['n_items']} | {b.get('expected_size') or '–'} | {_pct(m['accuracy'])} | "
            f"{_ci(m.get('accuracy_ci95'))} | {pk} | "
            f"{_pct(m['truncation_rate'])} | {m.get('mean_tokens', 0):.0f} |"
        )
    notes = [f"- {name}: {n}" for name, b in summary["benchmarks"].items() for n in b.get("notes", [])]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
