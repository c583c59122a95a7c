"""What a token-weighting method is, as the trainer sees it: the unit of extension.

Methods differ only in their weights (STYLE habit 1): each returns detached ``w_t`` of shape ``[B, T]`` and,
optionally, a loss factor α; :func:`vcore.ops.losses.weighted_loss` does the rest for every method.

A method is a :class:`TokenWeighting` subclass with a ``name``, a ``Config`` schema (a :class:`MethodConfig`
dataclass; its YAML in ``conf/method/`` extends ``base_<name>``), and these hooks:

- :meth:`TokenWeighting.build`: the constructor, from the method's typed config and a :class:`MethodContext`
  (model, training data, collate, chunk size, the start model, the backend).
- ``needs``: what the method reads from the training forward besides the per-token loss
  (:class:`vcore.ops.forward.ForwardNeeds`: entropy, top-k log-probabilities), computed inside the chunked
  cross-entropy of that one forward.
- :meth:`TokenWeighting.check_backend`: refuse a backend the method cannot run on (FSDP, DeepSpeed, packing, LoRA),
  before anything is loaded and again once the model is.
- :meth:`TokenWeighting.prepare_step`: once per optimizer step on *all* micro-batches of the accumulation window,
  before any of them is back-propagated. Methods whose weights depend on the whole step batch (VCORE's α, its scores
  from extra forwards) or on a second model (iw-SFT's reference) compute them here and keep them, per micro-batch,
  in :attr:`MicroBatch.state` (a typed record of the method's own).
- :meth:`TokenWeighting.weights` (and :meth:`TokenWeighting.loss_scale`): inside the loss of each micro-batch, from
  that micro-batch's forward (:class:`vcore.ops.forward.TokenForward`) and its :class:`MicroBatch` record.

The registry (:mod:`vcore.methods.registry`) maps names to these classes; every list of methods derives from it.
docs/adding_a_method.md walks through a new one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Optional

import torch
from omegaconf import MISSING
from torch import nn

from vcore.distributed import Backend, all_reduce_sum
from vcore.ops.forward import ForwardNeeds, TokenForward
from vcore.ops.losses import supervised_mask

Batch = dict[str, Any]

# A method's state in a checkpoint: written by rank 0 last (it marks the checkpoint complete), plus one file per rank
# for what differs between ranks (VCORE's stored probe direction under FSDP).
METHOD_STATE = "vcore_method_state.pt"
RANK_STATE_FILE = "vcore_method_state_rank{rank}.pt"


# --------------------------------------------------------------------------------------------------- config
class LossNormalization(str, Enum):
    token = "token"  # (1/N) sum_B sum_t w_t l_t, N = supervised tokens of the optimizer step
    sequence = "sequence"  # (1/|B|) sum_B (1/n) sum_t w_t l_t  (the paper's equations)


@dataclass
class MethodConfig:
    """The settings every method has; a method's own schema subclasses it (``name`` defaults to the method's)."""

    name: str = MISSING
    loss_normalization: LossNormalization = LossNormalization.token
    # The class of a method defined outside vcore ("package.module.Class"), imported when the config is typed; null
    # for the built-in methods, which are found by name (vcore.methods.registry).
    _target_: Optional[str] = None


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class StepCounts:
    """Supervised tokens and examples (with a supervised token) of the whole step batch, over all ranks: float64
    scalars, the denominators of :func:`vcore.ops.losses.weighted_loss`."""

    num_tokens: torch.Tensor
    num_examples: torch.Tensor

    @staticmethod
    def of(batches: Sequence[Batch]) -> StepCounts:
        """Counted once per optimizer step (one all-reduce under data parallelism)."""
        masks = [supervised_mask(b["labels"]) for b in batches]
        counts = torch.tensor(
            [float(sum(int(m.sum()) for m in masks)), float(sum(int((m.sum(1) > 0).sum()) for m in masks))],
            dtype=torch.float64,
            device=masks[0].device,
        )
        num_tokens, num_examples = all_reduce_sum(counts)
        return StepCounts(num_tokens, num_examples)


@dataclass
class MicroBatch:
    """One micro-batch of an optimizer step as methods see it.

    ``inputs``: the collated tensors (``input_ids``, ``labels``, ``answer_mask``, ``example_id``...; see
    :mod:`vcore.data.collate`), on the training device. ``counts``: the whole step's. ``state``: what the method's
    :meth:`TokenWeighting.prepare_step` stored for this micro-batch (its own typed record; None when it stores none).
    """

    inputs: Batch
    counts: StepCounts
    state: Any = None


def micro_batches(batches: Sequence[Batch]) -> list[MicroBatch]:
    """The records of one optimizer step's micro-batches, sharing one :class:`StepCounts`."""
    counts = StepCounts.of(batches)
    return [MicroBatch(b, counts) for b in batches]


