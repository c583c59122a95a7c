"""Dataset config schemas. Each source adds its own subclass and its ``base_<name>`` entry in DATASET_SCHEMAS;
``conf/dataset/<name>.yaml`` names that entry in its defaults list (see vcore/config.py for how schemas work).

Two families:
- ``synthetic``: the seeded arithmetic task (the default; no files, no network).
- real sources (``openmath``, ``opencode``, ``vcore_data``, ``jsonl``, ``parquet``): rows read from a hub id or a
  local file/dir through ``datasets.load_dataset``, normalised, filtered and cached once
  (:mod:`vcore.data.curation`), then a nested seeded subset is tokenized (:mod:`vcore.data.subsets`).
  They share :class:`SourceDatasetConfig` and differ only in their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from vcore.checks import check as _check

# How a response's <think> block is treated (vcore.data.think). The chat template may also insert an empty
# block for a response without one (Qwen3 does); that block is never supervised except under train_empty.
THINK_MODES = ("require", "optional", "train_empty")


@dataclass
class DatasetConfig:
    """Common dataset options; each source adds its own fields in a subclass."""

    name: str = MISSING
    max_length: int = 2048  # prompt + response tokens; paper: 16384
    overlength: str = "drop"  # drop | truncate (truncate keeps the prompt and cuts the response)
    prompt_template: str = "math"  # key of vcore.prompts.PROMPT_TEMPLATES, or "none" (use the field as is)
    enable_thinking: bool = True  # passed to chat templates that understand it (Qwen3)
    # require: every response has one non-empty <think>...</think> block (else a bad record);
    # optional: responses without one are fine, and an empty block the chat template inserts stays in the prompt;
    # train_empty: as optional, but that inserted empty block is supervised (teaches "no thinking").
    think: str = "require"
    end_of_turn: Optional[str] = None  # token closing the assistant turn (supervised); null: read off the template
    on_bad_record: str = "error"  # error | skip (skips are counted and logged)
    eval_examples: int = 64  # held-out examples per eval split (NLL; accuracy where the task has answers)

    def __post_init__(self) -> None:
        _check(self.max_length > 0, "dataset.max_length", "must be positive")
        _check(
            self.overlength in ("drop", "truncate"), "dataset.overlength", f"{self.overlength!r} is not drop|truncate"
        )
        _check(
            self.on_bad_record in ("error", "skip"),
            "dataset.on_bad_record",
            f"{self.on_bad_record!r} is not error|skip",
        )
        _check(self.think in THINK_MODES, "dataset.think", f"{self.think!r} is not {'|'.join(THINK_MODES)}")
        _check(self.eval_examples >= 0, "dataset.eval_examples", "must be >= 0")


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    """The seeded arithmetic miniature (:mod:`vcore.data.synthetic`) in the OpenMathReasoning record schema.

    ``train_split: train`` is the fine-tuning task (verbose traces); ``corpus`` is the base model's broad corpus.
    Held-out NLL is measured on ``eval_splits``; accuracy on the benchmark group (``benchmark=synthetic``).
    """

    name: str = "synthetic"
    train_split: str = "train"  # train (the fine-tuning task) | corpus (the tiny base's pretraining data)
    num_examples: int = 512
    seed: int = 0
    eval_splits: list[str] = field(default_factory=lambda: ["test", "ood_test", "forget"])
    prompt_template: str = "none"  # the records' problem field is already the whole user turn
    # In-distribution: few steps, small operands. ood_hard: more steps, larger operands.
    id_steps: list[int] = field(default_factory=lambda: [2, 3])
    id_max_number: int = 9
    ood_steps: list[int] = field(default_factory=lambda: [4, 5])
    ood_max_number: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        from vcore.data.synthetic import SPLITS

        _check(self.num_examples >= 0, "dataset.num_examples", "must be >= 0")
        _check(
            self.train_split in ("train", "corpus"), "dataset.train_split", f"{self.train_split!r} is not train|corpus"
        )
        held_out = [s for s in SPLITS if s not in ("train", "corpus", "rl")]
        bad = [s for s in self.eval_splits if s not in held_out]
        _check(not bad, "dataset.eval_splits", f"{bad} are not held-out splits; choose from {', '.join(held_out)}")
        _check(bool(self.id_steps) and min(self.id_steps) >= 1, "dataset.id_steps", "needs step counts >= 1")
        _check(bool(self.ood_steps) and min(self.ood_steps) >= 1, "dataset.ood_steps", "needs step counts >= 1")
        _check(
            self.id_max_number >= 1 and self.ood_max_number >= 1, "dataset.id_max_number", "operand bounds must be >= 1"
        )


@dataclass
class SourceDatasetConfig(DatasetConfig):
    """Rows from a hub dataset or local files, mapped to (prompt, response, answer) by field names."""

    # Where: a hub id (nvidia/OpenMathReasoning) or a local .jsonl/.json/.parquet file or directory of them.
    source: str = ""
    split: str = "train"  # hub split; for a local dir, files named after it (cot-0000.parquet, cot/...) are read
    revision: Optional[str] = None  # hub revision (pin it: the curation cache is keyed on it, not on content)
    hub_config: Optional[str] = None  # the hub dataset's config name, if it has several
    data_files: Optional[list[str]] = None  # restrict to these files/globs (hub: repo paths; local dir: relative)
    # What: field names in the source rows.
    prompt_field: str = "prompt"
    response_field: str = "response"
    answer_field: Optional[str] = None
    id_field: Optional[str] = None  # null: the row's position in the source (stable for a fixed source)
    prompt_placeholder: Optional[str] = None  # a prompt equal to this is an unfilled source, not data (OCR-2: "-")
    # Curation (runs once and is cached): keep rows whose str(row[field]) is one of the listed values; drop a
    # filter with ~dataset.filters.<field>.
    filters: dict[str, list[str]] = field(default_factory=dict)
    verify_answer: bool = False  # keep only traces whose final \boxed{} math-verify finds equal to the answer field
    verify_timeout_s: int = 5  # math-verify's per-call timeout (parse and verify each)
    num_proc: int = 1  # processes for the answer check (math-verify uses signal.alarm: processes, not threads)
    cache_dir: str = "~/.cache/vcore/curated"  # curated records live in <cache_dir>/<name>-<settings hash>/
    # Subset: the first num_examples usable records of a seeded permutation, so sizes are nested; null: all.
    num_examples: Optional[int] = None
    seed: int = 42  # seed of the subset permutation (4k ⊂ 8k ⊂ 16k ⊂ 32k for one seed)
    eval_examples: int = 0  # held-out curated records (the permutation's tail) for held-out NLL; 0: none

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.num_examples is None or self.num_examples >= 1, "dataset.num_examples", "must be >= 1 or null (all)"
        )
        _check(self.num_proc >= 1, "dataset.num_proc", "must be >= 1")
        _check(self.verify_timeout_s >= 1, "dataset.verify_timeout_s", "must be >= 1 second")
        _check(bool(self.prompt_field), "dataset.prompt_field", "must name the prompt field of the source rows")
        _check(bool(self.response_field), "dataset.response_field", "must name the response field of the source rows")
        _check(
            not self.verify_answer or bool(self.answer_field),
            "dataset.answer_field",
            "dataset.verify_answer=true compares each trace with an answer field: set dataset.answer_field",
        )
        for name, values in self.filters.items():
            _check(
                len(values) > 0,
                f"dataset.filters.{name}",
                f"an empty list keeps nothing; remove the filter with ~dataset.filters.{name}",
            )


@dataclass
class OpenMathDatasetConfig(SourceDatasetConfig):
    """nvidia/OpenMathReasoning, split cot, with the paper's curation (SPEC §5)."""

    name: str = "openmath"
    source: str = "nvidia/OpenMathReasoning"
    split: str = "cot"
    prompt_field: str = "problem"
    response_field: str = "generated_solution"
    answer_field: Optional[str] = "expected_answer"
    filters: dict[str, list[str]] = field(
        default_factory=lambda: {"problem_type": ["has_answer_extracted"], "generation_model": ["DeepSeek-R1"]}
    )
    verify_answer: bool = True
    prompt_template: str = "math"
    max_length: int = 16384


