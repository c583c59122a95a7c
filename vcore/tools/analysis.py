"""Study analysis: group a sweep's runs into variants, align their per-item results, and compare them honestly.

Used by :mod:`vcore.tools.report` for the synthetic studies (and any sweep whose benchmarks write per-item files).

- A *variant* is a method plus the settings that vary within a method across the sweep (τ, ε, variance control, data
  size, ...; a setting that only differs between methods, such as each method's tuned learning rate, is shown but
  does not split variants). Seeds of one variant are its repeats.
- Per-item correctness comes from each run's ``eval/<benchmark>.jsonl`` (``eval_before/`` for the start model), and
  items are aligned by id across runs, so intervals come from :mod:`vcore.eval.intervals`: a two-level bootstrap
  (seeds and items) per variant, and a paired bootstrap of each variant against SFT with the same settings (seed s
  with seed s, item with item).
- Training curves come from ``history.jsonl``; a *loss spike* is a logged step whose plain NLL is at least twice the
  median of the five logged values before it (the paper's Figure 3 shows a jump from 0.5 to 37).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcore.eval.intervals import Interval, bootstrap_ci, paired_bootstrap
from vcore.methods import method_names

METHOD_ORDER = list(method_names())  # the registry's order (SFT first); a method of one's own sorts after, by name
# Synthetic benchmarks in reading order, with the name a table shows.
SPLITS = {
    "synthetic_test": "ID test",
    "synthetic_ood_hard": "OOD: harder",
    "synthetic_ood_template": "OOD: new phrasing",
    "synthetic_pretrain": "pretraining split (forgetting)",
    "synthetic_val": "validation",
}
# Settings that can split a method's runs into variants, with their short names.
VARIANT_KEYS = {
    "trainer.learning_rate": "lr",
    "method.tau": "τ",
    "method.target_ess": "target ESS",
    "method.probe.epsilon": "ε",
    "method.variance_control": "vc",
    "method.probe.every": "every",
    "dataset.num_examples": "n",
    "trainer.max_steps": "steps",
    "model.lora.enabled": "lora",
}
SPIKE_RATIO = 2.0
SPIKE_WINDOW = 5


@dataclass
class Variant:
    method: str
    settings: dict[str, Any]  # the keys that split variants -> value (None: the method has no such setting)
    runs: list[Any] = field(default_factory=list)  # vcore.tools.report.Run

    @property
    def label(self) -> str:
        parts = [f"{VARIANT_KEYS[k]}={_fmt(v)}" for k, v in self.settings.items() if v is not None]
        return self.method + (f" ({', '.join(parts)})" if parts else "")

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r.get("seed", 0)) for r in self.runs)

    def by_seed(self) -> dict[int, Any]:
        return {int(r.get("seed", 0)): r for r in self.runs}

    def common(self, key: str) -> Any:
        """A setting's value if every run has the same one, else None."""
        values = {json.dumps(r.get(key)) for r in self.runs}
        return self.runs[0].get(key) if len(values) == 1 else None

    def mean_metric(self, key: str) -> float | None:
        vals = [v for r in self.runs if isinstance(v := r.metrics.get("train", {}).get(key), (int, float)) and not math.isnan(v)]
        return statistics.mean(vals) if vals else None


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def variants(runs: list[Any]) -> list[Variant]:
    """Runs grouped into variants (see the module docstring), in method order then by settings."""
    by_method: dict[str, list[Any]] = defaultdict(list)
    for r in runs:
        by_method[r.method].append(r)
    split_keys = [k for k in VARIANT_KEYS if any(len({json.dumps(r.get(k)) for r in rs}) > 1 for rs in by_method.values())]
    groups: dict[tuple, Variant] = {}
    for r in runs:
        settings = {k: r.get(k) for k in split_keys}
        key = (r.method, json.dumps(settings, sort_keys=True))
        groups.setdefault(key, Variant(r.method, settings)).runs.append(r)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(groups.values(), key=lambda v: (order.get(v.method, 99), v.method, [(_sortable(x)) for x in v.settings.values()]))


