"""The fidelity table and the step-cost benchmark run and print what they promise."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from vcore.tools.fidelity import main as fidelity_main


def test_fidelity_table_cli(tmp_path, capsys):
    args = ["model.tiny.hidden_size=32", "model.tiny.intermediate_size=64", "model.tiny.num_attention_heads=2",
            "model.tiny.num_key_value_heads=1", "model.tiny.pretrain.steps=0", "dataset.num_examples=8", "dataset.eval_examples=2"]
    assert fidelity_main([*args, "--eps", "1e-2,1e-4", "--output-dir", str(tmp_path), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "| forward precision | ε=0.01 | ε=0.0001 |" in out
    rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:-1]] for line in out.splitlines() if line.startswith("| fp32") or line.startswith("| bf16")}
    assert rows["fp32"][0] > 0.99 and rows["fp32"][1] > 0.99  # exact float32 finite differences are faithful
    assert set(rows) == {"fp32", "bf16_autocast", "bf16_weights"}  # tf32 only on CUDA


def bench(tmp_path, *extra):
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_step.py"), f"--out={out}", *extra],
        capture_output=True, text=True, timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_step_benchmark_smoke(tmp_path):
    stdout, data = bench(tmp_path, "--lengths=64", "--variants=sft,vcore_fd,vcore_jvp", "--repeats=1", "--warmup=0")
    assert [r["variant"] for r in data["rows"]] == ["sft", "vcore_fd", "vcore_jvp"]
    assert all(r["seconds"] > 0 for r in data["rows"])
    assert "| 64 | vcore_jvp |" in stdout and "x SFT" in stdout


@pytest.mark.slow
def test_step_benchmark_cpu_preset(tmp_path):
    stdout, data = bench(tmp_path)
    assert {r["T"] for r in data["rows"]} == {256, 1024, 2048}


def test_memory_benchmark_smoke(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_memory.py"), f"--out={out}", "--lengths=256",
         "--steps=1", "--batch=2", "--length-scale=0.02"],
        capture_output=True, text=True, timeout=900, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    full, chunked = data["loss_memory"]
    assert full["kind"] == "full" and chunked["kind"] == "chunked"
    assert abs(full["loss_sum"] - chunked["loss_sum"]) < 1e-3 * abs(full["loss_sum"])  # same values
    assert {(r["method"], r["packed"]) for r in data["throughput"]} == {("sft", False), ("sft", True), ("vcore", False), ("vcore", True)}
    assert "| 256 |" in proc.stdout and "packed / padded" in proc.stdout
