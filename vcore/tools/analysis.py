"""Study analysis: group a sweep's runs into variants, align their per-item results, and compare them honestly.

Used by :mod:`vcore.tools.report` for every table it builds (Table 1 per domain, the synthetic study and its
ablations, Table 2 after RL), from local run dirs or from W&B summaries.

- A *variant* is a method plus the settings that vary within a method across the sweep (τ, ε, variance control, data
  size, ...; a setting that only differs between methods, such as each method's tuned learning rate, is shown but
  does not split variants). Seeds of one variant are its repeats; two runs of one variant with the same seed are an
  error (they would be counted as independent evidence).
- Per-item correctness comes from each run's ``eval/<benchmark>.jsonl`` (``eval_before/`` for the start model), items
  aligned by id, and every interval and test comes from :mod:`vcore.eval.intervals` (its docstring says what they
  cover): accuracies per variant, and each variant against SFT with the same settings, paired by seed and item. Runs
  without per-item files (a W&B summary) fall back to one number per run, and the table says so.
- A table of comparisons is one family: its p-values (and its equivalence tests) are Holm-adjusted together, and the
  verdict of each comparison is one of "better / worse (adjusted p)", "equivalent within ±m (adjusted TOST p)" or
  "not detected (minimum detectable effect)"; only the first is bold.
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

from vcore.eval.intervals import Estimate, NotPaired, Scope, combined, difference, from_run_values, holm, pair_seeds
from vcore.eval.intervals import accuracy as accuracy_estimate
from vcore.methods import method_names

METHOD_ORDER = list(method_names())  # the registry's order (SFT first); a method of one's own sorts after, by name
# Synthetic benchmarks in reading order, with the name a table shows.
SPLITS = {
    "synthetic_test": "ID test",
    "synthetic_ood_test": "OOD: new phrasing",
    "synthetic_forget": "forgetting (corpus distribution)",
    "synthetic_ood_hard": "harder problems",
    "synthetic_val": "ID validation",
    "synthetic_ood_val": "OOD validation",
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


@dataclass(frozen=True)
class Options:
    """How the report tests: the equivalence margin (points) and the level of every test and interval."""

    margin: float = 2.0
    alpha: float = 0.05


@dataclass(frozen=True)
class Column:
    """A table column: one benchmark, or the plain average of several (Table 1's ID and OOD averages)."""

    title: str
    benches: tuple[str, ...]


def split_columns(benches: list[str]) -> list[Column]:
    return [Column(SPLITS.get(b, b), (b,)) for b in benches]


def seed_of(run: Any) -> int:
    """What pairs a run with another arm's run when every run starts from one base model: its seed."""
    return int(run.get("seed", 0))


def base_of(run: Any) -> str:
    """The base model a run started from (its cache dir or model path), short."""
    return str(run.metrics.get("model") or run.get("model.name_or_path") or "?").rstrip("/").split("/")[-1]


class RunKey(tuple):
    """``(base, seed)``: with several base models, runs of two arms pair when they share the base and the seed."""

    def __str__(self) -> str:
        return f"{self[0]}:{self[1]}"


def run_key(run: Any) -> RunKey:
    return RunKey((base_of(run), int(run.get("seed", 0))))


@dataclass
class Variant:
    method: str
    settings: dict[str, Any]  # the keys that split variants -> value (None: the method has no such setting)
    runs: list[Any] = field(default_factory=list)  # vcore.tools.report.Run
    key: Any = seed_of  # run -> its pairing key (a seed, or a (base, seed) pair)

    @property
    def label(self) -> str:
        parts = [f"{VARIANT_KEYS[k]}={_fmt(v)}" for k, v in self.settings.items() if v is not None]
        return self.method + (f" ({', '.join(parts)})" if parts else "")

    @property
    def seeds(self) -> list[Any]:
        return sorted((self.key(r) for r in self.runs), key=str)

    @property
    def seeds_label(self) -> str:
        """``1,2,3``, or ``3 bases × 1,2,3`` when runs pair by base and seed (``per base: ...`` if bases differ)."""
        keys = self.seeds
        if not keys or not isinstance(keys[0], RunKey):
            return ",".join(map(str, keys))
        per_base: dict[str, list[int]] = defaultdict(list)
        for base, seed in keys:
            per_base[base].append(seed)
        lists = {",".join(map(str, sorted(v))) for v in per_base.values()}
        return (
            f"{len(per_base)} bases × {lists.pop()}"
            if len(lists) == 1
            else "; ".join(f"{b}: {','.join(map(str, sorted(v)))}" for b, v in per_base.items())
        )

    def by_seed(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for r in self.runs:
            k = self.key(r)
            if k in out:
                raise ValueError(
                    f"{self.label}: runs {out[k].name} and {r.name} both have seed {k}; a repeat needs "
                    "its own seed (or report the two sweeps separately)"
                )
            out[k] = r
        return out

    def common(self, key: str) -> Any:
        """A setting's value if every run has the same one, else None."""
        values = {json.dumps(r.get(key)) for r in self.runs}
        return self.runs[0].get(key) if len(values) == 1 else None

    def mean_metric(self, key: str) -> float | None:
        vals = [
            v
            for r in self.runs
            if isinstance(v := r.metrics.get("train", {}).get(key), (int, float)) and not math.isnan(v)
        ]
        return statistics.mean(vals) if vals else None


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def variants(runs: list[Any]) -> list[Variant]:
    """Runs grouped into variants (see the module docstring), in method order then by settings. Runs pair by seed, or
    by base model and seed when they start from several bases."""
    by_method: dict[str, list[Any]] = defaultdict(list)
    for r in runs:
        by_method[r.method].append(r)
    split_keys = [
        k for k in VARIANT_KEYS if any(len({json.dumps(r.get(k)) for r in rs}) > 1 for rs in by_method.values())
    ]
    pair_key = run_key if len({base_of(r) for r in runs}) > 1 else seed_of
    groups: dict[tuple, Variant] = {}
    for r in runs:
        settings = {k: r.get(k) for k in split_keys}
        key = (r.method, json.dumps(settings, sort_keys=True))
        groups.setdefault(key, Variant(r.method, settings, key=pair_key)).runs.append(r)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(
        groups.values(),
        key=lambda v: (order.get(v.method, 99), v.method, [(_sortable(x)) for x in v.settings.values()]),
    )


def _sortable(x: Any) -> tuple:
    return (0, x, "") if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, 0, str(x))


def reference_for(v: Variant, all_variants: list[Variant], method: str = "sft") -> Variant | None:
    """The ``method`` variant with the same settings as ``v`` where both have them (``τ`` is not SFT's)."""
    if v.method == method:
        return None
    for ref in all_variants:
        if ref.method == method and all(
            ref.settings.get(k) is None or x is None or ref.settings[k] == x for k, x in v.settings.items()
        ):
            return ref
    return None


# --------------------------------------------------------------------------------------------------- items
# A source of scores: a run and which evaluation of it (True: eval_before, the start model; False: eval).
Source = tuple[Any, bool]


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


def aligned(arms: list[list[Source]], bench: str) -> list[np.ndarray] | None:
    """Per-item results of several arms on ``bench``, each ``[runs, N]`` over the items every source has (one
    order). None when some source has no per-item file or no item is shared."""
    tables = [[item_results(run, bench, before) for run, before in arm] for arm in arms]
    if any(p is None for t in tables for p in t):
        return None
    ids = _ordered(set.intersection(*(set(p) for t in tables for p in t)))
    if not ids:
        return None
    return [np.array([[p[i] for i in ids] for p in t]) for t in tables]


def _ordered(ids) -> list[str]:
    """One item order everywhere (numeric ids in numeric order), so one set of items gives one interval."""
    return sorted(ids, key=lambda x: (len(x), x))


def _run_value(source: Source, column: Column) -> float | None:
    """A run's own number for ``column`` from its metrics (a W&B summary has nothing else)."""
    run, before = source
    evals = run.metrics.get("eval_before" if before else "eval", {})
    vals = [evals.get(f"{b}/accuracy") for b in column.benches]
    return None if any(v is None for v in vals) else float(np.mean(vals))


def estimate(arms: list[list[Source]], column: Column, level: float = 0.95) -> Estimate | None:
    """One arm: its accuracy on ``column``; two arms (paired source by source): the first minus the second. From
    per-item results where every source has them, else from one number per run; None when neither exists."""
    weights = [1.0 / len(column.benches)] * len(column.benches)
    parts = [aligned(arms, b) for b in column.benches]
    if all(p is not None for p in parts):
        if len(parts) == 1:  # one benchmark: the functions that know 0/1 items (Wilson, Agresti-Min)
            return accuracy_estimate(parts[0][0], level=level) if len(arms) == 1 else difference(*parts[0], level=level)
        return combined([p[0] if len(arms) == 1 else p[0] - p[1] for p in parts], weights, level=level)
    values = [[_run_value(s, column) for s in arm] for arm in arms]
    if any(v is None for arm in values for v in arm):
        return None
    per_run = values[0] if len(arms) == 1 else [a - b for a, b in zip(*values)]
    return from_run_values(per_run, level=level)


def accuracy(v: Variant, bench: str) -> Estimate | None:
    """A variant's accuracy on one benchmark (figures and the τ table)."""
    return estimate([[(r, False) for r in v.runs]], Column(bench, (bench,)))


def start_model_accuracy(runs: list[Any], column: Column | str, level: float = 0.95) -> Estimate | None:
    """The start model's accuracy (``eval_before``): one run per base model that has it (a base's runs share its
    zero-shot scores). Several bases are several runs of the estimate, so its interval covers the base-to-base
    spread; one base gives item noise only."""
    column = column if isinstance(column, Column) else Column(column, (column,))
    one_per_base: dict[str, Any] = {}
    for r in runs:
        if base_of(r) not in one_per_base and all(item_results(r, b, before=True) for b in column.benches):
            one_per_base[base_of(r)] = r
    if not one_per_base:
        return None
    return estimate([[(r, True) for r in one_per_base.values()]], column, level)


def bases_in(runs: list[Any]) -> int:
    return len({base_of(r) for r in runs})


def benchmarks_in(runs: list[Any]) -> list[str]:
    present = {k.split("/")[0] for r in runs for k in r.metrics.get("eval", {}) if k.endswith("/accuracy")}
    return [b for b in SPLITS if b in present] + sorted(present - set(SPLITS))


# --------------------------------------------------------------------------------------------------- tests
@dataclass
class Test:
    """One comparison in a family: ``estimate`` is the difference (first minus second), None if it has none."""

    comparison: str
    column: str
    estimate: Estimate | None
    note: str = ""
    p_adjusted: float = math.nan
    tost_adjusted: float = math.nan


@dataclass
class Family:
    """The comparisons of one table: their p-values and equivalence tests are Holm-adjusted together."""

    options: Options
    words: tuple[str, str] = ("better", "worse")  # what a positive / negative significant difference is called
    tests: list[Test] = field(default_factory=list)

    def add(self, comparison: str, column: str, est: Estimate | None, note: str = "") -> Test:
        self.tests.append(Test(comparison, column, est, note))
        return self.tests[-1]

    def adjust(self) -> None:
        testable = [t for t in self.tests if t.estimate is not None and t.estimate.terms]
        margin = self.options.margin / 100
        for t, p in zip(testable, holm([t.estimate.p_value for t in testable])):
            t.p_adjusted = p
        for t, p in zip(testable, holm([t.estimate.tost(margin) for t in testable])):
            t.tost_adjusted = p

    def verdict(self, t: Test) -> str:
        """The words a comparison earns (see the module docstring)."""
        est = t.estimate
        if est is None:
            return f"no comparison: {t.note}" if t.note else "no comparison"
        if not est.terms:
            return "one run, no per-item results: no test"
        if t.p_adjusted < self.options.alpha:
            return f"{self.words[0] if est.mean > 0 else self.words[1]} (adjusted p = {fmt_p(t.p_adjusted)})"
        if t.tost_adjusted < self.options.alpha:
            return f"equivalent within ±{self.options.margin:g} (adjusted TOST p = {fmt_p(t.tost_adjusted)})"
        return f"not detected (minimum detectable effect {100 * est.mde(self.options.alpha):.1f})"

    def significant(self, t: Test) -> bool:
        return t.estimate is not None and t.p_adjusted < self.options.alpha

    def cell(self, t: Test) -> str:
        """``+1.2 [-0.4, +2.8]``, bold when the difference survives the adjustment (for wide tables)."""
        if t.estimate is None:
            return "–"
        text = t.estimate.fmt(signed=True)
        return f"**{text}**" if self.significant(t) else text

    def markdown(self) -> str:
        """One row per comparison: difference, interval, raw and adjusted p, MDE, equivalence test, verdict."""
        self.adjust()
        m = self.options.margin
        lines = [
            "| comparison | split | runs | items | difference (points) [95% CI] | p | p (Holm) | MDE | "
            f"TOST ±{m:g} p (Holm) | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        notes = []
        for t in self.tests:
            est = t.estimate
            if est is None:
                lines.append(f"| {t.comparison} | {t.column} | – | – | – | – | – | – | – | {self.verdict(t)} |")
                continue
            runs = f"{est.runs}" + ("" if est.scope is Scope.RUNS_AND_ITEMS else f" ({est.scope.value})")
            tested = bool(est.terms)
            lines.append(
                f"| {t.comparison} | {t.column} | {runs} | {est.items or '–'} | {self.cell(t)} | "
                f"{fmt_p(est.p_value) if tested else '–'} | {fmt_p(t.p_adjusted) if tested else '–'} | "
                f"{f'{100 * est.mde(self.options.alpha):.1f}' if tested else '–'} | "
                f"{fmt_p(t.tost_adjusted) if tested else '–'} | "
                f"{self.verdict(t)} |"
            )
            if t.note:
                notes.append(f"{t.comparison}, {t.column}: {t.note}")
        n = sum(1 for t in self.tests if t.estimate is not None and t.estimate.terms)
        lines += [
            "",
            (f"Holm adjustment over the {n} tests of this table" if n > 1 else "One test, no adjustment")
            + f"; α = {self.options.alpha:g}; MDE: minimum detectable effect at 80% power (points); equivalence: TOST "
            f"within ±{m:g} points. Bold: survives the adjustment.",
        ]
        lines += [f"- {x}" for x in dict.fromkeys(notes)]
        return "\n".join(lines)


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


def compare(a: Variant, b: Variant, column: Column, level: float = 0.95) -> tuple[Estimate | None, str]:
    """``a`` minus ``b`` on ``column``, paired by seed (and item): the estimate and a note on what was left out."""
    try:
        pairing = pair_seeds(a.by_seed(), b.by_seed())
    except NotPaired as e:
        return None, f"not paired: {e}"
    sa, sb = a.by_seed(), b.by_seed()
    est = estimate([[(sa[s], False) for s in pairing.seeds], [(sb[s], False) for s in pairing.seeds]], column, level)
    return est, pairing.note if est is not None else "no per-item results or accuracies for this split"


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
SCOPE_NOTES = {
    Scope.ONE_RUN: "Cells from one run (the start model, a single seed): item noise only.",
    Scope.RUNS_ONLY: "Cells from per-run numbers (no per-item files, e.g. a W&B summary): item sampling not covered.",
}


def _scope_note(ests: list[Estimate | None]) -> str:
    scopes = {e.scope for e in ests if e is not None}
    return " ".join(note for scope, note in SCOPE_NOTES.items() if scope in scopes)


def study_tables(runs: list[Any], columns: list[Column] | None = None, options: Options = Options()) -> str:
    """Markdown: accuracy [95% CI] per variant and column (with the start model), then each variant against SFT
    with the same settings as one family of tests."""
    vs = variants(runs)
    columns = columns if columns is not None else split_columns(benchmarks_in(runs))
    if not vs or not columns:
        return ""
    names = [c.title for c in columns]
    # Settings that differ between methods but not within one (each method's tuned learning rate): a column.
    varying_between_methods = [
        k
        for k in VARIANT_KEYS
        if k not in vs[0].settings and len({json.dumps(x) for v in vs if (x := v.common(k)) is not None}) > 1
    ]
    extra = [VARIANT_KEYS[k] for k in varying_between_methods]
    level = 1 - options.alpha
    head = "| variant | seeds | " + " | ".join(extra + names) + " | ESS | train NLL |"
    out = [head, "|---" * (len(extra) + len(names) + 4) + "|"]
    shown: list[Estimate | None] = []
    base_cells = [start_model_accuracy(runs, c, level) for c in columns]
    if any(base_cells):
        shown += base_cells
        out.append(
            f"| start model | {f'{n_bases} bases' if (n_bases := bases_in(runs)) > 1 else '–'} | "
            + " | ".join(["–"] * len(extra) + [c.fmt() if c else "–" for c in base_cells])
            + " | – | – |"
        )
    for v in vs:
        ests = [estimate([[(r, False) for r in v.runs]], c, level) for c in columns]
        shown += ests
        settings = [_fmt(x) if (x := v.common(k)) is not None else "mixed" for k in varying_between_methods]
        ess, nll = v.mean_metric("mean/weights/ess_frac"), v.mean_metric("nll")
        out.append(
            f"| {v.label} | {v.seeds_label} | "
            + " | ".join(settings + [e.fmt() if e else "–" for e in ests])
            + f" | {'–' if ess is None else f'{ess:.2f}'} | {'–' if nll is None else f'{nll:.3f}'} |"
        )
    items = sorted({e.items for e in shown if e is not None and e.items})
    out.insert(
        0,
        f"Accuracy (%) with {100 * level:g}% intervals over runs and items (vcore.eval.intervals), "
        f"{'/'.join(map(str, items)) or '?'} items per cell. {_scope_note(shown)}".rstrip()
        + "\n",
    )
    family = Family(options)
    for v in vs:
        ref = reference_for(v, vs)
        if ref is None:
            continue
        for c in columns:
            est, note = compare(v, ref, c, level)
            family.add(f"{v.label} − {ref.label}", c.title, est, note)
    if family.tests:
        out += ["", "Difference from SFT (points), paired by seed and item:", "", family.markdown()]
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
        rows.append(
            f"| {v.label} | {len(curves)} | {sum(len(s) for s in spikes)} | {sum(1 for s in spikes if s)} | "
            f"{peak:.3f} | {final:.3f} |"
        )
    if not rows:
        return ""
    return "\n".join(
        [
            f"Loss spikes: logged steps whose plain NLL is ≥ {SPIKE_RATIO:g}× the median of the {SPIKE_WINDOW} "
            "before it.",
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
    benches = [b for b in benchmarks_in(runs) if b in SPLITS]
    out = [
        "| variant | seeds | ESS (Kish, fraction of tokens) | largest weight | α | "
        + " | ".join(SPLITS.get(b, b) for b in benches)
        + " |",
        "|---" * (5 + len(benches)) + "|",
    ]
    for v in vs:

        def num(key, digits=2):
            x = v.mean_metric(key)
            return "–" if x is None else f"{x:.{digits}f}"

        cells = [a.fmt() if (a := accuracy(v, b)) else "–" for b in benches]
        out.append(
            f"| {v.label} | {v.seeds_label} | {num('mean/weights/ess_frac')} | {num('mean/weights/max', 1)} | "
            f"{num('mean/vcore/alpha')} | " + " | ".join(cells) + " |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- RL (Table 2)
def rl_groups(runs: list[Any]) -> dict[tuple[str, str], list[Any]]:
    """RL runs (task=rl) by what they started from: ``(model, SFT method) -> runs``, ordered by the seed of the SFT
    run they started from (their repeats), then their own seed."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in runs:
        start = r.metrics.get("start", {})
        groups[(str(start.get("model", "?")), str(start.get("method") or BASE_ROW))].append(r)
    for g in groups.values():
        g.sort(key=lambda r: (int(r.metrics.get("start", {}).get("seed") or 0), int(r.get("seed", 0))))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][1])))


BASE_ROW = "base (no SFT)"  # RL from the start model itself


def rollout_accuracy(runs: list[Any], key: str = "rl/accuracy", window: int = 3) -> tuple[float, float] | None:
    """The rollouts' accuracy at the start and end of RL (mean of the first and last ``window`` logged values, then
    over runs): sampled at temperature 1, so it moves where greedy accuracy may not."""
    firsts, lasts = [], []
    for r in runs:
        curve = [v for _, v in nll_curve(r, key)]
        if curve:
            firsts.append(statistics.mean(curve[:window]))
            lasts.append(statistics.mean(curve[-window:]))
    return (statistics.mean(firsts), statistics.mean(lasts)) if firsts else None


def rl_seeds(runs: list[Any]) -> str:
    """The seeds of a group's runs: their SFT runs' seeds (what varies between repeats)."""
    return ",".join(
        str(s if (s := r.metrics.get("start", {}).get("seed")) is not None else r.get("seed", "?")) for r in runs
    )


def rl_table(runs: list[Any], options: Options = Options()) -> str:
    """Markdown in the layout of the paper's Table 2: one row per (model, SFT method), per benchmark the accuracy
    before and after RL with intervals, then the changes (after minus before, paired run by run and item by item)
    as one family of tests."""
    groups = rl_groups(runs)
    columns = split_columns(benchmarks_in(runs))
    if not groups or not columns:
        return ""
    level = 1 - options.alpha
    head = ["model", "SFT method", "seeds", "rollout accuracy: start → end"]
    head += [f"{c.title}: {w}" for c in columns for w in ("before", "after RL", "change")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    family = Family(options, words=("higher after RL", "lower after RL"))
    for (model, method), group in groups.items():
        roll = rollout_accuracy(group)
        cells = [model, method, rl_seeds(group), "–" if roll is None else f"{100 * roll[0]:.1f} → {100 * roll[1]:.1f}"]
        for c in columns:
            before = estimate([[(r, True) for r in group]], c, level)
            after = estimate([[(r, False) for r in group]], c, level)
            change = estimate([[(r, False) for r in group], [(r, True) for r in group]], c, level)
            test = family.add(f"{model} {method}: after − before", c.title, change)
            cells += [before.fmt() if before else "–", after.fmt() if after else "–", test]
        lines.append(cells)
    family.adjust()
    rendered = [
        "| " + " | ".join(x if isinstance(x, str) else family.cell(x) for x in row) + " |"
        if isinstance(row, list)
        else row
        for row in lines
    ]
    notes = [
        "",
        "Accuracy is greedy on the evaluated splits; the rollout accuracy is the RL prompts' sampled accuracy "
        "(temperature 1) over the first and last 3 logged steps, mean over runs. "
        "The change after RL (points), paired run by run and item by item:",
        "",
    ]
    return "\n".join(rendered + notes + [family.markdown()])