def _sortable(x: Any) -> tuple:
    return (0, x, "") if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, 0, str(x))


def reference_for(v: Variant, all_variants: list[Variant], method: str = "sft") -> Variant | None:
    """The ``method`` variant with the same settings as ``v`` where both have them (``τ`` is not SFT's)."""
    if v.method == method:
        return None
    for ref in all_variants:
        if ref.method == method and all(ref.settings.get(k) is None or x is None or ref.settings[k] == x for k, x in v.settings.items()):
            return ref
    return None


# --------------------------------------------------------------------------------------------------- items
def item_results(run: Any, bench: str, before: bool = False) -> dict[str, float] | None:
    """``{item id: fraction of samples correct}`` from the run's per-item file, or None if it has none."""
    if run.path is None:
        return None
    path = Path(run.path) / ("eval_before" if before else "eval") / f"{bench}.jsonl"
    if not path.is_file():
        return None
    hits: dict[str, list[bool]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            hits[str(rec["id"])].append(bool(rec["correct"]))
    return {k: sum(v) / len(v) for k, v in hits.items()}


def aligned(runs_by_seed: list[dict[int, Any]], bench: str, before: bool = False) -> tuple[list[int], list[np.ndarray]] | None:
    """For several variants (each ``{seed: run}``), their per-item results on ``bench`` as ``[S, N]`` arrays over the
    seeds they share and the items every run has (in one order). None when some run has no per-item file."""
    seeds = sorted(set.intersection(*(set(d) for d in runs_by_seed)))
    if not seeds:
        return None
    tables = []
    for d in runs_by_seed:
        per_seed = [item_results(d[s], bench, before) for s in seeds]
        if any(p is None for p in per_seed):
            return None
        tables.append(per_seed)
    ids = _ordered(set.intersection(*(set(p) for t in tables for p in t)))
    if not ids:
        return None
    return seeds, [np.array([[p[i] for i in ids] for p in t]) for t in tables]


def _ordered(ids) -> list[str]:
    """One item order everywhere (numeric ids in numeric order), so one set of items gives one interval."""
    return sorted(ids, key=lambda x: (len(x), x))


def accuracy(v: Variant, bench: str) -> Interval | None:
    got = aligned([v.by_seed()], bench)
    return bootstrap_ci(got[1][0]) if got else None


def start_model_accuracy(runs: list[Any], bench: str) -> Interval | None:
    """The start model's accuracy (``eval_before``), from the first run that has it (every run shares the base)."""
    for r in runs:
        res = item_results(r, bench, before=True)
        if res:
            ids = _ordered(res)
            return bootstrap_ci(np.array([res[i] for i in ids]))
    return None


def benchmarks_in(runs: list[Any]) -> list[str]:
    present = {k.split("/")[0] for r in runs for k in r.metrics.get("eval", {}) if k.endswith("/accuracy")}
    return [b for b in SPLITS if b in present] + sorted(present - set(SPLITS))


# --------------------------------------------------------------------------------------------------- curves
def nll_curve(run: Any, key: str = "train/nll") -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in run.history if key in h and h.get("step") is not None]


def loss_spikes(curve: list[tuple[int, float]], ratio: float = SPIKE_RATIO, window: int = SPIKE_WINDOW) -> list[int]:
    """Steps whose value is at least ``ratio`` times the median of the ``window`` logged values before it."""
    out = []
    for i in range(window, len(curve)):
        base = statistics.median(v for _, v in curve[i - window : i])
        if base > 0 and curve[i][1] >= ratio * base:
            out.append(curve[i][0])
    return out


