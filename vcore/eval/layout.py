"""The paper's Table 1 layout, defined once: which benchmarks are its columns, under which headers, in which order.

One row per training domain: that domain's in-domain columns (math: AIME, Olympiad; code: LCB, OJBench), then the
out-of-domain ones every row shares (RBench, SGPQA-1k), then "ID avg" and "OOD avg". Read by the results writer
(:func:`vcore.eval.results.table1`, a single evaluation) and by the report (:func:`vcore.tools.report.table1`,
a sweep of runs). The benchmark configs (``conf/benchmark/<name>.yaml``: ``domain``, ``role``, ``table1_column``;
the presets ``table1_math`` / ``table1_code``) must say the same; tests/eval/test_eval_benchmarks.py checks that.
"""

from __future__ import annotations

from typing import NamedTuple


class Column(NamedTuple):
    benchmark: str  # the benchmark config's name (conf/benchmark/<name>.yaml); its metric is "<name>/accuracy"
    title: str  # the column header, as the paper writes it


# Rows in this order; each row's in-domain columns in the paper's order.
IN_DOMAIN: dict[str, tuple[Column, ...]] = {
    "math": (Column("aime", "AIME"), Column("olympiad", "Olympiad")),
    "code": (Column("lcb", "LCB"), Column("ojbench", "OJBench")),
}
# Out of domain for both training domains: the same columns close every row.
OUT_OF_DOMAIN: tuple[Column, ...] = (Column("rbench", "RBench"), Column("sgpqa_1k", "SGPQA-1k"))

# The row a training run belongs to, by its training data (``dataset.name``). The synthetic miniature has no Table 1
# row (the report gives it its own section); a dataset not listed here is its own domain, so it lands in no row.
DOMAIN_OF_DATASET = {"openmath": "math", "opencode": "code", "vcore_data": "math", "synthetic": "synthetic"}


def columns(domain: str) -> tuple[Column, ...]:
    """Every column of the ``domain`` row, in order (in-domain first); KeyError for a domain without a row."""
    return IN_DOMAIN[domain] + OUT_OF_DOMAIN
