"""experiments/gpu_check.py without a GPU: it refuses at once without CUDA, and its report (targets, the one
markdown table, the JSON) is computed right from fake figures with known answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "experiments"))
import gpu_check  # noqa: E402

GIB, MIB = 2**30, 2**20
TRAINABLE = 2 * GIB

PYTEST_LOG = """\
tests/gpu/test_gpu_numerics.py::test_fused[rows-bf16] PASSED                [ 10%]
tests/gpu/test_gpu_numerics.py::test_fused[rows-fp32] FAILED                [ 20%]
tests/gpu/test_gpu_training.py::test_trains[sft-padded-full] PASSED         [ 30%]
tests/gpu/test_gpu_training.py::test_trains[sft-padded-full] ERROR          [ 30%]
tests/gpu/test_gpu_generation.py::test_vllm SKIPPED (could not import 'vllm') [ 40%]
tests/gpu/test_gpu_resume.py::test_resume[full_jvp] PASSED                  [ 50%]
tests/gpu/test_gpu_resume.py::test_resu"""  # cut off: the stage ran out of time mid-line


def step_row(variant, T, seconds, peak_gib):
    return {
        "variant": variant,
        "T": T,
        "seconds": seconds,
        "peak_bytes": int(peak_gib * GIB),
        "trainable_bytes": TRAINABLE,
    }


def fake_figures() -> dict:
    return {
        "bench_step": {
            "rows": [
                step_row("sft", 2048, 0.10, 10),
                step_row("vcore_jvp", 2048, 0.50, 13),
                step_row("vcore_jvp_fused", 2048, 0.35, 12.5),
                step_row("sft", 8192, 0.20, 20),
                step_row("vcore_jvp", 8192, 1.60, 25),
                step_row("vcore_jvp_fused", 8192, 0.50, 22),
                {"variant": "vcore_jvp_fused_every4", "T": 8192, "error": "OutOfMemoryError: boom"},
                step_row("sft", 4096, 0.15, 15),
                step_row("vcore_jvp", 4096, 0.60, 16),
                {**step_row("vcore_jvp_fused", 4096, 0.59, 16), "fused_fallbacks": ["head dim 96"]},
            ]
        },
        "bench_memory": {
            "loss_memory": [
                {"kind": "full", "T": 16384, "peak_bytes": 8000 * MIB},
                {"kind": "chunked", "T": 16384, "peak_bytes": 1200 * MIB},
            ],
            "throughput": [
                {"method": "sft", "packed": False, "tokens_per_s": 1000.0},
                {"method": "sft", "packed": True, "tokens_per_s": 1600.0},
                {"method": "vcore", "packed": False, "error": "RuntimeError: x"},
                {"method": "vcore", "packed": True, "tokens_per_s": 900.0},
            ],
        },
        "fidelity": {"pearson": {"fp32": {"0.01": 0.999, "0.0001": 1.0}, "tf32": {"0.01": 0.9, "0.0001": 0.2}}},
        "tests": gpu_check.parse_pytest(PYTEST_LOG),
    }


ENV = {
    "card": "NVIDIA H200",
    "torch": "2.13.0",
    "cuda": "12.8",
    "capability": "9.0",
    "triton": "3.9.0",
    "jvp_flash_attention": "0.14.0",
    "fused_attention": "available",
    "vllm": None,
    "transformers": "5.24.0",
    "date": "2026-12-02 10:00 UTC",
}
STAGES = {
    "tests": {"status": "ok", "returncode": 0, "seconds": 150.0, "budget_s": 210, "log": "t.log", "tail": ""},
    "bench_step": {
        "status": "timeout",
        "returncode": None,
        "seconds": 140.2,
        "budget_s": 140,
        "log": "b.log",
        "tail": "",
    },
}


def test_pytest_outcomes_are_read_from_a_cut_off_log():
    parsed = gpu_check.parse_pytest(PYTEST_LOG)
    assert parsed["counts"] == {
        "passed": 2,
        "failed": 1,
        "error": 1,
        "skipped": 1,
    }  # the teardown error wins over PASSED
    assert parsed["failed"] == [
        "tests/gpu/test_gpu_numerics.py::test_fused[rows-fp32]",
        "tests/gpu/test_gpu_training.py::test_trains[sft-padded-full]",
    ]


def test_targets_from_fake_figures():
    got = {t["name"]: t for t in gpu_check.targets(fake_figures())}
    step8k = got["VCORE-jvp step / SFT step, T=8192"]
    assert (
        step8k["value"] == pytest.approx(2.5) and step8k["passed"] is True and step8k["note"] == "vcore_jvp_fused"
    )  # the faster jvp
    mem8k = got["(probe peak - SFT peak) / trainable bytes, T=8192"]
    assert mem8k["value"] == pytest.approx(1.0) and mem8k["passed"] is True
    step2k = got["VCORE-jvp step / SFT step, T=2048"]
    assert step2k["value"] == pytest.approx(3.5) and step2k["passed"] is None  # reported, not gated
    assert got["(probe peak - SFT peak) / trainable bytes, T=2048"]["value"] == pytest.approx(1.25)
    loss = got["chunked / full-logit loss memory, T=16384"]
    assert loss["value"] == pytest.approx(0.15) and loss["passed"] is False
    packed = got["packed / padded tokens/s, sft"]
    assert packed["value"] == pytest.approx(1.6) and packed["passed"] is True
    assert got["packed / padded tokens/s, vcore"]["value"] is None  # its padded run failed: not measured


def test_a_fused_row_that_fell_back_does_not_count_as_fused():
    """Its calls ran the blocked path: the target takes the blocked row, and the table names the fallback."""
    figures = fake_figures()
    report = gpu_check.build_report(ENV, STAGES, figures)
    row = (
        "| step cost T=4096 | vcore_jvp_fused s/step, peak GiB | "
        "0.590, 3.93x SFT, 16.00 (blocked path: head dim 96) | | |"
    )
    assert row in gpu_check.render(report)
    for r in figures["bench_step"]["rows"]:
        if r.get("variant") == "vcore_jvp_fused" and r["T"] == 8192:
            r["fused_fallbacks"] = ["jvp-flash-attention is not installed"]
    step8k = next(t for t in gpu_check.targets(figures) if t["name"] == "VCORE-jvp step / SFT step, T=8192")
    assert step8k["note"] == "vcore_jvp" and step8k["value"] == pytest.approx(8.0) and step8k["passed"] is False


def test_targets_without_figures_are_not_measured():
    assert all(t["value"] is None and t["passed"] is None for t in gpu_check.targets({}))


def test_the_table_and_the_json_carry_every_figure():
    report = gpu_check.build_report(ENV, STAGES, fake_figures())
    assert json.loads(json.dumps(report))["targets"] == report["targets"]  # the JSON holds it as is
    assert report["card"] == "NVIDIA H200" and report["tests"]["counts"]["failed"] == 1
    table = gpu_check.render(report)
    lines = table.splitlines()
    assert lines[0].startswith(
        "GPU check on NVIDIA H200 (torch 2.13.0, CUDA 12.8, Triton 3.9.0, "
        "jvp-flash-attention 0.14.0: fused kernel available;"
    )
    assert lines[2] == "| part | figure | value | target | result |"
    assert sum(line.startswith("| part |") for line in lines) == 1  # one table
    expected = [
        "| stage | tests | ok in 150 s (budget 210 s) | ok | pass |",
        "| stage | bench_step | timeout in 140 s (budget 140 s) | ok | FAIL |",
        "| tests | passed / failed / errors / skipped | 2 / 1 / 1 / 1 | no failure | FAIL |",
        "| tests | failed | tests/gpu/test_gpu_numerics.py::test_fused[rows-fp32] | | FAIL |",
        "| target | VCORE-jvp step / SFT step, T=8192 | 2.500 (vcore_jvp_fused) | <= 3.0 | pass |",
        "| target | VCORE-jvp step / SFT step, T=2048 | 3.500 (vcore_jvp_fused) | <= 3.0 | reported |",
        "| target | chunked / full-logit loss memory, T=16384 | 0.150 | <= 1/8 | FAIL |",
        "| target | packed / padded tokens/s, vcore | - (not measured) | >= 1.5 | not measured |",
        "| step cost T=8192 | vcore_jvp_fused s/step, peak GiB | 0.500, 2.50x SFT, 22.00 | | |",
        "| step cost T=8192 | vcore_jvp_fused_every4 | failed: OutOfMemoryError: boom | | |",
        "| loss memory T=16384 | chunked | 1200 MiB | | |",
        "| throughput | vcore padded | RuntimeError: x | | |",
        "| fidelity (Pearson fd vs jvp) | tf32 | ε=0.01: 0.900, ε=0.0001: 0.200 | | |",
    ]
    for line in expected:
        assert line in lines, line


def test_without_cuda_it_exits_at_once_and_runs_nothing(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run_stage", lambda *a, **k: pytest.fail("a stage ran without CUDA"))
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--work", str(tmp_path / "work")]) == gpu_check.NO_CUDA_STATUS == 2
    assert "no CUDA device visible" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_stage_over_its_budget_is_killed_with_its_children_and_its_log_kept(tmp_path):
    """The budget kills the stage's whole process group (torchrun's ranks, vLLM's workers), not only its leader."""
    import time

    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)"
    )
    st = gpu_check.run_stage([sys.executable, "-c", code], budget=3, log=tmp_path / "s.log")
    assert st["status"] == "timeout" and st["returncode"] is None and 3 <= st["seconds"] < 30
    assert "started" in st["tail"]
    child = int(pid_file.read_text())

    def alive(pid: int) -> bool:
        """Running: a killed orphan is a zombie until PID 1 reaps it, which a container's PID 1 may do late or never."""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state not in ("Z", "X")

    for _ in range(200):
        if not alive(child):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the stage's child {child} outlived the stage")
    failed = gpu_check.run_stage([sys.executable, "-c", "raise SystemExit(3)"], budget=30, log=tmp_path / "f.log")
    assert failed["status"] == "failed" and failed["returncode"] == 3


