"""Study analysis from fixture run dirs written in the real layout: variants, aligned items, paired comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from vcore.eval.intervals import accuracy, difference, from_run_values, holm
from vcore.tools import analysis
from vcore.tools.report import load_local, main

N = 200


def write_run(root, name, *, method, seed, correct, before=None, lr=1e-3, tau=None, vc=None, history=(), train=None):
    d = root / name
    (d / "eval").mkdir(parents=True)
    cfg = {
        "task": "train",
        "seed": seed,
        "dataset": {"name": "synthetic", "num_examples": 2000},
        "trainer": {"learning_rate": lr},
        "model": {"name_or_path": "/cache/tiny-x"},
        "method": {"name": method},
    }
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
        write_run(
            root,
            f"sft_{seed}",
            method="sft",
            seed=seed,
            lr=3e-3,
            correct={"synthetic_test": sft, "synthetic_ood_hard": ood},
            before={"synthetic_test": base, "synthetic_ood_hard": base},
            history=hist,
            train={"nll": 0.1, "mean/weights/ess_frac": 1.0},
        )
        write_run(
            root,
            f"vcore_{seed}",
            method="vcore",
            seed=seed,
            tau=0.02,
            correct={"synthetic_test": better, "synthetic_ood_hard": ood},
            history=hist,
            train={"nll": 0.2, "mean/weights/ess_frac": 0.9},
        )
    return root


def test_variants_split_by_settings_that_vary_within_a_method_only(study):
    vs = analysis.variants(load_local(study))
    # The learning rate differs between the methods (each its tuned one) but not within one: it does not split.
    assert [v.label for v in vs] == ["sft", "vcore"] and [v.seeds for v in vs] == [[1, 2, 3], [1, 2, 3]]
    assert analysis.reference_for(vs[1], vs) is vs[0]


def _direct(study, method, bench="synthetic_test", seeds=(1, 2, 3)):
    """Per-item correctness read with plain JSON, not through the module."""
    return np.array(
        [
            [
                json.loads(x)["correct"]
                for x in (study / f"{method}_{s}" / "eval" / f"{bench}.jsonl").read_text().splitlines()
            ]
            for s in seeds
        ],
        dtype=float,
    )


def _row(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_study_table_matches_an_independent_computation(study):
    runs = load_local(study)
    text = analysis.study_tables(runs)
    sft, vc = analysis.variants(runs)
    a, b = analysis.aligned(
        [[(vc.by_seed()[s], False) for s in (1, 2, 3)], [(sft.by_seed()[s], False) for s in (1, 2, 3)]],
        "synthetic_test",
    )
    np.testing.assert_array_equal(a, _direct(study, "vcore"))
    d_id = difference(_direct(study, "vcore"), _direct(study, "sft"))
    d_ood = difference(_direct(study, "vcore", "synthetic_ood_hard"), _direct(study, "sft", "synthetic_ood_hard"))
    assert d_id.mean == pytest.approx(0.1) and d_id.low > 0  # +20 items of 200 in every seed
    p_adj = holm([d_id.p_value, d_ood.p_value])
    row = _row(text, "| vcore − sft | ID test |")
    cells = [c.strip() for c in row.strip("|").split("|")]
    fmt_p = analysis.fmt_p
    assert cells[2:] == [
        "3",
        "200",
        f"**{d_id.fmt(signed=True)}**",
        fmt_p(d_id.p_value),
        fmt_p(p_adj[0]),
        f"{100 * d_id.mde():.1f}",
        cells[8],
        f"better (adjusted p = {fmt_p(p_adj[0])})",
    ]
    assert fmt_p(1.2e-11) == "<0.0001" and fmt_p(0.0312) == "0.031"
    # The OOD split: the same items right in both arms and every seed: a difference of exactly 0 whose only
    # uncertainty is the floor of 600 concordant pairs (±0.3 points), so equivalent within ±2.
    assert d_ood.mean == 0 and 0 < d_ood.se < 0.002
    assert (
        _row(text, "| vcore − sft | harder problems |")
        .rstrip(" |")
        .endswith("equivalent within ±2 (adjusted TOST p = <0.0001)")
    )
    assert accuracy(_direct(study, "sft")).fmt() in _row(text, "| sft |")
    base = np.array(
        [
            json.loads(x)["correct"]
            for x in (study / "sft_1" / "eval_before" / "synthetic_test.jsonl").read_text().splitlines()
        ],
        float,
    )
    assert accuracy(base).fmt() in _row(text, "| start model |")
    assert "Cells from one run (the start model, a single seed): item noise only." in text
    assert _row(text, "| variant | seeds |").startswith("| variant | seeds | lr | ID test |")  # each method's own rate


def _family_study(tmp_path, seeds_a=(1, 2, 3), seeds_b=(1, 2, 3), shift=0, n=400, benches=4, noise=0.15):
    """SFT and VCORE on ``benches`` splits; VCORE's runs differ from SFT's on a few items (``shift`` more right)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "fam"
    names = ["synthetic_test", "synthetic_ood_test", "synthetic_forget", "synthetic_ood_hard"][:benches]
    truth = {b: rng.random(n) < 0.5 for b in names}
    for method, seeds in (("sft", seeds_b), ("vcore", seeds_a)):
        for seed in seeds:
            correct = {}
            for b in names:
                hits = truth[b] ^ (rng.random(n) < noise)
                if method == "vcore":
                    hits[np.flatnonzero(~hits)[:shift]] = True
                correct[b] = hits
            write_run(
                root,
                f"{method}_{seed}",
                method=method,
                seed=seed,
                correct=correct,
                tau=0.02 if method == "vcore" else None,
            )
    return root


