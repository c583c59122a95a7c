"""The synthetic study's positive control (experiments/synthetic_study/reasoning_sft.py) and the style-share weight
statistic, against token classes read off the text and an independent weight computation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, TINY_TEST, subprocess_env
from vcore.data.token_classes import reasoning_token_mask


def test_reasoning_tokens_are_digits_signs_and_special_tokens(tiny_tokenizer):
    import re

    tok = tiny_tokenizer
    mask = reasoning_token_mask(tok)
    text = "<think>\nWe start with 12 apples.\nThen 12 + 3 = 15.\n</think>\nThe answer is \\boxed{15}.<|im_end|>"
    ids = tok(text, add_special_tokens=False).input_ids
    kept = "".join(tok.decode([i]) for i in ids if mask[i]).replace(" ", "")
    dropped = "".join(tok.decode([i]) for i in ids if not mask[i])
    assert kept == "".join(re.findall(r"<think>|</think>|<\|im_end\|>|[0-9+\-*=]", text))  # read off the text itself
    assert "apples" in dropped and "answer" in dropped and not re.search(r"[0-9+=]", dropped)
    assert all(mask[i] for i in tok.all_special_ids)


def test_kept_token_weights_are_n_over_k_per_example():
    sys.path.insert(0, str(REPO))
    from experiments.synthetic_study.reasoning_sft import kept_token_weights

    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    kept = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    w = kept_token_weights(kept, mask)
    expected = torch.tensor([[0, 2, 0, 2, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(w, expected)  # 4 supervised, 2 kept -> 2; none kept -> 0 (no NaN); all kept -> 1
    # style_weight 0.25: raw 1, 0.25, 1, 0.25 on row 0 (sum 2.5, n 4) -> 1.6, 0.4, 1.6, 0.4; row 1: 0.5 each -> 1.
    w = kept_token_weights(kept, mask, 0.25)
    expected = torch.tensor([[0, 1.6, 0.4, 1.6, 0.4, 0], [0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(w, expected)


def test_the_control_trains_through_run_py_and_its_weights_skip_the_style(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in TINY_TEST if not o.startswith("method.probe")] + [
        f"hydra.run.dir={run}",
        "eval.after_train=false",
        "method.style_weight=0",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            "--config-dir",
            str(REPO / "experiments/synthetic_study/conf"),
            "method=reasoning_sft",
            *overrides,
        ],
        cwd=REPO,
        env=subprocess_env(VCORE_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [s for s in map(json.loads, (run / "history.jsonl").read_text().splitlines()) if "train/nll" in s]
    assert len(steps) == 2
    for s in steps:
        assert s["weights/style_share"] == 0.0 and 0.3 < s["weights/style_token_frac"] < 0.9  # no weight on style
        assert s["weights/mean"] == pytest.approx(1.0, rel=1e-6)  # n/k per example keeps the mean at 1