def test_main_runs_every_stage_reads_what_they_wrote_and_keeps_going_after_a_failure(monkeypatch, tmp_path, capsys):
    """CUDA faked, each stage a small command: the one that writes its figures then fails is recorded as failed and
    its figures are still used; the report lands in the JSON and the table on stdout; the status says it failed."""
    import torch

    figures = fake_figures()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "environment", lambda: ENV)
    monkeypatch.setattr(gpu_check, "BUDGETS", {name: 30 for name in gpu_check.BUDGETS})

    def commands(work):
        def write(name, data, code=0):
            return [
                sys.executable,
                "-c",
                f"import json, pathlib; pathlib.Path({str(work / name)!r}).write_text({json.dumps(data)!r}); "
                f"raise SystemExit({code})",
            ]

        return {
            "tests": [sys.executable, "-c", f"print({PYTEST_LOG!r})"],
            "bench_step": write("bench_step.json", figures["bench_step"], code=1),
            "bench_memory": write("bench_memory.json", figures["bench_memory"]),
            "fidelity": write("fidelity.json", figures["fidelity"]),
        }

    monkeypatch.setattr(gpu_check, "stage_commands", commands)
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--work", str(tmp_path / "work")]) == 1
    report = json.loads(out.read_text())
    assert {k: v["status"] for k, v in report["stages"].items()} == {
        "tests": "ok",
        "bench_step": "failed",
        "bench_memory": "ok",
        "fidelity": "ok",
    }
    assert report["tests"]["counts"] == {"passed": 2, "failed": 1, "error": 1, "skipped": 1}
    assert report["figures"]["bench_step"] == figures["bench_step"]  # written before the stage failed: kept
    assert report["targets"] == gpu_check.targets(figures)
    assert gpu_check.render(report) in capsys.readouterr().out
