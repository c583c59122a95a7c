"""W&B Sweeps files (sweeps/wandb/*.yaml, vcore/search/wandb_sweep.py): every parameter is a key of the typed config
with values in range, the command is the one W&B's agent builds, and a stand-in agent that hands out two parameter
sets runs both trials to completion offline, as the real agent would start them (its environment, its command). A
run the agent stops (SIGTERM) ends with a checkpoint, its W&B run finished and exit status 0 (slow)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, TINY_MODEL, finished_wandb_run, subprocess_env
from vcore.checks import ConfigError
from vcore.search.wandb_sweep import agent_command, check_sweep, load_sweep, parameter_sets, with_overrides

SWEEPS = sorted((REPO / "sweeps" / "wandb").glob("*.yaml"))


def test_the_sweep_files_are_the_three_searches():
    assert [p.stem for p in SWEEPS] == ["synthetic_lr", "synthetic_vcore", "tau_eps"]
    for path in SWEEPS:
        sweep = load_sweep(path)
        if sweep["method"] == "bayes":  # searches: Hyperband on the validation accuracy logged during training
            assert sweep["metric"] == {"name": "eval/synthetic_val/accuracy", "goal": "maximize"}
            assert sweep["early_terminate"]["type"] == "hyperband" and "experiment=synthetic_search" in sweep["command"]
        else:  # the paper's figure: every cell runs to the end
            assert sweep["method"] == "grid" and "early_terminate" not in sweep


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_is_a_config_key_with_values_in_range(path):
    """Both ends of each distribution and every listed value compose through the agent's command and pass the
    schema's checks (tests/test_docs_commands.py also checks the commands as the README's are checked)."""
    sweep = load_sweep(path)
    checked = check_sweep(path)
    assert len(checked) == len(parameter_sets(sweep)) >= 2
    for name in sweep["parameters"]:
        assert all(any(o.startswith(f"{name}=") for o in overrides) for overrides in checked)


def _write(tmp_path, sweep: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"parameters": {"method.tauu": {"values": [0.1]}}}, "method.tauu"),  # not a key of the schema
        ({"parameters": {"method.tau": {"distribution": "uniform", "min": -1.0, "max": 1.0}}}, "method.tau"),  # < 0
        (
            {"parameters": {"method.tau": {"distribution": "log_uniform_values", "min": "1e-3", "max": 1.0}}},
            "not a number",
        ),
        (
            {"parameters": {"method": {"values": ["sft", "vcore"]}}},
            "config group",
        ),  # would hide the run's method config
        ({"metric": {"name": "eval/synthetic_test/accuracy", "goal": "maximize"}}, "not logged by these runs"),
    ],
)
def test_the_check_names_what_is_wrong(tmp_path, change, error):
    from hydra.errors import HydraException

    sweep = {**load_sweep(REPO / "sweeps" / "wandb" / "synthetic_vcore.yaml"), **change}
    with pytest.raises((ConfigError, HydraException), match=error):
        check_sweep(_write(tmp_path, sweep))


def test_hyperband_needs_the_validation_curve(tmp_path):
    sweep = with_overrides(load_sweep(REPO / "sweeps" / "wandb" / "synthetic_vcore.yaml"), ["eval.every=0"])
    with pytest.raises(ConfigError, match="eval.every"):
        check_sweep(_write(tmp_path, sweep))


def test_a_variant_for_another_method_or_model(tmp_path):
    from vcore.search.wandb_sweep import main

    out = tmp_path / "lr_dft.yaml"
    assert main([str(REPO / "sweeps" / "wandb" / "synthetic_lr.yaml"), "--set", "method=dft", "--out", str(out)]) == 0
    variant = load_sweep(out)
    assert variant["name"] == "synthetic_lr_dft" and "method=dft" in variant["command"]
    assert "method=sft" not in variant["command"] and variant["parameters"] == load_sweep(SWEEPS[0])["parameters"]


def test_agent_command_is_the_command_wandbs_agent_runs(tmp_path, monkeypatch):
    """W&B's own agent (wandb.wandb_agent.Agent) builds the command for a run; ours must be the same."""
    from wandb import wandb_agent

    started = {}

    class Started:
        def __init__(self, command=None, env=None, **kwargs):
            started.update(command=command, env=env)

    monkeypatch.setattr(wandb_agent, "AgentProcess", Started)
    agent_env = {"WANDB_SWEEP_ID": "sid", "WANDB_RUN_ID": "", "WANDB_SWEEP_PARAM_PATH": "", "WANDB_DIR": str(tmp_path)}
    for name, value in agent_env.items():  # what _command_run sets is put back after the test
        monkeypatch.setenv(name, value)
    for path in SWEEPS:
        sweep = load_sweep(path)
        params = parameter_sets(sweep)[0]
        agent = wandb_agent.Agent(api=None, queue=None, sweep_id="sid")
        agent._sweep_command = sweep["command"]
        args = {k: {"value": v} for k, v in params.items()}
        agent._command_run({"run_id": "r1", "program": sweep["program"], "args": args})
        assert started["command"] == agent_command(sweep, params)
        assert started["env"]["WANDB_RUN_ID"] == "r1" and started["env"]["WANDB_SWEEP_ID"] == "sid"


