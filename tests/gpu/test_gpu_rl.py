"""``task=rl`` on CUDA: a few GRPO steps of the tiny test model in bf16, rollouts from HF ``generate`` and, when vLLM is
importable, from vLLM colocated on the training GPU (the paper's setting), through the entry point run.py calls."""

from __future__ import annotations

import json

import pytest

from tests.helpers import needs_cuda
from tests.test_rl import TINY_RL, rl_cfg

pytestmark = needs_cuda()
pytest.importorskip("trl")


@pytest.mark.parametrize(
    "generation",
    [
        "hf",
        pytest.param(
            "vllm",
            marks=pytest.mark.skipif(
                __import__("importlib").util.find_spec("vllm") is None, reason="vllm is not installed"
            ),
        ),
    ],
)
def test_grpo_steps_on_cuda(generation, tiny_dir, tmp_path):
    from vcore.run.tasks import run_task

    assert "rl.max_steps=2" in TINY_RL
    out = tmp_path / "rl"
    metrics = run_task(
        rl_cfg(
            out,
            None,
            tiny_dir,
            "rl.precision=bf16",
            f"rl.generation={generation}",
            "rl.vllm_gpu_memory_utilization=0.2",
        )
    )
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "rl/reward_mean" in h] == [1, 2]
    assert metrics["rl"]["final/rl/completion_length"] > 0 and (out / "final" / "model.safetensors").is_file()
