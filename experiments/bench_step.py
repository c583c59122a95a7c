"""Step-cost benchmark: one optimizer step of SFT and of VCORE's probes, time and peak memory, same process.

    python experiments/bench_step.py                     # CPU preset, under 3 minutes on 2 cores
    python experiments/bench_step.py --gpu               # Qwen3-0.6B-shaped model (random init), T = 2048, 8192
    python experiments/bench_step.py --lengths 512,2048 --variants sft,vcore_jvp

Each step goes through the Trainer's own hooks (``get_batch_samples`` → method ``prepare_step``, ``compute_loss``,
backward, AdamW step), one example of T tokens per step, a probe batch of the same size. Variants:

- ``sft``: uniform weights (in bf16 autocast with ``--gpu``);
- ``vcore_fd``: finite differences, two exact-float32 no-grad forwards (the faithful setting, SPEC §6);
- ``vcore_jvp``: forward-mode probe with the blocked attention JVP (linear memory in T);
- ``vcore_jvp_eager``: forward-mode probe through eager attention (materialises T×T; the naive reference);
- ``vcore_jvp_every4``: ``probe.every=4``, the probe gradient reused for 4 steps (mean over 4 steps);
- ``vcore_jvp_fused``, ``vcore_jvp_fused_every4``: the jvp probe through the fused Triton kernel
  (``probe.jvp_attention=fused``, CUDA, ``pip install -e ".[gpu]"``; elsewhere it falls back to the blocked path).

Warm-up, several repeats, median. Peak memory: CUDA's max allocated bytes; on CPU, each (variant, T) runs in a
fresh subprocess and reports its sampled peak resident set size above the size after setup (approximate). Writes
JSON and prints a markdown table with ratios to SFT measured in the same run. On CUDA the JSON is rewritten after
every measurement, and a measurement that fails (out of memory, a kernel error) is recorded with its error and the
others go on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))
from benchlib import RssSampler, device_name, one_step, random_qwen3, run_isolated  # noqa: E402

VARIANTS = (
    "sft",
    "vcore_fd",
    "vcore_jvp",
    "vcore_jvp_eager",
    "vcore_jvp_every4",
    "vcore_jvp_fused",
    "vcore_jvp_fused_every4",
)
CPU_MODEL = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=4096,
)
GPU_MODEL = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
)


def attention(variant: str) -> str:
    return "eager" if "eager" in variant else "fused" if "fused" in variant else "vcore_blocked"


def build(model_kw: dict, length: int, variant: str, device: torch.device, bf16: bool, max_positions: int = 0):
    from transformers import TrainingArguments

    from vcore.config import ProbeConfig, ProbeMode, SFTConfig, VCOREConfig
    from vcore.methods import MethodContext, build_method
    from vcore.run.trainer import WeightedTrainer

    model = random_qwen3(model_kw, max(length, 1024, max_positions), device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(model_kw["vocab_size"], (length,), generator=g).tolist()
    row = {"input_ids": ids, "labels": [-100] * 16 + ids[16:], "answer_mask": [False] * length, "example_id": 0}
    from vcore.data.collate import Collator

    collate = Collator(0)
    if variant == "sft":
        cfg = SFTConfig()
    else:
        mode = ProbeMode.finite_difference if variant == "vcore_fd" else ProbeMode.jvp
        cfg = VCOREConfig(
            tau=1.0,
            probe=ProbeConfig(
                mode=mode,
                epsilon=1e-4,
                batch_size=1,
                accumulation=1,
                every=4 if variant.endswith("every4") else 1,
                jvp_attention=attention(variant),
            ),
        )
    weighting = build_method(cfg, MethodContext(model, [row], collate))
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=1, report_to="none", use_cpu=device.type == "cpu"
    )
    trainer = WeightedTrainer(model=model, args=args, weighting=weighting, precision="bf16" if bf16 else "fp32")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = {k: v.to(device) for k, v in collate([row]).items()}
    return trainer, model, optimizer, batch


def measure(
    variant: str, length: int, model_kw: dict, warmup: int, repeats: int, bf16: bool, max_positions: int = 0
) -> dict:
    from vcore.ops import fused_attention

    fused_attention._reported.clear()  # this measurement's fallbacks only
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer, model, optimizer, batch = build(model_kw, length, variant, device, bf16, max_positions)
    per = 4 if variant.endswith("every4") else 1  # a measured unit spans the reuse period
    sampler = RssSampler() if device.type == "cpu" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        one_step(trainer, model, optimizer, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(per):
            one_step(trainer, model, optimizer, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / per)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else sampler.stop()
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    row = {
        "variant": variant,
        "T": length,
        "seconds": statistics.median(times),
        "peak_bytes": peak,
        "trainable_bytes": trainable,
    }
    if attention(variant) == "fused":  # calls the kernel did not take ran the blocked path: say so in the figures
        row["fused_fallbacks"] = sorted(fused_attention._reported)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="Qwen3-0.6B-shaped model at T = 2048, 8192, bf16 autocast")
    parser.add_argument("--lengths", default=None, help="comma-separated sequence lengths")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_step.json")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # internal: one measurement as JSON
    args = parser.parse_args(argv)
    model_kw = GPU_MODEL if args.gpu else CPU_MODEL
    if args.single:
        variant, length = args.single.split(":")
        print(json.dumps(measure(variant, int(length), model_kw, args.warmup, args.repeats, args.gpu)))
        return 0
    lengths = [int(x) for x in (args.lengths or ("2048,8192" if args.gpu else "256,1024,2048")).split(",")]
    variants = args.variants.split(",")
    rows = []
    device = device_name()
    for length in lengths:
        for variant in variants:
            if torch.cuda.is_available():
                rows.append(measure_cuda(variant, length, model_kw, args, max(lengths)))
            else:  # a fresh process per measurement: clean peak RSS
                rows.append(
                    run_isolated(
                        [
                            __file__,
                            f"--single={variant}:{length}",
                            f"--warmup={args.warmup}",
                            f"--repeats={args.repeats}",
                        ]
                    )
                )
            note = f"{rows[-1]['seconds']:.3f}s" if "seconds" in rows[-1] else rows[-1]["error"]
            print(f"  {variant} T={length}: {note}", file=sys.stderr)
            Path(args.out).write_text(json.dumps({"device": device, "model": model_kw, "rows": rows}, indent=2))
    print(table(rows, device))
    return 0


def measure_cuda(variant: str, length: int, model_kw: dict, args, max_positions: int) -> dict:
    """One CUDA measurement, or its error: GPU time is scarce, so one variant's failure (out of memory, a kernel
    that does not compile) must not lose the others' figures. The memory is freed for the next one either way."""
    try:
        return measure(variant, length, model_kw, args.warmup, args.repeats, args.gpu, max_positions)
    except Exception as err:  # noqa: BLE001 -- recorded in the JSON and the table; the run goes on (docstring)
        return {"variant": variant, "T": length, "error": f"{type(err).__name__}: {str(err)[:500]}"}
    finally:
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def table(rows: list[dict], device: str) -> str:
    sft = {r["T"]: r for r in rows if r["variant"] == "sft" and "error" not in r}
    lines = [
        f"Step cost on {device} (median; x = ratio to SFT at the same T, same run)\n",
        "| T | variant | s/step | x SFT | peak MiB | (peak - SFT peak) / trainable bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['T']} | {r['variant']} | failed: {r['error'][:80]} | - | - | - |")
            continue
        base = sft.get(r["T"])
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        extra = f"{(r['peak_bytes'] - base['peak_bytes']) / r['trainable_bytes']:.2f}" if base else "-"
        name = f"{r['variant']} (fell back to blocked)" if r.get("fused_fallbacks") else r["variant"]
        lines.append(f"| {r['T']} | {name} | {r['seconds']:.3f} | {ratio} | {r['peak_bytes'] / 2**20:.0f} | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
