"""The per-run token-weight heatmap on W&B: what a method emphasises, without running the inspector.

A :class:`TokenWeightsCallback` on the Trainer weighs a few fixed held-out examples (the first
``logger.token_weights_examples`` of ``logger.token_weights_split``, default the dataset's first eval split; eval
splits are drawn from the dataset's seed, so the examples are the same in every run of a sweep) with the method's
own step hooks (:func:`weigh_examples`, which the inspector also uses) and hands the inspector lines to
``logger.log_token_weights`` (W&B: an HTML page and a per-token table; ``logger=none``: nothing). It runs at the end
of training and, with ``logger.token_weights_every=k``, every k optimizer steps. On by default with ``logger=wandb``
(``logger.token_weights_examples=0`` turns it off); nothing to run by hand.

The weighing runs on every rank (VCORE's probe is collective under data parallelism); only rank 0's logger writes.
It does not change training: the model's train/eval mode and the method's state (VCORE's probe stream) are put back
after each heatmap, so a run with the heatmap every step trains exactly as one without it.

Here, below the tools, because training logs it: the weighing (:func:`weigh_examples`, :func:`rows_to_lines`) and
the page (:func:`heatmap_html`) are shared with ``python -m vcore.tools.inspector`` and ``vcore.tools.report``.
"""

from __future__ import annotations

import contextlib
import html
import logging
from typing import Any

import torch
from transformers import TrainerCallback

from vcore.checks import ConfigError
from vcore.methods.base import micro_batches
from vcore.ops.forward import model_forward

log = logging.getLogger(__name__)


def heatmap_examples(logger_cfg, eval_sets: dict[str, Any]) -> list[dict] | None:
    """The fixed rows the heatmap shows, or None when it is off (no examples asked, or no eval split to take them)."""
    k = logger_cfg.token_weights_examples
    if k == 0 or logger_cfg.name == "none" or getattr(logger_cfg, "mode", None) == "disabled":
        return None
    split = logger_cfg.token_weights_split
    if split is None:
        split = next(iter(eval_sets), None)
        if split is None:
            log.info("token-weight heatmap off: the dataset has no eval split (dataset.eval_examples=0)")
            return None
    if split not in eval_sets:
        raise ConfigError(
            f"logger.token_weights_split={split!r} is not an eval split of the dataset; choose from {sorted(eval_sets)}"
        )
    dataset = eval_sets[split]
    return [dataset[i] for i in range(min(k, len(dataset)))]


