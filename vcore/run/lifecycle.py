"""The life of a job around its task: validated config, process group, run dir, logger, ``metrics.json``.

:func:`run_job` is what every task (``train``, ``eval``, ``pretrain``; see ``run.py``) runs inside: every schema check
runs first (before anything is loaded), the run dir is locked for the job and checked against the checkpoint it
continues, ``config.yaml`` is written, a logger is opened and finished with the job's exit status whatever happens.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vcore.checks import ConfigError
from vcore.config import to_object, typed_config
from vcore.distributed import (
    broadcast_object,
    check_parallel_backend,
    init_distributed,
    launcher_backend,
    rank,
    same_on_all_ranks,
)
from vcore.eval.preemption import EvaluationPreempted
from vcore.methods import method_class
from vcore.run.checkpoints import RunDirBusy, check_resume, hold, resolve_resume
from vcore.run.loggers import NullLogger, build_logger
from vcore.run.preemption import PREEMPTED_EXIT_CODE, Preempted, Pruned, Stopped

# Tasks that write checkpoints and resume from them, and the config group holding their resume options.
RESUMING_TASKS = {"train": "trainer", "rl": "rl"}

# A task: (validated config, resolved config, run dir, logger, checkpoint to resume or None) -> metrics
Task = Callable[[Any, dict[str, Any], Path, NullLogger, "Path | None"], dict[str, Any]]


def hydra_job() -> tuple[list[str], str | None]:
    """The job's command-line overrides and, in a multirun, the sweep's name (W&B group)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    return list(hc.overrides.task), sweep


def run_job(cfg: DictConfig, task: Task) -> dict[str, Any]:
    """Run ``task`` as the job ``cfg`` describes; its metrics also go to ``<output_dir>/metrics.json``."""
    cfg = typed_config(cfg)  # a method of one's own typed by its schema, so config.yaml holds all its settings
    c = to_object(cfg)  # every schema check runs here, before anything is loaded
    if c.task == "train":  # refuse unsupported backends before anything is loaded
        backend = launcher_backend(packing=c.trainer.packing, lora=c.model.lora.enabled, weights_dtype=c.model.dtype)
        if c.eval.every and c.benchmark and backend.fsdp:
            raise ConfigError(
                "eval.every > 0 under FSDP: validation generates on rank 0 only, and a sharded model needs every rank "
                "in each forward. Set eval.every=0 (a search on FSDP-sized models compares final results) or train "
                "with DDP (docs/distributed.md)."
            )
        method_class(c.method).check_backend(c.method, backend)  # what the method cannot run on, then what none can
        check_parallel_backend(backend, generates_after_training=bool(c.eval.after_train and c.benchmark))
    init_distributed()  # under torchrun: the group run.py made, or a new one when a task is called directly
    # The thread count set explicitly, at the count the process has: on CPU a process that has called
    # torch.set_num_threads (the tiny base's build does) gets other float results than one that never has, even at
    # the same count, so without this a run that built its base and a rerun that found it cached trained differently.
    torch.set_num_threads(torch.get_num_threads())
    out = Path(c.output_dir)
    if not same_on_all_ranks(str(out.resolve())):
        raise ConfigError(
            f"output_dir differs between ranks (this rank: {out}); launch through run.py, which gives every rank "
            "rank 0's Hydra dir, or set hydra.run.dir / output_dir explicitly (docs/distributed.md)"
        )
    out.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with _hold_run_dir(out):
        checkpoint = None
        group = RESUMING_TASKS.get(c.task)  # where the task's resume options live
        if group is not None:  # before config.yaml is rewritten: a run dir continues only the run it holds
            settings = getattr(c, group)
            # rank 0's view decides
            checkpoint = broadcast_object(resolve_resume(settings.resume, out / "checkpoints", name=f"{group}.resume"))
            if checkpoint is not None:
                check_resume(checkpoint, resolved, allow=settings.resume_config_change == "allow", group=group)
        if rank() == 0:
            (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        overrides, sweep = hydra_job()
        logger = build_logger(c.logger, resolved, out, overrides, sweep)
        try:
            metrics = task(c, resolved, out, logger, checkpoint)
        except (Preempted, EvaluationPreempted):  # everything done is saved; a rerun of the job continues
            logger.finish(exit_code=PREEMPTED_EXIT_CODE)
            raise
        except (Stopped, Pruned) as stop:  # a search ended the run on purpose: finished, not failed
            logger.summary({"stopped/step": stop.step, "stopped/reason": getattr(stop, "reason", "pruned")})
            logger.finish(exit_code=0)
            raise
        except BaseException:
            logger.finish(exit_code=1)
            raise
        logger.finish(exit_code=0)
    return metrics


def write_metrics(out: Path, metrics: dict[str, Any], logger: NullLogger) -> None:
    """The job's final metrics: into the logger's summary (flattened) and ``<out>/metrics.json`` (rank 0)."""
    logger.summary(flatten(metrics))
    if rank() == 0:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))


@contextlib.contextmanager
def _hold_run_dir(out: Path):
    """Rank 0 holds the run dir's lock for the job; every rank stops when another job holds it."""
    with contextlib.ExitStack() as stack:
        busy = None
        if rank() == 0:
            try:
                stack.enter_context(hold(out))
            except RunDirBusy as err:
                busy = str(err)
        busy = broadcast_object(busy)
        if busy:
            raise RunDirBusy(busy)
        yield


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def objective_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """``metrics[key]`` ("/"-joined, as in :func:`flatten`) as a float for a sweeper (``objective``); None if no key."""
    if key is None:
        return None
    flat = flatten(metrics)
    if key not in flat:
        numeric = sorted(k for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"objective={key!r} is not a metric this job wrote; choose one of: {', '.join(numeric)}")
    return float(flat[key])
