"""``python run.py`` end to end in a subprocess, single run and multirun, as a user runs it."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO, TINY_TEST


def run(args, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def tiny(logger="none", probe=True):
    keep = [o for o in TINY_TEST if not o.startswith("logger=") and (probe or not o.startswith("method.probe"))]
    return keep + [f"logger={logger}"]


def test_run_py_end_to_end(tmp_path):
    run([*tiny(), f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["name"] == "vcore" and metrics["method"]["tau"] == 0.5
    for key in ("nll", "weighted_loss", "tokens_per_s", "final/weights/mean", "final/weights/ess_frac", "final/vcore/alpha"):
        assert key in metrics["train"], key
    assert set(metrics["eval"]) >= {"id/nll", "ood/nll"}
    assert all(v == v and v > 0 for v in metrics["eval"].values())
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
        ids.add(runs[0].name.rsplit("-", 1)[-1])
        meta = (runs[0] / "files")
        assert meta.exists() or any(runs[0].iterdir())
    assert names == ["sft", "vcore"] and len(ids) == 2
