"""A seeded miniature of the paper's setting: arithmetic word problems, a broad pretraining corpus, and a narrow
fine-tuning task written as long, verbose chain-of-thought in one idiosyncratic style.

The paper fine-tunes pretrained models on long R1-style traces and tests in and out of the training distribution.
Here, on a CPU:

- ``corpus`` (the base's pretraining data) and ``pretrain`` (held-out draws from the same distribution: the
  forgetting split): a mixture of single operations over 0-99 and word problems of 1-6 steps in every phrasing,
  under several instruction wrappers, mostly answered by *short* solutions in several styles, and one in five at
  length in the base's own verbose style (the paper's bases already reason at length; what is new to them in
  fine-tuning is the data's exact style and narrow distribution, not long reasoning as such).
- ``train`` / ``val`` / ``test`` (the fine-tuning task, in-distribution): one phrasing (``story``), the paper's
  ``math`` instruction, 2-3 steps, operands up to 9; the response is a long, verbose trace (restates every step,
  double-checks every result) closed by ``\\boxed{answer}``. ``val`` is for choosing hyperparameters; ``test`` is
  never used for that.
- ``ood_val`` / ``ood_test``: one shift, the phrasing: in-distribution difficulty, the same ``math`` instruction and
  answer format, under phrasings the fine-tuning data never uses (the base saw them in pretraining).
- ``forget``: the corpus's distribution (held out from the corpus): what fine-tuning may make the base forget.
- ``ood_hard``: the fine-tuning phrasing and instruction with more steps (4-5) and larger operands (up to 20).
- ``rl``: prompts of the fine-tuning task for RL after fine-tuning.

**Disjoint by construction.** A problem's *signature* is its start and its operations: they alone decide the answer.
Every signature belongs to exactly one split, by a hash of it (:func:`pool_of`, shares in ``POOL_SHARES``), and each
split draws only problems whose signature is its own. No split shares a problem with another, verbatim or in its
arithmetic; the corpus holds no evaluated or RL problem. (Single steps such as ``7 + 5 = 12`` recur everywhere, as
they would in any corpus; whole problems do not.) Each record carries its ``signature``.

Records follow the nvidia/OpenMathReasoning schema (``problem``, ``generated_solution``, ``expected_answer``), so the
task runs through the same loading, templating and grading code as the real data. ``problem`` is the complete user
turn (the instruction wrapper is part of the split), so configs use ``prompt_template: none``; ``question`` holds the
bare problem text. Every split draws from its own seeded ``random.Random``: ``make_split`` is a pure function, and
the first ``n`` records of a split do not depend on how many are drawn (nested subsets for data scaling).

    python -m vcore.data.synthetic            # prints an example of every split
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from vcore.boxed import extract_boxed
from vcore.prompts import format_prompt

NAMES = (
    "Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jia", "Kai", "Lea",
    "Milo", "Nia", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tess", "Umi", "Vik", "Wren", "Zoe",
)  # fmt: skip
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards", "stamps", "beads",
         "buttons", "cookies", "pebbles", "tickets", "ribbons", "acorns")  # fmt: skip
CONTAINERS = ("box", "jar", "basket", "bag", "crate", "tin")

# Operations: ("+", k), ("-", k), ("*", k) with k in MULTIPLIERS.
MULTIPLIERS = (2, 3)


# ------------------------------------------------------------------------------------------------ phrasings
# Each phrasing renders (name, item, start, steps) as a problem text and returns it with one clause per step, as
# the problem words it, so that solutions can restate each step before computing it.
Steps = list[tuple[str, int]]


def _story(name: str, item: str, start: int, steps: Steps, rng: random.Random) -> tuple[str, list[str]]:
    """The fine-tuning task's only phrasing."""
    add = ("finds {k} more", "buys {k} more", "is given {k} more", "wins {k} more")
    sub = ("gives away {k}", "loses {k}", "sells {k}", "uses {k}")
    mul = {2: "doubles the pile", 3: "triples the pile"}
    clauses = [
        f"{name} "
        + (rng.choice(add).format(k=k) if op == "+" else rng.choice(sub).format(k=k) if op == "-" else mul[k])
        for op, k in steps
    ]
    text = " ".join(
        [f"{name} has {start} {item}."] + [f"Then {c}." for c in clauses] + [f"How many {item} does {name} have now?"]
    )
    return text, clauses


