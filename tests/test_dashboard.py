"""W&B dashboards, heatmap and run hygiene against a real offline run.

One tiny VCORE run (W&B offline, probe fidelity on, heatmap every step, benchmarks after training) is read back from
its ``.wandb`` file (vcore.tools.wandb_files); every key the workspace and the report read must be one it logged.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import CONF, TINY_TEST, finished_wandb_run

ws = pytest.importorskip("wandb_workspaces.workspaces")
wr = pytest.importorskip("wandb_workspaces.reports.v2")

GROUP = "fixture_sweep"
SPLIT_EXAMPLES = 3


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from vcore.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*TINY_TEST, *overrides])


def _train(out, tiny_dir, *overrides: str):
    from vcore.run.training import train

    return train(
        _compose(
            "method=vcore",
            "logger=wandb",
            f"output_dir={out}",
            f"model.name_or_path={tiny_dir}",
            "trainer.resume=never",
            f"logger.group={GROUP}",
            "logger.tags=[fixture]",
            *overrides,
        )
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_dir):
    """A one-run "sweep" dir and that run as read back from its offline W&B files (~5 s)."""

    root = tmp_path_factory.mktemp("sweep")
    _train(
        root / "0",
        tiny_dir,
        "method.probe.fidelity_every=1",
        "logger.token_weights_every=1",
        f"logger.token_weights_examples={SPLIT_EXAMPLES}",
        "dataset.eval_examples=4",
        "decoding.max_new_tokens=8",
        "eval.after_train=true",
        "benchmark=synthetic_test",
    )
    run, _ = finished_wandb_run(root / "0")
    return root, run


@pytest.fixture(scope="module")
def rl_run(sweep, tmp_path_factory, tiny_dir):
    """A tiny RL run (task=rl, W&B offline, evaluated before and after) from the sweep's run, read back."""
    from tests.test_rl import TINY_RL
    from vcore.run.tasks import run_task

    pytest.importorskip("trl")
    root, _ = sweep
    out = tmp_path_factory.mktemp("rl") / "0"
    rl = [o for o in TINY_RL if not o.startswith(("rl.eval_before", "eval.after_train"))]
    run_task(
        _compose(
            *rl,
            "logger=wandb",
            f"logger.group={GROUP}",
            f"output_dir={out}",
            f"model.name_or_path={tiny_dir}",
            f"rl.start={root / '0'}",
            "dataset.eval_examples=4",
            "decoding.max_new_tokens=8",
            "benchmark=synthetic_test",
        )
    )
    run, _ = finished_wandb_run(out)
    return out.parent, run


