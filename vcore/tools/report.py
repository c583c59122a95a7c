"""Report: the paper's tables and figures from a sweep's runs (local files, or a W&B group when online).

    python -m vcore.tools.report multirun/2026-11-26/12-00-00            # a sweep dir (or any dir holding runs)
    python -m vcore.tools.report wandb:entity/project/group_name          # a W&B group (needs network + login)
    python -m vcore.tools.report RUNS --weights outputs/.../token_weights.jsonl   # also draw the token-weight heatmap
    python -m vcore.tools.report RUNS --margin 1.5                        # equivalence margin (points; default 2)

Writes into ``--out`` (default ``<runs>/report``): ``report.md`` with Table 1 (per domain and model: ID benchmarks,
OOD benchmarks, ID/OOD averages), the synthetic study's tables, Table 2 after RL, and PNG figures: accuracy vs data
size, accuracy over lg τ per ε, loss curves with and without variance control, and the token-weight heatmap of a
few inspector examples (also ``token_weights.html``, a self-contained page). Every table has intervals over runs and
items and, for its comparisons, raw and Holm-adjusted p, the minimum detectable effect, a TOST equivalence test and
the verdict those numbers allow (:mod:`vcore.tools.analysis`, :mod:`vcore.eval.intervals`).

A run is a directory with ``config.yaml`` and ``metrics.json`` (written by ``train``), optionally
``history.jsonl`` (one logged step per line).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vcore.eval import layout
from vcore.run.heatmap import heatmap_html
from vcore.tools import analysis


@dataclass
class Run:
    name: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None  # the run dir (per-item results under eval/ and eval_before/); None for W&B runs

    def get(self, dotted: str, default=None):
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def method(self) -> str:
        return str(self.get("method.name", "?"))

    @property
    def model(self) -> str:
        return str(self.get("model.name_or_path", "?")).rstrip("/").split("/")[-1]

    @property
    def domain(self) -> str:
        return layout.DOMAIN_OF_DATASET.get(str(self.get("dataset.name", "")), str(self.get("dataset.name", "?")))

    def accuracy(self, bench: str) -> float | None:
        value = self.metrics.get("eval", {}).get(f"{bench}/accuracy")
        return None if value is None else 100.0 * float(value)


# --------------------------------------------------------------------------------------------------- loading
def load_local(root: Path, task: str = "train") -> list[Run]:
    """Every run of ``task`` (train: the fine-tuning runs; rl: the RL runs) under ``root`` (a run dir itself, a
    sweep dir, or any tree of them)."""
    runs = []
    for metrics_file in sorted(root.rglob("metrics.json")):
        run_dir = metrics_file.parent
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.exists():
            continue
        history_file = run_dir / "history.jsonl"
        history = (
            [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
            if history_file.exists()
            else []
        )
        run = Run(
            str(run_dir.relative_to(root)) or ".",
            yaml.safe_load(cfg_file.read_text()),
            json.loads(metrics_file.read_text()),
            history,
            run_dir,
        )
        if run.config.get("task", "train") == task:  # e.g. task=eval / task=pretrain dirs hold no training run
            runs.append(run)
    return runs


def load_wandb(path: str) -> list[Run]:
    """``entity/project/group``: the training runs of a W&B group through the public API (network and login needed;
    Table 2 needs the RL runs' per-item files, so it is rendered from a local sweep dir only)."""
    import wandb

    entity, project, group = path.split("/", 2)
    runs = []
    for r in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        if r.config.get("task", "train") != "train":  # RL and evaluation runs of the group hold no training run
            continue
        summary = dict(r.summary)
        evals = {k[len("eval/") :]: v for k, v in summary.items() if k.startswith("eval/")}
        history = [row for row in r.scan_history(keys=["train/nll", "train/weighted_loss", "_step"])]
        runs.append(Run(r.name, dict(r.config), {"eval": evals}, [{**h, "step": h.get("_step")} for h in history]))
    return runs


# --------------------------------------------------------------------------------------------------- tables
def table1_columns(domain: str) -> list[analysis.Column]:
    """Table 1's columns for ``domain``: each benchmark, then the ID and OOD averages."""
    ids = tuple(c.benchmark for c in layout.IN_DOMAIN[domain])
    oods = tuple(c.benchmark for c in layout.OUT_OF_DOMAIN)
    return [analysis.Column(c.title, (c.benchmark,)) for c in layout.columns(domain)] + [
        analysis.Column("ID avg", ids),
        analysis.Column("OOD avg", oods),
    ]


def table1(runs: list[Run], options: analysis.Options = analysis.Options()) -> str:
    """Paper Table 1 layout, one table per (domain, model): accuracy per variant with intervals (the ID and OOD
    averages included, with intervals that respect their shared runs), then each variant against SFT."""
    out = []
    for domain in layout.IN_DOMAIN:
        rows = [r for r in runs if r.domain == domain]
        for model in sorted({r.model for r in rows}):
            text = analysis.study_tables([r for r in rows if r.model == model], table1_columns(domain), options)
            if text:
                out += [f"### {domain}: {model}", "", text, ""]
    return "\n".join(out)


def synthetic_sections(runs: list[Run], options: analysis.Options = analysis.Options()) -> list[str]:
    """The synthetic miniature's tables (:mod:`vcore.tools.analysis`): accuracy with intervals per variant and split
    next to the start model, each variant against SFT, VCORE over τ, and loss spikes when variance control varies."""
    rows = [r for r in runs if r.domain == "synthetic"]
    if not rows:
        return []
    md = ["## Synthetic miniature", "", analysis.study_tables(rows, options=options), ""]
    tau = analysis.tau_table(rows)
    if tau:
        md += ["### VCORE over τ", "", tau, ""]
    if len({r.get("method.variance_control") for r in rows if r.method == "vcore"}) > 1:
        md += ["### Variance control", "", analysis.spike_table(rows), ""]
    return md


def headline(domain: str) -> analysis.Column | None:
    """What a figure plots for a run of ``domain``: the ID average of its Table 1 row, or synthetic ID accuracy."""
    if domain == "synthetic":
        return analysis.Column("ID test", ("synthetic_test",))
    if domain in layout.IN_DOMAIN:
        return analysis.Column("ID avg", tuple(c.benchmark for c in layout.IN_DOMAIN[domain]))
    return None


def headline_points(runs: list[Run], key) -> dict[tuple[str, Any], dict[float, Any]]:
    """``{(domain, line): {x: Estimate}}``: runs grouped by ``key(run) -> (line, x)`` (None: skip the run), each
    group's headline accuracy with its interval."""
    groups: dict[tuple[str, Any, float], list[Run]] = defaultdict(list)
    for r in runs:
        k = key(r)
        if k is not None and headline(r.domain) is not None:
            groups[(r.domain, k[0], k[1])].append(r)
    points: dict[tuple[str, Any], dict[float, Any]] = defaultdict(dict)
    for (domain, line, x), group in groups.items():
        est = analysis.estimate([[(r, False) for r in group]], headline(domain))
        if est is not None:
            points[(domain, line)][x] = est
    return points


def _errorbars(ax, points, label) -> None:
    xs = sorted(points)
    ests = [points[x] for x in xs]
    err = [
        [100 * (e.mean - e.low) if not math.isnan(e.low) else 0 for e in ests],
        [100 * (e.high - e.mean) if not math.isnan(e.high) else 0 for e in ests],
    ]
    ax.errorbar(xs, [100 * e.mean for e in ests], yerr=err, marker="o", capsize=3, label=label)


# --------------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_figure(path: Path, xlabel: str, ylabel: str, title: str, draw, legend_size: int | None = None) -> Path:
    """One axes, ``draw(ax)`` plots the lines; labelled, saved as PNG, closed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_data_scaling(runs: list[Run], path: Path) -> Path | None:
    """ID accuracy over the number of training examples per method, with 95% intervals over runs and items."""
    points = headline_points(runs, lambda r: (r.method, int(n)) if (n := r.get("dataset.num_examples")) else None)
    if not any(len(v) > 1 for v in points.values()):
        return None
    domains = {d for d, _ in points}

    def draw(ax):
        for (domain, method), by_n in sorted(points.items()):
            if len(by_n) > 1:
                _errorbars(ax, by_n, method if len(domains) == 1 else f"{method} ({domain})")
        ax.set_xscale("log", base=2)

    return _line_figure(path, "training examples", "ID accuracy (%)", "Data scaling (95% intervals)", draw)


def fig_tau_eps(runs: list[Run], path: Path) -> Path | None:
    """VCORE's ID accuracy over lg τ, one line per ε, with 95% intervals over runs and items."""

    def key(r):
        tau, eps = r.get("method.tau"), r.get("method.probe.epsilon")
        return (float(eps), math.log10(float(tau))) if r.method == "vcore" and tau and eps else None

    points = headline_points(runs, key)
    if not any(len(v) > 1 for v in points.values()):
        return None

    def draw(ax):
        for (domain, eps), by_tau in sorted(points.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            if len(by_tau) > 1:
                _errorbars(ax, by_tau, f"ε={eps:g}")

    return _line_figure(path, "lg τ", "ID accuracy (%)", "Sensitivity to τ and ε (95% intervals)", draw, legend_size=8)


def fig_variance_control(runs: list[Run], path: Path, key: str = "train/weighted_loss") -> Path | None:
    """VCORE's loss curves per variance-control setting (only when the runs compare settings)."""
    if len({r.get("method.variance_control") for r in runs if r.method == "vcore"}) < 2:
        return None
    curves = {}
    for r in runs:
        if r.method == "vcore" and r.history:
            label = f"{r.get('method.variance_control')} ({r.name})"
            pts = [(h["step"], h[key]) for h in r.history if key in h and h.get("step") is not None]
            if pts:
                curves[label] = pts
    if not curves:
        return None

    def draw(ax):
        for label, pts in sorted(curves.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)

    return _line_figure(path, "step", "training loss (weighted)", "Variance control", draw, legend_size=7)


def _color(label: str, labels: list[str]):
    """One colour per variant in every figure: a method's own when each method appears once, else by position."""
    import matplotlib

    if label == "start model":
        return "0.6"
    methods = [x.split(" ")[0] for x in labels if x != "start model"]
    key = label.split(" ")[0]
    if len(set(methods)) == len(methods) and key in analysis.METHOD_ORDER:
        return matplotlib.colormaps["tab10"](analysis.METHOD_ORDER.index(key))
    return matplotlib.colormaps["tab10"]([x for x in labels if x != "start model"].index(label) % 10)


def fig_nll_curves(runs: list[Run], path: Path) -> Path | None:
    """Plain training NLL of every variant on one axis (mean over seeds, band: min to max): unlike the weighted
    losses, it is on one scale for every method."""
    curves = {}
    for v in analysis.variants(runs):
        per_run = [dict(analysis.nll_curve(r)) for r in v.runs]
        steps = sorted(set.intersection(*(set(c) for c in per_run))) if per_run and all(per_run) else []
        if steps:
            curves[v.label] = [(s, [c[s] for c in per_run]) for s in steps]
    if not curves:
        return None

    def draw(ax):
        for label, pts in curves.items():
            xs = [p[0] for p in pts]
            color = _color(label, list(curves))
            ax.plot(xs, [statistics.mean(p[1]) for p in pts], label=label, color=color)
            if any(len(p[1]) > 1 for p in pts):
                ax.fill_between(xs, [min(p[1]) for p in pts], [max(p[1]) for p in pts], alpha=0.2, color=color)
        ax.set_yscale("log")

    return _line_figure(path, "step", "training NLL (plain, per token)", "Training curves", draw, legend_size=7)


def fig_rl_curves(runs: list[Run], path: Path, key: str = "rl/accuracy") -> Path | None:
    """The rollouts' accuracy over RL steps, one line per run, coloured by the SFT method it started from."""
    curves = {}
    for (model, method), group in analysis.rl_groups(runs).items():
        for i, r in enumerate(group):
            pts = analysis.nll_curve(r, key)
            if pts:
                curves[f"{method} ({i + 1})" if len(group) > 1 else method] = pts
    if not curves:
        return None

    def draw(ax):
        for label, pts in curves.items():
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], label=label, color=_color(label, list(curves)))

    return _line_figure(path, "RL step", "rollout accuracy (%, sampled)", "GRPO from each SFT model", draw)


