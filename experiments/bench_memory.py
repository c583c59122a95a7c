"""Long chain-of-thought memory and throughput: full logits vs chunked CE, padded vs packed batches.

    python experiments/bench_memory.py          # CPU preset: hidden 64, vocab 151,936
    python experiments/bench_memory.py --gpu    # Qwen3-0.6B-shaped model, real lengths

Two tables:

1. Loss memory: peak memory of per-token CE (forward + backward) from hidden states ``[T, H]`` and an lm-head
   ``[151936, H]``, full logits vs :mod:`vcore.ops.chunked_ce`, at T ∈ {2048, 8192, 16384}. Full logits at 16k need
   ~10 GB per float32 copy; the CPU preset skips full-logit runs that would not fit (``--max-full-T``) and says so.
2. Throughput: supervised tokens/s of SFT and VCORE (jvp probe) optimizer steps on traces with the paper's length
   spread (log-normal, mean ≈ 3,000 tokens, cut at 16,384; scaled by ``--length-scale`` on CPU), padded vs packed.

Peak memory: CUDA max allocated bytes, or the sampled RSS of a fresh subprocess on CPU (see ``benchlib``). The JSON
is rewritten after every measurement; on CUDA a failed one is recorded with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))
from benchlib import RssSampler, device_name, one_step, random_qwen3, run_isolated  # noqa: E402

VOCAB = 151_936
CPU_MODEL = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
GPU_MODEL = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loss_memory(kind: str, length: int, hidden_size: int) -> dict:
    """Peak memory of CE forward+backward above the inputs, for one sequence of ``length`` tokens."""
    from vcore.ops.chunked_ce import chunked_token_cross_entropy
    from vcore.ops.losses import token_cross_entropy

    dev = device()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, length, hidden_size, generator=g).to(dev).requires_grad_()
    weight = (torch.randn(VOCAB, hidden_size, generator=g) * 0.02).to(dev).requires_grad_()
    labels = torch.randint(VOCAB, (1, length), generator=g).to(dev)
    sampler = RssSampler() if dev.type == "cpu" else None
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if kind == "full":
        loss = token_cross_entropy((hidden @ weight.T)[:, :, :], labels)
    else:
        loss = chunked_token_cross_entropy(hidden, weight, labels, 1024)
    loss.sum().backward()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else sampler.stop()
    return {"kind": kind, "T": length, "peak_bytes": peak, "seconds": seconds, "loss_sum": float(loss.sum())}


def paper_lengths(n: int, scale: float, seed: int = 0) -> list[int]:
    """Trace lengths with the paper's spread: log-normal, mean ≈ 3,000 tokens, cut at 16,384; times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    sigma = 0.8
    mu = math.log(3000) - sigma**2 / 2
    raw = torch.exp(mu + sigma * torch.randn(n, generator=g)).clamp(64, 16384)
    return [max(16, int(x * scale)) for x in raw]


