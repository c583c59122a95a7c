"""A pre-registered study's analysis, rendered exactly as its registration fixed it.

    python -m vcore.tools.report multirun/synthetic_study/<date> --study experiments/synthetic_study/study.yaml

The registration is a human text (``PREREG.md``) and this machine-readable twin (``study.yaml``), committed together
before the study's runs. The report then applies it mechanically: the runs counted against those expected (a failed
or non-finite run is counted, not dropped), the splits checked for shared problems, each endpoint's floor, the
positive control's go/no-go, the manipulation check, the primary comparison (one test, unadjusted), the secondary
comparisons (one Holm family), the primary comparison on each base model, and the conclusion in the words the
registration chose for that outcome. Statistics: :mod:`vcore.eval.intervals`; comparisons pair runs that share a
base model and a seed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vcore.tools import analysis


@dataclass(frozen=True)
class Endpoint:
    arm: str  # a method name (conf/method/<arm>.yaml or a user's method)
    benchmark: str


@dataclass(frozen=True)
class Manipulation:
    arm: str
    ess_max: float  # the arm's mean ESS of the weights must be at most this ...
    ess_metric: str = "mean/weights/ess_frac"
    style_metric: str | None = None  # ... and (reported) the share of weight on style tokens


@dataclass(frozen=True)
class Study:
    title: str
    prereg: str
    reference: str
    arms: list[str]
    primary: Endpoint
    control: Endpoint
    secondary: list[Endpoint]
    manipulation: Manipulation
    bases: int
    seeds: int
    alpha: float = 0.05
    margin: float = 3.0  # points
    floor: float = 15.0  # points

    @classmethod
    def load(cls, path: str | Path) -> Study:
        raw = yaml.safe_load(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        raw["primary"] = Endpoint(**raw["primary"])
        raw["control"] = Endpoint(**raw["control"])
        raw["secondary"] = [Endpoint(**e) for e in raw.get("secondary", [])]
        raw["manipulation"] = Manipulation(**raw["manipulation"])
        return cls(**raw)

    @property
    def options(self) -> analysis.Options:
        return analysis.Options(margin=self.margin, alpha=self.alpha)


# --------------------------------------------------------------------------------------------------- pieces
@dataclass
class Arms:
    """The study's runs by arm (one variant per arm, pooled over bases), and what went wrong."""

    variants: dict[str, analysis.Variant]
    failed: list[str] = field(default_factory=list)  # run dirs that started and left no finite metrics


def collect(runs: list[Any], study: Study, root: Path | None) -> Arms:
    vs = [v for v in analysis.variants(runs) if v.method in study.arms]
    by_arm: dict[str, analysis.Variant] = {}
    for v in vs:
        v.key = analysis.run_key  # the study pairs by base and seed, even when a directory holds one base
        if v.method in by_arm:
            raise ValueError(
                f"the study expects one variant per arm; {v.method} has {by_arm[v.method].label} and {v.label}: "
                "report a sweep dir that holds the study's runs only"
            )
        by_arm[v.method] = v
    failed = []
    if root is not None:
        for cfg_file in sorted(root.rglob("config.yaml")):
            run_dir = cfg_file.parent
            metrics = run_dir / "metrics.json"
            if (run_dir / ".hydra").exists() or run_dir.name == ".hydra":
                continue
            if not metrics.exists():
                failed.append(str(run_dir.relative_to(root)))
    for v in by_arm.values():
        for r in list(v.runs):
            nll = r.metrics.get("train", {}).get("nll")
            if isinstance(nll, float) and not math.isfinite(nll):
                failed.append(r.name)
                v.runs.remove(r)
    return Arms(by_arm, failed)


def overlap_table(runs: list[Any]) -> str:
    """Shared problems between every pair of splits as the study's runs drew them (verbatim and by signature)."""
    from vcore.data.synthetic import overlaps

    first = runs[0]
    corpus = sorted(
        {
            (
                int(r.get("model.tiny.pretrain.seed", 0)),
                int(r.get("model.tiny.pretrain.steps", 0)) * int(r.get("model.tiny.pretrain.batch_size", 0)),
            )
            for r in runs
        }
    )
    found = overlaps(
        train=(int(first.get("dataset.num_examples")), int(first.get("dataset.seed", 0))),
        evaluated=(int(first.get("dataset.eval_examples")), int(first.get("dataset.seed", 0))),
        corpora=tuple(corpus),
    )
    bad = {pair: n for pair, n in found.items() if any(n)}
    head = (
        f"Splits as the runs drew them (train {first.get('dataset.num_examples')}, evaluated splits "
        f"{first.get('dataset.eval_examples')} each, {len(corpus)} pretraining corpora): "
        f"{len(found)} pairs of splits checked, verbatim and by signature."
    )
    if not bad:
        return head + " **0 shared problems in every pair.**"
    return (
        head
        + "\n\n"
        + "\n".join(f"- {a} / {b}: {v} verbatim, {s} by signature" for (a, b), (v, s) in sorted(bad.items()))
    )