def fig_accuracy_bars(runs: list[Run], path: Path) -> Path | None:
    """Accuracy per variant and split with 95% interval bars, the start model first."""
    benches = analysis.benchmarks_in(runs)
    vs = analysis.variants(runs)
    bars = [("start model", [analysis.start_model_accuracy(runs, b) for b in benches])]
    bars += [(v.label, [analysis.accuracy(v, b) for b in benches]) for v in vs]
    bars = [(label, cis) for label, cis in bars if any(cis)]
    if not benches or not bars:
        return None
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(benches) + 0.3 * len(bars)), 3.8))
    width = 0.8 / len(bars)
    for i, (label, cis) in enumerate(bars):
        xs = np.arange(len(benches)) + (i - (len(bars) - 1) / 2) * width
        means = [100 * c.mean if c else np.nan for c in cis]
        err = [[100 * (c.mean - c.low) if c else 0 for c in cis], [100 * (c.high - c.mean) if c else 0 for c in cis]]
        ax.bar(
            xs,
            means,
            width,
            yerr=err,
            capsize=2,
            label=label,
            hatch="//" if label == "start model" else None,
            color=_color(label, [b[0] for b in bars]),
        )
    ax.set_xticks(range(len(benches)), [analysis.SPLITS.get(b, b) for b in benches], fontsize=8)
    ax.set_xlabel("evaluation split")
    ax.set_ylabel("accuracy (%), 95% interval")
    ax.set_title("Accuracy per method and split")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fig_tau_ess(runs: list[Run], path: Path, bench: str = "synthetic_test") -> Path | None:
    """VCORE over τ: the weights' effective sample size (left) and accuracy with intervals (right)."""
    points = []
    for v in analysis.variants(runs):
        tau, ess = v.common("method.tau"), v.mean_metric("mean/weights/ess_frac")
        if v.method == "vcore" and tau and ess is not None:
            points.append((float(tau), ess, analysis.accuracy(v, bench)))
    if len({p[0] for p in points}) < 2:
        return None
    points.sort()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue", label="ESS")
    ax.set_xscale("log")
    ax.set_xlabel("τ")
    ax.set_ylabel("ESS of the weights (fraction of tokens)", color="tab:blue")
    acc = [(p[0], p[2]) for p in points if p[2] is not None]
    if acc:
        ax2 = ax.twinx()
        ax2.errorbar(
            [a[0] for a in acc],
            [100 * a[1].mean for a in acc],
            yerr=[[100 * (a[1].mean - a[1].low) for a in acc], [100 * (a[1].high - a[1].mean) for a in acc]],
            fmt="s--",
            color="tab:red",
            capsize=3,
        )
        ax2.set_ylabel(f"{analysis.SPLITS.get(bench, bench)} accuracy (%)", color="tab:red")
    ax.set_title("VCORE: sharpness of the weights and accuracy over τ")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _examples(weights_jsonl: Path, k: int) -> list[dict]:
    return [json.loads(line) for line in weights_jsonl.read_text().splitlines()[:k] if line.strip()]


