"""The Optuna searches (sweeps/optuna_*.yaml): what they compose to, the objective run.py returns, and an end-to-end
search of 3 tiny trials that a second invocation continues."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, TINY_MODEL, subprocess_env

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
optuna = pytest.importorskip("optuna")

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
    from omegaconf import OmegaConf, open_dict

    from vcore.config import to_object

    cfg = compose_sweep(name, "method=dft" if name == "optuna_lr" else "method=vcore", "output_dir=/unused")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.storage == "sqlite:///optuna.db" and sweeper.max_failure_rate == 1.0
    assert sweeper.study_name == {"optuna_lr": "optuna_lr_dft", "optuna_vcore": "optuna_vcore"}[name]
    assert cfg.logger.group == sweeper.study_name  # one W&B group per study, whatever the invocation
    expected = {
        "optuna_lr": {"trainer.learning_rate": "tag(log, interval(1e-5, 3e-2))"},
        "optuna_vcore": {"method.tau": "tag(log, interval(0.003, 1.0))", "method.probe.epsilon": "tag(log, interval(1e-5, 1e-2))"},
    }[name]
    assert OmegaConf.to_container(sweeper.params) == expected
    # The objective is the accuracy of the validation benchmark, and nothing is measured on a test split.
    assert list(cfg.benchmark) == ["synthetic_val"] and cfg.objective == "eval/synthetic_val/accuracy"
    assert list(cfg.dataset.eval_splits) == ["val"]
    with open_dict(cfg):
        del cfg["hydra"]
    c = to_object(cfg)  # every schema check passes
    assert c.method.name == ("dft" if name == "optuna_lr" else "vcore")


def test_objective_is_the_named_metric_or_an_error():
    from vcore.checks import ConfigError
    from vcore.run.lifecycle import objective_value

    metrics = {"eval": {"synthetic_val/accuracy": 0.25, "val/nll": 2.5}, "model": "m"}
    assert objective_value(metrics, "eval/synthetic_val/accuracy") == 0.25
    assert objective_value(metrics, None) is None
    with pytest.raises(ConfigError, match="objective='eval/test/accuracy'.*eval/synthetic_val/accuracy, eval/val/nll"):
        objective_value(metrics, "eval/test/accuracy")


TINY_TRIAL = [
    *TINY_MODEL, "dataset.num_examples=16", "dataset.eval_examples=4", "trainer.max_steps=1",
    "trainer.per_device_train_batch_size=4", "decoding.max_new_tokens=8", "eval.num_workers=1",
]


@pytest.mark.slow  # ~35 s: 5 tiny trials in two multiruns
def test_optuna_search_runs_and_continues(tmp_path):
    def search(sweep_dir: str, trials: int, seed: int):
        args = [sys.executable, str(REPO / "run.py"), "-m", "--config-dir", str(REPO / "sweeps"), "--config-name", "optuna_lr",
                "method=sft", *TINY_TRIAL, f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler.seed={seed}",
                f"hydra.sweep.dir={tmp_path / sweep_dir}"]
        proc = subprocess.run(args, cwd=tmp_path, env=subprocess_env(VCORE_CACHE=str(tmp_path / "cache")),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return optuna.load_study(study_name="optuna_lr_sft", storage=f"sqlite:///{tmp_path / 'optuna.db'}")

    first = search("a", 3, 1)
    assert [t.state.name for t in first.trials] == ["COMPLETE"] * 3
    before = [(t.number, t.params, t.value) for t in first.trials]
    for t, job in zip(first.trials, ["0", "1", "2"]):  # each trial: its run's rate and validation accuracy
        metrics = json.loads((tmp_path / "a" / job / "metrics.json").read_text())
        assert t.value == metrics["eval"]["synthetic_val/accuracy"]
        assert t.params["trainer.learning_rate"] == yaml.safe_load((tmp_path / "a" / job / "config.yaml").read_text())["trainer"]["learning_rate"]
    # An interrupted search continues: the same study, the first trials kept, new ones added.
    second = search("b", 2, 2)
    assert len(second.trials) == 5
    assert [(t.number, t.params, t.value) for t in second.trials[:3]] == before