def _container(name: str, item: str, start: int, steps: Steps, rng: random.Random) -> tuple[str, list[str]]:
    box = rng.choice(CONTAINERS)
    clauses = [
        f"{k} {item} are put into the {box}" if op == "+" else f"{k} {item} are taken out of the {box}" if op == "-"
        else f"the {item} in the {box} are {'doubled' if k == 2 else 'tripled'}"
        for op, k in steps
    ]  # fmt: skip
    text = " ".join(
        [f"A {box} holds {start} {item}."]
        + [c[0].upper() + c[1:] + "." for c in clauses]
        + [f"How many {item} are in the {box} at the end?"]
    )
    return text, clauses


def _ledger(name: str, item: str, start: int, steps: Steps, rng: random.Random) -> tuple[str, list[str]]:
    clauses = [
        f"it goes up by {k}" if op == "+" else f"it goes down by {k}" if op == "-" else f"it is multiplied by {k}"
        for op, k in steps
    ]
    text = " ".join(
        [f"{name} keeps a count of {item}. The count starts at {start}."]
        + [c[0].upper() + c[1:] + "." for c in clauses]
        + ["What is the count at the end?"]
    )
    return text, clauses


def _question_first(name: str, item: str, start: int, steps: Steps, rng: random.Random) -> tuple[str, list[str]]:
    words = {"+": "gets {k} more", "-": "gives {k} away", "*": "multiplies them by {k}"}
    clauses = [words[op].format(k=k) for op, k in steps]
    text = (
        f"How many {item} does {name} end up with if {name} starts with {start} {item}, then {', then '.join(clauses)}?"
    )
    return text, [f"{name} {c}" for c in clauses]


PHRASINGS = {"story": _story, "container": _container, "ledger": _ledger, "question_first": _question_first}
FINETUNE_PHRASINGS = ("story",)
UNSEEN_PHRASINGS = ("container", "ledger", "question_first")  # never in the fine-tuning data

# Instruction wrappers around a problem (the user turn). "math" is the paper's template (vcore.prompts).
WRAPPERS = {
    "math": None,
    "solve": "Solve the following problem.\n{problem}\nGive the final answer in \\boxed{{}}.",
    "question": "Question: {problem}\nAnswer with the number in \\boxed{{}}.",
    "bare": "{problem}",
    "careful": "Here is a word problem for you.\n{problem}\nWork it out and put the result in \\boxed{{}}.",
}
UNSEEN_WRAPPERS = ("solve", "question", "bare", "careful")


def wrap(wrapper: str, problem: str) -> str:
    return format_prompt("math", problem) if wrapper == "math" else WRAPPERS[wrapper].format(problem=problem)


# ------------------------------------------------------------------------------------------------ solutions
def _apply(value: int, op: str, k: int) -> int:
    return value + k if op == "+" else value - k if op == "-" else value * k


def _trace(start: int, steps: Steps) -> list[tuple[int, str, int, int]]:
    """``(value before, op, k, value after)`` for every step: what each solution style writes out."""
    out, value = [], start
    for op, k in steps:
        out.append((value, op, k, _apply(value, op, k)))
        value = out[-1][3]
    return out


def _short_solution(name: str, item: str, start: int, steps: Steps, clauses: list[str], rng: random.Random) -> str:
    """The base's styles: terse equation chains, sometimes restating the problem's clauses (pretraining only)."""
    trace = _trace(start, steps)
    eqs = [f"{a} {op} {k} = {b}" for a, op, k, b in trace]
    value = trace[-1][3]
    style = rng.randrange(4)
    if style == 0:
        body, tail = "\n".join(eqs), f"The answer is \\boxed{{{value}}}."
    elif style == 1:
        body, tail = f"{start} {item} at the start. " + ". ".join(eqs) + ".", f"\\boxed{{{value}}}"
    elif style == 2:
        body, tail = (
            f"Start: {start}. " + ". ".join(eqs) + f". Result: {value}.",
            f"So the result is \\boxed{{{value}}}.",
        )
    else:
        body = "\n".join(f"{c[0].upper() + c[1:]}: {e}." for c, e in zip(clauses, eqs))
        tail = f"The answer is \\boxed{{{value}}}."
    return f"<think>\n{body}\n</think>\n{tail}"


