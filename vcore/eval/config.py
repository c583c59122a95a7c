"""Typed schemas of the evaluation harness, registered in Hydra's ConfigStore.

``conf/benchmark/<name>.yaml`` starts from ``base_benchmark`` and ``conf/decoding/<name>.yaml`` from
``base_decoding``, so a misspelt key or a wrong type fails when Hydra composes the config, naming the key.
Each benchmark file sets its own package (``# @package benchmark.<name>``), so several can be selected at once::

    defaults:
      - benchmark: [aime, olympiad, rbench, sgpqa_1k]   # or a preset: benchmark: table1_math
      - decoding: paper

and ``cfg.benchmark`` maps names to BenchmarkConfig nodes (turn them into dataclasses with
:func:`benchmarks_from_cfg`). Cross-field checks run in ``__post_init__`` when the dataclasses are built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vcore.checks import ConfigError
from vcore.checks import check as _check


class SourceKind(str, Enum):
    hub = "hub"  # the benchmark's published copy (the entries of ``hub``)
    local = "local"  # a local copy (the entries of ``local``, paths relative to ``data_root``)
    synthetic = "synthetic"  # records returned by a Python function (``synthetic.function``)


class GraderKind(str, Enum):
    math = "math"  # last \boxed{} + math-verify equivalence
    multiple_choice = "multiple_choice"  # last \boxed{} must be one option letter
    code_lcb = "code_lcb"  # LiveCodeBench semantics (stdin + functional tests, 6 s per test)
    code_ojbench = "code_ojbench"  # OJBench semantics (DMOJ test folders, AC/WA/TLE/RE/CE)


class AnswerScope(str, Enum):
    after_think = "after_think"  # text after the last </think>; no </think> after a <think>: no answer
    full = "full"  # the whole output


class Domain(str, Enum):
    math = "math"
    code = "code"
    general = "general"  # out of domain for both training domains (R-Bench, SuperGPQA)


class Role(str, Enum):
    id = "id"  # in-domain for ``domain`` (paper Table 1 "ID avg")
    ood = "ood"  # out-of-domain (paper Table 1 "OOD avg")
    extra = "extra"  # reported, but not part of Table 1 (GSM8K, MATH500, synthetic)


# Gold-answer clean-ups, applied in the order listed (see vcore/eval/benchmarks.py for each).
ANSWER_TRANSFORMS = ("join_list", "gsm8k_final", "strip_thousands_commas", "strip_leading_zeros", "strip_degrees")


@dataclass
class FieldMap:
    """Which column holds what. Unused roles stay null."""

    question: str = "question"
    answer: Optional[str] = "answer"  # math: the gold answer; multiple choice: the gold letter
    id: Optional[str] = None  # null: the row index
    options: Optional[str] = None  # multiple choice: a column holding the list of options (SuperGPQA) ...
    option_columns: list[str] = field(default_factory=list)  # ... or one column per option (R-Bench: A..F)
    prompt: Optional[str] = None  # a ready-made prompt used verbatim (OJBench); needs prompt_domain "none"
    language: Optional[str] = None  # OJBench: the language the prompt asks for (cpp | python)
    group: Optional[str] = None  # OJBench: the test-data folder (NOI | ICPC)
    public_tests: Optional[str] = None  # LiveCodeBench: JSON list of {input, output, testtype}
    private_tests: Optional[str] = None  # LiveCodeBench: the same, plain or base64 -> zlib -> pickle -> JSON
    metadata: Optional[str] = None  # LiveCodeBench: JSON with func_name for functional tests
    starter_code: Optional[str] = None  # LiveCodeBench: LeetCode starter code
    stratum: Optional[str] = None  # column for stratified sampling (SuperGPQA: discipline)


@dataclass
class DataSource:
    """One ``datasets.load_dataset`` call: a hub id, or a packaged builder (json | parquet) plus ``data_files``."""

    path: str = MISSING
    name: Optional[str] = None  # hub config name, e.g. OE_TO_maths_en_COMP
    split: str = "train"
    data_files: list[str] = field(default_factory=list)  # local files (relative to data_root) or hf:// URLs
    revision: Optional[str] = None
    fields: FieldMap = field(default_factory=FieldMap)
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose column equals the value
    id_prefix: str = ""  # keeps ids unique when several sources make one benchmark (AIME 2024 + 2025)


@dataclass
class SyntheticSource:
    """Records from a Python function, e.g. ``vcore.data.synthetic.make_split(split, num_examples, seed)``."""

    function: str = "vcore.data.synthetic.make_split"  # module.attribute
    kwargs: dict[str, Any] = field(default_factory=dict)
    fields: FieldMap = field(default_factory=lambda: FieldMap(question="problem", answer="expected_answer"))
    id_prefix: str = ""


@dataclass
class SampleConfig:
    """A deterministic subset: proportional stratified sample, largest-remainder rounding (SGPQA-1k)."""

    size: Optional[int] = None  # null: every item
    seed: int = 42
    stratify: bool = True  # stratify by fields.stratum (must be set) or draw one simple random sample


@dataclass
class CodeConfig:
    """How model-written programs are built and run (vcore/eval/sandbox.py enforces the limits)."""

    language: str = "cpp"  # language asked for stdin problems: cpp | python (OJBench: the row's language)
    functional_language: str = "python"  # LeetCode-style problems: python (LiveCodeBench's own) | cpp
    time_limit_s: float = 6.0  # wall-clock per test (LiveCodeBench 6 s, OJBench 10 s)
    memory_mb: int = 1024  # the whole run's memory (cgroup, else a watchdog) and each process's address space
    compile_timeout_s: float = 30.0
    tests_root: Optional[str] = None  # OJBench: a checkout of He-Ren/OJBench_testdata (holds NOI/ and ICPC/)
    stop_at_first_failure: bool = True  # LiveCodeBench and DMOJ both stop at the first failing test

    def __post_init__(self) -> None:
        _check(
            self.language in ("cpp", "python"), "benchmark.<name>.code.language", f"{self.language!r} is not cpp|python"
        )
        _check(
            self.functional_language in ("cpp", "python"),
            "benchmark.<name>.code.functional_language",
            f"{self.functional_language!r} is not cpp|python",
        )
        _check(self.time_limit_s > 0, "benchmark.<name>.code.time_limit_s", "must be > 0")
        _check(self.memory_mb >= 64, "benchmark.<name>.code.memory_mb", "must be >= 64")


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    source: SourceKind = SourceKind.hub
    hub: list[DataSource] = field(default_factory=list)  # the paper's source(s); concatenated in order
    local: list[DataSource] = field(default_factory=list)  # offline copies of the same items
    synthetic: Optional[SyntheticSource] = None
    # The folder that relative ``data_files`` are read from (e.g. the one holding gsm8k/test.jsonl). Composed configs
    # default to $VCORE_DATA_ROOT (see register_configs); null and no variable: a local source is an error.
    data_root: Optional[str] = None
    grader: GraderKind = MISSING
    prompt_domain: str = "math"  # key of vcore.prompts.PROMPT_TEMPLATES, or "none" (fields.prompt as is)
    domain: Domain = Domain.math
    role: Role = Role.extra
    table1_column: Optional[str] = None  # AIME | Olympiad | LCB | OJBench | RBench | SGPQA-1k
    answer_transforms: list[str] = field(default_factory=list)  # subset of ANSWER_TRANSFORMS, applied in order
    answer_scope: AnswerScope = AnswerScope.after_think
    sample: SampleConfig = field(default_factory=SampleConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    expected_size: Optional[int] = None  # paper Table 6 size; a mismatch is reported (not fatal)
    limit: Optional[int] = None  # keep the first N items (smoke runs); recorded in the results

    def __post_init__(self) -> None:
        opt = f"benchmark.{self.name}"
        # Accept plain strings when the dataclass is built in Python rather than composed by Hydra.
        self.source, self.grader = SourceKind(self.source), GraderKind(self.grader)
        self.answer_scope, self.domain, self.role = AnswerScope(self.answer_scope), Domain(self.domain), Role(self.role)
        bad = [t for t in self.answer_transforms if t not in ANSWER_TRANSFORMS]
        _check(not bad, f"{opt}.answer_transforms", f"unknown {bad}; choose from {', '.join(ANSWER_TRANSFORMS)}")
        sources = {SourceKind.hub: self.hub, SourceKind.local: self.local}.get(self.source)
        if self.source == SourceKind.synthetic:
            _check(
                self.synthetic is not None,
                f"{opt}.synthetic",
                "source=synthetic needs a synthetic: {function: ...} block",
            )
        else:
            _check(bool(sources), f"{opt}.{self.source.value}", f"source={self.source.value} but the list is empty")
        relative = [f for src in self.active_sources() for f in src.data_files if is_relative_file(f)]
        if relative:  # fail at the start of a run, not when evaluation begins after training
            self.resolved_data_root(needed_for=relative[0])
        from vcore.prompts import PROMPT_TEMPLATES, RAW_DOMAIN

        _check(
            self.prompt_domain in PROMPT_TEMPLATES or self.prompt_domain == RAW_DOMAIN,
            f"{opt}.prompt_domain",
            f"{self.prompt_domain!r}; choose one of {', '.join(PROMPT_TEMPLATES)} or none",
        )
        if self.grader == GraderKind.multiple_choice:
            _check(
                self.prompt_domain == "multiple_choice",
                f"{opt}.prompt_domain",
                "a multiple_choice grader needs prompt_domain multiple_choice",
            )
        if self.grader == GraderKind.code_lcb:
            # LiveCodeBench picks code / code_python / code_functional_* from code.language and functional_language
            _check(
                self.prompt_domain == "code",
                f"{opt}.prompt_domain",
                "code_lcb takes prompt_domain code (the language options pick the template)",
            )
        if self.sample.size is not None:
            _check(self.sample.size > 0, f"{opt}.sample.size", "must be > 0 or null")
        if self.limit is not None:
            _check(self.limit > 0, f"{opt}.limit", "must be > 0 or null")
        if self.role != Role.extra:
            _check(
                self.table1_column is not None,
                f"{opt}.table1_column",
                f"role={self.role.value} needs a Table 1 column name",
            )

    def active_sources(self) -> list[DataSource]:
        return {SourceKind.hub: self.hub, SourceKind.local: self.local}.get(self.source, [])

    def resolved_data_root(self, needed_for: str = "") -> Path:
        return resolve_data_root(self.data_root, f"benchmark.{self.name}.data_root", needed_for)


DATA_ROOT_ENV = "VCORE_DATA_ROOT"  # the default of every benchmark.<name>.data_root


def is_relative_file(path: str) -> bool:
    """A data file read relative to the data root (not a URL such as hf://..., not an absolute path)."""
    return "://" not in path and not Path(path).is_absolute()


def resolve_data_root(
    data_root: Optional[str], option: str = "benchmark.<name>.data_root", needed_for: str = ""
) -> Path:
    """``data_root``, else ``$VCORE_DATA_ROOT``; neither set is an error naming both (there is no default folder)."""
    root = data_root or os.environ.get(DATA_ROOT_ENV)
    holding = f" (the folder holding {needed_for})" if needed_for else ""
    _check(
        bool(root),
        option,
        f"local benchmark files are read relative to a data root and none is set: pass {option}=/path/to/data "
        f"or export {DATA_ROOT_ENV}=/path/to/data{holding}, or use the published copy (source=hub)",
    )
    return Path(root).expanduser()


@dataclass
class DecodingConfig:
    """Generation settings. ``temperature == 0`` is greedy decoding."""

    name: str = MISSING
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1  # samples per problem; > 1 reports avg@n and pass@k
    max_new_tokens: int = 8192
    seed: int = 42
    enable_thinking: bool = True  # passed to chat templates that take it (Qwen3)
    batch_size: int = 512  # prompts per generate call (vLLM schedules inside it; HF pads to it)
    pass_k: list[int] = field(default_factory=lambda: [1])  # k values reported when n > 1 (k <= n)
    dtype: str = "auto"  # weights dtype when the model is loaded from a path: auto | bfloat16 | float16 | float32
    vllm: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments (tensor_parallel_size, ...)

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "decoding.temperature", "must be >= 0 (0 is greedy)")
        _check(0 < self.top_p <= 1, "decoding.top_p", "must be in (0, 1]")
        _check(self.top_k == -1 or self.top_k > 0, "decoding.top_k", "must be -1 (off) or > 0")
        _check(self.n >= 1, "decoding.n", "must be >= 1")
        _check(
            self.n == 1 or self.temperature > 0,
            "decoding.n",
            "n > 1 samples need temperature > 0 (greedy samples are identical)",
        )
        _check(self.max_new_tokens > 0, "decoding.max_new_tokens", "must be > 0")
        _check(self.batch_size >= 1, "decoding.batch_size", "must be >= 1")
        _check(all(0 < k for k in self.pass_k), "decoding.pass_k", "every k must be >= 1")
        _check(
            self.dtype in ("auto", "bfloat16", "float16", "float32"),
            "decoding.dtype",
            f"{self.dtype!r} is not auto|bfloat16|float16|float32",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GradingConfig:
    """Process-level grading options (not per benchmark)."""

    num_workers: int = field(default_factory=lambda: max(1, min(8, os.cpu_count() or 1)))
    math_timeout_s: float = 10.0  # hard wall-clock limit per item (math-verify's own alarms are 5 s)
    code_item_timeout_s: float = 1800.0  # hard limit per candidate program, all tests included
    sandbox_isolation: str = "auto"  # auto (strongest that works) | none (resource limits only; for debugging)
    table_rows: int = 200  # rows per benchmark sent to logger.log_table

    def __post_init__(self) -> None:
        _check(self.num_workers >= 0, "grading.num_workers", "must be >= 0 (0 grades in-process, without timeouts)")
        _check(self.sandbox_isolation in ("auto", "none"), "grading.sandbox_isolation", "is not auto|none")


def register_configs() -> None:
    """Register ``benchmark/base_benchmark`` and ``decoding/base_decoding`` (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="benchmark", name="base_benchmark", node=benchmark_schema())
    cs.store(group="decoding", name="base_decoding", node=DecodingConfig)


def benchmark_schema() -> DictConfig:
    """The schema node of a composed benchmark (also of the RL prompts, ``rl/data``)."""
    # Composed benchmarks default data_root to the environment variable, resolved with the rest of the config, so a
    # run's config.yaml records the folder it read.
    base = OmegaConf.structured(BenchmarkConfig)
    base.data_root = f"${{oc.env:{DATA_ROOT_ENV},null}}"
    return base


def benchmarks_from_cfg(node: DictConfig | dict | None) -> list[BenchmarkConfig]:
    """``cfg.benchmark`` (name -> node) as BenchmarkConfig objects, in config order."""
    if node is None:
        return []
    out = []
    for key, sub in node.items():
        obj = OmegaConf.to_object(sub) if isinstance(sub, DictConfig) else sub
        if not isinstance(obj, BenchmarkConfig):
            raise ConfigError(
                f"benchmark.{key}: not a benchmark config (does its YAML list base_benchmark in defaults?)"
            )
        out.append(obj)
    return out


def decoding_from_cfg(node: DictConfig | DecodingConfig) -> DecodingConfig:
    obj = OmegaConf.to_object(node) if isinstance(node, DictConfig) else node
    if not isinstance(obj, DecodingConfig):
        raise ConfigError("decoding: not a decoding config (does its YAML list base_decoding in defaults?)")
    return obj
