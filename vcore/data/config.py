"""Dataset config schemas. Each source adds its own subclass and its ``base_<name>`` entry in DATASET_SCHEMAS;
``conf/dataset/<name>.yaml`` names that entry in its defaults list (see vcore/config.py for how schemas work).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from vcore.checks import check as _check


@dataclass
class DatasetConfig:
    """Common dataset options; each source adds its own fields in a subclass."""

    name: str = MISSING
    max_length: int = 2048  # prompt + response tokens; paper: 16384
    overlength: str = "drop"  # drop | truncate (truncate keeps the prompt and cuts the response)
    prompt_template: str = "math"  # key of vcore.prompts.PROMPT_TEMPLATES, or "none" (use the field as is)
    enable_thinking: bool = True  # passed to chat templates that understand it (Qwen3)
    on_bad_record: str = "error"  # error | skip (skips are counted and logged)
    eval_examples: int = 64  # held-out examples per eval split (NLL; accuracy where the task has answers)

    def __post_init__(self) -> None:
        _check(self.max_length > 0, "dataset.max_length", "must be positive")
        _check(self.overlength in ("drop", "truncate"), "dataset.overlength", f"{self.overlength!r} is not drop|truncate")
        _check(self.on_bad_record in ("error", "skip"), "dataset.on_bad_record", f"{self.on_bad_record!r} is not error|skip")


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    """Seeded multi-step arithmetic word problems in the OpenMathReasoning record schema."""

    name: str = "synthetic"
    num_examples: int = 512
    seed: int = 0
    # In-distribution: few steps, small numbers. Out-of-distribution: more steps, larger numbers.
    id_steps: list[int] = field(default_factory=lambda: [2, 3])
    id_max_number: int = 9
    ood_steps: list[int] = field(default_factory=lambda: [4, 5])
    ood_max_number: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.num_examples >= 0, "dataset.num_examples", "must be >= 0")


DATASET_SCHEMAS: dict[str, type] = {"base_synthetic": SyntheticDatasetConfig}
