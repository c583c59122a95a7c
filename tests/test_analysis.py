"""Study analysis from fixture run dirs written in the real layout: variants, aligned items, paired comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from vcore.eval.intervals import bootstrap_ci, paired_bootstrap
from vcore.tools import analysis
from vcore.tools.report import load_local, main

N = 200


def write_run(root, name, *, method, seed, correct, before=None, lr=1e-3, tau=None, vc=None, history=(), train=None):
    d = root / name
    (d / "eval").mkdir(parents=True)
    cfg = {"task": "train", "seed": seed, "dataset": {"name": "synthetic", "num_examples": 2000},
           "trainer": {"learning_rate": lr}, "model": {"name_or_path": "/cache/tiny-x"}, "method": {"name": method}}
    if method == "vcore":
        cfg["method"].update(tau=tau, variance_control=vc or "paper", probe={"epsilon": 1e-4})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    evals = {}
    for bench, hits in correct.items():
        rows = [{"benchmark": bench, "id": str(i), "sample": 0, "correct": bool(h)} for i, h in enumerate(hits)]
        (d / "eval" / f"{bench}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        evals[f"{bench}/accuracy"] = float(np.mean(hits))
    if before is not None:
        (d / "eval_before").mkdir()
        for bench, hits in before.items():
            rows = [{"id": str(i), "correct": bool(h)} for i, h in enumerate(hits)]
            (d / "eval_before" / f"{bench}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "metrics.json").write_text(json.dumps({"eval": evals, "train": train or {}}))
    if history:
        (d / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history))


@pytest.fixture
def study(tmp_path):
    """SFT and VCORE, 3 seeds; VCORE right on 20 more items of the test split in every seed (and the same on OOD)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "sweep"
    base = rng.random(N) < 0.4
    for seed in (1, 2, 3):
        sft = rng.random(N) < 0.5
        better = sft.copy()
        better[np.flatnonzero(~sft)[:20]] = True
        ood = rng.random(N) < 0.1
        hist = [{"step": s, "train/nll": 1.0 / s} for s in range(1, 30)]
        write_run(root, f"sft_{seed}", method="sft", seed=seed, lr=3e-3, correct={"synthetic_test": sft, "synthetic_ood_hard": ood},
                  before={"synthetic_test": base, "synthetic_ood_hard": base}, history=hist, train={"nll": 0.1, "mean/weights/ess_frac": 1.0})
        write_run(root, f"vcore_{seed}", method="vcore", seed=seed, tau=0.02, correct={"synthetic_test": better, "synthetic_ood_hard": ood},
                  history=hist, train={"nll": 0.2, "mean/weights/ess_frac": 0.9})
    return root


def test_variants_split_by_settings_that_vary_within_a_method_only(study):
    vs = analysis.variants(load_local(study))
    # The learning rate differs between the methods (each its tuned one) but not within one: it does not split.
    assert [v.label for v in vs] == ["sft", "vcore"] and [v.seeds for v in vs] == [[1, 2, 3], [1, 2, 3]]
    assert analysis.reference_for(vs[1], vs) is vs[0]


def test_study_table_matches_an_independent_computation(study):
    runs = load_local(study)
    text = analysis.study_tables(runs)
    sft, vc = analysis.variants(runs)
    got = analysis.aligned([vc.by_seed(), sft.by_seed()], "synthetic_test")
    seeds, (a, b) = got
    assert seeds == [1, 2, 3] and a.shape == (3, N)
    # Recompute from the files with plain JSON reading, not through the module.
    direct = {}
    for m in ("sft", "vcore"):
        direct[m] = np.array([[json.loads(x)["correct"] for x in (study / f"{m}_{s}" / "eval" / "synthetic_test.jsonl").read_text().splitlines()]
                              for s in (1, 2, 3)], dtype=float)
    np.testing.assert_array_equal(a, direct["vcore"])
    cmp = paired_bootstrap(direct["vcore"], direct["sft"])
    assert cmp.diff.mean == pytest.approx(0.1) and cmp.diff.low > 0  # +20 items of 200 in every seed
    row = next(line for line in text.splitlines() if line.startswith("| vcore vs sft"))
    assert f"**{100 * cmp.diff.mean:+.1f}**" in row and f"p={cmp.p_value:.2g}" in row
    assert bootstrap_ci(direct["sft"]).fmt() in next(line for line in text.splitlines() if line.startswith("| sft |"))
    start = next(line for line in text.splitlines() if line.startswith("| start model |"))
    base = np.array([json.loads(x)["correct"] for x in (study / "sft_1" / "eval_before" / "synthetic_test.jsonl").read_text().splitlines()], float)
    assert bootstrap_ci(base).fmt() in start
    assert text.splitlines()[2].startswith("| variant | seeds | lr | ID test |")  # each method's own rate is shown


def test_spikes_are_counted_against_the_recent_median():
    curve = [(s, 0.5) for s in range(1, 10)] + [(10, 37.0)] + [(s, 0.45) for s in range(11, 20)]
    assert analysis.loss_spikes(curve) == [10]
    assert analysis.loss_spikes([(s, 1.0 / s) for s in range(1, 50)]) == []


def test_report_writes_the_study_sections_and_figures(study, tmp_path):
    out = tmp_path / "report"
    assert main([str(study), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Synthetic miniature" in md and "start model" in md and "vcore vs sft" in md
    for png in ("training_nll.png", "accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
