"""The Optuna searches (sweeps/optuna_*.yaml, vcore/search/optuna_search.py): what they compose to, the search space,
the sweeper's bookkeeping (values, failures, prunes, interruptions) against a stand-in launcher, and end-to-end
searches of tiny trials through run.py, in this process (basic launcher) and in joblib workers (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from tests.helpers import REPO, TINY_MODEL, subprocess_env

optuna = pytest.importorskip("optuna", minversion="4.0")  # journal files (pip install -e ".[sweeps]")

OPTUNA = sorted(p.stem for p in (REPO / "sweeps").glob("optuna_*.yaml"))


def compose_sweep(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from vcore.config import register_configs

    register_configs()
    # As run.py with --config-dir sweeps: the sweep is the primary config, conf/ on the search path for its defaults.
    search = f"hydra.searchpath=[file://{REPO / 'conf'}]"
    with initialize_config_dir(config_dir=str(REPO / "sweeps"), version_base="1.3"):
        return compose(name, overrides=[search, *overrides], return_hydra_config=True)


@pytest.mark.parametrize("name", OPTUNA)
def test_optuna_sweep_composes_to_a_validation_search(name):
    from omegaconf import open_dict

    from vcore.config import to_object

    cfg = compose_sweep(name, "method=dft" if name == "optuna_lr" else "method=vcore", "output_dir=/unused")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.vcore_optuna_sweeper.vcore_optuna_sweeper.VcoreOptunaSweeper"
    study = {"optuna_lr": "optuna_lr_dft", "optuna_vcore": "optuna_vcore"}[name]
    assert sweeper.direction == "maximize" and sweeper.study_name == study
    assert sweeper.storage == f"journal:optuna/{study}.journal" and cfg.hydra.sweep.dir == f"multirun/{study}"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert cfg.logger.group == sweeper.study_name  # one W&B group per study, whatever the invocation
    expected = {
        "optuna_lr": {"trainer.learning_rate": "tag(log, interval(1e-5, 3e-2))"},
        "optuna_vcore": {
            "method.tau": "tag(log, interval(0.003, 1.0))",
            "method.probe.epsilon": "tag(log, interval(1e-5, 1e-2))",
        },
    }[name]
    assert OmegaConf.to_container(sweeper.params) == expected
    # The objective is the accuracy of the validation benchmark, measured during training for the pruner too, and
    # nothing is measured on a test split.
    assert list(cfg.benchmark) == ["synthetic_val"] and cfg.objective == "eval/synthetic_val/accuracy"
    assert list(cfg.dataset.eval_splits) == ["val"] and cfg.eval.every == 50
    with open_dict(cfg):
        del cfg["hydra"]
    c = to_object(cfg)  # every schema check passes
    assert c.method.name == ("dft" if name == "optuna_lr" else "vcore")


def test_a_misspelt_sweeper_key_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="n_trial"):
        compose_sweep("optuna_vcore", "hydra.sweeper.n_trial=3")


def test_search_space_from_hydra_override_syntax():
    import optuna.distributions as od

    from vcore.search.optuna_search import override_value, search_space

    space, fixed = search_space(
        [
            "lr=tag(log, interval(1e-5, 3e-2))",
            "steps=int(interval(10, 20))",
            "tau=interval(0.1, 1.0)",
            "method=sft,dft",
            "seed=range(1, 4)",
            "x=choice(a, b)",
            "trainer.max_steps=5",
            "tau=interval(0.2, 0.5)",  # the command line replaces a key of hydra.sweeper.params
        ]
    )
    assert space == {
        "lr": od.FloatDistribution(1e-5, 3e-2, log=True),
        "steps": od.IntDistribution(10, 20),
        "tau": od.FloatDistribution(0.2, 0.5),
        "method": od.CategoricalDistribution(["sft", "dft"]),
        "seed": od.CategoricalDistribution(["1", "2", "3"]),
        "x": od.CategoricalDistribution(["a", "b"]),
    }
    assert fixed == ["trainer.max_steps=5"]
    assert float(override_value(0.1 + 0.2)) == 0.1 + 0.2  # every digit survives the override


def test_storage_is_a_journal_file_or_a_database_url(tmp_path, monkeypatch):
    from vcore.checks import ConfigError
    from vcore.search.trial import storage_spec

    monkeypatch.chdir(tmp_path)
    assert storage_spec("journal:optuna/s.journal") == f"journal:{tmp_path / 'optuna' / 's.journal'}"  # absolute: jobs
    assert storage_spec("study.journal") == f"journal:{tmp_path / 'study.journal'}"
    assert storage_spec("postgresql://u@db/optuna") == "postgresql://u@db/optuna"
    with pytest.raises(ConfigError, match="hydra.sweeper.storage"):
        storage_spec("optuna.db")


# --------------------------------------------------------------------------------------------- the sweeper's loop
class StandInLauncher:
    """Runs no training: each job's result comes from ``outcome(overrides)`` (a value, or an exception)."""

    def __init__(self, outcome):
        self.outcome, self.batches = outcome, []

    def launch(self, batch, initial_job_idx):
        self.batches.append([list(job) for job in batch])
        results = []
        for job in batch:
            result = self.outcome(dict(o.split("=", 1) for o in job))
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # an interruption of the sweeper itself (Ctrl+C, SIGTERM)
            failed = isinstance(result, Exception)
            results.append(
                JobReturn(
                    overrides=job, status=JobStatus.FAILED if failed else JobStatus.COMPLETED, _return_value=result
                )
            )
        return results