@dataclass
class OpenCodeDatasetConfig(SourceDatasetConfig):
    """nvidia/OpenCodeReasoning-2, split cpp, judgement == right (SPEC §5)."""

    name: str = "opencode"
    source: str = "nvidia/OpenCodeReasoning-2"
    split: str = "cpp"
    id_field: Optional[str] = "id"
    prompt_field: str = "question"
    response_field: str = "r1_generation"
    # The hub copy ships "-" for every question (licensing); its card has a script that fills them in from
    # TACO/APPS/CodeContests/open-r1 codeforces. Point dataset.source at the filled copy.
    prompt_placeholder: Optional[str] = "-"
    filters: dict[str, list[str]] = field(default_factory=lambda: {"judgement": ["right"]})
    prompt_template: str = "code"
    max_length: int = 16384


@dataclass
class VcoreDataDatasetConfig(SourceDatasetConfig):
    """XanderGong/VCORE-data: the authors' prepared set, prompts already templated (LLaMA-Factory layout)."""

    name: str = "vcore_data"
    source: str = "XanderGong/VCORE-data"
    prompt_field: str = "question"
    response_field: str = "cot"
    prompt_template: str = "none"
    max_length: int = 16384


@dataclass
class JsonlDatasetConfig(SourceDatasetConfig):
    """Any local .jsonl (or .json array) file or directory, with a field mapping."""

    name: str = "jsonl"
    prompt_template: str = "none"


@dataclass
class ParquetDatasetConfig(SourceDatasetConfig):
    """Any local .parquet file or directory, with a field mapping."""

    name: str = "parquet"
    prompt_template: str = "none"


DATASET_SCHEMAS: dict[str, type] = {
    "base_synthetic": SyntheticDatasetConfig,
    "base_openmath": OpenMathDatasetConfig,
    "base_opencode": OpenCodeDatasetConfig,
    "base_vcore_data": VcoreDataDatasetConfig,
    "base_jsonl": JsonlDatasetConfig,
    "base_parquet": ParquetDatasetConfig,
}