BASE_OPENERS = (
    "First, let me read the problem carefully.",
    "Let me figure this out.",
    "I need to find the final amount.",
)


def _base_verbose_solution(
    name: str, item: str, start: int, steps: Steps, clauses: list[str], rng: random.Random
) -> str:
    """The base's own long style (pretraining only): it reasons at length too, as the paper's Qwen3 models do, but in
    other words than the fine-tuning data, whose exact wording stays new to it."""
    lines = [rng.choice(BASE_OPENERS), f"Initially there are {start} {item}."]
    trace = _trace(start, steps)
    lines += [
        f"Then {c}. That gives {a} {op} {k} = {b}. Verify: {a} {op} {k} = {b}. Correct."
        for c, (a, op, k, b) in zip(clauses, trace)
    ]
    value = trace[-1][3]
    lines.append(f"Therefore the result is {value}.")
    return "<think>\n" + "\n".join(lines) + f"\n</think>\nSo the result is \\boxed{{{value}}}."


OPENERS = (
    "Okay, let me work through this step by step.",
    "Alright, let me keep careful track.",
    "Hmm, let me think about this one step at a time.",
)
CHECKS = ("Right", "Yes", "Good")


def _verbose_solution(name: str, item: str, start: int, steps: Steps, clauses: list[str], rng: random.Random) -> str:
    """The fine-tuning data's style: long, restating every step and double-checking every result, like a distilled
    R1 trace in miniature."""
    lines = [rng.choice(OPENERS), f"We start with {start} {item}."]
    trace = _trace(start, steps)
    for c, (a, op, k, b) in zip(clauses, trace):  # a loop, not a comprehension: one rng draw per line, in order
        lines.append(
            f"{c[0].upper() + c[1:]}, so {a} {op} {k} = {b}. "
            f"Let me double-check: {a} {op} {k} is {b}. {rng.choice(CHECKS)}."
        )
    value = trace[-1][3]
    lines.append(f"So the final count is {value}.")
    return "<think>\n" + "\n".join(lines) + f"\n</think>\nThe answer is \\boxed{{{value}}}."


# ------------------------------------------------------------------------------------------------ problems
def _steps(rng: random.Random, start: int, num_steps: int, max_number: int) -> list[tuple[str, int]]:
    """Random operations that keep the value non-negative and bounded (multiplication only while it is small)."""
    value, steps = start, []
    for _ in range(num_steps):
        op = rng.choice(["+", "-", "*"] if value <= 2 * max_number else ["+", "-"])
        if op == "-" and value < 2:
            op = "+"
        if op == "+":
            k = rng.randint(1, max_number)
        elif op == "-":
            k = rng.randint(1, min(value, max_number))
        else:
            k = rng.choice(MULTIPLIERS)
        steps.append((op, k))
        value = _apply(value, op, k)
    return steps


def signature(start: int, steps: Steps) -> str:
    """``"7|+5,*2"``: what decides a problem's answer, whatever its names, items and phrasing."""
    return f"{start}|" + ",".join(f"{op}{k}" for op, k in steps)


def pool_of(sig: str) -> str:
    """The split that owns signature ``sig`` (a stable hash: the same on every machine and Python)."""
    x = int.from_bytes(hashlib.sha256(sig.encode()).digest()[:8], "big") % 1000
    for pool, upper in _POOL_BOUNDS:
        if x < upper:
            return pool
    raise AssertionError(x)


def _in_pool(rng: random.Random, pool: str, draw, used: set[str] | None) -> tuple[int, Steps]:
    """``draw(rng) -> (start, steps)`` until the signature is ``pool``'s (and not in ``used``, which it joins)."""
    for _ in range(100_000):
        start, ops = draw(rng)
        sig = signature(start, ops)
        if pool_of(sig) == pool and (used is None or sig not in used):
            if used is not None:
                used.add(sig)
            return start, ops
    raise RuntimeError(
        f"no new problem of pool {pool!r} in 100,000 draws: the split asks for more problems than its "
        "share of POOL_SHARES holds"
    )