def _config_paths(config: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in config.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _config_paths(v, f"{prefix}{k}.")
    return out


def _filter_configs(filters: str) -> set[str]:
    return set(re.findall(r"Config\('([^']+)'\)", filters))


def panel_keys(panels) -> dict[str, set[str]]:
    """Every key the panels read, by where W&B reads it: history, summary or config. Walks the library's objects,
    not vcore.tools.dashboard's tables; an unknown panel type fails, so a new one cannot go unchecked."""
    keys = {"history": set(), "summary": set(), "config": set()}

    def metric(m, default="history"):
        if isinstance(m, str):
            keys[default].add(m)
        elif isinstance(m, wr.SummaryMetric):
            keys["summary"].add(m.name)
        elif isinstance(m, wr.Config):
            keys["config"].add(m.name)
        else:
            raise AssertionError(f"unexpected metric {m!r}")

    for p in panels:
        if isinstance(p, wr.LinePlot):
            [metric(y) for y in p.y]
        elif isinstance(p, wr.BarPlot):
            [metric(m) for m in p.metrics]
        elif isinstance(p, wr.ScatterPlot):
            [metric(m, "summary") for m in (p.x, p.y) if m is not None]
        elif isinstance(p, wr.ParallelCoordinatesPlot):
            [metric(c.metric, "summary") for c in p.columns]
        elif isinstance(p, wr.MediaBrowser):
            keys["history"] |= set(p.media_keys)
        elif isinstance(p, wr.WeavePanelSummaryTable):
            keys["summary"].add(p.table_name)
        else:
            raise AssertionError(f"panel type {type(p).__name__} not checked by this test: add it to panel_keys")
    return keys


def _runset_configs(runsets) -> set[str]:
    return {k.removeprefix("config.") for r in runsets for k in r.groupby} | {
        c for r in runsets for c in _filter_configs(r.filters)
    }


def test_every_dashboard_key_is_logged_by_a_real_run(sweep, rl_run):
    """SFT panels against an SFT run, RL panels (the workspace's RL section, the report's RL grid) against an RL run."""
    from vcore.tools.dashboard import build_report, build_workspace
    from vcore.tools.report import load_local

    root, run = sweep
    rl_root, rl = rl_run
    runs = load_local(root)
    workspace = build_workspace("ent", "proj", GROUP, runs)
    report = build_report("ent", "proj", GROUP, runs, bind_runsets=False, rl_runs=load_local(rl_root, task="rl"))

    panels = [p for s in workspace.sections if s.name != "RL" for p in s.panels]
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    rl_grids = [g for g in grids if g.runsets[0].name == "RL"]
    sft_grids = [g for g in grids if g not in rl_grids]
    keys = panel_keys(panels + [p for g in sft_grids for p in g.panels])
    rs = workspace.runset_settings
    keys["config"] |= {g.name for g in rs.groupby} | _filter_configs(rs.filters)
    for column in rs.pinned_columns:
        section, _, name = column.partition(":")
        if section == "config":  # W&B's nested layout: method.value.name is the config's method.name
            keys["config"].add(name.replace(".value", "", 1))
        elif section == "summary":
            keys["summary"].add(name)
    keys["config"] |= _runset_configs([r for g in sft_grids for r in g.runsets])

    # The sections cover what the issue lists (so this test fails if a section loses its panels)...
    assert [s.name for s in workspace.sections] == ["training", "token weights", "VCORE", "RL", "evaluation"]
    assert {
        "train/nll",
        "train/weighted_loss",
        "learning_rate",
        "grad_norm",
        "train/tokens_per_s",
        "weights/ess_frac",
        "weights/max",
        "weights/frac_below_0_1",
        "weights/eos_mean",
        "vcore/alpha",
        "vcore/score_mean",
        "vcore/score_std",
        "vcore/probe_grad_norm",
        "vcore/fidelity_pearson",
        "eval/synthetic_test/accuracy",
        "eval/synthetic_test/truncation_rate",
        "token_weights/heatmap",
    } <= keys["history"]
    assert {
        "method.name",
        "method.tau",
        "method.probe.epsilon",
        "method.variance_control",
        "dataset.num_examples",
        "seed",
    } <= keys["config"]
    assert {"eval/test/nll", "train/mean/weights/ess_frac", "token_weights/table"} <= keys["summary"]
    # ...and every key is one the real run wrote.
    assert keys["history"] - run.history_keys() == set()
    assert keys["summary"] - set(run.summary) == set()
    assert keys["config"] - _config_paths(run.config) == set()
    titles = [b.text for b in report.blocks if isinstance(b, wr.H2)]
    assert titles == [
        "Table 1: synthetic",
        "Data scaling",
        "τ × ε (VCORE)",
        "Variance control (VCORE)",
        "RL: before and after (Table 2)",
    ]

    # RL: the rollouts' metrics, accuracy before and after, grouped by the SFT method RL started from.
    rl_keys = panel_keys(
        [p for s in workspace.sections if s.name == "RL" for p in s.panels] + [p for g in rl_grids for p in g.panels]
    )
    rl_keys["config"] |= _runset_configs([r for g in rl_grids for r in g.runsets])
    assert {
        "rl/reward_mean",
        "rl/accuracy",
        "rl/kl",
        "rl/entropy",
        "rl/completion_length",
        "rl/truncation_rate",
        "eval_before/synthetic_test/accuracy",
        "eval/synthetic_test/accuracy",
    } <= rl_keys["history"]
    assert rl_keys["history"] - rl.history_keys() == set()
    assert rl_keys["config"] == {"start.method", "task"} and rl.config["start"]["method"] == "vcore"
    assert rl_keys["config"] - _config_paths(rl.config) == set()
    assert rl.run["job_type"] == "rl" and "method=vcore" not in rl.run["tags"]  # its own method group is unused


def test_dry_run_writes_specs_the_library_validates(sweep, tmp_path):
    from wandb_workspaces.reports.v2 import internal as report_model
    from wandb_workspaces.workspaces import internal as workspace_model

    from vcore.tools.dashboard import main

    root, _ = sweep
    out = tmp_path / "spec.json"
    assert main(["ent/proj", "--group", GROUP, "--runs", str(root), "--dry-run", str(out)]) == 0
    spec = json.loads(out.read_text())
    view = workspace_model.View.model_validate(spec["workspace"])
    report = report_model.ReportViewspec.model_validate(spec["report"])
    assert view.model_dump(mode="json", by_alias=True, exclude_none=True) == spec["workspace"]
    sections = view.spec.section.panel_bank_config.sections
    assert [s.name for s in sections] == ["training", "token weights", "VCORE", "RL", "evaluation"]
    assert (view.entity, view.project, view.display_name) == ("ent", "proj", f"vcore: {GROUP}")
    # Back into the library's user-facing objects: the workspace filters on the group and groups by method.
    back = ws.Workspace._from_model(view)
    assert GROUP in back.runset_settings.filters and back.runset_settings.groupby[0].name == "method.name"
    assert report.display_name == f"vcore: {GROUP}" and report.project.name == "proj"
    assert sum(b.type == "panel-grid" for b in report.spec.blocks) == 5
    # Without --group: the workspace only.
    assert main(["ent/proj", "--dry-run", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"workspace"}


def test_heatmap_is_in_the_offline_run_and_reads_back(sweep):
    from vcore.config import load_run_config
    from vcore.data.build import build_data
    from vcore.modeling import load_tokenizer
    from vcore.run.loggers import TOKEN_WEIGHT_COLUMNS
    from vcore.run.training import resolve_model

    root, run = sweep
    logged = [h for h in run.history if "token_weights/heatmap" in h]
    assert [h["_step"] for h in logged] == [1, 2]  # every step (token_weights_every=1), the end not twice
    page = (run.media_dir.parent / logged[-1]["token_weights/heatmap"]["path"]).read_text()
    table = json.loads((run.media_dir.parent / logged[-1]["token_weights/table"]["path"]).read_text())
    assert table["columns"] == list(TOKEN_WEIGHT_COLUMNS)

    # The fixed examples: the first k of the dataset's first eval split, token for token.
    c = load_run_config(root / "0" / "config.yaml")
    tokenizer = load_tokenizer(resolve_model(c.model))
    split = build_data(c.dataset, tokenizer).eval[c.dataset.eval_splits[0]]
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert sorted({r["example"] for r in rows}) == [int(split[i]["example_id"]) for i in range(SPLIT_EXAMPLES)]
    for i in range(SPLIT_EXAMPLES):
        ex = [r for r in rows if r["example"] == int(split[i]["example_id"])]
        ids = split[i]["input_ids"]
        assert [r["token"] for r in ex] == [tokenizer.decode([t]) for t in ids]
        assert sum(r["supervised"] for r in ex) == sum(label != -100 for label in split[i]["labels"]) > 0
        assert all((r["weight"] > 0) == r["supervised"] for r in ex)
        assert f"example {split[i]['example_id']} (vcore)" in page


def test_heatmap_does_not_change_training(sweep, tmp_path, tiny_dir):
    """The heatmap runs the probe on other examples; the method's state is put back, so training is the same."""
    root, _ = sweep
    _train(
        tmp_path / "plain",
        tiny_dir,
        "method.probe.fidelity_every=1",
        "logger.token_weights_examples=0",
        "dataset.eval_examples=4",
        "eval.after_train=false",
        "trainer.eval_at_end=false",
    )

    def steps(path):
        lines = [json.loads(x) for x in (path / "history.jsonl").read_text().splitlines()]
        return [(h["step"], h["train/nll"], h["vcore/alpha"], h["grad_norm"]) for h in lines if "train/nll" in h]

    assert steps(root / "0") == steps(tmp_path / "plain") and len(steps(root / "0")) == 2


def test_run_is_filed_for_grouping(sweep):
    from omegaconf import OmegaConf

    from vcore.run.loggers import run_id

    root, run = sweep
    resolved = OmegaConf.to_container(OmegaConf.load(root / "0" / "config.yaml"))
    assert run.run["group"] == GROUP and run.run["job_type"] == "train"
    assert run.run["tags"] == ["fixture", "method=vcore"]
    assert run.run["id"] == run_id(resolved, root / "0")  # stable across requeues (tests/test_loggers.py)
    assert run.config["method"]["name"] == "vcore" and run.config["seed"] == resolved["seed"]


def test_a_live_runs_file_reads_up_to_its_last_whole_record(sweep, tmp_path):
    """W&B's service writes the file while a reader may read it (CI saw a torn record): every prefix of the file
    reads as the records that are whole in it, and never yields a partial one."""
    from vcore.tools.wandb_files import records

    root, _ = sweep
    (path,) = (root / "0" / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    whole = list(records(path))
    assert len(whole) > 10
    torn = tmp_path / "torn.wandb"
    for cut in sorted({len(data) // 3, len(data) // 2, len(data) - 1, len(data) - 5}):
        torn.write_bytes(data[:cut])
        read = list(records(torn))
        assert read == whole[: len(read)] and len(read) < len(whole)