def render(runs: list[Any], study: Study, root: Path | None = None) -> str:
    """The pre-registered section of the report (markdown)."""
    arms = collect(runs, study, root)
    missing = [a for a in study.arms if a not in arms.variants]
    if study.reference in missing or study.primary.arm in missing:
        return f"## {study.title}\n\nNot rendered: no runs of {', '.join(missing)} under this directory."
    ref = arms.variants[study.reference]
    opts = study.options
    level = 1 - study.alpha
    out = [
        f"## {study.title}",
        "",
        f"Analysed as registered in `{study.prereg}` (α = {study.alpha:g}, equivalence margin "
        f"±{study.margin:g} points, floor {study.floor:g}%).",
        "",
    ]

    # Runs.
    expected = study.bases * study.seeds
    lines = ["| arm | expected runs | finished | bases | seeds per base |", "|---|---|---|---|---|"]
    for arm in study.arms:
        v = arms.variants.get(arm)
        rs = v.runs if v else []
        per_base = defaultdict(list)
        for r in rs:
            per_base[analysis.base_of(r)].append(int(r.get("seed", 0)))
        lines.append(
            f"| {arm} | {expected} | {len(rs)} | {len(per_base)} | "
            + "; ".join(",".join(map(str, sorted(s))) for s in per_base.values())
            + " |"
        )
    out += ["### Runs", "", *lines, ""]
    out.append(
        f"Failed or non-finite runs (counted, not dropped): {len(arms.failed)}"
        + (": " + ", ".join(arms.failed) if arms.failed else ".")
    )
    out += ["", "### Disjoint splits", "", overlap_table([r for v in arms.variants.values() for r in v.runs]), ""]

    # Floors.
    endpoints = [study.primary, study.control, *study.secondary]
    floors = {}
    lines = ["| endpoint | base, zero-shot (%) | verdict |", "|---|---|---|"]
    for bench in dict.fromkeys(e.benchmark for e in endpoints):
        base = analysis.start_model_accuracy(ref.runs, bench, level)  # one run per base
        floors[bench] = base is not None and 100 * base.mean < study.floor
        verdict = (
            "–" if base is None else f"at the floor (< {study.floor:g}%): not compared" if floors[bench] else "compared"
        )
        lines.append(f"| {analysis.SPLITS.get(bench, bench)} | {base.fmt() if base else '–'} | {verdict} |")
    out += [
        "### Floors",
        "",
        f"The start models' zero-shot accuracy, over the {analysis.bases_in(ref.runs)} bases (each base's "
        "`eval_before/`, the same in all its runs).",
        "",
        *lines,
        "",
    ]

    def compare(e: Endpoint, variants: dict[str, analysis.Variant] | None = None):
        vs = variants or arms.variants
        if e.arm not in vs:
            return None, f"no runs of {e.arm}"
        return analysis.compare(
            vs[e.arm],
            vs[study.reference],
            analysis.Column(analysis.SPLITS.get(e.benchmark, e.benchmark), (e.benchmark,)),
            level,
        )

    # Positive control.
    control, note = compare(study.control)
    go = control is not None and control.p_value < study.alpha and control.mean > 0
    out += [
        "### Positive control (go/no-go)",
        "",
        f"{study.control.arm} − {study.reference} on "
        f"{analysis.SPLITS.get(study.control.benchmark, study.control.benchmark)}: "
        + (
            f"{control.fmt(signed=True)} points, p = {analysis.fmt_p(control.p_value)}, "
            f"MDE {100 * control.mde(study.alpha):.1f}. "
            if control
            else f"no estimate ({note}). "
        )
        + (
            "**Go**: the miniature can detect a gain out of distribution."
            if go
            else "**No-go**: the control's gain is not detectable, so the miniature cannot test the claim."
        ),
        "",
    ]

    # Manipulation check.
    m = study.manipulation
    mv = arms.variants.get(m.arm)
    ess = mv.mean_metric(m.ess_metric) if mv else None
    style = mv.mean_metric(m.style_metric) if mv and m.style_metric else None
    ref_style = ref.mean_metric(m.style_metric) if m.style_metric else None
    manipulated = ess is not None and ess <= m.ess_max
    out += [
        "### Manipulation check",
        "",
        f"{m.arm}'s weights: mean ESS {'–' if ess is None else f'{ess:.3f}'} (registered bound ≤ {m.ess_max:g})"
        + (
            f"; share of weight on style tokens {style:.3f} (uniform weights: {ref_style:.3f})"
            if style is not None and ref_style is not None
            else ""
        )
        + (
            ". **Passed**: the weights differ from SFT's."
            if manipulated
            else f". **Failed**: {m.arm} ≈ {study.reference} here; untested."
        ),
        "",
    ]

    # Primary.
    p = study.primary
    primary, note = compare(p)
    fam = analysis.Family(opts)
    test = fam.add(f"{p.arm} − {study.reference}", analysis.SPLITS.get(p.benchmark, p.benchmark), primary, note)
    fam.adjust()  # a family of one: the unadjusted test
    out += ["### Primary endpoint (one test, unadjusted)", "", fam.markdown(), ""]

    # Secondaries.
    sec = analysis.Family(opts)
    for e in study.secondary:
        est, n = compare(e)
        if floors.get(e.benchmark):
            est, n = None, f"at the floor (base < {study.floor:g}%)"
        sec.add(f"{e.arm} − {study.reference}", analysis.SPLITS.get(e.benchmark, e.benchmark), est, n)
    if sec.tests:
        out += ["### Secondary endpoints (one Holm family)", "", sec.markdown(), ""]

    # By base.
    bases = sorted({analysis.base_of(r) for v in arms.variants.values() for r in v.runs})
    if len(bases) > 1:
        fam_b = analysis.Family(opts)
        for b in bases:
            sub = {
                a: analysis.Variant(
                    v.method, v.settings, [r for r in v.runs if analysis.base_of(r) == b], analysis.run_key
                )
                for a, v in arms.variants.items()
            }
            sub = {a: v for a, v in sub.items() if v.runs}
            est, n = compare(p, sub) if p.arm in sub and study.reference in sub else (None, "missing runs")
            fam_b.add(f"{p.arm} − {study.reference} on base {b}", analysis.SPLITS.get(p.benchmark, p.benchmark), est, n)
        out += [
            "### The primary comparison on each base",
            "",
            "Each base alone (its seeds only); the pooled primary "
            "test above counts every (base, seed) pair as a run, so a base-by-method interaction is in its run term.",
            "",
            fam_b.markdown(),
            "",
        ]

    out += [
        "### Conclusion (the registered wording for this outcome)",
        "",
        conclusion(study, go, manipulated, floors.get(p.benchmark, False), test, fam),
        "",
    ]
    return "\n".join(out)


