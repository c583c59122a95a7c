"""The final answer of a model output or a training response: its answer region and its last ``\\boxed{...}``.

One parser for every reader, so that curation (which training records count as correct), the final-answer mask
of training examples and grading all see the same answer in the same text:

- :mod:`vcore.eval` grades the content of :func:`extract_boxed`;
- :mod:`vcore.data.curation` checks a response's :func:`extract_boxed` against its gold answer;
- :mod:`vcore.data.encode` masks the characters of :func:`final_answer_box` (it needs offsets, not content).

Rules: the answer region is the text after the last ``</think>``; an output that opens ``<think>`` but never closes
it has no answer region; an output without think tags is searched whole (scope ``after_think``; scope ``full``
searches everything). In the region, the answer is the last *complete* ``\\boxed{}`` or ``\\fbox{}``. Braces are
matched by depth, never by a regex, so nested answers such as ``\\boxed{\\frac{1}{2}}`` come out whole; escaped
``\\{`` and ``\\}`` do not count; a box that never closes (cut off) is skipped, and a complete box inside it
still counts.

Standard library only, at the top of the package: the data layer imports it without pulling in the evaluation
package (whose ``__init__`` registers Hydra configs and imports the harness).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from vcore.prompts import THINK_CLOSE, THINK_OPEN

# The values of vcore.eval.config.AnswerScope (a str enum, so its members compare equal to these strings).
SCOPES = ("after_think", "full")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


class Box(NamedTuple):
    """Character offsets of one complete box in the text it was found in: ``text[start:end]`` is the whole
    ``\\boxed{...}``, ``text[content_start:content_end]`` what is between its braces (unstripped)."""

    start: int
    end: int
    content_start: int
    content_end: int


def answer_start(text: str, scope: str = "after_think", start: int = 0) -> int | None:
    """Offset into ``text`` where the answer region of ``text[start:]`` begins (the region always runs to the end
    of the text), or None when there is no answer region."""
    if scope not in SCOPES:
        raise ValueError(f"answer scope {scope!r}: use one of {', '.join(SCOPES)}")
    if scope == "full":
        return start
    close = text.rfind(THINK_CLOSE, start)
    if close >= 0:
        return close + len(THINK_CLOSE)
    if text.find(THINK_OPEN, start) >= 0:
        return None  # thinking was cut off (length limit) before the model reached an answer
    return start


def answer_region(text: str, scope: str = "after_think") -> str | None:
    """The part of ``text`` that may hold the final answer (see the module docstring), or None."""
    start = answer_start(text, scope)
    return None if start is None else text[start:]


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


def boxes(text: str, start: int = 0) -> list[Box]:
    """Every complete top-level ``\\boxed{}`` / ``\\fbox{}`` of ``text[start:]``, in order (offsets into ``text``)."""
    out, pos = [], start
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            return out
        end = _match_brace(text, m.end())
        if end is None:  # unclosed (e.g. cut off): a complete box may still sit inside it
            pos = m.end()
            continue
        out.append(Box(m.start(), end + 1, m.end(), end))
        pos = end + 1


def all_boxed(text: str) -> list[str]:
    """Contents of every complete top-level ``\\boxed{}`` / ``\\fbox{}``, in order."""
    return [text[b.content_start : b.content_end] for b in boxes(text)]


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` (or ``\\fbox{}``), stripped; None if there is none."""
    found = boxes(text)
    return text[found[-1].content_start : found[-1].content_end].strip() if found else None


def final_answer_box(text: str, scope: str = "after_think", start: int = 0) -> Box | None:
    """The last complete box of the answer region of ``text[start:]`` (offsets into ``text``), or None.

    ``start`` skips a prefix that is not the model's (a rendered prompt, whose template may itself mention
    ``\\boxed{}``).
    """
    region = answer_start(text, scope, start)
    if region is None:
        return None
    found = boxes(text, region)
    return found[-1] if found else None


def extract_boxed(text: str, scope: str = "after_think") -> str | None:
    """The final answer: the stripped content of :func:`final_answer_box`; None when there is none."""
    box = final_answer_box(text, scope)
    return None if box is None else text[box.content_start : box.content_end].strip()
