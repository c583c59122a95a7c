"""The report renders the paper's tables and figures from fixture result files."""

import json
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
import yaml

from tests.helpers import CONF
from vcore.eval.results import table1 as results_table1
from vcore.tools.report import load_local, main, table1

matplotlib.use("Agg")


def write_run(root, name, config, evals, history=()):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.json").write_text(json.dumps({"eval": evals}))
    if history:
        (d / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history))


def cfg(method="vcore", dataset="openmath", model="Qwen/Qwen3-4B", seed=1, **extra):
    c = {
        "method": {
            "name": method,
            "tau": extra.get("tau", 5000.0),
            "probe": {"epsilon": extra.get("eps", 1e-4)},
            "variance_control": extra.get("vc", "paper"),
        },
        "dataset": {"name": dataset, "num_examples": extra.get("n", 3200)},
        "model": {"name_or_path": model},
        "seed": seed,
    }
    return c


MATH = {"aime/accuracy": 0.2, "olympiad/accuracy": 0.5, "rbench/accuracy": 0.3, "sgpqa_1k/accuracy": 0.4}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "sweep"
    for seed, bump in ((1, 0.0), (2, 0.02)):
        write_run(root, f"vcore_{seed}", cfg(seed=seed), {k: v + bump for k, v in MATH.items()})
        write_run(root, f"sft_{seed}", cfg("sft", seed=seed), {k: v - 0.05 for k, v in MATH.items()})
    for i, (n, m) in enumerate([(4000, "dft"), (8000, "dft"), (4000, "vcore"), (8000, "vcore")]):
        write_run(root, f"scale_{i}", cfg(m, n=n), {k: v + n / 1e5 for k, v in MATH.items()})
    for i, (tau, eps) in enumerate([(1e2, 1e-4), (1e4, 1e-4), (1e2, 1e-5), (1e4, 1e-5)]):
        write_run(root, f"taueps_{i}", cfg(tau=tau, eps=eps), MATH)
    for seed, (vc, spike) in enumerate((("none", 37.0), ("paper", 0.5)), start=11):
        hist = [{"step": s, "train/weighted_loss": spike if s == 3 else 0.5 - 0.01 * s} for s in range(1, 8)]
        write_run(root, f"vc_{vc}", cfg(vc=vc, seed=seed), MATH, hist)
    for m in ("sft", "vcore"):
        for seed in (1, 2):
            write_run(
                root,
                f"syn_{m}_{seed}",
                cfg(m, dataset="synthetic", model="/x/init_model", seed=seed),
                {"synthetic_test/accuracy": 0.2 + 0.1 * seed, "synthetic_ood_hard/accuracy": 0.05, "test/nll": 0.3},
            )
    return root


def test_table1_per_domain_and_model_with_intervals_and_tests(tmp_path):
    """Runs without per-item files (as from W&B): intervals from one number per run, and the table says so."""
    from vcore.eval.intervals import from_run_values

    root = tmp_path / "t1"
    for seed, bump in ((1, 0.0), (2, 0.02), (3, -0.01)):
        write_run(root, f"vcore_{seed}", cfg(seed=seed), {k: v + bump for k, v in MATH.items()})
        write_run(root, f"sft_{seed}", cfg("sft", seed=seed), {k: v - 0.05 + bump / 2 for k, v in MATH.items()})
    text = table1(load_local(root))
    assert "### math: Qwen3-4B" in text and "### code" not in text
    assert "| variant | seeds | AIME | Olympiad | RBench | SGPQA-1k | ID avg | OOD avg | ESS | train NLL |" in text
    row = next(line for line in text.splitlines() if line.startswith("| vcore |"))
    bumps = np.array([0.0, 0.02, -0.01])
    assert from_run_values(0.2 + bumps).fmt() in row  # AIME
    assert from_run_values((0.2 + 0.5) / 2 + bumps).fmt() in row  # ID avg: AIME and Olympiad, run by run
    diff = next(line for line in text.splitlines() if line.startswith("| vcore − sft | ID avg |"))
    assert (
        from_run_values(0.05 + bumps / 2).fmt(signed=True) in diff and "(runs only: item sampling not covered)" in diff
    )