# --------------------------------------------------------------------------------------------- a stand-in agent
# What a sweep on a cluster would set for a real model; here the tiny model, a few steps, validation at step 2.
TINY_PARAMS = {
    **dict(o.split("=") for o in TINY_MODEL),
    "dataset.num_examples": 16,
    "dataset.eval_examples": 4,
    "trainer.max_steps": 4,
    "trainer.per_device_train_batch_size": 4,
    "decoding.max_new_tokens": 8,
    "eval.num_workers": 1,
    "eval.every": 2,
}


def start_run(sweep_file: Path, params: dict, run_id: str, cwd: Path, log: Path) -> subprocess.Popen:
    """Start one run as ``wandb agent`` does: its environment (sweep and run ids, the parameters' file), the sweep's
    command expanded for ``params``, a new process group, from the agent's working directory."""
    from wandb.sdk.lib import config_util

    sweep = {**load_sweep(sweep_file), "program": str(REPO / "run.py")}  # the agent runs from the repository root
    param_file = cwd / "wandb" / "sweep-fakesweep" / f"config-{run_id}.yaml"
    param_file.parent.mkdir(parents=True, exist_ok=True)
    config_util.save_config_file_from_dict(str(param_file), {k: {"value": v} for k, v in params.items()})
    env = subprocess_env(
        WANDB_SWEEP_ID="fakesweep",
        WANDB_RUN_ID=run_id,
        WANDB_SWEEP_PARAM_PATH=str(param_file),
        WANDB_PROJECT="vcore",
        WANDB_DIR=str(cwd),
        VCORE_CACHE=str(cwd / "cache"),
    )
    return subprocess.Popen(
        agent_command(sweep, params, python=sys.executable),
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def test_a_stand_in_agent_runs_two_trials_to_completion_offline(tmp_path):
    """Two parameter sets of sweeps/wandb/synthetic_lr.yaml, one run after the other as an agent runs them (~40 s):
    each trains, logs its validation curve under the sweep's metric, and ends as a finished W&B run of the sweep."""
    from vcore.tools.dashboard import GROUP_BY

    sweep_file = REPO / "sweeps" / "wandb" / "synthetic_lr.yaml"
    handed_out = [{**TINY_PARAMS, "trainer.learning_rate": lr} for lr in (0.001, 0.01)]
    for i, params in enumerate(handed_out):
        log = tmp_path / f"run{i}.log"
        run = start_run(sweep_file, params, f"fakerun{i}", tmp_path, log)
        assert run.wait(timeout=300) == 0, log.read_text()[-4000:]

    for i, params in enumerate(handed_out):
        run_dir = tmp_path / "multirun" / "wandb_fakesweep" / f"fakerun{i}"  # the command's hydra.run.dir
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["trainer"]["learning_rate"] == params["trainer.learning_rate"]
        assert config["method"]["name"] == "sft"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        accuracy = metrics["eval"]["synthetic_val/accuracy"]
        curve = [json.loads(x) for x in (run_dir / "validation.jsonl").read_text().splitlines()]
        assert [x["step"] for x in curve] == [2]

        run, exit_code = finished_wandb_run(run_dir)
        assert exit_code == 0 and run.run["id"] == f"fakerun{i}" and run.run["group"] == "wandb_fakesweep"
        metric = load_sweep(sweep_file)["metric"]["name"]
        logged = [(h["_step"], h[metric]) for h in run.history if metric in h]
        assert logged == [(2, curve[0][metric]), (4, accuracy)]  # what Hyperband reads: one value per validation
        assert run.summary[metric] == accuracy
        # The sweep's parameters as W&B records them, next to the run's nested config the dashboard groups by
        # (python -m vcore.dashboard ENTITY/PROJECT --group wandb_<sweep id> shows them with the rest).
        assert run.config["trainer.learning_rate"] == params["trainer.learning_rate"]
        assert run.config["trainer"]["learning_rate"] == params["trainer.learning_rate"]
        assert run.config[GROUP_BY.split(".")[0]][GROUP_BY.split(".")[1]] == "sft" and run.run["job_type"] == "train"


@pytest.mark.slow  # ~30 s
def test_a_run_the_agent_stops_ends_cleanly(tmp_path):
    """The agent stops a run (Hyperband, or Stop in the UI) with SIGTERM: a checkpoint at the end of the current
    step, the W&B run finished with status 0, exit status 0 (the agent counts nonzero as a failed run)."""
    sweep_file = REPO / "sweeps" / "wandb" / "synthetic_lr.yaml"
    params = {**TINY_PARAMS, "trainer.max_steps": 200, "eval.every": 0, "trainer.learning_rate": 0.001}
    log = tmp_path / "run.log"
    run = start_run(sweep_file, params, "fakerun", tmp_path, log)
    deadline = time.monotonic() + 180
    while log.read_text().count("'loss'") < 3:  # training is under way
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # what the agent's "stop" command does (AgentProcess.terminate)
    assert run.wait(timeout=120) == 0, log.read_text()[-4000:]
    run_dir = tmp_path / "multirun" / "wandb_fakesweep" / "fakerun"
    (checkpoint,) = (run_dir / "checkpoints").glob("checkpoint-*")
    assert 3 <= int(checkpoint.name.split("-")[1]) < 200 and not (run_dir / "final").exists()
    record, exit_code = finished_wandb_run(run_dir)
    assert exit_code == 0 and record.summary["stopped/step"] == int(checkpoint.name.split("-")[1])
    assert "W&B sweep" in record.summary["stopped/reason"]
