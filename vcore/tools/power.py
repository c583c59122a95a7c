"""How many seeds a comparison needs: the minimum detectable effect over run counts, from a pilot's runs.

    python -m vcore.tools.power multirun/synthetic_study_pilot/<date> --arm vcore --reference sft \
        --benchmark synthetic_ood_val --items 500 --target 3

The pilot's paired difference (``arm`` minus ``reference``, paired by seed and item) gives the variance components of
:mod:`vcore.eval.intervals` (run to run, item, residual); the minimum detectable effect at 80% power is then projected
for other run and item counts with the same interval the report uses. The components come from few runs, so the
run-to-run one is uncertain: the table also shows the projection with that component at the upper end of its 80%
interval (chi-square with ``S - 1`` df), which is the one to plan with.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from scipy import stats

from vcore.eval.intervals import ALPHA, POWER, Components
from vcore.tools import analysis


def pilot_components(runs, arm: str, reference: str, benchmark: str) -> tuple[Components, int, int]:
    """Components of ``arm - reference`` on ``benchmark`` from the runs, with the pilot's run and item counts."""
    vs = {v.method: v for v in analysis.variants(runs) if v.method in (arm, reference)}
    if set(vs) != {arm, reference}:
        raise SystemExit(f"need runs of both {arm} and {reference}; found {sorted(vs)}")
    est, note = analysis.compare(vs[arm], vs[reference], analysis.Column(benchmark, (benchmark,)))
    if est is None or est.components is None:
        raise SystemExit(f"no per-item results of {benchmark} for both arms with at least 2 paired seeds ({note})")
    return est.components, est.runs, est.items


def upper_seed(c: Components, runs: int, q: float = 0.9) -> Components:
    """The components with the run-to-run variance at the upper ``q`` bound of its chi-square interval."""
    scale = (runs - 1) / stats.chi2.ppf(1 - q, runs - 1)
    return dataclasses.replace(c, seed=c.seed * scale)


def table(c: Components, pilot_runs: int, items: list[int], run_counts: list[int], alpha: float, power: float) -> str:
    hi = upper_seed(c, pilot_runs)
    head = "| runs | " + " | ".join(f"MDE at {n} items (upper 80%)" for n in items) + " |"
    out = [head, "|---:|" + "---:|" * len(items)]
    for s in run_counts:
        cells = [f"{100 * c.mde(s, n, alpha, power):.1f} ({100 * hi.mde(s, n, alpha, power):.1f})" for n in items]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.tools.power", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="the pilot's sweep dir")
    parser.add_argument("--arm", required=True)
    parser.add_argument("--reference", default="sft")
    parser.add_argument("--benchmark", required=True)
    parser.add_argument(
        "--items", type=int, nargs="*", default=None, help="item counts to project (default: the pilot's)"
    )
    parser.add_argument("--runs-max", type=int, default=24)
    parser.add_argument(
        "--target", type=float, default=None, help="points: print the fewest runs whose MDE is at most this"
    )
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--power", type=float, default=POWER)
    args = parser.parse_args(argv)
    from vcore.tools.report import load_local

    runs = load_local(Path(args.runs))
    comps, pilot_runs, pilot_items = pilot_components(runs, args.arm, args.reference, args.benchmark)
    items = args.items or [pilot_items]
    print(
        f"pilot: {args.arm} − {args.reference} on {args.benchmark}, {pilot_runs} paired runs x {pilot_items} items; "
        f"components (points²): run {1e4 * comps.seed:.2f}, item {1e4 * comps.item:.2f}, "
        f"residual {1e4 * comps.resid:.1f}"
    )
    print(table(comps, pilot_runs, items, list(range(2, args.runs_max + 1)), args.alpha, args.power))
    if args.target is not None:
        hi = upper_seed(comps, pilot_runs)
        for n in items:
            need = next((s for s in range(2, 1000) if 100 * hi.mde(s, n, args.alpha, args.power) <= args.target), None)
            print(f"fewest runs with MDE ≤ {args.target:g} points at {n} items (planning value): {need or 'over 1000'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
