"""Fixtures of the evaluation-harness tests: offline environment, the shared data folder, composing configs."""

from __future__ import annotations

import os

import pytest

# Never touch the network: set before datasets / transformers are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.eval.eval_helpers import QWEN3_TOKENIZER  # noqa: E402


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    if not (QWEN3_TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"Qwen3 tokenizer not found at {QWEN3_TOKENIZER}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER))
