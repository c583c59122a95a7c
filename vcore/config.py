"""Typed configuration schema, registered in Hydra's ConfigStore.

Every YAML option in ``conf/<group>/`` starts from one of the schemas below (its ``defaults`` list names
``base_<kind>``), so a misspelt key or a wrong type fails when Hydra composes the config, naming the key.
Cross-field checks (``epsilon > 0``...) run in ``__post_init__`` when :func:`to_object` builds the dataclasses,
before any model is loaded.

Conventions for the VCORE knobs (``tau``, ``probe.epsilon``) are documented in ``conf/method/vcore.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vcore.checks import ConfigError
from vcore.checks import check as _check
from vcore.data.config import DATASET_SCHEMAS, DatasetConfig, SyntheticDatasetConfig  # noqa: F401 (re-exported)
from vcore.eval.config import benchmark_schema
from vcore.eval.config import register_configs as register_eval_configs
from vcore.modeling import LoraConfig, ModelConfig, TinyModelConfig, TinyPretrainConfig  # noqa: F401 (re-exported)
from vcore.rl.config import RLConfig


# --------------------------------------------------------------------------------------------------- methods
class LossNormalization(str, Enum):
    token = "token"  # (1/N) sum_B sum_t w_t l_t, N = supervised tokens of the optimizer step
    sequence = "sequence"  # (1/|B|) sum_B (1/n) sum_t w_t l_t  (the paper's equations)


@dataclass
class MethodConfig:
    name: str = MISSING
    loss_normalization: LossNormalization = LossNormalization.token


@dataclass
class SFTConfig(MethodConfig):
    name: str = "sft"


@dataclass
class DFTConfig(MethodConfig):
    name: str = "dft"


@dataclass
class RandomConfig(MethodConfig):
    name: str = "random"
    keep_fraction: float = 0.2  # paper App. B.2
    always_keep_answer: bool = True  # tokens of the final \boxed{...} are always kept
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.keep_fraction <= 1.0, "method.keep_fraction", "must be in (0, 1]")


@dataclass
class IwSFTConfig(MethodConfig):
    name: str = "iw_sft"
    # Authors' code (emmyqin/iw_sft, bounding_trainers.py): w = clamp(exp(temp * mean_t log-ratio), 0, 16), temp 1.
    temperature: float = 1.0
    clip_min: float = 0.0
    clip_max: float = 16.0

    def __post_init__(self) -> None:
        _check(self.clip_max > self.clip_min >= 0.0, "method.clip_max", "need clip_max > clip_min >= 0")


class ProbeMode(str, Enum):
    auto = "auto"  # finite_difference for float32 weights, jvp for bf16/fp16 weights (see README, "Choosing the probe")
    finite_difference = "finite_difference"  # (l_t(θ) - l_t(θ - εg)) / ε, two exact-float32 forwards
    jvp = "jvp"  # exact directional derivative by forward-mode AD, one pass, any precision


class VarianceControl(str, Enum):
    paper = "paper"
    loss_ratio = "loss_ratio"
    none = "none"


@dataclass
class ProbeConfig:
    mode: ProbeMode = ProbeMode.auto
    epsilon: float = 1e-4  # finite-difference step along -g
    batch_size: int = 4  # examples per probe micro-batch
    accumulation: int = 2  # probe micro-batches per probe gradient
    clip_norm: Optional[float] = 1.0  # clip g to this norm before use (authors: max_grad_norm); null: no clipping
    every: int = 1  # recompute g every k optimizer steps, reuse it in between
    seed: int = 0  # seed of the probe batch generator
    # Finite differences under bf16/fp16 weights are rounding noise (SPEC §6); only set this to study that.
    allow_low_precision: bool = False
    attention_block: int = 256  # jvp: queries per block of the forward-mode attention (memory O(block · T))
    # jvp: vcore_blocked (linear memory) | eager (materialises T×T; reference) | fused (one Triton kernel on CUDA,
    # vcore_blocked where it does not apply, logged once; pip install -e ".[gpu]"; vcore/ops/fused_attention.py)
    jvp_attention: str = "vcore_blocked"
    fidelity_every: int = 0  # k > 0: every k steps also compute the other probe's scores and log their agreement


@dataclass
class VCOREConfig(MethodConfig):
    name: str = "vcore"
    tau: float = 0.5  # the paper's τ, multiplies s_t; see conf/method/vcore.yaml for the paper's values
    # Set: τ is chosen every step so that the weights' Kish effective sample size is this fraction of the step's
    # supervised tokens (method.tau is then unused; the chosen τ is logged as vcore/tau). null: τ fixed.
    target_ess: Optional[float] = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    variance_control: VarianceControl = VarianceControl.paper
    alpha_max: Optional[float] = 1.0  # cap on α; null: unbounded

    def __post_init__(self) -> None:
        _check(self.tau >= 0.0, "method.tau", f"must be >= 0 (got {self.tau}); 0 gives uniform weights")
        _check(
            self.target_ess is None or 0.0 < self.target_ess < 1.0,
            "method.target_ess",
            f"must be in (0, 1) or null (got {self.target_ess}); 1 would be uniform weights (tau=0)",
        )
        _check(self.probe.epsilon > 0.0, "method.probe.epsilon", f"must be > 0 (got {self.probe.epsilon})")
        _check(self.probe.batch_size >= 1, "method.probe.batch_size", "must be >= 1")
        _check(self.probe.accumulation >= 1, "method.probe.accumulation", "must be >= 1")
        _check(self.probe.every >= 1, "method.probe.every", "must be >= 1")
        _check(self.probe.clip_norm is None or self.probe.clip_norm > 0, "method.probe.clip_norm", "must be > 0 or null")
        _check(self.alpha_max is None or self.alpha_max > 0, "method.alpha_max", "must be > 0 or null")
        _check(self.probe.attention_block >= 1, "method.probe.attention_block", "must be >= 1")
        _check(
            self.probe.jvp_attention in ("vcore_blocked", "eager", "fused"), "method.probe.jvp_attention",
            f"{self.probe.jvp_attention!r} is not vcore_blocked|eager|fused",
        )
        _check(self.probe.fidelity_every >= 0, "method.probe.fidelity_every", "must be >= 0 (0: off)")


# --------------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    max_steps: int = -1  # > 0 overrides num_train_epochs
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    # A per-method table for sweeps over methods at each one's tuned rate (fair comparisons): an experiment sets
    # learning_rate: ${trainer.learning_rate_by_method.${method.name}} (see conf/experiment/synthetic_study.yaml).
    learning_rate_by_method: dict[str, float] = field(default_factory=dict)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    lr_floor: Optional[float] = None  # the authors' fork floors the lr at 1e-6 for every method; off unless set
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast, weights stay in model.dtype)
    packing: bool = False  # padding-free: a micro-batch's examples in one row, attention kept inside each example
    pack_length: int = 0  # packing: rows of at most this many tokens (0: one row; dense attention on CPU wants ~256)
    group_by_length: bool = False  # length-grouped sampling: micro-batches of similar lengths (less padding)
    per_device_eval_batch_size: int = 16
    logging_steps: int = 1
    save_steps: int = 0  # 0: only the final model is saved
    save_total_limit: Optional[int] = 2
    dataloader_num_workers: int = 0
    use_cpu: bool = False  # force CPU even when a GPU is visible
    eval_at_end: bool = True  # held-out NLL on every eval split after training
    # auto: continue from the newest complete checkpoint in <output_dir>/checkpoints (a requeued job with the same
    # output dir resumes exactly: weights, optimizer, scheduler, RNGs, data position, probe stream); never: start
    # fresh; or a checkpoint dir. Checkpoints come from save_steps and from SIGTERM (docs/distributed.md).
    resume: str = "auto"
    # A checkpoint records the settings it was written under; resuming under others (another method, data, seed...)
    # stops and names them (error), unless continuing on purpose (allow). Run length, saving, logging and
    # evaluation may always change (vcore.run.checkpoints.RESUMABLE_CHANGES).
    resume_config_change: str = "error"

    def __post_init__(self) -> None:
        _check(self.precision in ("fp32", "bf16"), "trainer.precision", f"{self.precision!r} is not fp32|bf16")
        _check(bool(self.resume), "trainer.resume", "must be auto, never or a checkpoint dir")
        _check(self.per_device_train_batch_size >= 1, "trainer.per_device_train_batch_size", "must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "trainer.gradient_accumulation_steps", "must be >= 1")
        _check(self.learning_rate > 0, "trainer.learning_rate", f"must be > 0 (got {self.learning_rate})")
        # transformers reads a warmup of 1 or more as a number of steps: 1.0 would warm up for one step, not the run
        _check(0 <= self.warmup_ratio < 1, "trainer.warmup_ratio", f"must be in [0, 1), a fraction of the training steps (got {self.warmup_ratio})")
        _check(
            self.max_steps > 0 or self.max_steps == -1, "trainer.max_steps",
            f"must be > 0, or -1 to train for trainer.num_train_epochs (got {self.max_steps})",
        )
        _check(self.max_steps > 0 or self.num_train_epochs > 0, "trainer.num_train_epochs", "must be > 0 when trainer.max_steps=-1")
        _check(self.resume_config_change in ("error", "allow"), "trainer.resume_config_change", "must be error or allow")
        _check(self.pack_length >= 0, "trainer.pack_length", "must be >= 0 (0: one packed row per micro-batch)")


# --------------------------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    name: str = MISSING
    # How a run is filed; every logger accepts them (logger=none ignores them), so a sweep can set its group whatever
    # logger the command line picks.
    group: Optional[str] = None  # default: the multirun sweep dir name, else none
    run_name: Optional[str] = None  # default: the job's overrides (seeds and paths excluded)
    tags: list[str] = field(default_factory=list)
    # The token-weight heatmap of a few fixed held-out examples (the first k of an eval split) as W&B media
    # ("token_weights/heatmap", "token_weights/table"), logged at the end of training and, with every > 0, every that
    # many optimizer steps (vcore.run.heatmap). 0 examples: off. split null: the dataset's first eval split.
    token_weights_examples: int = 4
    token_weights_every: int = 0
    token_weights_split: Optional[str] = None

    def __post_init__(self) -> None:
        _check(self.token_weights_examples >= 0, "logger.token_weights_examples", "must be >= 0 (0: no heatmap)")
        _check(self.token_weights_every >= 0, "logger.token_weights_every", "must be >= 0 (0: only at the end of training)")


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


@dataclass
class WandbConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "vcore"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    resume_by_config_hash: bool = True  # run id from the config's hash and the run dir: a requeued job resumes its run

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.mode in ("offline", "online", "disabled"), "logger.mode", f"{self.mode!r} is not offline|online|disabled")


# --------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalRunConfig:
    """When and what to evaluate; the benchmarks and decoding come from the ``benchmark`` and ``decoding`` groups."""

    after_train: bool = True  # evaluate the trained model on cfg.benchmark at the end of training
    # also evaluate the model training starts from (metrics "eval_before"); cached in the tiny base's directory
    before_train: bool = False
    model: Optional[str] = None  # task=eval: a run dir, a checkpoint dir, or a hub id
    backend: str = "hf"  # hf (transformers generate) | vllm (GPU; pip install -e ".[vllm]")
    num_workers: int = 2  # grading worker processes (math-verify timeouts need processes)
    # k > 0 (task=train): also evaluate cfg.benchmark every k optimizer steps during training, logged at that step
    # under the same keys (eval/<bench>/accuracy): the validation curve that W&B Hyperband and Optuna's pruner read
    # (sweeps/README.md). 0: only after training.
    every: int = 0

    def __post_init__(self) -> None:
        _check(self.backend in ("hf", "vllm"), "eval.backend", f"{self.backend!r} is not hf|vllm")
        _check(self.every >= 0, "eval.every", f"must be >= 0 optimizer steps (got {self.every}); 0: off")


# --------------------------------------------------------------------------------------------------- root
@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    dataset: Any = MISSING  # a DatasetConfig subclass, chosen by the dataset group
    method: Any = MISSING  # a MethodConfig subclass, chosen by the method group
    trainer: TrainerConfig = MISSING
    logger: Any = MISSING  # a LoggerConfig subclass
    seed: int = 42
    output_dir: str = "${hydra:runtime.output_dir}"
    # train | eval (see eval.model) | pretrain (build the tiny base and evaluate it zero-shot) | rl (GRPO, see rl)
    task: str = "train"
    eval: EvalRunConfig = field(default_factory=EvalRunConfig)
    benchmark: Any = None  # {name: BenchmarkConfig}, from the benchmark group (conf/benchmark/)
    decoding: Any = None  # a DecodingConfig, from the decoding group (conf/decoding/)
    rl: Optional[RLConfig] = None  # task=rl: the rl group (conf/rl/: tiny | paper)
    # The metric run.py returns to a sweeper that optimises it (Optuna, sweeps/optuna_*.yaml): a key of the job's
    # metrics.json, "/"-joined (e.g. eval/synthetic_val/accuracy). null: run.py returns nothing.
    objective: Optional[str] = None

    def __post_init__(self) -> None:
        _check(self.task in TASKS, "task", f"{self.task!r} is not {'|'.join(TASKS)}")
        _check(self.task != "eval" or bool(self.eval.model), "eval.model", "task=eval needs eval.model=<run dir | checkpoint | hub id>")
        _check(self.task != "rl" or self.rl is not None, "rl", "task=rl needs an rl preset: rl=tiny (CPU miniature) or rl=paper (Table 8)")


TASKS = ("train", "eval", "pretrain", "rl")


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": DATASET_SCHEMAS,
    "method": {
        "base_sft": SFTConfig,
        "base_dft": DFTConfig,
        "base_random": RandomConfig,
        "base_iw_sft": IwSFTConfig,
        "base_vcore": VCOREConfig,
    },
    "model": {"base_model": ModelConfig},
    "trainer": {"base_trainer": TrainerConfig},
    "logger": {"base_none": NoLoggerConfig, "base_wandb": WandbConfig},
    "rl": {"base_rl": RLConfig},
}


def register_configs() -> None:
    """Register the root schema and every group schema (idempotent)."""
    register_eval_configs()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=group, name=name, node=node)
    cs.store(group="rl/data", name="base_rl_data", node=benchmark_schema())  # RL prompts: a benchmark-style source


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, as ``run.py`` does (for tools and tests)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides or []))


def load_run_config(path: str | Path) -> Any:
    """The validated config of a finished run from its resolved ``config.yaml`` (as written by ``train``)."""
    raw = OmegaConf.load(path)
    root = OmegaConf.structured(TrainConfig)
    for group in ("dataset", "method", "logger"):
        name = raw[group]["name"]
        schema = SCHEMAS[group].get(f"base_{name}")
        if schema is None:
            raise ConfigError(f"{path}: {group}.name={name!r} is not a known {group}")
        root[group] = OmegaConf.structured(schema)
    return to_object(OmegaConf.merge(root, raw))


def to_object(cfg: DictConfig) -> Any:
    """Resolve ``cfg`` into dataclass instances, running every ``__post_init__`` check."""
    return OmegaConf.to_object(cfg)
