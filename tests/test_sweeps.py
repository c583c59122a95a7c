"""Every study's sweep runs as a two-job multirun in a tiny setting; a rerun resumes its W&B run id."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, subprocess_env

# The grids; the Optuna searches (optuna_*.yaml) run in tests/test_optuna.py, the RL sweep (rl_table2.yaml, jobs that
# start from finished SFT runs) in tests/test_rl.py.
SWEEPS = sorted(
    p.stem for p in (REPO / "sweeps").glob("*.yaml") if not p.stem.startswith("optuna_") and p.stem != "rl_table2"
)
# Shrink any study to the tiny model on the synthetic task; the grid is overridden to two jobs below.
TINY = [
    "model=tiny",
    "dataset=synthetic",
    "benchmark=synthetic",
    "decoding=tiny",
    "trainer=tiny",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=1",
    "model.tiny.pretrain.steps=0",
    "dataset.num_examples=16",
    "dataset.eval_examples=4",
    "trainer.max_steps=1",
    "trainer.per_device_train_batch_size=4",
    "decoding.max_new_tokens=8",
    "eval.num_workers=1",
]
TWO_JOBS = {
    "main_table_qwen3_4b_math": ["method=sft,dft"],
    "main_table_qwen3_4b_code": ["method=random,iw_sft"],
    "data_scaling": ["method=dft", "dataset.num_examples=8,16"],
    "tau_eps": ["method=vcore", "method.probe.epsilon=1e-3", "method.tau=0.5,2"],
    "variance_control": ["method=vcore", "method.probe.epsilon=1e-3", "method.variance_control=none,paper"],
    "synthetic_study": ["method=reasoning_sft,vcore_study", "model.tiny.seed=1", "seed=1"],
    "synthetic_study_tune": ["method=reasoning_sft", "trainer.learning_rate=1e-3,3e-3", "seed=1"],
    "synthetic_study_tau": ["method.tau=0.1,0.2", "method.probe.epsilon=1e-3", "seed=1"],
    "synthetic_study_pilot": ["method=sft,vcore", "seed=1"],
    "synthetic_lr": ["method=sft", "trainer.learning_rate=1e-3,3e-3"],
    "synthetic_variance_control": ["method.variance_control=paper,none", "seed=1"],
    "synthetic_data_scaling": ["method=vcore", "dataset.num_examples=8,16", "seed=1"],
    "synthetic_tau_eps": ["method.tau=0.1,0.3", "method.probe.epsilon=1e-3"],
}


def multirun(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = subprocess_env(VCORE_CACHE=str(out.parent / "cache"))
    args = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "--config-dir",
        str(REPO / "sweeps"),
        "--config-name",
        name,
        *TINY,
        *TWO_JOBS[name],
        f"hydra.sweep.dir={out}",
        *extra,
    ]
    # From the repository root, as documented: the study's sweeps find its method's config dir relative to it.
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_every_sweep_has_a_two_job_shape():
    assert set(SWEEPS) == set(TWO_JOBS), "add the new sweep's two-job shape to TWO_JOBS"


# Each sweep is a two-job multirun in a subprocess (~12 s on 2 cores). The default suite runs the CPU study; the
# others are slow tests (the study's tuning, τ and pilot steps use the study's overlay and search path). Every
# overlay they use trains for a step in tests/test_experiments.py (in-process, ~2 s).
SLOW = {
    "synthetic_study_tune",
    "synthetic_study_tau",
    "synthetic_study_pilot",
    "synthetic_lr",
    "synthetic_variance_control",
    "synthetic_data_scaling",
    "synthetic_tau_eps",
    "main_table_qwen3_4b_math",
    "main_table_qwen3_4b_code",
    "data_scaling",
    "tau_eps",
    "variance_control",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SWEEPS])
def test_sweep_runs_two_separate_jobs(tmp_path, name):
    out = tmp_path / "sweep"
    multirun(name, out, "logger.mode=disabled")
    jobs = sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    configs = [(j / "config.yaml").read_text() for j in jobs]
    assert configs[0] != configs[1] and all((j / "metrics.json").exists() for j in jobs)
    assert f"group: {name}" in configs[0]
    if name == "synthetic_study":  # the study's VCORE arm: method vcore at the registered τ (PREREG.md, section 9)
        vcore = yaml.safe_load(configs[1])["method"]
        assert (vcore["name"], vcore["tau"]) == ("vcore", 0.1)


@pytest.mark.slow  # ~75 s: three multiruns; tests/test_loggers.py checks the same in-process
def test_rerun_resumes_the_same_wandb_run(tmp_path):
    """A requeued job (same config, same run dir) continues its W&B run; the same config elsewhere is another run."""

    def run_ids(out: Path) -> set[str]:
        return {r.name.rsplit("-", 1)[-1] for r in (out / "0" / "wandb").glob("offline-run-*")}

    for out in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        multirun("variance_control", out, "method.tau=0.5", "method.variance_control=none")
    assert len(list((tmp_path / "a" / "0" / "wandb").glob("offline-run-*"))) == 2  # two attempts...
    assert len(run_ids(tmp_path / "a")) == 1  # ...one W&B run
    assert run_ids(tmp_path / "a").isdisjoint(run_ids(tmp_path / "b"))
