"""Hyperparameter search on maintained engines (sweeps/README.md says which to choose when).

- :mod:`vcore.search.optuna_search`: a Hydra sweeper on Optuna's ask/tell API (``override hydra/sweeper:
  vcore_optuna``, registered by ``hydra_plugins/vcore_optuna_sweeper``): each trial is a job of the multirun, run by
  the configured launcher (basic, joblib, submitit/SLURM); studies live in a journal file or an RDB.
- :mod:`vcore.search.trial`: a trial's side: its job reports each validation to the study, the pruner may stop it.
- :mod:`vcore.search.wandb_sweep`: W&B Sweeps files (``sweeps/wandb/*.yaml``): the command an agent runs for a
  parameter set, and the check that every parameter is a key of the typed config with values in range.
"""
