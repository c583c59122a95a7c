"""Prompt templates: every template fills, keeps literal braces, and refuses mismatched options."""

import pytest

from vcore.prompts import PROMPT_TEMPLATES, format_prompt


@pytest.mark.parametrize("domain", sorted(PROMPT_TEMPLATES))
def test_every_template_formats_latex_problems(domain):
    problem = r"Find $x$ with $\frac{x}{2} = \{1\}$."
    options = ["3", "4"] if domain == "multiple_choice" else None
    text = format_prompt(domain, problem, options)
    assert problem in text and "{problem}" not in text and "{{" not in text


def test_math_and_choice_ask_for_boxed_answers():
    assert "\\boxed{}" in format_prompt("math", "1+1?")
    mc = format_prompt("multiple_choice", "Pick one.", ["red", "blue", "green"])
    assert "(A): red\n(B): blue\n(C): green" in mc and "\\boxed{}" in mc


def test_code_prompt_is_cpp17_stdin_stdout():
    text = format_prompt("code", "Add two numbers.")
    assert "C++17" in text and "standard input" in text and "```cpp" in text


def test_none_passes_the_problem_through_and_errors_name_the_domain():
    assert format_prompt("none", "verbatim prompt") == "verbatim prompt"
    with pytest.raises(KeyError, match="unknown prompt domain"):
        format_prompt("maths", "x")
    with pytest.raises(ValueError, match="options"):
        format_prompt("multiple_choice", "x")
    with pytest.raises(ValueError, match="multiple_choice"):
        format_prompt("math", "x", ["a"])
