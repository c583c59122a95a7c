"""Score-fidelity table: how faithful are finite-difference VCORE scores for *your* model, ε and precision?

    python -m vcore.tools.fidelity                                   # the tiny default model, CPU
    python -m vcore.tools.fidelity model=qwen3_4b model.lora.enabled=false --eps 1e-2,1e-3,1e-4,2e-5

Any Hydra override of the training config selects model and data. For each forward precision and ε it prints the
Pearson correlation (over the supervised tokens of one batch) between finite-difference scores
``(l_t(θ) - l_t(θ - εg)) / ε`` and exact scores from the jvp probe in float32; ``g`` is a probe gradient clipped to
norm 1, as in training. The layout is SPEC §6's table. Precisions: ``fp32`` (TF32 off), ``tf32`` (CUDA only),
``bf16_autocast`` (float32 weights), ``bf16_weights``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

import torch

from vcore.methods.probe import clip_, finite_difference_scores, jvp_scores, probe_gradient, trainable_parameters
from vcore.methods.vcore import score_agreement
from vcore.ops.losses import supervised_mask

PRECISIONS = ("fp32", "tf32", "bf16_autocast", "bf16_weights")


@contextlib.contextmanager
def precision_context(name: str, device: torch.device):
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        if name == "bf16_autocast":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def fidelity_table(
    model, probe_batches, batches, epsilons, precisions=PRECISIONS, chunk_size: int = 0
) -> dict[str, dict[float, float]]:
    """``{precision: {ε: pearson}}`` of finite-difference against exact float32 jvp scores."""
    model.eval()
    params = trainable_parameters(model)
    g = probe_gradient(model, list(params.values()), probe_batches, chunk_size)
    clip_(g, 1.0)
    _, exact = jvp_scores(model, params, g, batches, chunk_size=chunk_size)
    masks = [supervised_mask(b["labels"]) for b in batches]
    table: dict[str, dict[float, float]] = {}
    device = next(model.parameters()).device
    for prec in precisions:
        if prec == "tf32" and device.type != "cuda":
            continue  # TF32 exists only on CUDA tensor cores
        m = copy.deepcopy(model).to(torch.bfloat16) if prec == "bf16_weights" else model
        p = trainable_parameters(m)
        gg = [x.to(next(iter(p.values())).dtype) for x in g]
        row = {}
        for eps in epsilons:
            with precision_context(prec, device):
                _, fd = finite_difference_scores(m, p, gg, batches, eps, exact=False, chunk_size=chunk_size)
            row[eps] = float(score_agreement([s.float() for s in fd], exact, masks)["vcore/fidelity_pearson"])
        table[prec] = row
    return table


def markdown(table: dict[str, dict[float, float]]) -> str:
    eps = sorted({e for row in table.values() for e in row}, reverse=True)
    lines = ["| forward precision | " + " | ".join(f"ε={e:g}" for e in eps) + " |", "|---" * (len(eps) + 1) + "|"]
    for prec, row in table.items():
        lines.append(f"| {prec} | " + " | ".join(f"{row[e]:.3f}" for e in eps) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.tools.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (model=..., dataset=...)")
    parser.add_argument("--eps", default="1e-2,1e-3,1e-4,2e-5", help="comma-separated ε values")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output-dir", default="outputs/fidelity", help="where a tiny model is built, if any")
    parser.add_argument("--json", default=None, help="also write the table here as JSON ({precision: {ε: pearson}})")
    args = parser.parse_args(argv)

    from vcore.config import compose_config, to_object
    from vcore.data.build import build_data
    from vcore.data.collate import Collator
    from vcore.run.training import prepare_model

    c = to_object(compose_config(["logger=none", f"output_dir={args.output_dir}", *args.overrides]))
    tokenizer, model = prepare_model(c)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data = build_data(c.dataset, tokenizer)
    collate = Collator(tokenizer.pad_token_id)
    b = args.batch_size
    rows = [data.train[i] for i in range(min(len(data.train), 2 * b))]
    to_dev = lambda batch: {k: v.to(device) for k, v in batch.items()}  # noqa: E731
    probe, batch = [to_dev(collate(rows[:b]))], [to_dev(collate(rows[b:] or rows[:b]))]
    table = fidelity_table(
        model,
        probe,
        batch,
        [float(e) for e in args.eps.split(",")],
        args.precisions.split(","),
        c.model.loss_chunk_size,
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"Pearson of finite-difference vs exact (jvp, float32) scores; model {c.model.name_or_path}; {name}\n")
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": name, "model": str(c.model.name_or_path), "pearson": table}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
