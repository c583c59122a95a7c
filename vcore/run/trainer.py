"""``transformers.Trainer`` extended through its public hooks only: one weighted loss for every method.

- :meth:`WeightedTrainer.get_batch_samples` sees the whole accumulation window before any backward: it counts the
  step's supervised tokens and examples (all micro-batches, all ranks) and lets the method prepare step-level
  weights (VCORE's probe and α, iw-SFT's reference losses) into each micro-batch's record
  (:class:`vcore.methods.base.MicroBatch`), which the trainer keeps beside the batch, not in it.
- :meth:`WeightedTrainer.training_step` hands that record to :meth:`WeightedTrainer.compute_loss`, which runs the
  forward the method asks for (per-token losses, plus entropy or top-k log-probabilities if it declared them; the
  model never sees ``labels``, so no model-specific loss scaling applies) and returns this micro-batch's share of the
  step loss.
- :meth:`WeightedTrainer.train` restores the method's state (VCORE's probe stream) next to what the Trainer restores
  from a checkpoint (weights, optimizer, scheduler, RNGs, data position), so a resumed run is the uninterrupted one.

Backends: DDP and FSDP2 for every method (under FSDP2, VCORE with the finite-difference probe); DeepSpeed refused
(:func:`vcore.distributed.check_parallel_backend`, each method's ``check_backend``; docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from vcore.data.token_classes import reasoning_token_mask
from vcore.distributed import (
    Backend,
    all_reduce_max,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    check_parallel_backend,
    rank,
    world_size,
)
from vcore.methods.base import METHOD_STATE, RANK_STATE_FILE, MicroBatch, TokenWeighting, micro_batches
from vcore.ops.forward import model_forward, model_token_loss
from vcore.ops.losses import weighted_loss
from vcore.ops.stats import StepStats
from vcore.run.checkpoints import seal

log = logging.getLogger(__name__)


class WeightedTrainer(Trainer):
    # compute_loss already divides by the step's global token count: the Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        weighting: TokenWeighting,
        loss_normalization: str = "token",
        precision: str = "fp32",
        lr_floor: float | None = None,
        loss_chunk_size: int = 0,
        run_fingerprint: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.backend = self._backend()
        type(weighting).check_backend(weighting.cfg, self.backend)  # what the method cannot run on, then what none can
        check_parallel_backend(self.backend)
        self.weighting = weighting
        self.loss_normalization = loss_normalization
        self.precision = precision
        self.lr_floor = lr_floor
        self.loss_chunk_size = loss_chunk_size  # model.loss_chunk_size (vcore.ops.forward.model_token_loss)
        eos = getattr(self.processing_class, "eos_token_id", None)
        vocab = reasoning_token_mask(self.processing_class) if self.processing_class is not None else None
        self.step_stats = StepStats(eos_token_id=eos, reasoning_vocab=vocab)
        self.run_fingerprint = run_fingerprint
        self.add_callback(_MethodStateCallback(self))
        self.add_callback(_FiniteGuard(self))
        self._last_log_step = 0
        self._finite = torch.ones((), dtype=torch.bool, device=self.args.device)  # this step's losses so far
        self._step: dict[int, MicroBatch] = {}  # this step's micro-batch records, by identity of their batch dicts
        self._micro: MicroBatch | None = None  # the record of the micro-batch in training_step

    def _backend(self) -> Backend:
        # accelerate sets these from its launch config too (`accelerate launch --use_fsdp ...`), not only from args.
        fsdp = getattr(self.accelerator.state, "fsdp_plugin", None)
        dtypes = [p.dtype for p in self.model.parameters() if p.is_floating_point()]
        # the lowest precision any weight has (bf16 base weights under float32 LoRA adapters count as bf16)
        lowest = str(min(dtypes, key=lambda d: torch.finfo(d).bits)).removeprefix("torch.") if dtypes else None
        return Backend(
            world_size=world_size(),
            fsdp=self.is_fsdp_enabled,
            fsdp_version=getattr(fsdp, "fsdp_version", 2),
            fsdp_state_dict_type=str(getattr(fsdp, "state_dict_type", "SHARDED_STATE_DICT")),
            deepspeed=self.is_deepspeed_enabled,
            mixed_precision=self.args.mixed_precision,
            packing=bool(getattr(self.data_collator, "pack", False)),
            lora=hasattr(self.model, "disable_adapter"),
            weights_dtype=lowest,
        )

    # ----------------------------------------------------------------------------------------- resume
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """``Trainer.train`` plus the method's state from ``resume_from_checkpoint`` (a checkpoint dir)."""
        if isinstance(resume_from_checkpoint, bool):  # Trainer's "the last checkpoint in output_dir"
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint else None
        if resume_from_checkpoint is not None:
            state = Path(resume_from_checkpoint) / METHOD_STATE
            if state.is_file():
                # Written by rank 0: the rank-independent part (the probe draws one global stream); under FSDP each
                # rank also wrote its own part (its shards of a stored probe direction).
                self.weighting.load_state_dict(torch.load(state, weights_only=False))
                shard = Path(resume_from_checkpoint) / RANK_STATE_FILE.format(rank=rank())
                self.weighting.load_rank_state_dict(torch.load(shard, weights_only=False) if shard.is_file() else None)
            else:
                log.warning(
                    "%s has no %s: the method's state (VCORE's probe stream) starts afresh",
                    resume_from_checkpoint,
                    METHOD_STATE,
                )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

    # ----------------------------------------------------------------------------------------- step batch
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step = {}
        if not batches:
            return batches, None
        # The method's step-level work runs before training_step moves inputs, so place them here.
        batches = [{k: v.to(self.args.device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
        step = micro_batches(batches)  # the step's token and example counts, once per step, for the loss and the method
        with self.compute_loss_context_manager():
            diagnostics = self.weighting.prepare_step(self.model, step)
        self.step_stats.add_step(diagnostics)
        self._step = {id(b): micro for b, micro in zip(batches, step)}
        return batches, step[0].counts.num_tokens

    def micro_batch(self, inputs: dict[str, Any]) -> MicroBatch | None:
        """The record :meth:`get_batch_samples` prepared for the batch dict ``inputs`` (None for any other batch)."""
        return self._step.get(id(inputs))

    def training_step(self, model, inputs, num_items_in_batch=None):
        # The Trainer copies the batch dict before compute_loss (moving it to the device): find the record by the dict
        # get_batch_samples returned, which is the one passed here.
        self._micro = self.micro_batch(inputs)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._micro = None

    # ----------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        micro = self._micro if self._micro is not None else self.micro_batch(inputs)
        if micro is None or not model.training:
            # Evaluation (or a batch that bypassed get_batch_samples): plain NLL over the local tokens.
            token_loss, mask = model_token_loss(model, inputs, chunk_size=self.loss_chunk_size)
            loss = weighted_loss(token_loss, mask.float(), mask, mask.sum())
            return (loss, {"token_loss": token_loss}) if return_outputs else loss
        forward = model_forward(model, inputs, self.weighting.needs, chunk_size=self.loss_chunk_size)
        token_loss, mask, counts = forward.token_loss, forward.mask, micro.counts
        w = self.weighting.weights(forward, micro)
        norm, num_examples = self.loss_normalization, counts.num_examples
        loss = weighted_loss(token_loss, w, mask, counts.num_tokens, normalization=norm, num_examples=num_examples)
        alpha = self.weighting.loss_scale(micro)
        if alpha is not None:
            loss = loss * torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        tokens = (
            inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(inputs["input_ids"].numel())
        )
        self.step_stats.add_micro_batch(token_loss, w, mask, loss, inputs["labels"], tokens)
        self._finite = self._finite & torch.isfinite(loss.detach()).to(self._finite.device)  # read once per step
        # DDP averages gradients over ranks while N already counts every rank's tokens: undo the average.
        loss = loss * world_size()
        return (loss, {"token_loss": token_loss}) if return_outputs else loss

    def compute_loss_context_manager(self):
        # We own autocast (TrainingArguments.bf16 stays off): accelerate would wrap model.forward in autocast and
        # the VCORE probe could then never run an exact float32 forward.
        stack = contextlib.ExitStack()
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.args.device.type, dtype=torch.bfloat16))
        return stack

    # ----------------------------------------------------------------------------------------- schedule, logs
    def create_scheduler(self, num_training_steps, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.lr_floor is not None and hasattr(scheduler, "lr_lambdas"):
            # A floor on the learning rate (the authors' fork uses 1e-6), applied only when trainer.lr_floor is set.
            base = scheduler.base_lrs
            scheduler.lr_lambdas = [
                (lambda step, f=f, b=b: max(f(step), self.lr_floor / b)) for f, b in zip(scheduler.lr_lambdas, base)
            ]
            # The scheduler set the first step's rate from the unfloored schedule when it was built: redo it.
            for group, lr_lambda, b in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, base):
                group["lr"] = b * lr_lambda(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        return scheduler

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log line: add what the method did since the previous one
            steps = self.state.global_step - self._last_log_step
            self._last_log_step = self.state.global_step
            _reduce_over_ranks(self.step_stats)
            logs.update(self.step_stats.flush(steps))
        super().log(logs, start_time)


def _reduce_over_ranks(stats: StepStats) -> None:
    """Make rank 0's log line describe the whole step batch (every rank calls ``log`` at the same step)."""
    if world_size() == 1 or not stats.sums:
        return
    for key in sorted(stats.sums):  # the same keys on every rank: each micro-batch adds all of them
        stats.sums[key] = all_reduce_sum(stats.sums[key].clone())  # a sum may still share storage with a loss
    device = next(iter(stats.sums.values())).device
    for extremes, reduce, empty in ((stats.mins, all_reduce_min, math.inf), (stats.maxs, all_reduce_max, -math.inf)):
        # A rank without supervised tokens has no extreme yet; it still has to join the collective.
        value = reduce(extremes.get("w", torch.tensor(empty, dtype=torch.float64, device=device)).clone())
        if math.isfinite(float(value)):
            extremes["w"] = value


class _MethodStateCallback(TrainerCallback):
    """Saves the method's state (VCORE's probe generator and stored direction) into each checkpoint.

    Rank 0 writes it after a barrier, i.e. after every rank has written its share of the checkpoint: its presence
    marks a complete checkpoint (:func:`vcore.run.checkpoints.latest_checkpoint`).
    """

    def __init__(self, trainer: WeightedTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._last_log_step = state.global_step  # a resumed run's first log line covers only its own steps
        return control

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        own = self.trainer.weighting.rank_state_dict()
        if own is not None and ckpt.is_dir():
            torch.save(own, ckpt / RANK_STATE_FILE.format(rank=rank()))
        barrier()
        if state.is_world_process_zero and ckpt.is_dir():
            seal(ckpt, self.trainer.run_fingerprint, self.trainer.weighting.state_dict())
        return control


class NonFiniteTraining(FloatingPointError):
    """The loss or the gradient norm of an optimizer step is NaN or infinite."""


def step_is_finite(model, loss_ok: torch.Tensor) -> tuple[bool, bool]:
    """``(loss finite, gradients finite)`` for this optimizer step on every rank, from this rank's ``loss_ok`` flag
    and gradients: one host sync (and, distributed, one all-reduce of two flags)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2: this rank's shards
    grad_ok = torch.isfinite(torch.stack(torch._foreach_norm(local))).all() if local else loss_ok
    flags = torch.stack([loss_ok, grad_ok.to(loss_ok.device)]).to(torch.float64)
    loss_ok, grad_ok = (all_reduce_min(flags) if world_size() > 1 else flags).tolist()
    return bool(loss_ok), bool(grad_ok)


class _FiniteGuard(TrainerCallback):
    """Stops the run at the first optimizer step whose loss or gradients are not finite, before the optimizer applies
    them, so no checkpoint or final model ever holds NaN weights. One host sync (and, distributed, one all-reduce of a
    flag) per optimizer step.

    The Trainer itself only hides such steps: ``logging_nan_inf_filter`` replaces a NaN loss by the running average
    and training continues on NaN weights.
    """

    def __init__(self, trainer: WeightedTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        loss_ok, grad_ok = step_is_finite(t.model, t._finite)
        t._finite = torch.ones_like(t._finite)
        if not (loss_ok and grad_ok):
            lr = args.learning_rate
            what = "loss" if not loss_ok else "gradient norm"
            raise NonFiniteTraining(
                f"step {state.global_step + 1}: the {what} is not finite (NaN/inf); stopped before the optimizer "
                "applied it, nothing saved as final. Likely fixes: a "
                f"lower trainer.learning_rate (now {lr:g}), trainer.max_grad_norm > 0 (now {args.max_grad_norm:g}), "
                "trainer.precision=fp32 or model.dtype=float32 if it overflowed in bf16; for VCORE a smaller "
                "method.tau or method.alpha_max"
            )
        return control