def fig_token_heatmap(weights_jsonl: Path, path: Path, k: int = 3, width: int = 18) -> Path:
    """Supervised tokens of ``k`` examples in reading order, each cell coloured by its weight ``w_t``."""
    import numpy as np

    plt = _plt()
    examples = _examples(weights_jsonl, k)
    fig, axes = plt.subplots(len(examples), 1, figsize=(12, 2.2 * len(examples)), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples):
        toks = [(t, w) for t, w, s in zip(ex["tokens"], ex["weight"], ex["supervised"]) if s]
        rows = math.ceil(len(toks) / width)
        grid = np.full((rows, width), np.nan)
        for i, (_, w) in enumerate(toks):
            grid[i // width, i % width] = w
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for i, (t, _) in enumerate(toks):
            ax.text(
                i % width, i // width, t.replace("\n", "⏎")[:6], ha="center", va="center", fontsize=6, color="white"
            )
        ax.set_xticks([])
        ax.set_yticks([])
        alpha = ex.get("batch_alpha")
        ax.set_title(
            f"example {ex['example']} ({ex['method']})" + (f", α={alpha:.3f}" if alpha is not None else ""), fontsize=9
        )
        fig.colorbar(im, ax=ax, label="weight w_t")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def html_heatmap(weights_jsonl: Path, path: Path, k: int = 8) -> Path:
    """A self-contained page: every token of each example, supervised ones shaded by weight (hover: values)."""
    path.write_text(heatmap_html(_examples(weights_jsonl, k)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------- main
STATISTICS = (
    "Intervals are {level:g}% over runs (seeds) and items (vcore.eval.intervals: t quantiles per variance term; cells "
    "from one run carry item noise only, cells from per-run numbers none). Each table of comparisons is one family: "
    "p-values and equivalence tests are Holm-adjusted within it (α = {alpha:g}). A comparison is called better or "
    "worse "
    "only when its adjusted p is below α, equivalent only when TOST puts it within ±{margin:g} points, and otherwise "
    "'not detected', with the minimum effect the comparison could have detected at 80% power."
)


def write_report(
    runs: list[Run],
    out: Path,
    weights: Path | None = None,
    rl_runs: list[Run] | None = None,
    options: analysis.Options = analysis.Options(),
    study: Path | None = None,
    root: Path | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rl_runs = rl_runs or []
    md = [
        f"# Report ({len(runs)} runs" + (f", {len(rl_runs)} RL runs)" if rl_runs else ")"),
        "",
        STATISTICS.format(level=100 * (1 - options.alpha), alpha=options.alpha, margin=options.margin),
        "",
    ]
    if study is not None:
        from vcore.tools.study import Study, render

        md += [render(runs, Study.load(study), root), ""]
    t1 = table1(runs, options)
    if t1:
        md += ["## Table 1 (accuracy, %)", "", t1]
    md += synthetic_sections(runs, options)
    t2 = analysis.rl_table(rl_runs, options)
    if t2:
        md += ["## Table 2: RL from the fine-tuned models (accuracy %)", "", t2, ""]
    figures = [
        fig_nll_curves(runs, out / "training_nll.png"),
        fig_accuracy_bars([r for r in runs if r.domain == "synthetic"], out / "accuracy.png"),
        fig_tau_ess(runs, out / "tau_ess.png"),
        fig_data_scaling(runs, out / "data_scaling.png"),
        fig_tau_eps(runs, out / "tau_eps.png"),
        fig_variance_control(runs, out / "variance_control.png"),
        fig_rl_curves(rl_runs, out / "rl_accuracy.png"),
    ]
    if weights is not None:
        figures.append(fig_token_heatmap(weights, out / "token_weights.png"))
        html_heatmap(weights, out / "token_weights.html")
    md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures if p is not None]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.tools.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="a sweep/run directory, or wandb:entity/project/group")
    parser.add_argument("--out", default=None, help="output dir (default <runs>/report)")
    parser.add_argument("--weights", default=None, help="inspector JSONL for the token-weight heatmap")
    parser.add_argument(
        "--margin",
        type=float,
        default=analysis.Options.margin,
        help="equivalence margin in accuracy points: a difference is called equivalent only when TOST "
        "puts it inside ±margin (default %(default)s)",
    )
    parser.add_argument(
        "--alpha", type=float, default=analysis.Options.alpha, help="level of every test (default %(default)s)"
    )
    parser.add_argument(
        "--study",
        default=None,
        help="a pre-registered study's study.yaml: render its registered "
        "analysis first (experiments/synthetic_study/study.yaml)",
    )
    args = parser.parse_args(argv)
    if args.margin <= 0 or not 0 < args.alpha < 1:
        parser.error(f"--margin must be positive and --alpha in (0, 1), got {args.margin} and {args.alpha}")
    rl_runs: list[Run] = []
    if args.runs.startswith("wandb:"):
        runs, out = load_wandb(args.runs[len("wandb:") :]), Path(args.out or "report")
    else:
        root = Path(args.runs)
        runs, out = load_local(root), Path(args.out) if args.out else root / "report"
        rl_runs = load_local(root, task="rl")
    if not runs and not rl_runs:
        print(f"no runs (config.yaml + metrics.json) found under {args.runs}", file=sys.stderr)
        return 1
    report = write_report(
        runs,
        out,
        Path(args.weights) if args.weights else None,
        rl_runs,
        analysis.Options(args.margin, args.alpha),
        Path(args.study) if args.study else None,
        None if args.runs.startswith("wandb:") else Path(args.runs),
    )
    print(report.read_text())
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
