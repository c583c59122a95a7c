"""An Optuna search as a Hydra sweeper: ``python run.py -m --config-dir sweeps --config-name optuna_vcore``.

Built on Optuna's ask/tell API (Optuna >= 4, any SQLAlchemy): the sweeper asks the study for ``n_jobs`` trials at a
time, composes each one's config through Hydra (the sweep's config, the command line's fixed overrides, the trial's
values) and hands the batch to the configured launcher, so trials run wherever grid jobs run: in this process
(basic), as local processes (``hydra/launcher=joblib``) or as SLURM jobs (``hydra/launcher=submitit_slurm``). Each
job runs ``run.py``'s task and returns the metric named by ``objective``; the sweeper tells the study.

- Storage (``hydra.sweeper.storage``): ``journal:<path>`` (Optuna's journal file: file locks, works on a filesystem
  that several nodes share, no server) or a database URL (``postgresql://...``; ``sqlite:///...`` on one machine).
- Pruning (``hydra.sweeper.pruner``, an ``optuna.pruners`` class): the job reports its validation accuracy
  (``eval.every``) to its trial as it trains (:mod:`vcore.search.trial`); a pruned trial writes a checkpoint and
  ends with :class:`vcore.run.preemption.Pruned`, recorded as PRUNED.
- A trial that fails (a learning rate or τ that diverges stops with ``NonFiniteTraining``) is recorded as FAIL and
  the search goes on, unless more than ``max_failure_rate`` of this invocation's trials failed.
- Run dirs: ``<hydra.sweep.dir>/trial_<number>``: give a study one sweep dir and every invocation adds to it.
- An interrupted study continues: run the same command again. Trials the last invocation was running when it died
  (Ctrl+C, SIGTERM; or killed, noticed by their heartbeat going stale) are recorded as FAIL and asked again with
  the same values, in the same run dir, so training resumes from its last checkpoint (``trainer.resume=auto``).

Registered as ``hydra/sweeper=vcore_optuna`` by ``hydra_plugins/vcore_optuna_sweeper`` (Hydra instantiates sweepers
from that package only).
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf

from vcore.checks import ConfigError
from vcore.search.trial import ENV_STORAGE, ENV_STUDY, ENV_TRIAL_ID, build_pruner, open_storage, storage_spec

log = logging.getLogger(__name__)

# Trial user attributes: its run dir under the sweep dir (a continued trial keeps the one it continues), and the last
# heartbeat of the sweeper running it ([time, host:pid]).
RUN_DIR = "vcore:run_dir"
HEARTBEAT = "vcore:heartbeat"
STALE_AFTER_BEATS = 3  # a RUNNING trial whose driver has not beaten for this many intervals was interrupted


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` of ``hydra/sweeper=vcore_optuna`` (typed: a misspelt key fails at composition)."""

    _target_: str = "hydra_plugins.vcore_optuna_sweeper.vcore_optuna_sweeper.VcoreOptunaSweeper"
    _recursive_: bool = False  # the sampler and pruner stay configs: the sweeper builds them, the jobs the pruner
    study_name: str = MISSING
    storage: str = MISSING  # journal:<path> | database URL (see the module docstring)
    direction: str = "maximize"  # of the objective the jobs return (run.py returns cfg.objective)
    n_trials: int = 20  # per invocation; a continued study adds as many again
    n_jobs: int = 1  # trials launched together (in parallel with a joblib or submitit launcher)
    # The search stops with an error once more than this fraction of its trials failed (1.0: never)
    max_failure_rate: float = 1.0
    # optuna.samplers.<Sampler> and its arguments; a new seed for a continued study draws new start-up points
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # optuna.pruners.<Pruner> and its arguments; null: no pruning. Steps are optimizer steps (eval.every).
    pruner: Optional[dict[str, Any]] = field(
        default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5, "n_warmup_steps": 0}
    )
    # key: search space, in Hydra's override syntax: tag(log, interval(a, b)) | interval(a, b) | int(interval(a, b)) |
    # choice(a, b) / a,b | range(a, b); a plain value is fixed. The command line adds or replaces keys the same way.
    params: dict[str, str] = field(default_factory=dict)
    heartbeat_s: float = 60.0  # how often the sweeper marks its running trials alive in the study


