"""Evaluation harness: the paper's benchmarks as configs, HF/vLLM generation, math / multiple-choice / code
graders with a sandbox for model-written programs, and results in the paper's Table 1 layout.

    from vcore.eval import evaluate, evaluate_checkpoint, register_configs, benchmarks_from_cfg, decoding_from_cfg

Killed or preempted (SIGTERM: exit status 75), an evaluation continues where it stopped when rerun into the same output
dir (:mod:`vcore.eval.journal`).

Protocol: ../shared/EVAL.md. Tests: ``HF_HUB_OFFLINE=1 python -m pytest tests/eval -q``.
"""

from vcore.eval.config import (
    BenchmarkConfig,
    DecodingConfig,
    GradingConfig,
    benchmarks_from_cfg,
    decoding_from_cfg,
    register_configs,
)
from vcore.eval.harness import HARNESS_VERSION, evaluate, evaluate_checkpoint

register_configs()  # importing the harness makes benchmark/base_benchmark and decoding/base_decoding available

__all__ = [
    "HARNESS_VERSION",
    "BenchmarkConfig",
    "DecodingConfig",
    "GradingConfig",
    "benchmarks_from_cfg",
    "decoding_from_cfg",
    "evaluate",
    "evaluate_checkpoint",
    "register_configs",
]
