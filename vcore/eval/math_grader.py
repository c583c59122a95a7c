"""Math answer equivalence with math-verify, gold first: ``verify(parse(gold), parse(pred))``.

Both sides are parsed from ``\\boxed{...}`` so that math-verify's LaTeX extraction sees the whole answer (an
answer like ``1,-2`` or ``\\text{Evelyn}`` parses as a set / text instead of its first number). math-verify
bounds ``parse`` and ``verify`` with ``signal.alarm``, which only works in a main thread, so batches are graded
by :func:`grade_many` in worker processes (vcore/eval/workers.py) with a hard per-item limit on top. Pairs of plain
integers are decided without them (:func:`plain_integer_verdict`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vcore.eval.workers import TaskResult, WorkerPool, map_with_timeout


@dataclass
class MathVerdict:
    correct: bool
    status: str  # ok | no_answer | timeout | error
    detail: str | None = None


# An integer as the synthetic task and most answer keys write it: no leading zeros, no sign on 0, and few enough digits
# that math-verify's numeric tolerance cannot call two different ones equal.
_PLAIN_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,11}")


def plain_integer_verdict(gold: str, pred: str) -> MathVerdict | None:
    """The verdict for two plain integers, which are equivalent exactly when their texts are; None for anything else.

    math-verify says the same for these (tests compare the two); deciding them here spares the worker processes,
    whose start (importing sympy) was most of the grading time of the default job's 300-item benchmarks."""
    gold, pred = gold.strip(), pred.strip()
    if _PLAIN_INTEGER.fullmatch(gold) and _PLAIN_INTEGER.fullmatch(pred):
        return MathVerdict(gold == pred, "ok", pred)
    return None


def grade_one(pair: tuple[str, str | None]) -> tuple[bool, str | None]:
    """``(gold, extracted prediction)`` -> ``(equivalent, parsed prediction as text)``. Runs in a worker."""
    from math_verify import parse, verify  # imported in the worker: it pulls in sympy (slow to import)

    gold, pred = pair
    if pred is None or not pred.strip():
        return False, None
    gold_parsed = parse(f"\\boxed{{{gold}}}")
    pred_parsed = parse(f"\\boxed{{{pred}}}")
    if not gold_parsed:
        raise ValueError(f"math-verify could not parse the gold answer {gold!r}")
    return bool(verify(gold_parsed, pred_parsed)), str(pred_parsed[-1]) if pred_parsed else None


def grade_many(
    golds: Sequence[str],
    preds: Sequence[str | None],
    *,
    workers: int,
    timeout_s: float = 10.0,
    progress: bool = True,
    pool: WorkerPool | None = None,
    on_verdict: Callable[[int, MathVerdict], None] | None = None,
) -> list[MathVerdict]:
    """Grade aligned gold/prediction lists; a missing prediction is wrong and two plain integers are compared without
    asking math-verify.

    ``pool``: workers kept across calls (the RL reward grades every generation batch); else ``workers`` new ones.
    ``on_verdict(i, verdict)`` gets each verdict as soon as it is known."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} golds but {len(preds)} predictions")
    out = [MathVerdict(False, "no_answer") for _ in preds]
    todo = []
    for i, p in enumerate(preds):
        if p is None or not p.strip():
            continue
        decided = plain_integer_verdict(golds[i], p)
        if decided is None:
            todo.append(i)
        else:
            out[i] = decided
    if on_verdict is not None:
        for i in sorted(set(range(len(preds))) - set(todo)):
            on_verdict(i, out[i])
    if not todo:
        return out

    def verdict(k: int, res: TaskResult) -> None:
        i = todo[k]
        if res.status == "ok":
            correct, parsed = res.value
            out[i] = MathVerdict(correct, "ok", parsed)
        else:
            out[i] = MathVerdict(False, res.status, res.error)
        if on_verdict is not None:
            on_verdict(i, out[i])

    pairs = [(golds[i], preds[i]) for i in todo]
    if pool is not None:
        pool.map(grade_one, pairs, timeout_s=timeout_s, desc="math-verify", progress=progress, on_result=verdict)
    else:
        map_with_timeout(
            grade_one,
            pairs,
            workers=workers,
            timeout_s=timeout_s,
            desc="math-verify",
            progress=progress,
            on_result=verdict,
        )
    return out
