"""W&B dashboards as code: the project's workspace and, for a sweep group, a report with the paper's views.

    python -m vcore.dashboard ENTITY/PROJECT                              # the workspace (every run of the project)
    python -m vcore.dashboard ENTITY/PROJECT --group synthetic_study      # workspace of one group + its report
    python -m vcore.dashboard ENTITY/PROJECT --group wandb_SWEEP_ID       # a W&B sweep's runs (sweeps/wandb/*.yaml)
    python -m vcore.dashboard ENTITY/PROJECT --group G --runs multirun/synthetic_study/<date> --dry-run spec.json

Built with ``wandb-workspaces`` (``pip install -e ".[dashboard]"``). Saving needs network and ``wandb login``;
``--dry-run FILE`` writes the specification instead, as the library's own models serialize it (workspace: the view
``wandb_workspaces.workspaces.internal.View``; report: ``wandb_workspaces.reports.v2.internal.ReportViewspec``, whose
run sets get their project ids from the server at save time, so the dry run leaves them out) and touches no network.

Runs of W&B sweeps and Optuna searches (sweeps/README.md) are training runs like the others, grouped by the sweep
(``wandb_<sweep id>``) or the study's name. Workspace sections: training (plain NLL next to the weighted loss, learning
rate, grad norm, tokens/s), token weights (ESS, max, fraction below 0.1, EOS weight, the per-run heatmap page and
table), VCORE (α, score mean/std, probe gradient norm, τ, q entropy, probe fidelity when logged), evaluation (accuracy
and truncation per benchmark, held-out NLL per eval split; the validation curve during training), RL (reward and rollout
accuracy, KL, entropy, completion length, truncation and no-answer rate of task=rl runs); the runs table pins method, τ,
ε, variance control, data size and seed and groups runs by method, so every curve is the mean over seeds with its
spread. Report (``--group``): Table 1 per domain, data scaling, τ × ε, loss curves with and without variance control, RL
before and after per benchmark (Table 2, RL runs grouped by the SFT method they started from), each over grouped runs
(mean, std over seeds).

Every key a panel reads is in this module's tables below (``SECTIONS``, ``EVAL_*``, ``CONFIG_COLUMNS``, ...);
tests/test_dashboard.py checks them against the keys a real offline run logs. Benchmarks and eval splits come from
the runs of ``--runs DIR`` (a sweep dir, read like ``vcore.tools.report``) or, without it, from the paper's Table 1
layout and the synthetic preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from vcore.eval import layout
from vcore.run.loggers import TOKEN_WEIGHTS_HTML, TOKEN_WEIGHTS_TABLE

# --------------------------------------------------------------------------------------------------- what runs log
# Step metrics (history keys): (panel title, keys on one panel). Written by vcore.ops.stats.StepStats, the Trainer's
# own log line (loss, learning_rate, grad_norm) and vcore.methods.vcore.
SECTIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "training": [
        ("NLL (plain) and weighted loss", ("train/nll", "train/weighted_loss")),
        ("learning rate", ("learning_rate",)),
        ("grad norm", ("grad_norm",)),
        ("tokens/s", ("train/tokens_per_s", "train/supervised_tokens_per_s")),
    ],
    "token weights": [
        ("effective sample size (fraction of tokens)", ("weights/ess_frac",)),
        ("max weight", ("weights/max",)),
        ("fraction of weights below 0.1", ("weights/frac_below_0_1",)),
        ("EOS weight", ("weights/eos_mean",)),
    ],
    "VCORE": [
        ("α (variance control)", ("vcore/alpha",)),
        ("score mean and std", ("vcore/score_mean", "vcore/score_std")),
        ("probe gradient norm", ("vcore/probe_grad_norm",)),
        ("τ", ("vcore/tau",)),
        ("entropy of q / log n", ("vcore/q_entropy_over_log_n",)),
        ("probe fidelity (method.probe.fidelity_every > 0)", ("vcore/fidelity_pearson", "vcore/fidelity_spearman")),
    ],
}
# The per-run token-weight heatmap (vcore.run.heatmap): a page and a table.
MEDIA = {"token weights": (TOKEN_WEIGHTS_HTML, TOKEN_WEIGHTS_TABLE)}
# Evaluation, per benchmark (vcore.run.benchmarks.benchmark_summary, logged as eval/<bench>/...) and per eval split
# (held-out NLL, summary only: vcore.run.training).
EVAL_BENCHMARK_KEYS = ("eval/{bench}/accuracy", "eval/{bench}/truncation_rate")
EVAL_SPLIT_KEY = "eval/{split}/nll"
# The run's mean ESS over training (summary, vcore.run.training.summarize_train), for τ × ε.
MEAN_ESS = "train/mean/weights/ess_frac"
# Runs-table columns (the run config's dotted paths): method, τ, ε, variance control, data size, seed.
CONFIG_COLUMNS = {
    "method": "method.name",
    "τ": "method.tau",
    "ε": "method.probe.epsilon",
    "variance control": "method.variance_control",
    "data size": "dataset.num_examples",
    "seed": "seed",
}
GROUP_BY = "method.name"  # runs of one method (a sweep's seeds) are one line: mean, std band


# RL runs (task=rl, vcore.run.rl): the rollouts per step (TRL's metrics as vcore.rl.grpo.RL_LOG_KEYS names them),
# accuracy before and after RL per benchmark (summary), grouped by the SFT method RL started from (run config).
RL_SECTION: list[tuple[str, tuple[str, ...]]] = [
    ("reward and rollout accuracy", ("rl/reward_mean", "rl/accuracy")),
    ("reward std, groups without signal", ("rl/reward_std", "rl/frac_groups_zero_std")),
    ("KL to the start model", ("rl/kl",)),
    ("entropy", ("rl/entropy",)),
    ("completion length", ("rl/completion_length", "rl/completion_length_max")),
    ("truncation and no-answer rate", ("rl/truncation_rate", "rl/no_answer_rate")),
]
RL_BEFORE_AFTER = ("eval_before/{bench}/accuracy", "eval/{bench}/accuracy")
RL_GROUP_BY = "start.method"
RL_BENCHMARKS = ["olympiad", "sgpqa_1k", "synthetic_test", "synthetic_ood_test"]  # Table 2's, and its miniature's


def rl_blocks(wr, runset, rl_runs: Iterable | None = None) -> list:
    """The report's "RL: before and after" view (the paper's Table 2): per benchmark, accuracy before and after RL of
    each SFT method's model, and the rollouts' reward over RL steps."""
    benches = RL_BENCHMARKS
    if rl_runs:
        evals = {k for r in rl_runs for k in r.metrics.get("eval", {})}
        benches = sorted(k.split("/")[0] for k in evals if k.endswith("/accuracy"))
    panels = [
        wr.BarPlot(
            title=f"{b}: before and after RL",
            metrics=[t.format(bench=b) for t in RL_BEFORE_AFTER],
            groupby_aggfunc="mean",
            groupby_rangefunc="stddev",
        )
        for b in benches
    ]
    panels += [_line(wr, title, keys) for title, keys in RL_SECTION[:3]]
    return [wr.PanelGrid(runsets=[runset("RL", f"Config('task') == {'rl'!r}", groupby=(RL_GROUP_BY,))], panels=panels)]


# --------------------------------------------------------------------------------------------------- benchmarks
def _synthetic_preset() -> list[str]:
    """The benchmarks of ``benchmark=synthetic`` (conf/benchmark/synthetic.yaml's defaults list)."""
    conf = Path(__file__).resolve().parents[2] / "conf" / "benchmark" / "synthetic.yaml"
    return [str(d) for d in yaml.safe_load(conf.read_text())["defaults"]]


def what_runs_log(runs: Iterable | None = None) -> dict[str, Any]:
    """Benchmarks, eval splits and domains to draw: from runs (vcore.tools.report.Run) or the paper's layout."""
    if runs:
        runs = list(runs)
        evals = {k for r in runs for k in r.metrics.get("eval", {})}
        benches = sorted(k.split("/")[0] for k in evals if k.endswith("/accuracy"))
        splits = sorted(k.split("/")[0] for k in evals if k.endswith("/nll"))
        domains = sorted({r.domain for r in runs})
        datasets = {d: sorted({str(r.get("dataset.name")) for r in runs if r.domain == d}) for d in domains}
    else:
        benches = [c.benchmark for d in layout.IN_DOMAIN for c in layout.columns(d)] + _synthetic_preset()
        benches = list(dict.fromkeys(benches))
        splits = []
        domains = [*layout.IN_DOMAIN, "synthetic"]
        datasets = {d: sorted(k for k, v in layout.DOMAIN_OF_DATASET.items() if v == d) for d in domains}
    columns = {d: _domain_benchmarks(d, benches) for d in domains}
    return {"benchmarks": benches, "splits": splits, "domains": domains, "datasets": datasets, "columns": columns}


def _domain_benchmarks(domain: str, benches: list[str]) -> list[str]:
    """Table 1's columns of a domain that runs evaluate (the synthetic miniature: its own benchmarks)."""
    if domain in layout.IN_DOMAIN:
        return [c.benchmark for c in layout.columns(domain) if c.benchmark in benches]
    return [b for b in benches if b.startswith(f"{domain}_")]


def _headline(domain: str, benches: list[str]) -> list[str]:
    """The accuracy keys a figure plots for a domain: the in-domain columns (synthetic: its test split)."""
    if domain in layout.IN_DOMAIN:
        ids = [c.benchmark for c in layout.IN_DOMAIN[domain] if c.benchmark in benches]
    else:
        ids = [b for b in benches if b == f"{domain}_test"] or _domain_benchmarks(domain, benches)[:1]
    return [EVAL_BENCHMARK_KEYS[0].format(bench=b) for b in ids]


def config_column(path: str) -> str:
    """Runs-table accessor of a nested config value: W&B stores ``{"method": {"name": ...}}`` under
    ``method.value.name`` (wandb_workspaces.expr.groupby_str_to_key documents the layout)."""
    head, _, rest = path.partition(".")
    return f"config:{head}.value.{rest}" if rest else f"config:{head}.value"


# --------------------------------------------------------------------------------------------------- workspace
def _line(wr, title: str, keys: tuple[str, ...]):
    """A step plot of grouped runs: the group's mean, its std over seeds as a band."""
    return wr.LinePlot(title=title, y=list(keys), groupby_aggfunc="mean", groupby_rangefunc="stddev")


def build_workspace(entity: str, project: str, group: str | None = None, runs: Iterable | None = None):
    """The workspace (``wandb_workspaces.workspaces.Workspace``) for the project, or one group of it."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    seen = what_runs_log(runs)
    sections = []
    for name, charts in [*SECTIONS.items(), ("RL", RL_SECTION)]:
        panels = [_line(wr, title, keys) for title, keys in charts]
        if name in MEDIA:
            page, table = MEDIA[name]
            panels += [
                wr.MediaBrowser(title="token-weight heatmap (fixed held-out examples)", media_keys=[page]),
                wr.WeavePanelSummaryTable(table_name=table),
            ]
        sections.append(ws.Section(name=name, panels=panels, is_open=True))
    sections.append(ws.Section(name="evaluation", panels=_eval_panels(wr, seen), is_open=True))
    summary_columns = [f"summary:{EVAL_BENCHMARK_KEYS[0].format(bench=b)}" for b in seen["benchmarks"]]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"vcore: {group}" if group else "vcore",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis="Step", max_runs=50),
        runset_settings=ws.RunsetSettings(
            filters=f"Metric('Group') == {group!r}" if group else "",
            groupby=[expr.Config(GROUP_BY)],
            pinned_columns=[config_column(p) for p in CONFIG_COLUMNS.values()] + summary_columns,
        ),
    )


def _eval_panels(wr, seen: dict[str, Any]) -> list:
    # The validation curve (eval.every; runs of sweeps/: W&B Hyperband and Optuna's pruner compare it), then results.
    curve = tuple(EVAL_BENCHMARK_KEYS[0].format(bench=b) for b in seen["benchmarks"])
    panels = [_line(wr, "accuracy during training (eval.every)", curve)] if curve else []
    for template, title in zip(EVAL_BENCHMARK_KEYS, ("accuracy", "truncation rate")):
        keys = [template.format(bench=b) for b in seen["benchmarks"]]
        if keys:
            panels.append(
                wr.BarPlot(
                    title=f"{title} per benchmark", metrics=keys, groupby_aggfunc="mean", groupby_rangefunc="stddev"
                )
            )
    if seen["splits"]:
        panels.append(
            wr.BarPlot(
                title="held-out NLL per eval split",
                groupby_aggfunc="mean",
                groupby_rangefunc="stddev",
                metrics=[wr.SummaryMetric(EVAL_SPLIT_KEY.format(split=s)) for s in seen["splits"]],
            )
        )
    return panels


# --------------------------------------------------------------------------------------------------- report
def build_report(
    entity: str,
    project: str,
    group: str,
    runs: Iterable | None = None,
    bind_runsets: bool = True,
    rl_runs: Iterable | None = None,
):
    """The sweep group's report (``wandb_workspaces.reports.v2.Report``). ``bind_runsets=False``: run sets without
    entity/project (their ids are looked up on the server; the dry run has none). ``rl_runs``: the group's RL runs
    (their benchmarks; default Table 2's and its miniature's)."""
    import wandb_workspaces.reports.v2 as wr

    seen = what_runs_log(runs)
    where = {"entity": entity, "project": project} if bind_runsets else {}

    def runset(name: str, *filters: str, groupby: tuple[str, ...] = (GROUP_BY,)):
        expr = " and ".join([f"Metric('Group') == {group!r}", *filters])
        return wr.Runset(name=name, filters=expr, groupby=[f"config.{g}" for g in groupby], **where)

    vcore = f"Config('method.name') == {'vcore'!r}"
    blocks: list = [wr.H1(f"vcore: {group}"), wr.P(f"Runs of the W&B group {group}, grouped: mean and std over seeds.")]
    for domain in seen["domains"]:
        cols = seen["columns"].get(domain) or []
        if not cols:
            continue
        in_domain = f"Config('dataset.name') in {seen['datasets'][domain]!r}"
        blocks += [
            wr.H2(f"Table 1: {domain}"),
            wr.PanelGrid(
                runsets=[runset(domain, in_domain)],
                panels=[
                    wr.BarPlot(
                        title=f"accuracy ({domain})",
                        metrics=[EVAL_BENCHMARK_KEYS[0].format(bench=b) for b in cols],
                        groupby_aggfunc="mean",
                        groupby_rangefunc="stddev",
                        orientation="v",
                    )
                ],
            ),
        ]
    headline = [k for d in seen["domains"] for k in _headline(d, seen["benchmarks"])]
    if headline:
        blocks += [
            wr.H2("Data scaling"),
            wr.PanelGrid(
                runsets=[runset("data scaling", groupby=(GROUP_BY, "dataset.num_examples"))],
                panels=[
                    wr.BarPlot(
                        title="accuracy by data size",
                        metrics=headline,
                        groupby_aggfunc="mean",
                        groupby_rangefunc="stddev",
                    ),
                    *[
                        wr.ScatterPlot(
                            title=f"{k} vs data size",
                            x=wr.Config("dataset.num_examples"),
                            y=wr.SummaryMetric(k),
                            log_x=True,
                        )
                        for k in headline
                    ],
                ],
            ),
        ]
        blocks += [
            wr.H2("τ × ε (VCORE)"),
            wr.PanelGrid(
                runsets=[runset("tau x eps", vcore, groupby=("method.tau", "method.probe.epsilon"))],
                panels=[
                    wr.ParallelCoordinatesPlot(
                        columns=[
                            wr.ParallelCoordinatesPlotColumn(metric=wr.Config("method.tau"), log=True),
                            wr.ParallelCoordinatesPlotColumn(metric=wr.Config("method.probe.epsilon"), log=True),
                            wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(MEAN_ESS)),
                            *[wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(k)) for k in headline],
                        ]
                    ),
                    wr.ScatterPlot(
                        title="mean ESS vs τ", x=wr.Config("method.tau"), y=wr.SummaryMetric(MEAN_ESS), log_x=True
                    ),
                ],
            ),
        ]
    blocks += [
        wr.H2("Variance control (VCORE)"),
        wr.PanelGrid(
            runsets=[runset("variance control", vcore, groupby=("method.variance_control",))],
            panels=[
                _line(wr, "weighted loss", ("train/weighted_loss",)),
                _line(wr, "plain NLL", ("train/nll",)),
                _line(wr, "α", ("vcore/alpha",)),
            ],
        ),
    ]
    blocks += [wr.H2("RL: before and after (Table 2)"), *rl_blocks(wr, runset, rl_runs)]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"vcore: {group}",
        blocks=blocks,
        width="fluid",
        description=f"The paper's views for the W&B group {group} (built by python -m vcore.dashboard).",
    )


# --------------------------------------------------------------------------------------------------- spec, save
def spec(workspace, report=None) -> dict[str, Any]:
    """The dry run's content: the workspace view and the report view as the library serializes them."""
    out = {"workspace": workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)}
    if report is not None:
        out["report"] = report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="ENTITY/PROJECT on W&B")
    parser.add_argument(
        "--group", default=None, help="one W&B group (a sweep: logger.group, default its dir name); adds the report"
    )
    parser.add_argument(
        "--runs", default=None, help="a local sweep/run dir: benchmarks and eval splits to draw (default: the paper's)"
    )
    parser.add_argument(
        "--dry-run", default=None, metavar="FILE", help="write the specification to FILE (JSON), no network"
    )
    args = parser.parse_args(argv)
    entity, sep, project = args.target.partition("/")
    if not (entity and sep and project):
        parser.error(f"target must be ENTITY/PROJECT (got {args.target!r})")
    runs = rl_runs = None
    if args.runs:
        from vcore.tools.report import load_local

        runs, rl_runs = load_local(Path(args.runs)), load_local(Path(args.runs), task="rl")
        if not runs and not rl_runs:
            parser.error(f"no runs (config.yaml + metrics.json) under {args.runs}")
    workspace = build_workspace(entity, project, args.group, runs)
    if args.dry_run:
        report = (
            build_report(entity, project, args.group, runs, bind_runsets=False, rl_runs=rl_runs) if args.group else None
        )
        Path(args.dry_run).write_text(json.dumps(spec(workspace, report), indent=1, ensure_ascii=False))
        print(f"wrote {args.dry_run}", file=sys.stderr)
        return 0
    workspace.save()
    print(f"workspace: {workspace.url}")
    if args.group:
        report = build_report(entity, project, args.group, runs, rl_runs=rl_runs)
        report.save()
        print(f"report: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