class TokenWeightsCallback(TrainerCallback):
    """Logs the token-weight heatmap of ``rows`` through ``logger`` at the end of training and every ``every`` steps.

    ``collate`` batches the rows unpacked (one example per row, as the inspector reads them); ``stopped()`` true at the
    end of training (a preempted run) skips the final heatmap, so a SIGTERM's grace time goes to the checkpoint.
    """

    def __init__(self, trainer, logger, rows: list[dict], collate, every: int = 0, stopped=lambda: False) -> None:
        self.trainer, self.logger, self.rows, self.collate, self.every, self.stopped = (
            trainer,
            logger,
            rows,
            collate,
            every,
            stopped,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.log_heatmap(state.global_step)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.stopped():
            return control
        if not (self.every and state.global_step % self.every == 0):  # not twice at one step
            self.log_heatmap(state.global_step)
        return control

    def log_heatmap(self, step: int) -> list[dict]:
        t = self.trainer
        model, weighting = t.model, t.weighting
        state = weighting.state_dict()
        was_training = model.training
        model.eval()
        try:
            lines = weigh_examples(
                model,
                weighting,
                self.rows,
                self.collate,
                t.processing_class,
                weighting.name,
                t.args.per_device_train_batch_size,
                t.args.gradient_accumulation_steps,
                t.loss_chunk_size,
                t.args.device,
                t.compute_loss_context_manager,
            )
        finally:
            model.train(was_training)
            weighting.load_state_dict(state)
            model.zero_grad(set_to_none=True)  # the probe's gradient must not leak into the next optimizer step
        self.logger.log_token_weights(lines, step=step)
        return lines


def weigh_examples(
    model,
    weighting,
    rows: list[dict],
    collate,
    tokenizer,
    method: str,
    batch_size: int,
    accumulation: int,
    chunk_size: int = 0,
    device="cpu",
    autocast=contextlib.nullcontext,
) -> list[dict]:
    """The inspector's lines for ``rows``: grouped into step batches of ``batch_size × accumulation`` rows, each
    weighted by the method's own step hooks (``prepare_step``, the forward it declares, ``weights``), as the training
    step weighs them, inside a fresh ``autocast()`` context per step batch (the run's precision).

    Also what a training run logs as its token-weight heatmap (above). ``model`` is used in the
    mode it is in; the method's state (VCORE's probe stream) advances, so a caller inside training restores it.
    """
    lines: list[dict] = []
    step = batch_size * accumulation
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        batches = [
            {key: v.to(device) for key, v in collate(chunk[i : i + batch_size]).items()}
            for i in range(0, len(chunk), batch_size)
        ]
        with autocast():
            micros = micro_batches(batches)
            weighting.prepare_step(model, micros)
            for micro in micros:
                with torch.no_grad():
                    forward = model_forward(model, micro.inputs, weighting.needs, chunk_size=chunk_size)
                w = weighting.weights(forward, micro)
                alpha = weighting.loss_scale(micro)
                values = weighting.token_values(forward, micro)
                inputs, loss, mask = micro.inputs, forward.token_loss, forward.mask
                lines.extend(rows_to_lines(tokenizer, method, inputs, loss, mask, w, alpha, values))
    return lines


def rows_to_lines(tokenizer, method: str, batch, token_loss, mask, weights, alpha, values=None) -> list[dict]:
    """One inspector line per row. ``values``: the method's per-token values (``TokenWeighting.token_values``), on
    supervised tokens only (None elsewhere); ``score`` and ``q`` (VCORE's) are always keys, None for other methods."""
    values = {"score": None, "q": None, **(values or {})}
    out = []
    for r in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][r].sum())
        ids = batch["input_ids"][r, :length].tolist()
        sup = mask[r, :length].tolist()

        def per_token(t, supervised_only=True):
            if t is None:
                return None
            vals = t[r, :length].double().tolist()
            return [v if (s or not supervised_only) else None for v, s in zip(vals, sup)]

        out.append(
            {
                "example": int(batch["example_id"][r]),
                "method": method,
                "tokens": [tokenizer.decode([i]) for i in ids],
                "supervised": sup,
                "loss": [v if s else 0.0 for v, s in zip(token_loss[r, :length].double().tolist(), sup)],
                **{name: per_token(v) for name, v in values.items()},
                "weight": [v if s else 0.0 for v, s in zip(weights[r, :length].double().tolist(), sup)],
                "batch_alpha": None if alpha is None else float(alpha),
            }
        )
    return out


# Keys of an inspector line that are not a method's per-token values.
LINE_KEYS = ("example", "method", "tokens", "supervised", "loss", "weight", "batch_alpha")


def heatmap_html(examples: list[dict]) -> str:
    """A self-contained page for inspector lines (:func:`weigh_examples`): the per-run W&B heatmap, and
    ``vcore.tools.report.html_heatmap``'s page."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>token weights</title>",
        "<style>body{font-family:monospace;max-width:70em;margin:2em auto}span.t{white-space:pre-wrap}"
        "span.p{color:#888}.ex{border-top:1px solid #ccc;padding:.5em 0}</style></head><body>",
        "<h1>Token weights</h1><p>Prompt tokens grey; supervised tokens shaded by their weight w<sub>t</sub> "
        "(darker = larger); hover for loss, score, q, weight.</p>",
    ]
    for ex in examples:
        ws = [w for w, s in zip(ex["weight"], ex["supervised"]) if s]
        top = max(ws) if ws else 1.0
        alpha = ex.get("batch_alpha")
        parts.append(
            f"<div class='ex'><h3>example {ex['example']} ({html.escape(ex['method'])})"
            + (f", α = {alpha:.4f}" if alpha is not None else "")
            + "</h3>"
        )
        for i, (tok, sup) in enumerate(zip(ex["tokens"], ex["supervised"])):
            text = html.escape(tok)
            if not sup:
                parts.append(f"<span class='t p'>{text}</span>")
                continue
            w = ex["weight"][i]
            shade = 0.1 + 0.9 * (w / top if top > 0 else 0)
            info = f"loss={ex['loss'][i]:.3f} weight={w:.3f}"
            for name, v in ex.items():  # the method's per-token values (VCORE: score, q)
                if name not in LINE_KEYS and isinstance(v, list) and v[i] is not None:
                    info += f" {html.escape(name)}={v[i]:.4g}"
            parts.append(f"<span class='t' style='background:rgba(255,120,0,{shade:.3f})' title='{info}'>{text}</span>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)