@dataclass
class MethodContext:
    """What any method may need to be built; a method takes what it uses.

    ``start_model``: the frozen weights training starts from, loaded on demand (iw-SFT's reference). In training the
    model *is* the start model, so the default is a copy of it; the inspector, which weighs with a trained checkpoint,
    loads the start weights instead.
    """

    model: nn.Module
    train_dataset: Sequence[Any] = ()
    collate: Optional[Callable[[list[Any]], Batch]] = None
    loss_chunk_size: int = 0  # model.loss_chunk_size, for the forwards a method runs itself (probe, reference)
    start_model: Optional[Callable[[], nn.Module]] = None
    backend: Backend = field(default_factory=Backend)
    tokenizer: Any = None  # the run's tokenizer (a method that weighs tokens by what they are)

    def load_start_model(self) -> nn.Module:
        return self.start_model() if self.start_model is not None else copy.deepcopy(self.model)


# --------------------------------------------------------------------------------------------------- the method
class TokenWeighting:
    """Base class of every method. Subclasses set ``name`` and ``Config`` and implement :meth:`weights`."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # What the training forward computes for this method besides the per-token loss (nothing by default).
    needs: ForwardNeeds = ForwardNeeds()

    def __init__(self, cfg: MethodConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else type(self).Config()

    @classmethod
    def build(cls, cfg: MethodConfig, ctx: MethodContext) -> TokenWeighting:
        """The method for ``cfg`` (an instance of :attr:`Config`) in ``ctx``; methods that need the model, the data
        or the start model override this."""
        return cls(cfg)

    @classmethod
    def check_backend(cls, cfg: MethodConfig, backend: Backend) -> None:
        """Raise :class:`vcore.checks.ConfigError` (naming the option to change) for a backend this method does not
        support. Runs before anything is loaded (``backend.weights_dtype`` from ``model.dtype``) and again in the
        Trainer with the loaded model's facts. Backend-wide limits (DeepSpeed, accelerate's autocast) are checked for
        every method by :func:`vcore.distributed.check_parallel_backend`."""

    def prepare_step(self, model: nn.Module, step: list[MicroBatch]) -> dict[str, torch.Tensor]:
        """Per-step work over the whole step batch: set each micro-batch's ``state``; returns step-level diagnostics
        (detached scalar tensors, logged as they are named, e.g. ``vcore/alpha``)."""
        return {}

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        """``[B, T]`` detached weights (0 off ``forward.mask``) for one micro-batch."""
        raise NotImplementedError

    def loss_scale(self, micro: MicroBatch) -> torch.Tensor | float | None:
        """Detached factor applied to the micro-batch's loss (VCORE's α); None for methods without one."""
        return None

    def token_values(self, forward: TokenForward, micro: MicroBatch) -> dict[str, torch.Tensor]:
        """Per-token ``[B, T]`` values shown next to the weights by the inspector, the W&B heatmap and the report
        (VCORE: ``score`` and ``q``); none by default."""
        return {}

    # Checkpointed state (generators); empty for stateless methods. ``rank_state_dict``: the part that differs
    # between ranks (VCORE's stored probe direction under FSDP: this rank's shards), None when nothing does.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def rank_state_dict(self) -> dict[str, Any] | None:
        return None

    def load_rank_state_dict(self, state: dict[str, Any] | None) -> None:
        """``state``: what this rank saved, or None when the checkpoint has no file for this rank."""
