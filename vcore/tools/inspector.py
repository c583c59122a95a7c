"""Token-weight inspector: what does a method emphasise? One JSON line per example.

    python -m vcore.tools.inspector outputs/2026-11-26/10-00-00 --num-examples 8 --out weights.jsonl
    python -m vcore.tools.inspector outputs/.../checkpoints/checkpoint-50 --split ood_hard

Each line: ``{"example", "method", "tokens", "supervised", "loss", "score", "q", "weight", "batch_alpha"}``.
``weight`` is ``w_t`` before the batch factor α (0 on unsupervised tokens); ``batch_alpha`` is α of the step batch
the example was weighted in (null for methods without one); ``score`` and ``q`` are VCORE's utilities and Gibbs
probabilities (null elsewhere); a method's other per-token values (``TokenWeighting.token_values``, e.g. the entropy
of docs/adding_a_method.md) come under their own names. Examples are grouped into step batches of the run's size
(``per_device_train_batch_size × gradient_accumulation_steps``) and weighted by the training step's own hooks, with
the model and probe-generator state of the checkpoint. The forward runs in eval mode: with dropout (e.g. LoRA
dropout) training's DFT / iw-SFT weights are those values seen through a random dropout mask.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from vcore.config import load_run_config
from vcore.data.build import build_data
from vcore.data.collate import Collator
from vcore.methods import MethodContext, build_method
from vcore.methods.base import METHOD_STATE
from vcore.modeling import load_checkpoint, load_model
from vcore.run.checkpoints import find_run
from vcore.run.heatmap import weigh_examples
from vcore.run.training import resolve_model


def inspect_run(path: str | Path, num_examples: int = 8, split: str = "train", device: str = "cpu") -> list[dict]:
    run_dir, checkpoint = find_run(Path(path))
    c = load_run_config(run_dir / "config.yaml")
    model_cfg = resolve_model(c.model)  # the tiny base, when the run started from it
    tokenizer, model = load_checkpoint(model_cfg, checkpoint)
    model.to(device)
    data = build_data(c.dataset, tokenizer)
    dataset = data.train if split == "train" else data.eval[split]
    collate = Collator(tokenizer.pad_token_id)
    # A method that weighs against the model training started from (iw-SFT) gets those weights, not the checkpoint
    # being inspected (under LoRA the reference is the checkpoint's own base with adapters off, the same thing).
    context = MethodContext(
        model,
        data.train,
        collate,
        c.model.loss_chunk_size,
        start_model=lambda: load_model(model_cfg).to(device),
        tokenizer=tokenizer,
    )
    weighting = build_method(c.method, context)
    if (checkpoint / METHOD_STATE).exists():
        weighting.load_state_dict(torch.load(checkpoint / METHOD_STATE, weights_only=False))

    def autocast():
        bf16 = c.trainer.precision == "bf16"
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    n = min(num_examples, len(dataset))
    model.eval()
    return weigh_examples(
        model,
        weighting,
        [dataset[i] for i in range(n)],
        collate,
        tokenizer,
        weighting.name,
        c.trainer.per_device_train_batch_size,
        c.trainer.gradient_accumulation_steps,
        c.model.loss_chunk_size,
        device,
        autocast,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.tools.inspector", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run dir (uses its final/ model) or a checkpoint dir inside a run")
    parser.add_argument("--num-examples", type=int, default=8, help="examples to weigh (default 8)")
    parser.add_argument(
        "--split",
        default="train",
        help="train (default) or an eval split of the dataset "
        "(synthetic: test, ood_test, forget, ood_hard, val, ood_val; real data: id)",
    )
    parser.add_argument("--out", default=None, help="JSONL file to write (default: <run>/token_weights.jsonl)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    lines = inspect_run(args.run, args.num_examples, args.split, args.device)
    out = Path(args.out) if args.out else find_run(Path(args.run))[0] / "token_weights.jsonl"
    with out.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    print(f"wrote {len(lines)} examples to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
