"""Typed configuration schema, registered in Hydra's ConfigStore.

Every YAML option in ``conf/<group>/`` starts from one of the schemas below (its ``defaults`` list names
``base_<kind>``), so a misspelt key or a wrong type fails when Hydra composes the config, naming the key. The method
group's schemas are the registered methods' own (``vcore/methods/``, :mod:`vcore.methods.registry`); a method defined
outside vcore names its class with ``_target_`` and is typed by :func:`typed_config` before anything is loaded.
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
from vcore.methods import registry as method_registry

# Each method's schema lives beside its code (vcore/methods/); re-exported here for scripts and tests.
from vcore.methods.base import LossNormalization, MethodConfig  # noqa: F401
from vcore.methods.dft import DFTConfig  # noqa: F401
from vcore.methods.iw_sft import IwSFTConfig  # noqa: F401
from vcore.methods.probe import JvpAttention, ProbeConfig, ProbeMode  # noqa: F401
from vcore.methods.random import RandomConfig  # noqa: F401
from vcore.methods.sft import SFTConfig  # noqa: F401
from vcore.methods.vcore import VarianceControl, VCOREConfig  # noqa: F401
from vcore.modeling import LoraConfig, ModelConfig, TinyModelConfig, TinyPretrainConfig  # noqa: F401 (re-exported)
from vcore.rl.config import RLConfig


# --------------------------------------------------------------------------------------------------- trainer
class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"  # autocast of the training step; the weights stay in model.dtype


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
    precision: Precision = Precision.fp32
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
        _check(bool(self.resume), "trainer.resume", "must be auto, never or a checkpoint dir")
        _check(self.per_device_train_batch_size >= 1, "trainer.per_device_train_batch_size", "must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "trainer.gradient_accumulation_steps", "must be >= 1")
        _check(self.learning_rate > 0, "trainer.learning_rate", f"must be > 0 (got {self.learning_rate})")
        # transformers reads a warmup of 1 or more as a number of steps: 1.0 would warm up for one step, not the run
        _check(
            0 <= self.warmup_ratio < 1,
            "trainer.warmup_ratio",
            f"must be in [0, 1), a fraction of the training steps (got {self.warmup_ratio})",
        )
        _check(
            self.max_steps > 0 or self.max_steps == -1,
            "trainer.max_steps",
            f"must be > 0, or -1 to train for trainer.num_train_epochs (got {self.max_steps})",
        )
        _check(
            self.max_steps > 0 or self.num_train_epochs > 0,
            "trainer.num_train_epochs",
            "must be > 0 when trainer.max_steps=-1",
        )
        _check(
            self.resume_config_change in ("error", "allow"), "trainer.resume_config_change", "must be error or allow"
        )
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
        _check(
            self.token_weights_every >= 0, "logger.token_weights_every", "must be >= 0 (0: only at the end of training)"
        )


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


class WandbMode(str, Enum):
    offline = "offline"  # written under <run dir>/wandb; `wandb sync <dir>` uploads it
    online = "online"
    disabled = "disabled"


@dataclass
class WandbConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "vcore"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline
    resume_by_config_hash: bool = True  # run id from the config's hash and the run dir: a requeued job resumes its run


# --------------------------------------------------------------------------------------------------- evaluation
class EvalBackend(str, Enum):
    hf = "hf"  # transformers generate
    vllm = "vllm"  # GPU; pip install -e ".[vllm]"


@dataclass
class EvalRunConfig:
    """When and what to evaluate; the benchmarks and decoding come from the ``benchmark`` and ``decoding`` groups."""

    after_train: bool = True  # evaluate the trained model on cfg.benchmark at the end of training
    # also evaluate the model training starts from (metrics "eval_before"); cached in the tiny base's directory
    before_train: bool = False
    model: Optional[str] = None  # task=eval: a run dir, a checkpoint dir, or a hub id
    backend: EvalBackend = EvalBackend.hf
    num_workers: int = 2  # grading worker processes (math-verify timeouts need processes)
    # k > 0 (task=train): also evaluate cfg.benchmark every k optimizer steps during training, logged at that step
    # under the same keys (eval/<bench>/accuracy): the validation curve that W&B Hyperband and Optuna's pruner read
    # (sweeps/README.md). 0: only after training.
    every: int = 0

    def __post_init__(self) -> None:
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
        _check(
            self.task != "eval" or bool(self.eval.model),
            "eval.model",
            "task=eval needs eval.model=<run dir | checkpoint | hub id>",
        )
        _check(
            self.task != "rl" or self.rl is not None,
            "rl",
            "task=rl needs an rl preset: rl=tiny (CPU miniature) or rl=paper (Table 8)",
        )


TASKS = ("train", "eval", "pretrain", "rl")


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": DATASET_SCHEMAS,
    "method": method_registry.schemas(),  # the built-in methods; a method of your own is typed by its _target_
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
    """Compose ``conf/<config_name>.yaml`` with overrides, as ``run.py`` does (for tools and tests); typed as
    :func:`typed_config` types it."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return typed_config(compose(config_name, overrides=list(overrides or [])))


def typed_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` (in place) with a method YAML that names its class (``_target_``) typed by that class's schema, as a
    built-in method's YAML is typed by Hydra (``base_<name>``): the run's ``config.yaml`` then holds every setting.
    Idempotent; run first by every job (:func:`vcore.run.lifecycle.run_job`)."""
    if isinstance(cfg.get("method"), DictConfig):
        cfg.method = method_registry.typed_method_node(cfg.method)
    return cfg


def load_run_config(path: str | Path) -> Any:
    """The validated config of a finished run from its resolved ``config.yaml`` (as written by ``train``)."""
    raw = OmegaConf.load(path)
    root = OmegaConf.structured(TrainConfig)
    for group in ("dataset", "method", "logger"):
        if group == "method":  # a method of one's own is found by its _target_ (imported), a built-in one by name
            root[group] = OmegaConf.structured(method_registry.method_class(raw.method).Config)
            continue
        name = raw[group]["name"]
        schema = SCHEMAS[group].get(f"base_{name}")
        if schema is None:
            raise ConfigError(f"{path}: {group}.name={name!r} is not a known {group}")
        root[group] = OmegaConf.structured(schema)
    return to_object(OmegaConf.merge(root, raw))


def to_object(cfg: DictConfig) -> Any:
    """Resolve ``cfg`` into dataclass instances, running every ``__post_init__`` check (a copy of ``cfg`` is typed
    first, when its method YAML names its class with ``_target_``)."""
    method = cfg.get("method")
    if isinstance(method, DictConfig) and OmegaConf.get_type(method) is dict:
        cfg = typed_config(cfg.copy())
    return OmegaConf.to_object(cfg)