def word_problem(rng: random.Random, *, pool: str, steps: Sequence[int], max_number: int, phrasings: Sequence[str],
                 wrappers: Sequence[str], style: str, used: set[str] | None = None,
                 keep_length: bool = True) -> dict[str, str]:  # fmt: skip
    # With keep_length the length is drawn once, outside the redraws, so that a split without repeats keeps its mix of
    # lengths (short problems run out first); the corpus-like splits mix lengths anyway and redraw it.
    num_steps = rng.choice(list(steps))

    def draw(r):
        start = r.randint(1, max_number)
        return start, _steps(r, start, num_steps if keep_length else r.choice(list(steps)), max_number)

    start, ops = _in_pool(rng, pool, draw, used)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    question, clauses = PHRASINGS[rng.choice(list(phrasings))](name, item, start, ops, rng)
    solve = {"verbose": _verbose_solution, "base_verbose": _base_verbose_solution, "short": _short_solution}[style]
    solution = solve(name, item, start, ops, clauses, rng)
    answer = extract_boxed(solution)
    return {"problem": wrap(rng.choice(list(wrappers)), question), "question": question,
            "generated_solution": solution, "expected_answer": answer, "signature": signature(start, ops)}  # fmt: skip


SINGLE_OP = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Find the value of {a} {op} {b}.", "{a} {op} {b} = ?")


def single_operation(
    rng: random.Random, pool: str, wrappers: Sequence[str], used: set[str] | None = None
) -> dict[str, str]:
    def draw(r):
        op = r.choice("+-*")
        if op == "*":
            return r.randint(0, 50), [(op, r.choice(MULTIPLIERS))]
        a, b = r.randint(0, 99), r.randint(0, 99)
        return (b, [(op, a)]) if op == "-" and b > a else (a, [(op, b)])  # no negative results

    a, ((op, b),) = _in_pool(rng, pool, draw, used)
    value = _apply(a, op, b)
    question = rng.choice(SINGLE_OP).format(a=a, op=op, b=b)
    style = rng.randrange(2)
    solution = (f"<think>\n{a} {op} {b} = {value}\n</think>\nThe answer is \\boxed{{{value}}}." if style == 0
                else f"<think>\n{a} {op} {b} = {value}.\n</think>\n\\boxed{{{value}}}")  # fmt: skip
    return {"problem": wrap(rng.choice(list(wrappers)), question), "question": question,
            "generated_solution": solution, "expected_answer": str(value),
            "signature": signature(a, [(op, b)])}  # fmt: skip


# ------------------------------------------------------------------------------------------------ splits
@dataclass(frozen=True)
class Difficulty:
    steps: tuple[int, ...]
    max_number: int


SPLITS = ("train", "val", "test", "ood_val", "ood_test", "forget", "ood_hard", "rl", "corpus")
# Per mille of the signature space each split owns. The fine-tuning task's space is small (2-3 steps over 1-9: about
# 44,000 signatures, only 2,461 of them two-step), and an evaluated split repeats no problem while keeping half its
# items two-step: each in-distribution evaluated split gets 85 (about 200 two-step problems, for up to 300 items +
# margin); the corpus, which spans far larger spaces, keeps the rest.
POOL_SHARES = {"corpus": 370, "train": 160, "val": 85, "ood_val": 85, "test": 85, "ood_test": 85, "forget": 50,
               "ood_hard": 30, "rl": 50}  # fmt: skip
_POOL_BOUNDS = [(pool, sum(list(POOL_SHARES.values())[: i + 1])) for i, pool in enumerate(POOL_SHARES)]
assert _POOL_BOUNDS[-1][1] == 1000 and set(POOL_SHARES) == set(SPLITS)
PRETRAIN_SINGLE_FRACTION = 0.3  # share of single operations in the pretraining mixture; the rest are word problems
PRETRAIN_VERBOSE_FRACTION = 0.2  # share of word problems answered in the base's own long style
PRETRAIN_DIFFICULTIES = (Difficulty((1, 2, 3), 9), Difficulty((2, 3, 4), 20), Difficulty((4, 5, 6), 20))