def sweeper(tmp_path, outcome, **cfg):
    from vcore.search.optuna_search import OptunaSearch

    settings = dict(
        study_name="s",
        storage=f"journal:{tmp_path / 's.journal'}",
        n_trials=4,
        n_jobs=2,
        sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0},
        pruner=None,
        params={"trainer.learning_rate": "tag(log, interval(1e-4, 1e-1))"},
        heartbeat_s=60.0,
    )
    s = OptunaSearch(**{**settings, **cfg})
    s.config = OmegaConf.create({"objective": "eval/x/accuracy"})
    s.sweep_dir = tmp_path / "sweep"
    s.launcher = StandInLauncher(outcome)
    s.validate_batch_is_legal = lambda batch: None  # composition is tested end to end below
    return s


def load(tmp_path):
    from vcore.search.trial import open_storage

    return optuna.load_study(study_name="s", storage=open_storage(f"journal:{tmp_path / 's.journal'}"))


def test_the_sweeper_tells_values_failures_and_prunes_and_the_search_goes_on(tmp_path):
    from vcore.run.preemption import Pruned
    from vcore.run.trainer import NonFiniteTraining

    jobs = iter(range(100))

    def outcome(job):  # trials 1 and 4 diverge, 2 and 5 are pruned, 0 and 3 return their objective
        kind = next(jobs) % 3
        lr = float(job["trainer.learning_rate"])
        return [-math.log10(lr), NonFiniteTraining("loss is nan at step 3"), Pruned(50)][kind]

    s = sweeper(tmp_path, outcome, n_trials=6)
    s.sweep(["trainer.max_steps=5"])
    study = load(tmp_path)
    assert [len(b) for b in s.launcher.batches] == [2, 2, 2]  # n_jobs trials at a time
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED"] * 2
    for t, job in zip(study.trials, [j for b in s.launcher.batches for j in b]):
        lr = t.params["trainer.learning_rate"]
        assert f"trainer.learning_rate={lr!r}" in job and "trainer.max_steps=5" in job
        assert f"hydra.sweep.subdir=trial_{t.number}" in job
        assert f"++hydra.job.env_set.VCORE_OPTUNA_TRIAL_ID={t._trial_id}" in job
        assert t.value == (-math.log10(lr) if t.state.name == "COMPLETE" else None)
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert results["best_value"] == best.value and results["best_params"] == best.params
    assert results["best_run_dir"] == str(tmp_path / "sweep" / f"trial_{best.number}")
    assert results["trials"] == {"COMPLETE": 2, "FAIL": 2, "PRUNED": 2, "RUNNING": 0, "WAITING": 0}


def test_the_search_stops_when_more_trials_fail_than_allowed(tmp_path):
    s = sweeper(tmp_path, lambda job: RuntimeError("broken"), max_failure_rate=0.5)
    with pytest.raises(RuntimeError, match="2 of 2 trials failed"):
        s.sweep([])
    assert [t.state.name for t in load(tmp_path).trials] == ["FAIL", "FAIL"]


