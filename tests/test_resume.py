"""Exact resume: a run stopped by SIGTERM and resumed from its checkpoint ends bit-identical to an uninterrupted one.

What must come back for that: weights, optimizer, scheduler, global RNGs (LoRA dropout), the data position, the
VCORE probe generator and, with ``probe.every > 1``, the stored probe direction. CPU, one thread per process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, TINY_TEST, subprocess_env
from vcore.checks import ConfigError
from vcore.run.checkpoints import latest_checkpoint, resolve_resume
from vcore.run.preemption import PREEMPTED_EXIT_CODE
from vcore.run.trainer import METHOD_STATE

STEPS = 16  # long enough that SIGTERM, sent after 3 logged steps (unbuffered logs), lands mid-training with a margin

CASES = {
    # LoRA with dropout: the global RNG must resume; probe.every=3: the stored direction or the probe stream must.
    "lora": [
        "model.lora.enabled=true",
        "model.lora.dropout=0.1",
        "method.probe.mode=finite_difference",
        "method.probe.every=3",
    ],
    "full": ["method.probe.mode=jvp"],
}


def start(args: list[str], run_dir: Path, log: Path, ranks: int = 1) -> subprocess.Popen:
    env = subprocess_env()
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    cmd = [sys.executable, *launcher, str(REPO / "run.py"), *args, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = list((run_dir / "final").glob("*.safetensors"))
    assert len(files) == 1, files
    return load_file(files[0])


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [(h["step"], h["loss"]) for h in lines if "loss" in h]


def sigterm_after_three_steps(args: list[str], run_dir: Path, log: Path, ranks: int = 1) -> Path:
    """Start a run, SIGTERM it once three optimizer steps are logged; the checkpoint it wrote before stopping."""
    stopped = start(args, run_dir, log, ranks)
    deadline = time.monotonic() + 120
    while log.read_text().count("'loss'") < 3:  # training is under way
        assert stopped.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    # One process: our exit status. Under torchrun the agent dies of the signal (status 1) after its workers
    # exited with ours (docs/distributed.md).
    assert stopped.wait(timeout=120) == (PREEMPTED_EXIT_CODE if ranks == 1 else 1), log.read_text()[-4000:]
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and 3 <= int(checkpoint.name.split("-")[1]) < STEPS
    assert not (run_dir / "final").exists()  # exited right after the checkpoint
    return checkpoint


def tiny_args(case: str) -> list[str]:
    return (
        [o for o in TINY_TEST if not o.startswith(("logger=", "trainer.max_steps"))]
        + CASES[case]
        + [
            f"trainer.max_steps={STEPS}",
            "logger=wandb",
            "trainer.use_cpu=true",
            "eval.after_train=false",
            "trainer.eval_at_end=false",
        ]
    )


# ~25 s each (three runs of run.py). "lora" resumes the most state (global RNG for dropout, the probe stream and a
# stored direction, the W&B run); "full" (the jvp probe, full fine-tuning) is a slow test.
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "full" else c for c in CASES])
def test_sigterm_then_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path, case):
    args = tiny_args(case)
    reference = start(args, tmp_path / "reference", tmp_path / "reference.log")  # runs alongside (2 cores)
    checkpoint = sigterm_after_three_steps(args, tmp_path / "run", tmp_path / "stopped.log")
    resumed = start(args, tmp_path / "run", tmp_path / "resumed.log")  # same command, same dir: as a requeued job
    assert resumed.wait(timeout=120) == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    assert reference.wait(timeout=120) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    assert f"resuming from {checkpoint}" in (tmp_path / "resumed.log").read_text()

    expected, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "run")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"
    assert logged_losses(tmp_path / "run") == logged_losses(
        tmp_path / "reference"
    )  # every step, both sides of the stop
    # metrics.json describes the whole run either way; only wall-clock figures differ.
    timing = (
        "tokens_per_s",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "mean/train/tokens_per_s",
        "mean/train/supervised_tokens_per_s",
        "final/train/tokens_per_s",
        "final/train/supervised_tokens_per_s",
    )
    ref, res = (json.loads((tmp_path / d / "metrics.json").read_text())["train"] for d in ("reference", "run"))
    assert ref.keys() == res.keys()
    differ = {k for k in ref if k not in timing and ref[k] != pytest.approx(res[k], rel=1e-6, abs=1e-9)}
    assert not differ, {k: (ref[k], res[k]) for k in differ}
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (
        len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1
    )  # the requeued job continues one W&B run


@pytest.mark.slow
def test_two_ranks_sigterm_then_resume_ends_bit_identical(tmp_path):
    """torchrun forwards SIGTERM to both ranks; they agree on the stop step, each saves its RNG state (~55 s)."""
    args = tiny_args("lora") + ["trainer.per_device_train_batch_size=2", "logger=none"]
    reference = start(args, tmp_path / "reference", tmp_path / "reference.log", ranks=2)
    assert reference.wait(timeout=180) == 0, (tmp_path / "reference.log").read_text()[-4000:]
    checkpoint = sigterm_after_three_steps(args, tmp_path / "run", tmp_path / "stopped.log", ranks=2)
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    resumed = start(args, tmp_path / "run", tmp_path / "resumed.log", ranks=2)
    assert resumed.wait(timeout=180) == 0, (tmp_path / "resumed.log").read_text()[-4000:]
    expected, got = final_weights(tmp_path / "reference"), final_weights(tmp_path / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ"


def test_resume_with_a_live_stored_probe_direction(make_cfg, tmp_path):
    """probe.every=3, resumed after step 2: step 3 must reuse step 1's direction, step 4 draw the next probe batch;
    the fidelity check (steps 1 and 4) keeps its schedule across the resume."""
    from vcore.run.training import train

    base = [
        "method.probe.every=3",
        "method.probe.fidelity_every=3",
        "trainer.max_steps=5",
        "trainer.save_steps=2",
        "trainer.save_total_limit=null",
        "eval.after_train=false",
        "trainer.eval_at_end=false",
    ]
    train(make_cfg(*base, f"output_dir={tmp_path / 'a'}", "trainer.resume=never"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is installed only while training
    checkpoint = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    state = torch.load(checkpoint / METHOD_STATE, weights_only=False)
    assert state["probe"]["steps_since_refresh"] == 2 and state["probe"]["direction"] is not None
    train(make_cfg(*base, f"output_dir={tmp_path / 'b'}", f"trainer.resume={checkpoint}"))
    expected, got = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    def fidelity_steps(run: Path) -> list[int]:
        lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
        return [x["step"] for x in lines if "vcore/fidelity_pearson" in x and x["step"] > 2]

    assert fidelity_steps(tmp_path / "a") == fidelity_steps(tmp_path / "b") == [4]


def test_auto_resume_picks_the_newest_complete_checkpoint(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert resolve_resume("auto", checkpoints) is None  # a fresh run
    for step, complete in ((2, True), (4, True), (6, False), (10, True)):
        d = checkpoints / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
        if complete:
            torch.save({}, d / METHOD_STATE)
    (checkpoints / "checkpoint-10" / "trainer_state.json").unlink()  # killed while saving
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    assert resolve_resume("never", checkpoints) is None
    assert resolve_resume(str(checkpoints / "checkpoint-2"), checkpoints) == checkpoints / "checkpoint-2"
    with pytest.raises(ConfigError, match="trainer.resume"):
        resolve_resume(str(tmp_path / "nowhere"), checkpoints)