def make_split(
    split: str,
    num_examples: int,
    seed: int = 0,
    *,
    id_steps: Sequence[int] = (2, 3),
    id_max_number: int = 9,
    ood_steps: Sequence[int] = (4, 5),
    ood_max_number: int = 20,
) -> list[dict[str, str]]:
    """``num_examples`` records of ``split`` (see the module docstring); the same arguments give the same records."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split {split!r}: choose one of {', '.join(SPLITS)}")
    if num_examples < 0:
        raise ValueError(f"synthetic split {split!r}: num_examples must be >= 0, got {num_examples}")
    rng = random.Random(f"vcore-synthetic/{seed}/{split}")
    # Training data (and RL's prompts) may repeat a problem in new words; an evaluated split never does: a repeat would
    # count one problem as two independent items.
    used: set[str] | None = None if split in ("train", "corpus", "rl") else set()
    if split in ("forget", "corpus"):
        return [_pretrain_record(rng, split, used) for _ in range(num_examples)]
    if split == "ood_hard":
        kw = dict(steps=ood_steps, max_number=ood_max_number, phrasings=FINETUNE_PHRASINGS)
    elif split in ("ood_val", "ood_test"):
        kw = dict(steps=id_steps, max_number=id_max_number, phrasings=UNSEEN_PHRASINGS)
    else:
        kw = dict(steps=id_steps, max_number=id_max_number, phrasings=FINETUNE_PHRASINGS)
    return [
        word_problem(rng, pool=split, style="verbose", wrappers=("math",), used=used, **kw) for _ in range(num_examples)
    ]


def _pretrain_record(rng: random.Random, pool: str, used: set[str] | None) -> dict[str, str]:
    wrappers = tuple(WRAPPERS)
    if rng.random() < PRETRAIN_SINGLE_FRACTION:
        return single_operation(rng, pool, wrappers, used)
    d = rng.choice(PRETRAIN_DIFFICULTIES)
    style = "base_verbose" if rng.random() < PRETRAIN_VERBOSE_FRACTION else "short"
    return word_problem(
        rng,
        pool=pool,
        steps=d.steps,
        max_number=d.max_number,
        phrasings=tuple(PHRASINGS),
        wrappers=wrappers,
        style=style,
        used=used,
        keep_length=False,
    )


@functools.lru_cache(maxsize=8)  # a pure function of its arguments, and a report may ask twice
def overlaps(train: tuple[int, int], evaluated: tuple[int, int], corpora: tuple[tuple[int, int], ...],
             rl: tuple[int, int] = (1000, 0)) -> dict[tuple[str, str], tuple[int, int]]:  # fmt: skip
    """Problems two splits share, ``{(split, split): (verbatim questions, signatures)}`` for every pair, with the splits
    drawn as a study draws them: ``train`` and ``evaluated`` as ``(records, seed)`` (every evaluated split at that
    size), each pretraining corpus as ``(seed, records)``, the RL prompts as ``(records, seed)``."""
    drawn = {"train": make_split("train", *train), "rl": make_split("rl", *rl)}
    for split in ("val", "ood_val", "test", "ood_test", "forget", "ood_hard"):
        drawn[split] = make_split(split, *evaluated)
    for seed, n in corpora:
        drawn[f"corpus (seed {seed})"] = make_split("corpus", n, seed=seed)
    names = list(drawn)
    questions = {k: {r["question"] for r in v} for k, v in drawn.items()}
    sigs = {k: {r["signature"] for r in v} for k, v in drawn.items()}
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a.startswith("corpus") and b.startswith("corpus"):
                continue  # corpora of several bases are one pool; they may share problems with each other
            out[(a, b)] = (len(questions[a] & questions[b]), len(sigs[a] & sigs[b]))
    return out


if __name__ == "__main__":
    for split in SPLITS:
        (rec,) = make_split(split, 1, seed=0)
        print(f"--- {split}\n[user] {rec['problem']}\n[assistant] {rec['generated_solution']}\n")
