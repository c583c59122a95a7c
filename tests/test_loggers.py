"""Run naming, requeue ids, and that a W&B run is finished even when training raises."""

import pytest

import vcore.run.lifecycle as lifecycle
import vcore.run.training as train_mod
from vcore.run.loggers import NullLogger, config_hash, run_name


def test_run_name_excludes_seeds_and_paths_and_sanitises():
    overrides = [
        "method=vcore",
        "seed=3",
        "output_dir=/x/y",
        "method.tau=1/2",
        "hydra.run.dir=z",
        "method.probe.seed=4",
    ]
    assert run_name(overrides) == "method=vcore,method.tau=1-2,method.probe.seed=4"
    assert run_name([]) == "default"


def test_config_hash_is_stable_and_ignores_paths():
    a = {"method": {"name": "vcore", "tau": 1.0}, "seed": 1, "output_dir": "/a"}
    assert config_hash(a) == config_hash({**a, "output_dir": "/b"})
    assert config_hash(a) != config_hash({**a, "seed": 2})


class Recorder(NullLogger):
    def __init__(self):
        self.finished = []

    def finish(self, exit_code: int = 0) -> None:
        self.finished.append(exit_code)


def test_logger_finished_when_training_raises(make_cfg, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(lifecycle, "build_logger", lambda *a, **k: rec)

    def boom(*a, **k):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(train_mod, "build_job", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_mod.train(make_cfg())
    assert rec.finished == [1]


def test_logger_receives_step_metrics_and_summary(make_cfg, monkeypatch):
    logged, summaries = [], []

    class Spy(Recorder):
        def log(self, metrics, step=None):
            logged.append((step, metrics))

        def summary(self, metrics):
            summaries.append(metrics)

    spy = Spy()
    monkeypatch.setattr(lifecycle, "build_logger", lambda *a, **k: spy)
    train_mod.train(make_cfg())
    steps = [s for s, m in logged if "train/nll" in m]
    assert steps == [1, 2] and spy.finished == [0]
    assert any("data/train/examples" in m for _, m in logged)
    final = {k: v for m in summaries for k, v in m.items()}  # as W&B merges summary updates
    assert "eval/test/nll" in final and "method/tau" in final


def test_config_hash_ignores_paths_inside_the_output_dir():
    a = {"output_dir": "/runs/a", "model": {"name_or_path": "/runs/a/init_model"}, "seed": 1}
    b = {"output_dir": "/runs/b", "model": {"name_or_path": "/runs/b/init_model"}, "seed": 1}
    c = {"output_dir": "/runs/b", "model": {"name_or_path": "/elsewhere/init_model"}, "seed": 1}
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_a_rerun_in_the_same_dir_continues_its_wandb_run(make_cfg, tmp_path):
    """A requeued job (same config, same run dir) logs into the same W&B run id; the same config in another dir is
    another run. In-process through train(); tests/test_sweeps.py does it through a multirun (slow)."""
    from vcore.run.training import train

    def run_ids(out):
        return {r.name.rsplit("-", 1)[-1] for r in (out / "wandb").glob("offline-run-*")}

    quick = ["logger=wandb", "trainer.max_steps=1", "eval.after_train=false", "trainer.eval_at_end=false"]
    for out in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        train(make_cfg(*quick, f"output_dir={out}", method="sft"))
    assert len(list((tmp_path / "a" / "wandb").glob("offline-run-*"))) == 2  # two attempts...
    assert len(run_ids(tmp_path / "a")) == 1  # ...one W&B run
    assert run_ids(tmp_path / "a").isdisjoint(run_ids(tmp_path / "b")) and len(run_ids(tmp_path / "b")) == 1