def throughput(
    method: str, pack: bool, model_kw: dict, scale: float, steps: int, batch: int, jvp_attention: str = "vcore_blocked"
) -> dict:
    from transformers import TrainingArguments

    from vcore.config import ProbeConfig, ProbeMode, SFTConfig, VCOREConfig
    from vcore.data.collate import Collator
    from vcore.methods import MethodContext, build_method
    from vcore.run.trainer import WeightedTrainer

    dev = device()
    lengths = paper_lengths(batch * (steps + 1), scale)
    model = random_qwen3({**model_kw, "vocab_size": VOCAB}, 16385, dev)  # one build serves every call
    g = torch.Generator().manual_seed(1)
    rows = []
    for i, n in enumerate(lengths):
        ids = torch.randint(VOCAB, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * 8 + ids[8:], "answer_mask": [False] * n, "example_id": i})
    collate = Collator(0, pack=pack)
    probe = ProbeConfig(mode=ProbeMode.jvp, batch_size=batch, accumulation=1, jvp_attention=jvp_attention)
    cfg = SFTConfig() if method == "sft" else VCOREConfig(tau=1.0, probe=probe)
    weighting = build_method(cfg, MethodContext(model, rows, collate, loss_chunk_size=1024))
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, report_to="none", use_cpu=dev.type == "cpu"
    )
    trainer = WeightedTrainer(
        model=model,
        args=args,
        weighting=weighting,
        precision="bf16" if dev.type == "cuda" else "fp32",
        loss_chunk_size=1024,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens, seconds = 0, 0.0
    for step in range(steps + 1):  # the first step is warm-up
        micro = {k: v.to(dev) for k, v in collate(rows[step * batch : (step + 1) * batch]).items()}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        one_step(trainer, model, opt, micro)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step:
            seconds += time.perf_counter() - t0
            tokens += int((micro["labels"] != -100).sum())
    return {
        "method": method,
        "packed": pack,
        "tokens_per_s": tokens / seconds,
        "mean_length": sum(lengths) / len(lengths),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--lengths", default="2048,8192,16384")
    parser.add_argument(
        "--max-full-T", type=int, default=None, help="skip full-logit runs above this T (default: 4096 on CPU)"
    )
    parser.add_argument(
        "--length-scale", type=float, default=None, help="scale of the paper's lengths (default 1/16 on CPU)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--jvp-attention", default="vcore_blocked", help="VCORE's probe attention (method.probe.jvp_attention)"
    )
    parser.add_argument("--out", default="bench_memory.json")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model_kw = GPU_MODEL if args.gpu else CPU_MODEL
    if args.single:
        kind, length = args.single.split(":")
        print(json.dumps(loss_memory(kind, int(length), model_kw["hidden_size"])))
        return 0
    cuda = torch.cuda.is_available()
    max_full = args.max_full_T or (10**9 if cuda else 4096)
    rows, thr, dev = [], [], device_name()

    def save():
        Path(args.out).write_text(
            json.dumps({"device": dev, "model": model_kw, "loss_memory": rows, "throughput": thr}, indent=2)
        )

    for length in [int(x) for x in args.lengths.split(",")]:
        for kind in ("full", "chunked"):
            if kind == "full" and length > max_full:
                rows.append(
                    {"kind": kind, "T": length, "peak_bytes": None, "note": f"skipped (> --max-full-T={max_full})"}
                )
                continue
            if cuda:
                rows.append(
                    on_cuda(
                        lambda: loss_memory(kind, length, model_kw["hidden_size"]),
                        {"kind": kind, "T": length, "peak_bytes": None},
                    )
                )
            else:
                rows.append(run_isolated([__file__, f"--single={kind}:{length}"]))
            note = rows[-1].get("error") or f"{rows[-1]['peak_bytes'] / 2**20:.0f} MiB"
            print(f"  loss {kind} T={length}: {note}", file=sys.stderr)
            save()
    if not args.skip_throughput:
        scale = args.length_scale or (1.0 if cuda else 1 / 16)
        for method in ("sft", "vcore"):
            for pack in (False, True):
                run = lambda: throughput(method, pack, model_kw, scale, args.steps, args.batch, args.jvp_attention)  # noqa: E731
                thr.append(on_cuda(run, {"method": method, "packed": pack}) if cuda else run())
                note = thr[-1].get("error") or f"{thr[-1]['tokens_per_s']:.0f} tok/s"
                print(f"  {method} packed={pack}: {note}", file=sys.stderr)
                save()
    save()
    print(render(rows, thr, dev))
    return 0


def on_cuda(measure, labels: dict) -> dict:
    """``measure()``, or ``labels`` with its error: one failure (out of memory, say) must not lose the other figures
    of a scarce GPU session; memory is freed for the next measurement either way."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 -- recorded in the JSON and the tables; the run goes on
        return {**labels, "error": f"{type(err).__name__}: {str(err)[:500]}"}
    finally:
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def render(rows: list[dict], thr: list[dict], dev: str) -> str:
    out = [
        f"Per-token CE memory (forward + backward), vocab {VOCAB:,}, on {dev}\n",
        "| T | full logits MiB | chunked MiB | chunked / full |",
        "|---|---|---|---|",
    ]
    by_t: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_t.setdefault(r["T"], {})[r["kind"]] = r if "error" not in r else {**r, "peak_bytes": None}
    for t, kinds in by_t.items():
        full, ch = kinds.get("full", {}).get("peak_bytes"), kinds.get("chunked", {}).get("peak_bytes")
        if full is None:  # full-logit memory is linear in T: extrapolate from the largest measured T
            measured = [(tt, k["full"]["peak_bytes"]) for tt, k in by_t.items() if k.get("full", {}).get("peak_bytes")]
            if measured:
                t0, b0 = max(measured)
                full_txt = f"~{b0 * t / t0 / 2**20:.0f} (extrapolated)"
                ratio = f"~{ch / (b0 * t / t0):.3f}" if ch else "-"
            else:
                full_txt, ratio = "-", "-"
        else:
            full_txt, ratio = f"{full / 2**20:.0f}", f"{ch / full:.3f}" if ch else "-"
        out.append(f"| {t} | {full_txt} | {ch / 2**20:.0f} | {ratio} |" if ch else f"| {t} | {full_txt} | - | - |")
    if thr:
        mean = next((r["mean_length"] for r in thr if "mean_length" in r), float("nan"))
        out += [
            "",
            f"Throughput on traces with the paper's length spread (mean {mean:.0f} tokens here)\n",
            "| method | padded tok/s | packed tok/s | packed / padded |",
            "|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in thr):
            pad = next(r for r in thr if r["method"] == method and not r["packed"]).get("tokens_per_s")
            pk = next((r for r in thr if r["method"] == method and r["packed"]), {}).get("tokens_per_s")
            cells = [f"{x:.0f}" if x else "failed" for x in (pad, pk)]
            out.append(f"| {method} | {cells[0]} | {cells[1]} | {f'{pk / pad:.2f}x' if pad and pk else '-'} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
