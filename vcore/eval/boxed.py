"""Finding the answer region of a model output and the content of its last ``\\boxed{...}``.

Braces are matched by depth (escaped ``\\{`` and ``\\}`` do not count), never by a regex, so nested answers
such as ``\\boxed{\\frac{1}{2}}`` come out whole.
"""

from __future__ import annotations

import re

from vcore.eval.config import AnswerScope
from vcore.prompts import THINK_CLOSE, THINK_OPEN

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def answer_region(text: str, scope: AnswerScope | str = AnswerScope.after_think) -> str | None:
    """The part of ``text`` that may hold the final answer.

    ``after_think``: the text after the last ``</think>``; an output that opens ``<think>`` but never closes it
    (cut off by the length limit) has no answer; an output without any think tags (thinking disabled) is
    searched whole. ``full``: the whole text.
    """
    scope = AnswerScope(scope)
    if scope == AnswerScope.full:
        return text
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE) :]
    if THINK_OPEN in text:
        return None
    return text


def _match_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``start - 1``, or None when it never closes."""
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # \{ \} \\ are not structure
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def all_boxed(text: str) -> list[str]:
    """Contents of every complete top-level ``\\boxed{}`` / ``\\fbox{}``, in order."""
    out, pos = [], 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return out
        end = _match_brace(text, m.end())
        if end is None:  # unclosed (e.g. cut off): a complete box may still sit inside it
            pos = m.end()
            continue
        out.append(text[m.end() : end])
        pos = end + 1


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` (or ``\\fbox{}``), stripped; None if there is none."""
    boxes = all_boxed(text)
    return boxes[-1].strip() if boxes else None


def extract_boxed(text: str, scope: AnswerScope | str = AnswerScope.after_think) -> str | None:
    region = answer_region(text, scope)
    return None if region is None else last_boxed(region)