# --------------------------------------------------------------------------------------------------- tables
def study_tables(runs: list[Any]) -> str:
    """Markdown: accuracy [95% CI] per variant and split (with the start model), then each variant against SFT."""
    vs = variants(runs)
    benches = benchmarks_in(runs)
    if not vs or not benches:
        return ""
    names = [SPLITS.get(b, b) for b in benches]
    # Settings that differ between methods but not within one (each method's tuned learning rate): a column.
    varying_between_methods = [
        k for k in VARIANT_KEYS if k not in vs[0].settings and len({json.dumps(x) for v in vs if (x := v.common(k)) is not None}) > 1
    ]
    extra = [VARIANT_KEYS[k] for k in varying_between_methods]
    head = "| variant | seeds | " + " | ".join(extra + names) + " | ESS | train NLL |"
    out = ["Accuracy (%) with 95% bootstrap intervals (items and seeds resampled).", "", head, "|---" * (len(extra) + len(names) + 4) + "|"]
    base_cells = [start_model_accuracy(runs, b) for b in benches]
    if any(base_cells):
        out.append("| start model | – | " + " | ".join(["–"] * len(extra) + [c.fmt() if c else "–" for c in base_cells]) + " | – | – |")
    for v in vs:
        cells = [a.fmt() if (a := accuracy(v, b)) else "–" for b in benches]
        settings = [_fmt(x) if (x := v.common(k)) is not None else "mixed" for k in varying_between_methods]
        ess, nll = v.mean_metric("mean/weights/ess_frac"), v.mean_metric("nll")
        out.append(
            f"| {v.label} | {len(v.runs)} | " + " | ".join(settings + cells)
            + f" | {'–' if ess is None else f'{ess:.2f}'} | {'–' if nll is None else f'{nll:.3f}'} |"
        )
    comparisons = []
    for v in vs:
        ref = reference_for(v, vs)
        if ref is None:
            continue
        cells = []
        for b in benches:
            got = aligned([v.by_seed(), ref.by_seed()], b)
            if got is None:
                cells.append("–")
                continue
            c = paired_bootstrap(got[1][0], got[1][1])
            mark = "**" if c.p_value < 0.05 else ""
            cells.append(f"{mark}{100 * c.diff.mean:+.1f}{mark} [{100 * c.diff.low:+.1f}, {100 * c.diff.high:+.1f}] p={c.p_value:.2g}")
        comparisons.append(f"| {v.label} vs {ref.label} | {len(got[0]) if got else 0} | " + " | ".join(cells) + " |")
    if comparisons:
        out += [
            "",
            "Difference from SFT (points), paired over the same items and seeds, 95% interval and two-sided bootstrap "
            "p-value (bold: p < 0.05, no correction for the number of comparisons).",
            "",
            "| comparison | seeds | " + " | ".join(names) + " |",
            "|---" * (len(names) + 2) + "|",
            *comparisons,
        ]
    return "\n".join(out)


