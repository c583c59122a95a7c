"""The pre-registered study's analysis (vcore.tools.study) from fixture runs in the real layout: the gates decide the
conclusion in the registered order, failed runs are counted, runs pair by base and seed, and the numbers are the
report's own statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from vcore.tools import analysis
from vcore.tools.report import load_local, main
from vcore.tools.study import Study, render

N = 300
BENCHES = ("synthetic_test", "synthetic_ood_test", "synthetic_forget", "synthetic_ood_val")
STUDY = {
    "title": "Fixture study",
    "prereg": "experiments/synthetic_study/PREREG.md",
    "reference": "sft",
    "arms": ["sft", "reasoning_sft", "vcore"],
    "primary": {"arm": "vcore", "benchmark": "synthetic_ood_test"},
    "control": {"arm": "reasoning_sft", "benchmark": "synthetic_ood_val"},
    "secondary": [
        {"arm": "vcore", "benchmark": "synthetic_test"},
        {"arm": "vcore", "benchmark": "synthetic_forget"},
        {"arm": "reasoning_sft", "benchmark": "synthetic_ood_test"},
    ],
    "manipulation": {"arm": "vcore", "ess_max": 0.9},
    "bases": 2,
    "seeds": 3,
    "margin": 3.0,
    "floor": 15.0,
}


def write_run(root, name, *, method, seed, base, correct, before, ess):
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "eval_before").mkdir()
    cfg = {
        "task": "train",
        "seed": seed,
        "method": {"name": method},
        "dataset": {"name": "synthetic", "num_examples": 60, "eval_examples": 40, "seed": 0},
        "model": {
            "name_or_path": None,
            "tiny": {"seed": base, "pretrain": {"seed": base, "steps": 5, "batch_size": 8}},
        },
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    evals = {}
    for bench in BENCHES:
        for sub, hits in (("eval", correct[bench]), ("eval_before", before[bench])):
            rows = [{"id": str(i), "sample": 0, "correct": bool(h)} for i, h in enumerate(hits)]
            (d / sub / f"{bench}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        evals[f"{bench}/accuracy"] = float(np.mean(correct[bench]))
    metrics = {
        "eval": evals,
        "model": f"/cache/tiny/tiny-base{base}",
        "train": {"nll": 0.1, "mean/weights/ess_frac": ess},
    }
    (d / "metrics.json").write_text(json.dumps(metrics))


def make_study(
    tmp_path,
    *,
    control_gain=40,
    vcore_gain=0,
    vcore_ess=0.8,
    base_acc=0.3,
    vcore_noise=0.0,
    seeds=(1, 2, 3),
    bases=(0, 1),
):
    """Arms on 2 bases x 3 seeds; on the OOD splits the control is right on ``control_gain`` more items than SFT, VCORE
    on ``vcore_gain`` more (in every run), with run-to-run noise; ``vcore_noise``: VCORE's answers also differ from
    SFT's on that share of items, at random."""
    rng = np.random.default_rng(0)
    root = tmp_path / "study"
    for base in bases:
        truth = {b: rng.random(N) < 0.5 for b in BENCHES}
        before = {b: rng.random(N) < base_acc for b in BENCHES}
        for seed in seeds:
            sft = {b: truth[b] ^ (rng.random(N) < 0.1) for b in BENCHES}
            for method, gain, ess in (
                ("sft", 0, 1.0),
                ("reasoning_sft", control_gain, 1.0),
                ("vcore", vcore_gain, vcore_ess),
            ):
                correct = {}
                for b in BENCHES:
                    hits = sft[b] ^ (rng.random(N) < vcore_noise) if method == "vcore" else sft[b].copy()
                    if "ood" in b and gain:
                        hits[np.flatnonzero(~hits)[: gain + int(rng.integers(0, 6))]] = True
                    correct[b] = hits
                write_run(
                    root,
                    f"{method}_b{base}_s{seed}",
                    method=method,
                    seed=seed,
                    base=base,
                    correct=correct,
                    before=before,
                    ess=ess,
                )
    return root


def study_file(tmp_path, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def section(text: str, title: str) -> str:
    return text.split(f"### {title}")[1].split("\n### ")[0]


def test_a_detected_effect_is_worded_as_registered_with_the_reports_numbers(tmp_path):
    root = make_study(tmp_path, vcore_gain=25)
    (root / "vcore_b1_s4").mkdir()  # a run that crashed before writing metrics: counted, not dropped
    (root / "vcore_b1_s4" / "config.yaml").write_text("task: train\n")
    runs = load_local(root)
    text = render(runs, Study.load(study_file(tmp_path)), root)
    assert "| vcore | 6 | 6 | 2 | 1,2,3; 1,2,3 |" in section(text, "Runs")
    assert "Failed or non-finite runs (counted, not dropped): 1: vcore_b1_s4" in text
    assert "**0 shared problems in every pair.**" in section(text, "Disjoint splits")
    assert "**Go**" in section(text, "Positive control (go/no-go)") and "**Passed**" in section(
        text, "Manipulation check"
    )
    # The primary test is the report's paired difference over the 6 (base, seed) pairs, unadjusted.
    from vcore.eval.intervals import difference

    def arm(method, bench="synthetic_ood_test"):
        return np.array(
            [
                [
                    json.loads(x)["correct"]
                    for x in (root / f"{method}_b{b}_s{s}" / "eval" / f"{bench}.jsonl").read_text().splitlines()
                ]
                for b in (0, 1)
                for s in (1, 2, 3)
            ],
            dtype=float,
        )

    d = difference(arm("vcore"), arm("sft"))
    primary = section(text, "Primary endpoint (one test, unadjusted)")
    assert (
        f"| vcore − sft | OOD: new phrasing | 6 | {N} | **{d.fmt(signed=True)}** | "
        f"{analysis.fmt_p(d.p_value)} | {analysis.fmt_p(d.p_value)} |" in primary
    )
    conclusion = section(text, "Conclusion (the registered wording for this outcome)")
    assert f"vcore is better than sft on OOD: new phrasing by {100 * d.mean:.1f} points" in conclusion
    by_base = section(text, "The primary comparison on each base")
    assert "on base tiny-base0" in by_base and "on base tiny-base1" in by_base and "| 3 |" in by_base
    # The start model's zero-shot accuracy on every endpoint is above the floor here.
    assert "at the floor" not in section(text, "Floors")


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(control_gain=0, vcore_gain=25), "this miniature cannot test whether vcore improves on sft"),
        (dict(vcore_ess=0.97, vcore_gain=25), "vcore ≈ sft in this miniature, and the claim is untested"),
        (dict(base_acc=0.05, vcore_gain=25), "The start model is at the floor on OOD: new phrasing"),
        (dict(vcore_gain=0), "vcore and sft are equivalent within ±3 points on OOD: new phrasing"),  # the same answers
        (dict(vcore_noise=0.4), "No difference between vcore and sft on OOD: new phrasing was detected"),
    ],
)
def test_the_gates_decide_the_conclusion_in_the_registered_order(tmp_path, kwargs, expected):
    root = make_study(tmp_path, **kwargs)
    text = render(load_local(root), Study.load(study_file(tmp_path)), root)
    assert expected in section(text, "Conclusion (the registered wording for this outcome)")


def test_the_report_command_renders_the_study_first(tmp_path):
    root = make_study(tmp_path, vcore_gain=25)
    assert main([str(root), "--study", str(study_file(tmp_path)), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.index("## Fixture study") < md.index("## Synthetic miniature")


def test_a_study_file_with_an_unknown_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown keys \['primry'\]"):
        Study.load(study_file(tmp_path, primry={}))
