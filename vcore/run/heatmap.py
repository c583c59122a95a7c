"""The per-run token-weight heatmap on W&B: what a method emphasises, without running the inspector.

A :class:`TokenWeightsCallback` on the Trainer weighs a few fixed held-out examples (the first
``logger.token_weights_examples`` of ``logger.token_weights_split``, default the dataset's first eval split; eval
splits are drawn from the dataset's seed, so the examples are the same in every run of a sweep) with the method's
own step hooks (:func:`vcore.tools.inspector.weigh_examples`) and hands the inspector lines to
``logger.log_token_weights`` (W&B: an HTML page and a per-token table; ``logger=none``: nothing). It runs at the end
of training and, with ``logger.token_weights_every=k``, every k optimizer steps. On by default with ``logger=wandb``
(``logger.token_weights_examples=0`` turns it off); nothing to run by hand.

The weighing runs on every rank (VCORE's probe is collective under data parallelism); only rank 0's logger writes.
It does not change training: the model's train/eval mode and the method's state (VCORE's probe stream) are put back
after each heatmap, so a run with the heatmap every step trains exactly as one without it.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from vcore.checks import ConfigError

log = logging.getLogger(__name__)


def heatmap_examples(logger_cfg, eval_sets: dict[str, Any]) -> list[dict] | None:
    """The fixed rows the heatmap shows, or None when it is off (no examples asked, or no eval split to take them from)."""
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
        raise ConfigError(f"logger.token_weights_split={split!r} is not an eval split of the dataset; choose from {sorted(eval_sets)}")
    dataset = eval_sets[split]
    return [dataset[i] for i in range(min(k, len(dataset)))]


class TokenWeightsCallback(TrainerCallback):
    """Logs the token-weight heatmap of ``rows`` through ``logger`` at the end of training and every ``every`` steps.

    ``collate`` batches the rows unpacked (one example per row, as the inspector reads them); ``stopped()`` true at the
    end of training (a preempted run) skips the final heatmap, so a SIGTERM's grace time goes to the checkpoint.
    """

    def __init__(self, trainer, logger, rows: list[dict], collate, every: int = 0, stopped=lambda: False) -> None:
        self.trainer, self.logger, self.rows, self.collate, self.every, self.stopped = trainer, logger, rows, collate, every, stopped

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
        # Imported here: the inspector imports vcore.run.training, which imports this module.
        from vcore.tools.inspector import weigh_examples

        t = self.trainer
        model, weighting = t.model, t.weighting
        state = weighting.state_dict()
        was_training = model.training
        model.eval()
        try:
            lines = weigh_examples(
                model, weighting, self.rows, self.collate, t.processing_class, weighting.name,
                t.args.per_device_train_batch_size, t.args.gradient_accumulation_steps, t.loss_chunk_size,
                t.args.device, t.compute_loss_context_manager,
            )
        finally:
            model.train(was_training)
            weighting.load_state_dict(state)
            model.zero_grad(set_to_none=True)  # the probe's gradient must not leak into the next optimizer step
        self.logger.log_token_weights(lines, step=step)
        return lines

