"""Boxed-answer extraction (brace matching, scopes) and multiple-choice letter normalisation."""

import pytest

from vcore.boxed import all_boxed, answer_region, extract_boxed, last_boxed
from vcore.eval.choice import grade_choice, normalize_letter


@pytest.mark.parametrize(
    "text, want",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),  # escaped braces do not count
        (r"first \boxed{3} then \boxed{4}", "4"),
        (r"\fbox{7}", "7"),
        (r"\boxed {  x^{2}  }", "x^{2}"),
        (r"no box at all", None),
        (r"\boxed{5} and a cut-off \boxed{\frac{1}{", "5"),
        (r"\boxed{ 3 \boxed{6}", "6"),  # the outer box never closes; the inner one is complete
        (r"\boxed{}", ""),
    ],
)
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def test_all_boxed_keeps_order():
    assert all_boxed(r"\boxed{1}, \boxed{{2}}, \fbox{3}") == ["1", "{2}", "3"]


def test_answer_region_scopes():
    out = r"<think>maybe \boxed{1}</think> final \boxed{2}"
    assert extract_boxed(out, "after_think") == "2"
    assert extract_boxed(out, "full") == "2"
    cut = r"<think>so far \boxed{1} and then"
    assert answer_region(cut, "after_think") is None and extract_boxed(cut, "after_think") is None
    assert extract_boxed(cut, "full") == "1"
    assert extract_boxed(r"no thinking \boxed{9}", "after_think") == "9"
    only_thought = r"<think>\boxed{4}</think> the answer is four"
    assert extract_boxed(only_thought, "after_think") is None and extract_boxed(only_thought, "full") == "4"


@pytest.mark.parametrize(
    "content, want",
    [
        ("B", "B"),
        ("b", "B"),
        (r"\text{C}", "C"),
        (r"\textbf{\text{(d)}}", "D"),
        ("(A)", "A"),
        ("[E]", "E"),
        ("F.", "F"),
        ("A:", "A"),
        (" ( b ) ", "B"),
        (r"\mathrm{B}", "B"),
        ("G", None),  # out of range for 6 options
        ("AB", None),
        ("B: mitosis", None),
        ("1", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_letter(content, want):
    assert normalize_letter(content, 6) == want


def test_grade_choice_uses_the_last_box_after_thinking():
    ok, letter, raw = grade_choice(r"<think>\boxed{A}</think> I pick \boxed{\text{(c)}}", "C", 4)
    assert ok and letter == "C" and raw == r"\text{(c)}"
    assert grade_choice(r"\boxed{J}", "J", 10)[0]
    assert not grade_choice(r"\boxed{J}", "J", 4)[0]
    assert not grade_choice("the answer is C", "C", 4)[0]
