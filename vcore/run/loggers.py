"""Experiment loggers: W&B or nothing, behind one small interface so the training code never branches on it.

Under data parallelism only rank 0 logs. A requeued job (same config, same output dir, ``trainer.resume=auto``)
gets the same run id (a hash of the resolved config) and continues that W&B run.

W&B runs are offline by default (files under ``<run dir>/wandb``; ``wandb sync`` uploads them later), named after
the job's Hydra overrides, grouped by sweep, typed by task (``job_type``), tagged with ``logger.tags`` and the
method, carry the resolved config, and are always finished, also when training raises (jobs of one multirun share
a process and would otherwise log into each other's runs). The dashboard (:mod:`vcore.tools.dashboard`) groups and
filters by these.

Under a W&B sweep agent the run is the agent's: its id, project and entity come from the agent (W&B ignores ours
there), and W&B's stop request (the UI's Stop, a sweep's early termination) stops training at the end of an optimizer
step, after a checkpoint (:mod:`vcore.run.preemption`), instead of W&B's default Ctrl+C in the middle of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vcore.config import WandbMode
from vcore.distributed import rank
from vcore.run.heatmap import heatmap_html
from vcore.run.preemption import PREEMPTED_EXIT_CODE, in_wandb_sweep

# Where a run's token-weight heatmap goes (vcore.run.heatmap), and the table's columns.
TOKEN_WEIGHTS_HTML = "token_weights/heatmap"
TOKEN_WEIGHTS_TABLE = "token_weights/table"
TOKEN_WEIGHT_COLUMNS = ("example", "position", "token", "supervised", "weight", "loss", "batch_alpha")

# Overrides that identify a job's place, not its experiment: left out of run names and config hashes.
NAME_EXCLUDED = ("seed", "output_dir", "hydra.", "logger.", "trainer.use_cpu", "task")


class NullLogger:
    run_id: str | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def update_config(self, values: dict[str, Any]) -> None:
        """Add to the run's config what is only known once the job runs (an RL run's start: its SFT method...)."""

    def log_token_weights(self, examples: list[dict[str, Any]], step: int) -> None:
        """Per-token weights of a few examples (inspector lines, :func:`vcore.run.heatmap.weigh_examples`)."""

    def stop_requested(self) -> bool:
        """The experiment tracker asked the run to stop (W&B: Stop in the UI, a sweep's early termination)."""
        return False

    @contextlib.contextmanager
    def stops_at_step_end(self) -> Iterator[None]:
        """While training: a stop request waits for the end of the optimizer step (a checkpoint, then
        :class:`vcore.run.preemption.Stopped`); outside it, it interrupts the main thread."""
        yield

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(
        self, cfg, resolved: dict[str, Any], output_dir: Path, overrides: list[str], sweep: str | None
    ) -> None:
        import wandb

        self.wandb = wandb
        # Stable across requeues of one job (same config, same run dir), distinct across run dirs: two runs of one
        # config in different dirs are two W&B runs, not one run written twice. A sweep agent's run has its own id.
        agent = in_wandb_sweep()
        self.run_id = run_id(resolved, output_dir) if cfg.resume_by_config_hash and not agent else None
        self._stop, self._defer_stop = threading.Event(), False
        self.run = wandb.init(
            project=None if agent else cfg.project,
            entity=None if agent else cfg.entity,
            group=cfg.group or sweep,
            job_type=resolved.get("task", "train"),  # train | eval | pretrain | rl: a dashboard can split a group by it
            name=cfg.run_name or run_name(overrides),
            tags=run_tags(cfg.tags, resolved),
            mode=WandbMode(cfg.mode).value,
            dir=str(output_dir),
            id=self.run_id,
            resume="allow" if self.run_id or agent else None,  # an agent's run id may exist (a run it resumes)
            config={**resolved, "overrides": overrides, "git_commit": git_commit()},
            reinit="finish_previous",
            settings=wandb.Settings(stop_fn=self._on_stop),
        )
        self.run_id = self.run.id

    def _on_stop(self) -> None:
        self._stop.set()
        if not self._defer_stop:  # W&B's own way (wandb.sdk.lib.interrupt): Ctrl+C in the main thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def stops_at_step_end(self) -> Iterator[None]:
        self._defer_stop = True
        try:
            yield
        finally:
            self._defer_stop = False

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)})

    def summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(metrics)

    def update_config(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def log_token_weights(self, examples: list[dict[str, Any]], step: int) -> None:
        """As a page (the report's heatmap renderer) and a table, one row per token, under ``token_weights/``."""
        rows = [
            [ex["example"], i, tok, bool(sup), ex["weight"][i], ex["loss"][i], ex["batch_alpha"]]
            for ex in examples
            for i, (tok, sup) in enumerate(zip(ex["tokens"], ex["supervised"]))
        ]
        table = self.wandb.Table(columns=list(TOKEN_WEIGHT_COLUMNS), data=rows)
        self.run.log(
            {TOKEN_WEIGHTS_HTML: self.wandb.Html(heatmap_html(examples)), TOKEN_WEIGHTS_TABLE: table}, step=step
        )

    def finish(self, exit_code: int = 0) -> None:
        if exit_code == PREEMPTED_EXIT_CODE:
            self.run.mark_preempting()  # shown as preempted, not failed; the requeued job resumes this run id
        self.run.finish(exit_code=exit_code)


def build_logger(
    cfg, resolved: dict[str, Any], output_dir: Path, overrides: list[str], sweep: str | None
) -> NullLogger:
    """Only rank 0 talks to W&B."""
    if cfg.name == "none" or rank() != 0 or getattr(cfg, "mode", None) == "disabled":
        return NullLogger()
    if cfg.name == "wandb":
        return WandbLogger(cfg, resolved, output_dir, overrides, sweep)
    raise ValueError(f"logger.name: unknown logger {cfg.name!r}; use wandb or none")


def run_name(overrides: list[str]) -> str:
    """The job's overrides without seeds and paths, "/" made safe: ``method=vcore,method.tau=1000``."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(NAME_EXCLUDED)]
    name = ",".join(kept) or "default"
    return re.sub(r"[/\\]", "-", name)[:128]


def run_tags(tags: list[str], resolved: dict[str, Any]) -> list[str]:
    """``logger.tags`` and the run's method name (``method=vcore``), so W&B's tag filter splits a group by method.
    Jobs that do not train with the method group (task=rl, eval, pretrain) get no method tag (an RL run's SFT method
    goes into its config as ``start.method``)."""
    method = (resolved.get("method") or {}).get("name") if resolved.get("task", "train") == "train" else None
    auto = [f"method={method}"] if method else []
    return list(dict.fromkeys([*tags, *auto]))


def config_hash(resolved: dict[str, Any]) -> str:
    """Stable id of a resolved config, paths excluded: a requeued job gets the same W&B run id.

    Values derived from the run's own output dir (e.g. the tiny model built inside it) are made relative to it.
    """
    out = str(resolved.get("output_dir", "")) or None

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v.replace(out, "<output_dir>") if out and isinstance(v, str) else v

    cleaned = {k: clean(v) for k, v in resolved.items() if k not in ("output_dir", "logger")}
    return hashlib.sha256(json.dumps(cleaned, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_id(resolved: dict[str, Any], output_dir: Path) -> str:
    """The W&B run id of the job: its config's hash and its run dir."""
    key = f"{config_hash(resolved)}:{Path(output_dir).resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class LoggerCallback(TrainerCallback):
    """Forwards the Trainer's log lines to our logger, keyed by optimizer step; ``rename`` maps a trainer's own metric
    names to ours (TRL's GRPO metrics, :func:`vcore.rl.grpo.rl_log_key`)."""

    def __init__(self, logger: NullLogger, rename: Callable[[str], str] | None = None) -> None:
        self.logger, self.rename = logger, rename or (lambda k: k)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            numbers = {self.rename(k): v for k, v in logs.items() if isinstance(v, (int, float))}
            self.logger.log(numbers, step=state.global_step)
        return control
