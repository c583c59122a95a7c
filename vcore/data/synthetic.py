"""A seeded synthetic task: multi-step arithmetic word problems with step-by-step reasoning.

Records follow the nvidia/OpenMathReasoning schema (``problem``, ``generated_solution``, ``expected_answer``), so
the synthetic task runs through the same loading, templating and grading code as the real data. The response
reasons inside ``<think>...</think>`` and ends with ``\\boxed{answer}``.

Splits: ``train`` and ``test`` are in-distribution (few steps, small numbers); ``ood`` has more steps and larger
numbers. Every split draws from its own seeded ``random.Random``, so ``make_split`` is a pure function.

    python -m vcore.data.synthetic   # prints three examples
"""

from __future__ import annotations

import random
from collections.abc import Sequence

NAMES = ("Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jia", "Kai", "Lea", "Milo", "Nia", "Omar", "Pia")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards", "stamps", "beads")
# (phrase, operation): {k} is the operand.
ADD = ("finds {k} more", "buys {k} more", "is given {k} more", "wins {k} more")
SUB = ("gives away {k}", "loses {k}", "sells {k}", "uses {k}")
MUL = {2: "doubles the pile", 3: "triples the pile"}

SPLIT_OFFSETS = {"train": 0, "test": 1, "ood": 2}


def make_problem(rng: random.Random, steps: int, max_number: int) -> dict[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, max_number)
    sentences = [f"{name} has {value} {item}."]
    thoughts = [f"{name} starts with {value} {item}."]
    for _ in range(steps):
        op = rng.choice(["+", "-", "*"] if value <= 2 * max_number else ["+", "-"])
        if op == "-" and value < 2:
            op = "+"
        if op == "+":
            k = rng.randint(1, max_number)
            phrase, new = rng.choice(ADD).format(k=k), value + k
        elif op == "-":
            k = rng.randint(1, min(value, max_number))
            phrase, new = rng.choice(SUB).format(k=k), value - k
        else:
            k = rng.choice(sorted(MUL))
            phrase, new = MUL[k], value * k
        sentences.append(f"Then {name} {phrase}.")
        thoughts.append(f"{name} {phrase}: {value} {op} {k} = {new}.")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    solution = "<think>\n" + "\n".join(thoughts) + "\n</think>\n" + f"{name} has {value} {item}. The answer is \\boxed{{{value}}}."
    return {"problem": " ".join(sentences), "generated_solution": solution, "expected_answer": str(value)}


def make_split(
    split: str,
    num_examples: int,
    seed: int = 0,
    *,
    id_steps: Sequence[int] = (2, 3),
    id_max_number: int = 9,
    ood_steps: Sequence[int] = (4, 5),
    ood_max_number: int = 30,
) -> list[dict[str, str]]:
    """``num_examples`` records of ``split`` (train | test | ood); the same arguments give the same records."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"synthetic split {split!r}: choose one of {', '.join(SPLIT_OFFSETS)}")
    rng = random.Random(f"vcore-synthetic/{seed}/{split}")
    steps, max_number = (ood_steps, ood_max_number) if split == "ood" else (id_steps, id_max_number)
    return [make_problem(rng, rng.choice(list(steps)), max_number) for _ in range(num_examples)]


if __name__ == "__main__":
    for split in ("train", "ood"):
        for rec in make_split(split, 2, seed=0):
            print(f"--- {split}\n{rec['problem']}\n{rec['generated_solution']}\n")