def conclusion(
    study: Study, go: bool, manipulated: bool, at_floor: bool, test: analysis.Test, fam: analysis.Family
) -> str:
    """The sentence PREREG.md fixed for each possible outcome, in its order of precedence."""
    p, ref = study.primary, study.reference
    split = analysis.SPLITS.get(p.benchmark, p.benchmark)
    if not go:
        return (
            f"The positive control's gain over {ref} was not detected: this miniature cannot test whether {p.arm} "
            f"improves on {ref} out of distribution, and no conclusion about {p.arm} is drawn."
        )
    if not manipulated:
        return (
            f"{p.arm}'s weights stayed close to uniform: {p.arm} ≈ {ref} in this miniature, and the claim is untested."
        )
    if at_floor:
        return f"The start model is at the floor on {split}: the primary endpoint is not compared."
    est = test.estimate
    if est is None:
        return f"The primary comparison could not be computed ({test.note})."
    verdict = fam.verdict(test)
    if verdict.startswith(("better", "worse")):
        word = "better" if est.mean > 0 else "worse"
        return (
            f"{p.arm} is {word} than {ref} on {split} by {100 * abs(est.mean):.1f} points "
            f"(95% CI {est.fmt(signed=True)}, p = {analysis.fmt_p(est.p_value)})."
        )
    if verdict.startswith("equivalent"):
        return f"{p.arm} and {ref} are equivalent within ±{study.margin:g} points on {split} ({verdict})."
    return (
        f"No difference between {p.arm} and {ref} on {split} was detected ({est.fmt(signed=True)} points); the study "
        f"could have detected {100 * est.mde(study.alpha):.1f} points at 80% power, and cannot tell them apart below "
        "that."
    )