def spike_table(runs: list[Any]) -> str:
    """Loss spikes of the plain NLL per variant (every run's history), for the variance-control study."""
    rows = []
    for v in variants(runs):
        curves = [nll_curve(r) for r in v.runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        spikes = [loss_spikes(c) for c in curves]
        peak = max(max(y for _, y in c[SPIKE_WINDOW:] or c) for c in curves)
        final = statistics.mean(c[-1][1] for c in curves)
        rows.append(f"| {v.label} | {len(curves)} | {sum(len(s) for s in spikes)} | {sum(1 for s in spikes if s)} | {peak:.3f} | {final:.3f} |")
    if not rows:
        return ""
    return "\n".join(
        [
            f"Loss spikes: logged steps whose plain NLL is ≥ {SPIKE_RATIO:g}× the median of the {SPIKE_WINDOW} before it.",
            "",
            "| variant | runs | spikes | runs with a spike | highest NLL after warm-up | final NLL (mean) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


def tau_table(runs: list[Any], bench: str = "synthetic_test") -> str:
    """VCORE over τ (and whatever else varies: ε, a target ESS, the learning rate): the weights' effective sample size
    and largest weight next to accuracy, so a reader sees how sharp each τ really was."""
    vs = [v for v in variants(runs) if v.method == "vcore"]
    if len({(v.common("method.tau"), v.common("method.target_ess")) for v in vs}) < 2:
        return ""
    benches = [b for b in benchmarks_in(runs) if b in (bench, "synthetic_val", "synthetic_ood_hard", "synthetic_ood_template", "synthetic_pretrain")]
    out = [
        "| variant | seeds | ESS (Kish, fraction of tokens) | largest weight | α | " + " | ".join(SPLITS.get(b, b) for b in benches) + " |",
        "|---" * (5 + len(benches)) + "|",
    ]
    for v in vs:
        def num(key, digits=2):
            x = v.mean_metric(key)
            return "–" if x is None else f"{x:.{digits}f}"

        cells = [a.fmt() if (a := accuracy(v, b)) else "–" for b in benches]
        out.append(
            f"| {v.label} | {len(v.runs)} | {num('mean/weights/ess_frac')} | {num('mean/weights/max', 1)} | {num('mean/vcore/alpha')} | "
            + " | ".join(cells) + " |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- RL (Table 2)
@dataclass
class RLCell:
    before: Interval
    after: Interval
    change: Any  # vcore.eval.intervals.Comparison: after - before, paired over seeds and items


def rl_groups(runs: list[Any]) -> dict[tuple[str, str], list[Any]]:
    """RL runs (task=rl) by what they started from: ``(model, SFT method) -> runs``, ordered by the seed of the SFT
    run they started from (their repeats), then their own seed."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in runs:
        start = r.metrics.get("start", {})
        groups[(str(start.get("model", "?")), str(start.get("method") or "none"))].append(r)
    for g in groups.values():
        g.sort(key=lambda r: (int(r.metrics.get("start", {}).get("seed") or 0), int(r.get("seed", 0))))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])))


def rl_seeds(runs: list[Any]) -> str:
    """The seeds of a group's runs: their SFT runs' seeds (what varies between repeats)."""
    return ",".join(str(s if (s := r.metrics.get("start", {}).get("seed")) is not None else r.get("seed", "?")) for r in runs)


def rl_cell(runs: list[Any], bench: str) -> RLCell | None:
    """Accuracy before and after RL on ``bench`` with intervals, and the change, paired item by item within each
    run (the start model and the RL model answer the same items). None without per-item files."""
    before = [item_results(r, bench, before=True) for r in runs]
    after = [item_results(r, bench) for r in runs]
    if not runs or any(x is None for x in before + after):
        return None
    ids = _ordered(set.intersection(*(set(x) for x in before + after)))
    if not ids:
        return None
    b = np.array([[x[i] for i in ids] for x in before])
    a = np.array([[x[i] for i in ids] for x in after])
    return RLCell(bootstrap_ci(b), bootstrap_ci(a), paired_bootstrap(a, b))


def rl_table(runs: list[Any]) -> str:
    """Markdown in the layout of the paper's Table 2: one row per (model, SFT method), per benchmark the accuracy
    before and after RL with 95% intervals and the change (paired bootstrap, p)."""
    groups = rl_groups(runs)
    benches = benchmarks_in(runs)
    if not groups or not benches:
        return ""
    head = ["model", "SFT method", "seeds"]
    for b in benches:
        name = SPLITS.get(b, b)
        head += [f"{name}: before", f"{name}: after RL", f"{name}: change"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (model, method), group in groups.items():
        cells = [model, method, rl_seeds(group)]
        for b in benches:
            cell = rl_cell(group, b)
            if cell is None:
                cells += ["-", "-", "-"]
                continue
            d = cell.change.diff
            sign = "+" if d.mean >= 0 else ""
            change = f"{sign}{100 * d.mean:.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] p={cell.change.p_value:.2g}"
            cells += [cell.before.fmt(), cell.after.fmt(), f"**{change}**" if d.low > 0 or d.high < 0 else change]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
