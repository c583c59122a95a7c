"""Prompt templates shared by training-data formatting and evaluation (the paper reuses each training domain's
prompt at inference time).

Provenance: the exact strings of the VCORE paper (arXiv 2510.27462, App. B) and of coder-gx/VCORE could not be
found: the repository ships no evaluation code or data, and the stored copies of the paper did not include the
appendix text. So these are faithful wordings of what EVAL.md records, not verbatim copies:

- ``math``: the wording of ``question`` in ``shared/data/schema_samples/vcore_data_math.json`` (the
  LLaMA-Factory layout of XanderGong/VCORE-data; that sample was written for this project, so treat the exact
  words as unverified): reason step by step, answer in ``\\boxed{}``.
- ``code``: expert competitive programmer, C++17, stdin -> stdout, one final ```cpp block (the paper's code
  domain). ``code_python`` and the two ``code_functional_*`` variants exist because LiveCodeBench's official
  grader is Python-only and its LeetCode problems are graded by calling ``Solution().<func>``: see EVAL.md.
- ``multiple_choice``: options listed as ``(A): ...``, the letter in ``\\boxed{}``.

Templates are ``str.format`` strings with the fields ``{problem}`` (and ``{options}`` for multiple choice), so
the literal braces of ``\\boxed{}`` are written ``\\boxed{{}}``. Fill them with :func:`format_prompt`.

    python -m vcore.prompts   # prints every template filled with a toy problem
"""

from __future__ import annotations

import string

OPTION_LETTERS = string.ascii_uppercase

# The reasoning block's tags, as the chat templates of reasoning models (Qwen3, DeepSeek-R1) write them. Defined
# here, the lowest module that both data formatting and evaluation import, so the two read the same strings.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

PROMPT_TEMPLATES: dict[str, str] = {
    "math": (
        "You are a helpful and accurate assistant for solving the following math problem:\n"
        "{problem}\n"
        "Please reason step by step, and put the correct answer within \\boxed{{}} at last."
    ),
    "code": (
        "You are an expert competitive programmer. Solve the following problem in C++17. Your program must read "
        "its input from standard input and write its output to standard output.\n\n"
        "{problem}\n\n"
        "Think through the problem step by step, then give your final solution as one complete C++17 program in a "
        "single ```cpp code block."
    ),
    "code_python": (
        "You are an expert competitive programmer. Solve the following problem in Python 3. Your program must read "
        "its input from standard input and write its output to standard output.\n\n"
        "{problem}\n\n"
        "Think through the problem step by step, then give your final solution as one complete Python 3 program in "
        "a single ```python code block."
    ),
    # LeetCode-style (LiveCodeBench "functional") problems: the problem text ends with the starter code.
    "code_functional_python": (
        "You are an expert competitive programmer. Solve the following problem in Python 3 by completing the "
        "starter code.\n\n"
        "{problem}\n\n"
        "Think through the problem step by step, then give your final solution, the completed `class Solution`, "
        "in a single ```python code block."
    ),
    # Our own convention (not LiveCodeBench's): a C++ program gets each argument of the function as one JSON
    # value per line on stdin and prints the return value as JSON; see vcore/eval/code_grader.py.
    "code_functional_cpp": (
        "You are an expert competitive programmer. Solve the following problem in C++17.\n\n"
        "{problem}\n\n"
        "Write a complete program instead of the starter function: it reads the function's arguments from "
        "standard input, one JSON value per line in the order of the signature, and prints the return value as "
        "JSON (lists as [1,2], strings in double quotes, booleans as true/false) on one line of standard output. "
        "Think through the problem step by step, then give your final solution in a single ```cpp code block."
    ),
    "multiple_choice": (
        "You are a helpful and accurate assistant for answering the following multiple-choice question:\n"
        "{problem}\n\n"
        "{options}\n\n"
        "Please reason step by step, and put the letter of the correct option (for example \\boxed{{A}}) within "
        "\\boxed{{}} at last."
    ),
}

# "none": the problem field is already a complete prompt (OJBench ships its own).
RAW_DOMAIN = "none"


def format_options(options: list[str]) -> str:
    """``(A): first\\n(B): second ...``; at most 26 options."""
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"{len(options)} options: at most {len(OPTION_LETTERS)} can be lettered")
    return "\n".join(f"({OPTION_LETTERS[i]}): {opt}" for i, opt in enumerate(options))


def format_prompt(domain: str, problem: str, options: list[str] | None = None) -> str:
    """The user-turn text for ``problem`` in ``domain`` (a key of PROMPT_TEMPLATES, or "none" for as-is).

    ``options`` is required for ``multiple_choice`` and refused elsewhere, so a benchmark whose field mapping
    lost its options fails here instead of silently asking an open question.
    """
    if domain == RAW_DOMAIN:
        if options:
            raise ValueError("prompt domain 'none' uses the problem text as is and cannot list options")
        return problem
    if domain not in PROMPT_TEMPLATES:
        raise KeyError(f"unknown prompt domain {domain!r}: choose one of {', '.join(PROMPT_TEMPLATES)} or 'none'")
    if domain == "multiple_choice":
        if not options:
            raise ValueError("prompt domain 'multiple_choice' needs a non-empty options list")
        return PROMPT_TEMPLATES[domain].format(problem=problem, options=format_options(options))
    if options:
        raise ValueError(f"prompt domain {domain!r} takes no options; use 'multiple_choice'")
    return PROMPT_TEMPLATES[domain].format(problem=problem)


if __name__ == "__main__":
    for key in PROMPT_TEMPLATES:
        opts = ["4", "5"] if key == "multiple_choice" else None
        print(f"--- {key}\n{format_prompt(key, 'What is 2 + 2?', opts)}\n")
