"""A trial's side of an Optuna search (:mod:`vcore.search.optuna_search`): report each validation, maybe stop.

The sweeper asks Optuna for a trial and launches its job with the study's storage, name and the trial's id in the
job's environment (``hydra.job.env_set``, so every launcher carries them: in-process, joblib workers, SLURM jobs).
In the job, :func:`current_trial` opens the same storage (a journal file on a shared filesystem, or an RDB URL) and
the study's pruner (``hydra.sweeper.pruner`` of the job's own Hydra config); :mod:`vcore.run.validation` reports
every validation to it and stops the run when the pruner says so.

Nothing here imports Optuna unless the job is a trial.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from vcore.checks import ConfigError

ENV_STORAGE = "VCORE_OPTUNA_STORAGE"
ENV_STUDY = "VCORE_OPTUNA_STUDY"
ENV_TRIAL_ID = "VCORE_OPTUNA_TRIAL_ID"
JOURNAL = "journal:"


def storage_spec(storage: str) -> str:
    """``hydra.sweeper.storage`` as the jobs get it: a journal file's path made absolute (jobs may start elsewhere,
    on other nodes), an RDB URL unchanged. ``journal:<path>`` or a path ending in ``.journal``; else a URL."""
    if storage.startswith(JOURNAL) or storage.endswith(".journal"):
        path = storage.removeprefix(JOURNAL)
        if not path:
            raise ConfigError("hydra.sweeper.storage: journal: needs a file path, e.g. journal:optuna/study.journal")
        return JOURNAL + str(Path(path).expanduser().resolve())
    if "://" not in storage:
        raise ConfigError(
            f"hydra.sweeper.storage={storage!r} is neither a journal file (journal:<path>, or a path ending in "
            ".journal) nor a database URL (sqlite:///optuna.db, postgresql://user@host/db)"
        )
    return storage


def open_storage(spec: str) -> Any:
    """The Optuna storage of a :func:`storage_spec`: a journal file (file locks: works on a shared filesystem across
    nodes, no server) or an RDB (what the URL names; sqlite only for processes of one machine)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if spec.startswith(JOURNAL):
        path = Path(spec.removeprefix(JOURNAL))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(spec)


def build_pruner(spec: Any) -> Any:
    """``hydra.sweeper.pruner``: ``{_target_: optuna.pruners.<Pruner>, ...}``, or null for no pruning."""
    import optuna
    from hydra.utils import instantiate

    if spec is None:
        return optuna.pruners.NopPruner()
    pruner = instantiate(spec)
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise ConfigError(f"hydra.sweeper.pruner: {type(pruner).__name__} is not an optuna.pruners pruner")
    return pruner


class TrialReporter:
    """Reports the validation metric named ``objective`` (``eval/<bench>/accuracy``) at each step; True: stop."""

    def __init__(self, trial: Any, objective: str) -> None:
        self.trial, self.objective = trial, objective

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        if self.objective not in metrics:
            raise ConfigError(
                f"objective={self.objective!r} is not among this run's validation metrics "
                f"({', '.join(sorted(metrics))}): the pruner compares the objective during training"
            )
        value = float(metrics[self.objective])
        if not math.isfinite(value):
            return True  # a diverged trial: nothing to gain from training it further
        self.trial.report(value, step)
        return bool(self.trial.should_prune())


def current_trial(objective: str | None) -> TrialReporter | None:
    """The Optuna trial this job runs, if the sweeper launched it (else None)."""
    trial_id = os.environ.get(ENV_TRIAL_ID)
    if trial_id is None:
        return None
    if not objective:
        raise ConfigError("objective: an Optuna trial needs its metric, e.g. objective=eval/synthetic_val/accuracy")
    import optuna
    from hydra.core.hydra_config import HydraConfig

    pruner = HydraConfig.get().sweeper.get("pruner") if HydraConfig.initialized() else None
    study = optuna.load_study(
        study_name=os.environ[ENV_STUDY], storage=open_storage(os.environ[ENV_STORAGE]), pruner=build_pruner(pruner)
    )
    return TrialReporter(optuna.trial.Trial(study, int(trial_id)), objective)
