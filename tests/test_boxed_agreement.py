"""Curation, the training answer mask and grading read the same final answer from the same text.

One corpus of awkward outputs, each with the answer every reader must find (None: no answer). Grading is the
reference (``vcore.boxed.extract_boxed`` under the benchmarks' default scope, also behind multiple-choice
grading); curation is checked through its own verdict function, the answer mask through the offsets encoding uses.
"""

import dataclasses

import pytest

from vcore.boxed import SCOPES, extract_boxed, final_answer_box
from vcore.data.curation import answer_verdict, final_answer
from vcore.data.encode import encode_example
from vcore.eval.choice import grade_choice
from vcore.eval.config import AnswerScope, BenchmarkConfig
from vcore.prompts import format_prompt

# (output or response, the final answer every reader must extract)
CORPUS = [
    pytest.param(r"<think>x</think> so \boxed{\frac{1}{2}}.", r"\frac{1}{2}", id="nested-braces"),
    pytest.param(r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}", id="escaped-braces"),
    pytest.param(r"\boxed{\{}", r"\{", id="unbalanced-escaped-brace"),
    pytest.param(r"\boxed{a\\}", r"a\\", id="escaped-backslash-before-close"),
    pytest.param(r"the answer: \fbox{7}", "7", id="fbox"),
    pytest.param(r"\boxed {  x^{2}  }", "x^{2}", id="space-before-brace"),
    pytest.param(r"first \boxed{3} then \boxed{4}", "4", id="several-boxes"),
    pytest.param(r"\boxed{1}, \boxed{{2}}, \fbox{3}", "3", id="mixed-boxes"),
    pytest.param(r"\boxed{5} and a cut-off \boxed{\frac{1}{", "5", id="last-box-unclosed"),
    pytest.param(r"\boxed{ 3 \boxed{6}", "6", id="complete-box-inside-unclosed"),
    pytest.param(r"\boxed{2", None, id="only-box-unclosed"),
    pytest.param(r"<think>so far \boxed{1} and then", None, id="box-in-unclosed-think"),
    pytest.param(r"<think>maybe \boxed{1}</think> final \boxed{2}", "2", id="text-after-think"),
    pytest.param(r"<think>\boxed{4}</think> the answer is four", None, id="box-only-in-think"),
    pytest.param(r"reasoning</think> so \boxed{8}", "8", id="close-without-open"),
    pytest.param(r"<think>a</think> \boxed{1} </think> \boxed{2}", "2", id="after-the-last-close"),
    pytest.param(r"<think>hm</think> \boxed{}", "", id="empty-box"),
    pytest.param(r"no thinking \boxed{9}", "9", id="no-think-tags"),
    pytest.param(r"I pick \boxed{\text{(C)}}", r"\text{(C)}", id="choice-letter"),
    pytest.param("no box at all", None, id="no-box"),
]


def grading(text: str) -> str | None:
    """What the harness extracts: the benchmarks' default answer scope."""
    default = {f.name: f.default for f in dataclasses.fields(BenchmarkConfig)}["answer_scope"]
    return extract_boxed(text, default)


@pytest.mark.parametrize("text, want", CORPUS)
def test_grading_extracts_the_expected_answer(text, want):
    assert grading(text) == want
    assert grade_choice(text, "C", 4)[2] == want  # multiple choice reads the same box


@pytest.mark.parametrize("text, want", CORPUS)
def test_curation_agrees_with_grading(text, want):
    assert final_answer(text) == grading(text) == want
    if want is None:
        assert answer_verdict(("1", text, 5)) == "no_boxed_answer"
    elif want:
        assert answer_verdict((want, text, 5)) == "ok"
    else:  # an empty box is there but holds nothing: not an answer for either side
        assert answer_verdict(("1", text, 5)) == "answer_mismatch"


@pytest.mark.parametrize("text, want", CORPUS)
def test_answer_mask_offsets_agree_with_grading(text, want):
    # Encoding searches after the rendered prompt, which itself mentions \boxed{}: it must not count.
    prompt = format_prompt("math", "What is 3 + 4?")
    assert r"\boxed{}" in prompt
    full = prompt + text
    box = final_answer_box(full, start=len(prompt))
    got = None if box is None else full[box.content_start : box.content_end].strip()
    assert got == grading(text) == want
    if box is not None:
        assert full[box.start : box.end].startswith(("\\boxed", "\\fbox")) and full[box.end - 1] == "}"


def test_answer_mask_marks_the_final_box_not_one_in_thinking(tiny_tokenizer):
    response = "<think>\nTry \\boxed{5}.\n</think>\nThe answer is \\boxed{7}."
    enc = encode_example(tiny_tokenizer, "What is 3 + 4?", response, max_length=512)
    masked = tiny_tokenizer.decode([t for t, a in zip(enc.input_ids, enc.answer_mask) if a])
    assert "7" in masked and "5" not in masked


def test_scopes_are_the_answer_scope_options():
    assert set(SCOPES) == {s.value for s in AnswerScope}
    assert {f.name: f.default for f in dataclasses.fields(BenchmarkConfig)}["answer_scope"] == AnswerScope.after_think
    with pytest.raises(ValueError, match="answer scope 'last'"):
        extract_boxed(r"\boxed{1}", "last")