def _benchmark_configs(preset: str):
    from hydra import compose, initialize_config_dir

    from vcore.eval.config import benchmarks_from_cfg, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return benchmarks_from_cfg(compose(config_name=None, overrides=[f"+benchmark={preset}"]).benchmark)


@pytest.mark.parametrize(
    "preset, domain, dataset, titles",
    [
        ("table1_math", "math", "openmath", ["AIME", "Olympiad", "RBench", "SGPQA-1k"]),
        ("table1_code", "code", "opencode", ["LCB", "OJBench", "RBench", "SGPQA-1k"]),
    ],
)
def test_results_writer_and_report_share_the_table1_columns(tmp_path, preset, domain, dataset, titles):
    configs = _benchmark_configs(preset)
    accuracy = {c.name: 0.1 * (i + 1) for i, c in enumerate(configs)}
    row = results_table1(configs[::-1], accuracy)[domain]  # the layout, not the order of the configs, orders columns
    write_run(tmp_path, "run", cfg(dataset=dataset), {f"{name}/accuracy": acc for name, acc in accuracy.items()})
    lines = table1(load_local(tmp_path)).splitlines()
    header = [c.strip() for c in next(l for l in lines if l.startswith("| variant |")).strip("|").split("|")]
    cells = [c.strip() for c in next(l for l in lines if l.startswith("| vcore |")).strip("|").split("|")]
    assert list(row["columns"]) == header[2:-4] == titles and not row["partial"]
    assert [float(c) for c in cells[2:-2]] == pytest.approx(
        [100 * v for v in [*row["columns"].values(), row["id_avg"], row["ood_avg"]]], abs=0.051
    )


def test_report_command_writes_figures_with_axes_labels(runs, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = {}
    original = Figure.savefig

    def record(fig, path, *a, **k):
        saved[str(path).rsplit("/", 1)[-1]] = [
            (ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()
        ]
        return original(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", record)
    weights = tmp_path / "w.jsonl"
    ex = {
        "example": 0,
        "method": "vcore",
        "tokens": ["<|im_start|>", "Q", "<think>", "a&b", "<c>", "\n", "7"],
        "supervised": [False, False, True, True, True, True, True],
        "loss": [0, 0, 1.0, 2.0, 0.5, 0.1, 0.2],
        "score": [None, None, 0.1, 0.2, -0.1, 0.0, 0.3],
        "q": [None, None, 0.2, 0.3, 0.1, 0.15, 0.25],
        "weight": [0, 0, 1.0, 1.5, 0.5, 0.75, 1.25],
        "batch_alpha": 0.8,
    }
    weights.write_text(json.dumps(ex) + "\n")
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out), "--weights", str(weights)]) == 0
    for png in ("data_scaling.png", "tau_eps.png", "variance_control.png", "token_weights.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert saved["data_scaling.png"] == [("training examples", "ID accuracy (%)")]
    assert saved["tau_eps.png"] == [("lg τ", "ID accuracy (%)")]
    assert saved["variance_control.png"] == [("step", "training loss (weighted)")]
    md = (out / "report.md").read_text()
    assert "## Table 1" in md and "## Synthetic miniature" in md and "![tau_eps](tau_eps.png)" in md

    page = (out / "token_weights.html").read_text()

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.data, self.ok = [], True

        def handle_data(self, d):
            self.data.append(d)

    parser = Text()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    text = "".join(parser.data)
    assert all(tok in text for tok in ex["tokens"])  # every token, special characters included


def test_report_on_an_empty_dir_is_a_clear_failure(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no runs" in capsys.readouterr().err