def search_space(lines: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the swept keys, and the fixed overrides, from override lines (later lines win)."""
    import optuna.distributions as od
    from hydra.core.override_parser.overrides_parser import OverridesParser

    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(list(lines)):
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not o.is_sweep_override():
            fixed[key] = o.input_line
        elif o.is_interval_sweep():
            v = o.value()
            log_scale = "log" in v.tags
            if isinstance(v.start, int) and isinstance(v.end, int):
                space[key] = od.IntDistribution(v.start, v.end, log=log_scale)
            else:
                space[key] = od.FloatDistribution(float(v.start), float(v.end), log=log_scale)
        elif o.is_discrete_sweep():  # choice(...), a,b,c, range(...): the values as written
            space[key] = od.CategoricalDistribution(list(o.sweep_string_iterator()))
        else:
            raise ConfigError(f"{o.input_line}: not a search space of this sweeper (interval, choice, range)")
    return space, list(fixed.values())


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value (floats keep every digit)."""
    return repr(value) if isinstance(value, float) else str(value)


def _env_value(value: str, what: str) -> str:
    """``value`` quoted for a ``hydra.job.env_set`` override."""
    if re.search(r"['\\]|\$\{", value):
        raise ConfigError(f"{what}={value!r}: quotes, backslashes and '${{' cannot be passed to the trials; rename it")
    return f"'{value}'"


class OptunaSearch(Sweeper):
    def __init__(self, **cfg: Any) -> None:
        self.cfg = OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), cfg)  # hydra.sweeper, resolved
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # ----------------------------------------------------------------------------------------- the loop
    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        import optuna

        c = self.cfg
        if c.n_trials < 1 or c.n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        if c.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={c.direction!r} is not maximize|minimize")
        space, fixed = search_space([f"{k}={v}" for k, v in c.params.items()] + list(arguments))
        if not space:
            raise ConfigError("nothing to search: give hydra.sweeper.params (or a swept override) a search space")
        from hydra.utils import instantiate

        self.storage = storage_spec(c.storage)
        study = optuna.create_study(
            study_name=c.study_name,
            storage=open_storage(self.storage),
            sampler=instantiate(c.sampler),
            pruner=build_pruner(OmegaConf.to_container(c.pruner) if c.pruner is not None else None),
            direction=c.direction,
            load_if_exists=True,
        )
        log.info(
            "Optuna study %s in %s: %d trials so far; searching %s",
            c.study_name,
            self.storage,
            len(study.trials),
            ", ".join(f"{k}: {d}" for k, d in space.items()),
        )
        self._continue_interrupted(study, stale_only=True)
        returns, failed = [], 0
        for start in range(0, c.n_trials, c.n_jobs):
            trials = [study.ask(space) for _ in range(min(c.n_jobs, c.n_trials - start))]
            batch = [self._job_overrides(study, t, fixed) for t in trials]
            try:
                self.validate_batch_is_legal(batch)  # composition errors, before anything runs
            except Exception:
                for t in trials:
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                raise
            try:
                with self._heartbeat(trials):
                    results = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:  # interrupted (Ctrl+C, SIGTERM): the next invocation continues these trials
                self._continue_interrupted(study, trials=trials)
                raise
            self.job_idx += len(batch)
            for trial, result in zip(trials, results):
                failed += self._tell(study, trial, result) == optuna.trial.TrialState.FAIL
            returns += results
            done = start + len(trials)
            if failed / done > c.max_failure_rate:
                raise RuntimeError(
                    f"{failed} of {done} trials failed (hydra.sweeper.max_failure_rate={c.max_failure_rate}); see "
                    f"their logs under {self.sweep_dir}"
                )
        self._write_results(study)
        return returns

    def _job_overrides(self, study: Any, trial: Any, fixed: list[str]) -> list[str]:
        run_dir = trial.user_attrs.get(RUN_DIR, f"trial_{trial.number}")
        trial.set_user_attr(RUN_DIR, run_dir)
        return [
            *fixed,
            *(f"{k}={override_value(v)}" for k, v in trial.params.items()),
            f"hydra.sweep.subdir={run_dir}",
            f"++hydra.job.env_set.{ENV_STORAGE}={_env_value(self.storage, 'hydra.sweeper.storage')}",
            f"++hydra.job.env_set.{ENV_STUDY}={_env_value(study.study_name, 'hydra.sweeper.study_name')}",
            f"++hydra.job.env_set.{ENV_TRIAL_ID}={trial._trial_id}",  # the storage's id (Optuna has no public getter)
        ]

    def _tell(self, study: Any, trial: Any, result: JobReturn) -> Any:
        from optuna.trial import TrialState

        from vcore.run.preemption import Pruned  # here: Hydra imports this module at every start, torch is slow

        if result.status == JobStatus.COMPLETED:
            value = result.return_value
            if isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial, float(value))
                log.info("trial %d: %s = %s", trial.number, self.config.get("objective"), value)
                return TrialState.COMPLETE
            log.warning(
                "trial %d returned %r, not a number: recorded as failed (objective=<metric>)", trial.number, value
            )
        elif isinstance(result._return_value, Pruned):
            study.tell(trial, state=TrialState.PRUNED)
            log.info("trial %d: %s", trial.number, result._return_value)
            return TrialState.PRUNED
        else:
            error = result._return_value
            log.warning("trial %d failed (%s: %s); the search goes on", trial.number, type(error).__name__, error)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL

    # ----------------------------------------------------------------------------------------- interruptions
    @contextmanager
    def _heartbeat(self, trials: list[Any]) -> Iterator[None]:
        """Mark ``trials`` alive in the study every ``heartbeat_s`` while their jobs run (seen by other invocations)."""
        me = f"{socket.gethostname()}:{os.getpid()}"
        stop = threading.Event()

        def beat() -> None:
            while True:
                for t in trials:
                    t.set_user_attr(HEARTBEAT, [time.time(), me])
                if stop.wait(self.cfg.heartbeat_s):
                    return

        thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _continue_interrupted(self, study: Any, trials: list[Any] | None = None, stale_only: bool = False) -> None:
        """Record interrupted RUNNING trials as FAIL and ask their values again, in their run dirs: ``trials`` (this
        invocation's, interrupted now), or every RUNNING trial of the study whose heartbeat went stale."""
        from optuna.trial import TrialState

        if stale_only:
            now, limit = time.time(), STALE_AFTER_BEATS * self.cfg.heartbeat_s
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            trials = [t for t in running if now - t.user_attrs.get(HEARTBEAT, [0.0])[0] > limit]
        for t in trials or []:
            frozen = study.get_trials(deepcopy=False)[t.number]
            if frozen.state != TrialState.RUNNING:
                continue
            run_dir = frozen.user_attrs.get(RUN_DIR, f"trial_{frozen.number}")
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(frozen.params, user_attrs={RUN_DIR: run_dir})
            log.warning(
                "trial %d was interrupted: recorded as failed; its values run again in %s, from its last checkpoint",
                frozen.number,
                run_dir,
            )

    def _write_results(self, study: Any) -> None:
        from optuna.trial import TrialState

        counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        results: dict[str, Any] = {"study_name": study.study_name, "storage": self.storage, "trials": counts}
        if counts["COMPLETE"]:
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=best.params,
                best_run_dir=str(self.sweep_dir / best.user_attrs.get(RUN_DIR, f"trial_{best.number}")),
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / "optimization_results.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(results)))
        log.info("study %s: %s", study.study_name, results)
