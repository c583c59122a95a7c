"""One-command GPU acceptance check: the GPU tests, the step-cost and memory benchmarks and the fidelity table on one
CUDA device; prints one markdown table and writes one JSON file.

    pip install -e ".[test,gpu]"            # vllm too, if the vLLM backend is to be checked: pip install vllm
    python experiments/gpu_check.py         # at most 8 minutes (budgets) on one H100/H200
                                            # writes gpu_check.json, logs in gpu_check/

Stages, one after another, each in its own process group with its own time budget (seconds, ``--budget-scale``
multiplies them); a stage that fails or runs over is recorded (status, exit code, the tail of its log) and the next
one starts, and what a stage wrote before it stopped is kept (the benchmarks rewrite their JSON after every
measurement):

- ``tests`` (240 s): ``pytest -m gpu`` (tests/gpu/ and the device-parametrised CPU tests), per-test outcomes;
- ``bench_step`` (125 s): one optimizer step of SFT, VCORE-fd and VCORE-jvp (blocked and fused attention,
  ``probe.every`` 1 and 4) on a Qwen3-0.6B-shaped model in bf16 at T = 2,048 and 8,192 (experiments/bench_step.py);
- ``bench_memory`` (70 s): loss memory, full logits vs chunked, at T = 4k/8k/16k, and padded vs packed tokens/s of
  SFT and VCORE (fused probe) on the paper's length spread (experiments/bench_memory.py);
- ``fidelity`` (40 s): finite-difference vs exact scores per precision and ε, TF32 included (vcore.tools.fidelity),
  on the tiny model with random weights (no pretraining, to fit the budget).

Targets (issue 16), each pass / fail / not measured in the table and the JSON: VCORE with the jvp probe at most 3.0x
a bf16 SFT step at T = 8,192 (2,048 reported); its peak memory at most SFT's + 1.2x the trainable parameters' bytes;
chunked loss memory at T = 16,384 at most 1/8 of full logits'; packed at least 1.5x padded tokens/s (SFT).

Without CUDA it exits at once with status 2 and says so; nothing is run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NO_CUDA_STATUS = 2
STEP_VARIANTS = ("sft", "vcore_fd", "vcore_jvp", "vcore_jvp_every4", "vcore_jvp_fused", "vcore_jvp_fused_every4")
BUDGETS = {"tests": 240, "bench_step": 125, "bench_memory": 70, "fidelity": 40}
LIMITS = {"step_cost": 3.0, "probe_memory": 1.2, "loss_memory": 1 / 8, "packed_speedup": 1.5}


# ------------------------------------------------------------------------------------------------- stages
def stage_commands(work: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "tests": [py, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", "tests"],
        "bench_step": [
            py,
            "experiments/bench_step.py",
            "--gpu",
            "--lengths=2048,8192",
            f"--variants={','.join(STEP_VARIANTS)}",
            "--warmup=1",
            "--repeats=3",
            f"--out={work / 'bench_step.json'}",
        ],
        "bench_memory": [
            py,
            "experiments/bench_memory.py",
            "--gpu",
            "--lengths=4096,8192,16384",
            "--steps=3",
            "--batch=4",
            "--jvp-attention=fused",
            f"--out={work / 'bench_memory.json'}",
        ],
        "fidelity": [
            py,
            "-m",
            "vcore.tools.fidelity",
            "model.tiny.pretrain.steps=0",
            f"model.tiny.cache_dir={work / 'tiny'}",
            "--output-dir",
            str(work / "fidelity"),
            "--json",
            str(work / "fidelity.json"),
        ],
    }


def run_stage(argv: list[str], budget: float, log: Path) -> dict:
    """Run ``argv`` from the repository root in a new process group, killed (the whole group: torchrun's ranks,
    vLLM's workers) after ``budget`` seconds; output to ``log``."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call created (start_new_session), nothing else
            proc.wait()
            rc, status = None, "timeout"
    text = log.read_text(errors="replace")
    return {
        "status": status,
        "returncode": rc,
        "seconds": round(time.monotonic() - t0, 1),
        "budget_s": budget,
        "log": str(log),
        "tail": text[-2000:],
    }


# ------------------------------------------------------------------------------------------------- figures (pure)
_OUTCOME = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
_RANK = {"PASSED": 0, "XFAIL": 0, "SKIPPED": 1, "XPASS": 2, "FAILED": 3, "ERROR": 3}


def parse_pytest(text: str) -> dict:
    """Per-test outcomes from ``pytest -v`` output (complete or cut off): counts and the failed tests' ids. A test
    reported twice (passed, then an error at teardown) keeps its worst outcome."""
    outcome: dict[str, str] = {}
    for node, result in _OUTCOME.findall(text):
        if node not in outcome or _RANK[result] > _RANK[outcome[node]]:
            outcome[node] = result
    counts = {k: sum(v == k for v in outcome.values()) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    return {
        "counts": {k.lower(): v for k, v in counts.items()},
        "failed": sorted(n for n, v in outcome.items() if v in ("FAILED", "ERROR", "XPASS")),
    }


def _step_row(rows: list[dict], variant: str, length: int) -> dict | None:
    return next((r for r in rows if r.get("variant") == variant and r.get("T") == length and "seconds" in r), None)


def targets(figures: dict) -> list[dict]:
    """The issue's targets from the figures: ``{name, value, limit, passed, note}``; ``passed`` None: not measured."""
    out = []
    rows = (figures.get("bench_step") or {}).get("rows", [])
    for length in (8192, 2048):
        sft = _step_row(rows, "sft", length)
        # A fused row whose calls fell back to the blocked path measured the blocked path: it does not count.
        candidates = [
            r
            for v in ("vcore_jvp_fused", "vcore_jvp")
            if (r := _step_row(rows, v, length)) and not r.get("fused_fallbacks")
        ]
        best = min(candidates, key=lambda r: r["seconds"]) if candidates else None
        ratio = best["seconds"] / sft["seconds"] if best and sft else None
        mem = (best["peak_bytes"] - sft["peak_bytes"]) / best["trainable_bytes"] if best and sft else None
        gate = length == 8192  # the limits bind at 8,192; 2,048 is reported
        note = best["variant"] if best else "not measured"
        out.append(
            {
                "name": f"VCORE-jvp step / SFT step, T={length}",
                "value": ratio,
                "limit": f"<= {LIMITS['step_cost']}",
                "passed": (ratio <= LIMITS["step_cost"]) if gate and ratio is not None else None,
                "note": note,
            }
        )
        out.append(
            {
                "name": f"(probe peak - SFT peak) / trainable bytes, T={length}",
                "value": mem,
                "limit": f"<= {LIMITS['probe_memory']}",
                "passed": (mem <= LIMITS["probe_memory"]) if gate and mem is not None else None,
                "note": note,
            }
        )
    loss = {
        (r.get("kind"), r.get("T")): r.get("peak_bytes")
        for r in (figures.get("bench_memory") or {}).get("loss_memory", [])
    }
    full, chunked = loss.get(("full", 16384)), loss.get(("chunked", 16384))
    frac = chunked / full if full and chunked else None
    out.append(
        {
            "name": "chunked / full-logit loss memory, T=16384",
            "value": frac,
            "limit": "<= 1/8",
            "passed": None if frac is None else frac <= LIMITS["loss_memory"],
            "note": "" if frac is not None else "not measured",
        }
    )
    thr = {
        (r.get("method"), r.get("packed")): r.get("tokens_per_s")
        for r in (figures.get("bench_memory") or {}).get("throughput", [])
    }
    for method in ("sft", "vcore"):
        pad, pk = thr.get((method, False)), thr.get((method, True))
        speedup = pk / pad if pad and pk else None
        gate = method == "sft"
        out.append(
            {
                "name": f"packed / padded tokens/s, {method}",
                "value": speedup,
                "limit": f">= {LIMITS['packed_speedup']}",
                "passed": (speedup >= LIMITS["packed_speedup"]) if gate and speedup is not None else None,
                "note": "" if speedup is not None else "not measured",
            }
        )
    return out


def build_report(env: dict, stages: dict, figures: dict) -> dict:
    """Everything the JSON holds: the machine, each stage's status, the test outcomes, every figure, the targets."""
    return {
        **env,
        "stages": stages,
        "tests": figures.get("tests"),
        "figures": {k: v for k, v in figures.items() if k != "tests"},
        "targets": targets(figures),
    }


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render(report: dict) -> str:
    """The one markdown table: stages, tests, targets, then every benchmark figure."""
    verdict = {True: "pass", False: "FAIL", None: "not measured"}
    lines = [
        f"GPU check on {report['card']} (torch {report['torch']}, CUDA {report['cuda']}, "
        f"Triton {report.get('triton')}, jvp-flash-attention {report.get('jvp_flash_attention')}: "
        f"fused kernel {report.get('fused_attention')}; {report['date']})\n",
        "| part | figure | value | target | result |",
        "|---|---|---|---|---|",
    ]
    for name, st in report["stages"].items():
        lines.append(
            f"| stage | {name} | {st['status']} in {st['seconds']:.0f} s (budget {st['budget_s']:.0f} s) | ok | "
            f"{'pass' if st['status'] == 'ok' else 'FAIL'} |"
        )
    tests = report.get("tests")
    if tests:
        c = tests["counts"]
        lines.append(
            "| tests | passed / failed / errors / skipped | "
            f"{c['passed']} / {c['failed']} / {c['error']} / {c['skipped']} | "
            f"no failure | {'pass' if not tests['failed'] else 'FAIL'} |"
        )
        lines += [f"| tests | failed | {node} | | FAIL |" for node in tests["failed"]]
    for t in report["targets"]:
        result = verdict[t["passed"]] if t["passed"] is not None or t["value"] is None else "reported"
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| target | {t['name']} | {_fmt(t['value'])}{note} | {t['limit']} | {result} |")
    figures = report["figures"]
    step = figures.get("bench_step") or {}
    sft = {r["T"]: r for r in step.get("rows", []) if r.get("variant") == "sft" and "seconds" in r}
    for r in step.get("rows", []):
        if "error" in r:
            lines.append(f"| step cost T={r['T']} | {r['variant']} | failed: {r['error'][:100]} | | |")
            continue
        ratio = f", {r['seconds'] / sft[r['T']]['seconds']:.2f}x SFT" if r["T"] in sft else ""
        fell = f" (blocked path: {'; '.join(r['fused_fallbacks'])})" if r.get("fused_fallbacks") else ""
        lines.append(
            f"| step cost T={r['T']} | {r['variant']} s/step, peak GiB | "
            f"{r['seconds']:.3f}{ratio}, {r['peak_bytes'] / 2**30:.2f}{fell} | | |"
        )
    mem = figures.get("bench_memory") or {}
    for r in mem.get("loss_memory", []):
        value = r.get("error") or (
            f"{r['peak_bytes'] / 2**20:.0f} MiB" if r.get("peak_bytes") is not None else r.get("note", "-")
        )
        lines.append(f"| loss memory T={r['T']} | {r['kind']} | {value} | | |")
    for r in mem.get("throughput", []):
        value = r.get("error") or f"{r['tokens_per_s']:.0f} tok/s"
        lines.append(f"| throughput | {r['method']} {'packed' if r['packed'] else 'padded'} | {value} | | |")
    for prec, row in ((figures.get("fidelity") or {}).get("pearson") or {}).items():
        cells = ", ".join(f"ε={float(e):g}: {v:.3f}" for e, v in row.items())
        lines.append(f"| fidelity (Pearson fd vs jvp) | {prec} | {cells} | | |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- main
def environment() -> dict:
    import torch

    from vcore.ops.fused_attention import _kernel

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "triton": version("triton"),
        "jvp_flash_attention": version("jvp-flash-attention"),
        "vllm": version("vllm"),
        "fused_attention": _kernel(torch.device("cuda"))[1] or "available",
        "transformers": version("transformers"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # the stage did not get that far
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report")
    parser.add_argument("--work", default="gpu_check", help="stage logs and intermediate JSON")
    parser.add_argument("--stages", default=",".join(BUDGETS), help=f"a subset of {','.join(BUDGETS)}")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every stage's time budget")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
            "nothing was run. "
            "Run it on a machine with an NVIDIA GPU (H100/H200 for the targets) after pip install -e '.[test,gpu]'.",
            file=sys.stderr,
        )
        return NO_CUDA_STATUS
    unknown = set(args.stages.split(",")) - set(BUDGETS)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(BUDGETS)}")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env, commands, stages = environment(), stage_commands(work), {}
    print(f"gpu_check on {env['card']}: stages {args.stages}, logs in {work}", file=sys.stderr)
    for name in args.stages.split(","):
        stages[name] = run_stage(commands[name], BUDGETS[name] * args.budget_scale, work / f"{name}.log")
        print(f"  {name}: {stages[name]['status']} in {stages[name]['seconds']:.0f} s", file=sys.stderr)
    figures = {
        "bench_step": read_json(work / "bench_step.json"),
        "bench_memory": read_json(work / "bench_memory.json"),
        "fidelity": read_json(work / "fidelity.json"),
    }
    if "tests" in stages:
        figures["tests"] = parse_pytest(Path(stages["tests"]["log"]).read_text(errors="replace"))
    report = build_report(env, stages, figures)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(render(report))
    failed = any(s["status"] != "ok" for s in stages.values()) or any(t["passed"] is False for t in report["targets"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