def test_holm_decides_what_is_bold_and_null_results_state_what_could_have_been_detected(tmp_path):
    root = _family_study(tmp_path, shift=18, noise=0.05)
    text = analysis.study_tables(load_local(root))
    rows = [line for line in text.splitlines() if line.startswith("| vcore − sft |")]
    assert len(rows) == 4
    raw = [float(r.split(" | ")[5]) for r in rows]
    adjusted = [float(r.split(" | ")[6]) for r in rows]
    assert adjusted == pytest.approx([float(f"{p:.2g}") for p in holm(raw)], rel=0.05)
    for r, p_raw, p_adj in zip(rows, raw, adjusted):
        if p_adj < 0.05:
            assert "**" in r and "better (adjusted p" in r
        else:
            assert "**" not in r and ("not detected (minimum detectable effect" in r or "equivalent within" in r)
    # This fixture has both: a raw p below 0.05 that the adjustment lets through, and one it does not.
    assert any(q < 0.05 for q in adjusted) and any(p < 0.05 <= q for p, q in zip(raw, adjusted)), (raw, adjusted)
    assert "Holm adjustment over the 4 tests of this table" in text


def test_unequal_seed_sets_are_paired_where_they_can_be_and_refused_where_not(tmp_path):
    text = analysis.study_tables(load_local(_family_study(tmp_path, seeds_a=(1, 2, 3), seeds_b=(1, 2), benches=1)))
    assert "| vcore − sft | ID test | 2 |" in text
    assert "- vcore − sft, ID test: paired on seeds 1, 2; unpaired runs left out: first arm's seed 3" in text
    text = analysis.study_tables(load_local(_family_study(tmp_path / "b", seeds_a=(3, 4), seeds_b=(1, 2), benches=1)))
    assert "no comparison: not paired: no seed in common (first arm: 3, 4; second arm: 1, 2)" in text


def test_two_runs_of_a_variant_with_one_seed_are_an_error(tmp_path):
    root = _family_study(tmp_path, seeds_a=(1,), seeds_b=(1,), benches=1)
    write_run(root, "vcore_again", method="vcore", seed=1, correct={"synthetic_test": np.ones(4, bool)}, tau=0.02)
    with pytest.raises(ValueError, match="vcore_1 and vcore_again both have seed 1"):
        analysis.study_tables(load_local(root))


def test_runs_without_per_item_files_are_compared_on_their_own_numbers_and_say_so(tmp_path):
    root = _family_study(tmp_path, benches=1, shift=10)
    for f in root.rglob("*.jsonl"):
        f.unlink()  # what a W&B summary gives: one accuracy per run
    text = analysis.study_tables(load_local(root))
    row = _row(text, "| vcore − sft | ID test |")
    assert "| 3 (runs only: item sampling not covered) | – |" in row
    per_run = {
        m: [
            json.loads((root / f"{m}_{s}" / "metrics.json").read_text())["eval"]["synthetic_test/accuracy"]
            for s in (1, 2, 3)
        ]
        for m in ("sft", "vcore")
    }
    ref = from_run_values(np.subtract(per_run["vcore"], per_run["sft"]))
    assert ref.fmt(signed=True) in row


def test_spikes_are_counted_against_the_recent_median():
    curve = [(s, 0.5) for s in range(1, 10)] + [(10, 37.0)] + [(s, 0.45) for s in range(11, 20)]
    assert analysis.loss_spikes(curve) == [10]
    assert analysis.loss_spikes([(s, 1.0 / s) for s in range(1, 50)]) == []


def test_report_writes_the_study_sections_and_figures(study, tmp_path):
    out = tmp_path / "report"
    assert main([str(study), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Synthetic miniature" in md and "start model" in md and "| vcore − sft | ID test |" in md
    for png in ("training_nll.png", "accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_start_model_row_counts_each_base_once(tmp_path):
    """Runs from two bases: the start model's accuracy averages one run per base (not the first run's base alone),
    and a base's several runs count once."""
    n = 100
    weak, strong = [1] * 20 + [0] * 80, [1] * 60 + [0] * 40
    for i, (base, seed, before) in enumerate([("a", 1, weak), ("a", 2, weak), ("b", 1, strong), ("b", 2, strong)]):
        write_run(
            tmp_path,
            str(i),
            method="sft",
            seed=seed,
            correct={"synthetic_test": [1] * n},
            before={"synthetic_test": before},
        )
        metrics = json.loads((tmp_path / str(i) / "metrics.json").read_text())
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps({**metrics, "model": f"/cache/tiny-{base}"}))
    runs = load_local(tmp_path)
    est = analysis.start_model_accuracy(runs, "synthetic_test")
    assert est.mean == pytest.approx(0.4) and est.runs == 2
    one = analysis.start_model_accuracy([r for r in runs if analysis.base_of(r) == "tiny-a"], "synthetic_test")
    assert one.mean == pytest.approx(0.2) and one.runs == 1
