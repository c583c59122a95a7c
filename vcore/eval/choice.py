"""Multiple-choice grading: the boxed content must reduce to one option letter in the valid range.

Reduction (EVAL.md): unwrap ``\\text{}``-like commands, drop brackets, colons, periods and spaces. Lower-case
letters are accepted and upper-cased (``\\boxed{b}`` means B); anything longer than one letter is no answer,
so ``\\boxed{B: mitosis}`` is wrong even when B is right: the prompt asks for the letter alone.
"""

from __future__ import annotations

import re

from vcore.boxed import extract_boxed
from vcore.eval.config import AnswerScope
from vcore.prompts import OPTION_LETTERS

_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|emph|textsf|texttt)\s*\{([^{}]*)\}")
_DROP = re.compile(r"[\s()\[\]{}:.]|\\[(),.;!: ]")


def normalize_letter(content: str | None, num_options: int) -> str | None:
    """The option letter that ``content`` names, or None when it does not name exactly one valid option."""
    if content is None:
        return None
    s = content
    for _ in range(3):  # nested wrappers: \textbf{\text{B}}
        s = _WRAPPERS.sub(r"\1", s)
    s = _DROP.sub("", s)
    if len(s) != 1 or not s.isalpha():
        return None
    letter = s.upper()
    return letter if letter in OPTION_LETTERS[:num_options] else None


def grade_choice(
    output: str, gold_letter: str, num_options: int, scope: AnswerScope | str = AnswerScope.after_think
) -> tuple[bool, str | None, str | None]:
    """``(correct, extracted letter, raw boxed content)`` for one model output."""
    raw = extract_boxed(output, scope)
    letter = normalize_letter(raw, num_options)
    return letter is not None and letter == gold_letter.strip().upper(), letter, raw
