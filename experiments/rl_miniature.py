"""The paper's Table 2 in miniature, on 2 CPU cores: tiny base -> SFT (each method) -> GRPO -> evaluation -> report.

    python experiments/rl_miniature.py                                 # SFT and VCORE, seeds 1-3, and RL from the base
    python experiments/rl_miniature.py --methods sft,dft,vcore_study --seeds 1,2,3,4
    python experiments/rl_miniature.py --rl rl.learning_rate=3e-4      # any override of the RL jobs (or --sft ...)

Each stage is a ``python run.py -m`` sweep, so every job is an ordinary run dir (resumable, on W&B offline):

1. SFT: ``experiment=synthetic_study`` (each method at the learning rate its validation sweep chose, 200 steps on
   2,000 traces; ``vcore_study`` is VCORE at the τ the study chose on out-of-distribution validation, from
   experiments/synthetic_study/conf), on the default base (``model.tiny.seed``), without evaluation: the RL jobs
   evaluate the same model as their "before".
2. RL: ``experiment=synthetic_rl`` from each SFT run's final model (GRPO with Table 8's algorithm and coefficients at
   the tiny model's scale, on the task's RL prompts, which share no problem with training or evaluation), evaluated
   before and after on 300 items of the in-distribution test split and of the phrasing-shift split; and from the base
   itself, once per seed (the row that tells RL's own gain from recovering what SFT lost).
3. Report: ``python -m vcore.tools.report <out>/rl`` renders Table 2 (before / after with 95% intervals, the change
   paired over items) and the rollouts' accuracy curves.

The tiny base is built (pretrained, a few minutes) on first use and cached; its time is reported apart. With
``--jobs 2`` (default) the two jobs of a stage run side by side on one thread each (hydra-joblib-launcher, from
``pip install -e ".[sweeps]"``; without it, one job after another on two threads). Writes ``<out>/sft``, ``<out>/rl``
(with ``report/``) and ``<out>/timing.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY_CONF = REPO / "experiments" / "synthetic_study" / "conf"  # the study's methods: vcore_study, reasoning_sft


def run(cmd: list[str], env: dict[str, str]) -> float:
    """Run a stage, streaming its output; stop the pipeline when it fails. Returns its wall time."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        sys.exit(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def finished_runs(sweep: Path) -> list[Path]:
    """The job dirs of a sweep that finished (metrics.json written), in job order."""
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [p for p in jobs if (p / "metrics.json").is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/rl_miniature.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default="sft,vcore_study",
        help="SFT methods to start RL from (conf/method/, or experiments/synthetic_study/conf/method/)",
    )
    parser.add_argument(
        "--seeds",
        default="1,2,3",
        help="SFT seeds (each RL run starts from one SFT run); RL from the base runs once per seed",
    )
    parser.add_argument("--no-base", action="store_true", help="skip the RL-from-base row")
    parser.add_argument("--out", type=Path, default=None, help="default: multirun/rl_miniature/<date_time>")
    parser.add_argument("--jobs", type=int, default=2, help="jobs side by side per stage (joblib), one thread each")
    parser.add_argument("--sft", nargs="*", default=[], help="extra overrides for the SFT jobs")
    parser.add_argument("--rl", nargs="*", default=[], help="extra overrides for the RL jobs")
    args = parser.parse_args(argv)
    out = (args.out or REPO / "multirun" / "rl_miniature" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    parallel = args.jobs > 1 and importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    if args.jobs > 1 and not parallel:
        print(
            'hydra-joblib-launcher is not installed (pip install -e ".[sweeps]"): running one job at a time', flush=True
        )
    threads = "1" if parallel else str(os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"] if parallel else []
    timing: dict[str, float] = {}
    run_py = [sys.executable, "run.py"]

    # 0. the tiny base (cached after the first build; every later stage finds it)
    timing["base_s"] = run([*run_py, "task=pretrain", "~benchmark", "logger=none", f"hydra.run.dir={out}/base"], env)
    # 1. SFT, each method at its tuned learning rate; the RL jobs evaluate the fine-tuned models
    sft = [
        *run_py,
        "-m",
        "experiment=synthetic_study",
        f"method={args.methods}",
        f"seed={args.seeds}",
        f"hydra.searchpath=[file://{STUDY_CONF}]",
        "eval.after_train=false",
        "eval.before_train=false",
        "trainer.eval_at_end=false",
        "logger.group=rl_miniature_sft",
        f"hydra.sweep.dir={out}/sft",
        *launcher,
        *args.sft,
    ]
    timing["sft_s"] = run(sft, env)
    starts = finished_runs(out / "sft")
    # 2. GRPO from each SFT run, evaluated before and after
    rl = [
        *run_py,
        "-m",
        "experiment=synthetic_rl",
        "rl.start=" + ",".join(str(p) for p in starts),
        "logger.group=rl_miniature",
        f"hydra.sweep.dir={out}/rl/from_sft",
        *launcher,
        *args.rl,
    ]
    timing["rl_s"] = run(rl, env)
    if not args.no_base:  # the same GRPO from the base model itself (rl.start unset: the model group)
        base = [
            *run_py,
            "-m",
            "experiment=synthetic_rl",
            f"seed={args.seeds}",
            "logger.group=rl_miniature",
            f"hydra.sweep.dir={out}/rl/from_base",
            *launcher,
            *args.rl,
        ]
        timing["rl_base_s"] = run(base, env)
    # 3. Table 2
    timing["report_s"] = run([sys.executable, "-m", "vcore.tools.report", str(out / "rl")], env)
    timing["total_without_base_s"] = (
        timing["sft_s"] + timing["rl_s"] + timing.get("rl_base_s", 0.0) + timing["report_s"]
    )
    runs = [
        {"dir": str(p), "method": yaml.safe_load((p / "config.yaml").read_text())["method"]["name"]} for p in starts
    ]
    (out / "timing.json").write_text(
        json.dumps({**timing, "parallel_jobs": args.jobs if parallel else 1, "sft_runs": runs}, indent=2)
    )
    print(json.dumps(timing, indent=2))
    print(f"report: {out / 'rl' / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
