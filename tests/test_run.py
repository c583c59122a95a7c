"""``python run.py`` end to end in a subprocess, single run and multirun, as a user runs it."""

import json
import os
import subprocess
import sys

import yaml

from tests.helpers import REPO, TINY_TEST
from vcore.run.loggers import run_name


def run(args, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO),
           "VCORE_CACHE": str(cwd / "cache")}  # the tiny model is built into the test's dir, not the user's cache
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def tiny(logger="none", probe=True):
    keep = [o for o in TINY_TEST if not o.startswith("logger=") and (probe or not o.startswith("method.probe"))]
    return keep + [f"logger={logger}"]


SPLITS = ("test", "ood_hard", "ood_template", "pretrain")


def test_run_py_end_to_end(tmp_path):
    """The main job as a user runs it: the start model and the fine-tuned one evaluated on every split, with
    intervals, and every number in metrics.json traceable to the per-item files."""
    overrides = [o for o in tiny() if o != "eval.before_train=false"]  # the default job evaluates the start model
    run([*overrides, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["name"] == "vcore" and metrics["model"].startswith(str(tmp_path / "cache" / "tiny" / "tiny-"))
    for key in ("nll", "weighted_loss", "tokens_per_s", "final/weights/mean", "final/weights/ess_frac", "final/vcore/alpha", "final/vcore/tau"):
        assert key in metrics["train"], key
    for stage, folder in (("eval", "eval"), ("eval_before", "eval_before")):
        for split in SPLITS:
            name = f"synthetic_{split}"
            items = [json.loads(x) for x in (out / folder / f"{name}.jsonl").read_text().splitlines()]
            assert len(items) == 8
            acc = metrics[stage][f"{name}/accuracy"]
            assert acc == sum(i["correct"] for i in items) / 8  # the summary is the per-item file's mean
            assert metrics[stage][f"{name}/accuracy_ci95_low"] <= acc <= metrics[stage][f"{name}/accuracy_ci95_high"]
    assert all(metrics["eval"][f"{split}/nll"] > 0 for split in SPLITS)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["model"].startswith(f"{out / 'final'} (trained from ")  # not the start model's path
    assert summary["decoding"]["max_new_tokens"] == 48 and "prompt_templates" in summary
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "tokenizer_config.json").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "config.yaml").exists()


def test_multirun_gives_separate_runs_and_wandb_runs(tmp_path):
    proc = run(["-m", "method=sft,vcore", *tiny("wandb", probe=False), f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout[-2000:]
    names, ids = [], set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        names.append(metrics["method"]["name"])
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        run_id = runs[0].name.rsplit("-", 1)[-1]
        ids.add(run_id)
        # The run is named after this job's own overrides (seeds and paths left out).
        record = (runs[0] / f"run-{run_id}.wandb").read_bytes()
        name = run_name(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert name.startswith(f"method={metrics['method']['name']},") and name.encode() in record
    assert names == ["sft", "vcore"] and len(ids) == 2


def test_task_eval_on_a_finished_run_full_and_lora(make_cfg, tmp_path):
    from vcore.run.training import run as run_job

    for lora in (False, True):
        train_dir = tmp_path / f"train_{lora}"
        run_job(make_cfg(f"output_dir={train_dir}", f"model.lora.enabled={lora}", "eval.after_train=false", method="sft"))
        eval_dir = tmp_path / f"eval_{lora}"
        metrics = run_job(make_cfg(f"output_dir={eval_dir}", "task=eval", f"eval.model={train_dir}", method="sft"))
        assert set(metrics["eval"]) == {f"synthetic_{s}/{k}" for s in SPLITS for k in ("accuracy", "truncation_rate", "accuracy_ci95_low", "accuracy_ci95_high")}
        assert (eval_dir / "eval" / "summary.md").exists() and (eval_dir / "metrics.json").exists()


def test_task_eval_needs_a_model(make_cfg):
    import pytest

    from vcore.config import ConfigError, to_object

    with pytest.raises(ConfigError, match="eval.model"):
        to_object(make_cfg("task=eval"))
