"""The fidelity table and the step-cost benchmark run and print what they promise."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from vcore.tools.fidelity import main as fidelity_main


def test_fidelity_table_cli(tmp_path, capsys):
    args = [
        "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64",
        "model.tiny.num_attention_heads=2",
        "model.tiny.num_key_value_heads=1",
        "model.tiny.pretrain.steps=0",
        "dataset.num_examples=8",
        "dataset.eval_examples=2",
    ]
    assert fidelity_main([*args, "--eps", "1e-2,1e-4", "--output-dir", str(tmp_path), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "| forward precision | ε=0.01 | ε=0.0001 |" in out
    rows = {
        line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| fp32") or line.startswith("| bf16")
    }
    assert rows["fp32"][0] > 0.99 and rows["fp32"][1] > 0.99  # exact float32 finite differences are faithful
    assert set(rows) == {"fp32", "bf16_autocast", "bf16_weights"}  # tf32 only on CUDA


# The benchmarks run with a bare environment (no PYTHONPATH: the scripts find the repo themselves), one thread each.
BENCH_ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def bench(tmp_path, *extra):
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_step.py"), f"--out={out}", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env=BENCH_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow  # ~45 s on 2 cores: four processes import torch (each variant is measured in a fresh one)
def test_step_benchmark_smoke(tmp_path):
    """The JSON and the printed table report the same measurements: each variant's median seconds, its ratio to SFT
    of the same run, its peak memory, and the trainable bytes of the benchmark's model, counted here from its config.
    Fails if a variant is missing or mislabelled, if the ratio column were not seconds / SFT seconds, or if the
    trainable-bytes denominator were not the model's (float32) parameters."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    stdout, data = bench(tmp_path, "--lengths=64", "--variants=sft,vcore_fd,vcore_jvp", "--repeats=1", "--warmup=0")
    rows = data["rows"]
    assert [(r["variant"], r["T"]) for r in rows] == [("sft", 64), ("vcore_fd", 64), ("vcore_jvp", 64)]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**data["model"], tie_word_embeddings=True))
    trainable = 4 * sum(p.numel() for p in model.parameters())  # float32 weights, tied embeddings counted once
    assert all(r["trainable_bytes"] == trainable for r in rows)
    table = {
        cells[1]: cells
        for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in stdout.splitlines())
        if cells and cells[0] == "64"
    }
    sft = rows[0]
    for r in rows:
        t, variant, seconds, ratio, peak, extra = table[r["variant"]]
        assert seconds == f"{r['seconds']:.3f}" and ratio == f"{r['seconds'] / sft['seconds']:.2f}x"
        assert peak == f"{r['peak_bytes'] / 2**20:.0f}"
        assert extra == f"{(r['peak_bytes'] - sft['peak_bytes']) / trainable:.2f}"


@pytest.mark.slow
def test_step_benchmark_cpu_preset(tmp_path):
    stdout, data = bench(tmp_path)
    assert {r["T"] for r in data["rows"]} == {256, 1024, 2048}


@pytest.mark.slow  # ~55 s on 2 cores
def test_memory_benchmark_smoke(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "bench_memory.py"),
            f"--out={out}",
            "--lengths=256",
            "--steps=1",
            "--batch=2",
            "--length-scale=0.02",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=BENCH_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    full, chunked = data["loss_memory"]
    assert full["kind"] == "full" and chunked["kind"] == "chunked"
    assert abs(full["loss_sum"] - chunked["loss_sum"]) < 1e-3 * abs(full["loss_sum"])  # same values
    assert {(r["method"], r["packed"]) for r in data["throughput"]} == {
        ("sft", False),
        ("sft", True),
        ("vcore", False),
        ("vcore", True),
    }
    assert "| 256 |" in proc.stdout and "packed / padded" in proc.stdout