def test_an_interrupted_search_continues_its_trials_in_their_run_dirs(tmp_path):
    """Ctrl+C (or SIGTERM) in the middle of a batch: its trials are recorded as failed and asked again, with the
    same values and run dirs (their checkpoints resume), by the next invocation, before any new point."""
    s = sweeper(tmp_path, lambda job: KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        s.sweep([])
    first = load(tmp_path).trials
    assert [t.state.name for t in first] == ["FAIL", "FAIL", "WAITING", "WAITING"]  # queued for the next invocation
    first = first[:2]

    again = sweeper(tmp_path, lambda job: 1.0)
    again.sweep([])
    study = load(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"] + ["COMPLETE"] * 4
    continued = study.trials[2:4]
    assert [t.params for t in continued] == [t.params for t in first]
    jobs = again.launcher.batches[0]
    assert [j for j in jobs[0] if "subdir" in j] == ["hydra.sweep.subdir=trial_0"]
    assert [j for j in jobs[1] if "subdir" in j] == ["hydra.sweep.subdir=trial_1"]


def test_a_killed_sweepers_trials_continue_once_their_heartbeat_is_stale(tmp_path):
    """A sweeper killed outright (no chance to record anything) leaves RUNNING trials; their heartbeat tells a live
    sweeper's (another node's) apart from a dead one's."""
    from vcore.search.optuna_search import HEARTBEAT, RUN_DIR, STALE_AFTER_BEATS

    sweeper(tmp_path, lambda job: 1.0, n_trials=1, n_jobs=1).sweep([])  # creates the study
    study = load(tmp_path)
    dead, alive = study.ask(), study.ask()
    for t in (dead, alive):
        t.set_user_attr(RUN_DIR, f"trial_{t.number}")
    dead.set_user_attr(HEARTBEAT, [time.time() - STALE_AFTER_BEATS * 60.0 - 1, "gone:1"])
    alive.set_user_attr(HEARTBEAT, [time.time(), "elsewhere:2"])
    s = sweeper(tmp_path, lambda job: 2.0, n_trials=1, n_jobs=1)
    s.sweep([])
    states = {t.number: t.state.name for t in load(tmp_path).trials}
    assert states == {0: "COMPLETE", dead.number: "FAIL", alive.number: "RUNNING", 3: "COMPLETE"}
    assert "hydra.sweep.subdir=trial_1" in s.launcher.batches[0][0]  # the dead sweeper's trial, in its dir


# --------------------------------------------------------------------------------------------- end to end
TINY_TRIAL = [
    *TINY_MODEL,
    "dataset.num_examples=16",
    "dataset.eval_examples=4",
    "trainer.max_steps=4",
    "eval.every=2",
    "trainer.per_device_train_batch_size=4",
    "decoding.max_new_tokens=8",
    "eval.num_workers=1",
    "logger=none",
]


def search(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "--config-dir",
        str(REPO / "sweeps"),
        "--config-name",
        "optuna_lr",
        "method=sft",
        *TINY_TRIAL,
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *extra,
    ]
    proc = subprocess.run(
        args,
        cwd=tmp_path,
        env=subprocess_env(VCORE_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_trials(tmp_path, n: int) -> list:
    """The study holds ``n`` complete trials, each with its run's rate, validation curve and validation accuracy."""
    from vcore.search.trial import open_storage

    storage = open_storage(f"journal:{tmp_path / 'optuna' / 'optuna_lr_sft.journal'}")
    study = optuna.load_study(study_name="optuna_lr_sft", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * n
    for t in study.trials:
        run = tmp_path / "sweep" / f"trial_{t.number}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert t.value == metrics["eval"]["synthetic_val/accuracy"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert t.params["trainer.learning_rate"] == config["trainer"]["learning_rate"]
        curve = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
        assert t.intermediate_values == {x["step"]: x["eval/synthetic_val/accuracy"] for x in curve}
        assert list(t.intermediate_values) == [2]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["trials"]["COMPLETE"] == n and results["best_value"] == study.best_value
    return study.trials


def test_optuna_search_runs_two_trials_offline(tmp_path):
    """Two tiny trials through run.py -m (basic launcher, ~35 s), each reporting its validation to the journal
    study and returning its validation accuracy."""
    search(tmp_path)
    check_trials(tmp_path, 2)


@pytest.mark.slow  # ~60 s
def test_a_second_invocation_adds_to_the_study(tmp_path):
    """The same command again continues the study: a new trial in a new run dir, the first ones kept."""
    search(tmp_path)
    first = [(t.number, t.params, t.value) for t in check_trials(tmp_path, 2)]
    search(tmp_path, "hydra.sweeper.sampler.seed=2", "hydra.sweeper.n_trials=1")
    assert [(t.number, t.params, t.value) for t in check_trials(tmp_path, 3)[:2]] == first


LAUNCHERS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    # submitit's local executor: the SLURM launcher's code path, each trial a process submitit starts and waits for
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", ["hydra/launcher=submitit_local"]),
}


@pytest.mark.slow  # ~60 s each: two trials at once in other processes, reporting to one journal file
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_optuna_trials_run_through_other_launchers(tmp_path, launcher):
    plugin, overrides = LAUNCHERS[launcher]
    pytest.importorskip(plugin)
    search(tmp_path, *overrides, "hydra.sweeper.n_jobs=2")
    check_trials(tmp_path, 2)
