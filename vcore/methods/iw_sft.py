"""Importance-weighted SFT (Qin & Springenberg, 2025, "Supervised Fine Tuning on Curated Data is Reinforcement
Learning (and can be improved)", arXiv 2507.12856).

One weight per example on every one of its tokens:
``w_i = clip(exp(temperature * mean_t[log p_θ(y_t) - log p_ref(y_t)]), clip_min, clip_max)``, detached.
Form and bounds follow the authors' code (github emmyqin/iw_sft, ``bounding_trainers.py``, per-sequence branch
used by ``iw_sft.sh``: mean over response tokens, ``temp = 1``, ``clamp(iw, 0, 16)``, computed under no_grad,
loss divided by the token count). ``p_ref`` is the frozen starting model; under LoRA it is the same model with
its adapters disabled, so no second copy of the weights exists. At step 0 every weight is exactly 1. Under FSDP2
the full-fine-tuning copy is sharded like the policy at the first step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from vcore.checks import ConfigError, check
from vcore.distributed import Backend, is_sharded
from vcore.methods.base import MethodConfig, MethodContext, MicroBatch, TokenWeighting
from vcore.methods.registry import register
from vcore.ops.forward import TokenForward, model_token_loss


@dataclass
class IwSFTConfig(MethodConfig):
    name: str = "iw_sft"
    # Authors' code (emmyqin/iw_sft, bounding_trainers.py): w = clamp(exp(temp * mean_t log-ratio), 0, 16), temp 1.
    temperature: float = 1.0
    clip_min: float = 0.0
    clip_max: float = 16.0

    def __post_init__(self) -> None:
        check(self.clip_max > self.clip_min >= 0.0, "method.clip_max", "need clip_max > clip_min >= 0")


@dataclass
class IwSFTState:
    """A micro-batch's reference losses, from :meth:`IwSFT.prepare_step`."""

    ref_token_loss: torch.Tensor  # [B, T] NLL of the reference (start) model


def iw_sft_weights(
    token_loss: torch.Tensor,
    ref_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    clip_min: float = 0.0,
    clip_max: float = 16.0,
) -> torch.Tensor:
    """``token_loss``, ``ref_token_loss``: ``[B, T]`` NLL of the policy and the reference; ``mask [B, T]``.

    Returns ``[B, T]`` float32: each example's clipped sequence weight on its supervised tokens (an example
    with no supervised token gets 0).
    """
    n = mask.sum(dim=1)
    log_ratio = ((ref_token_loss.detach() - token_loss.detach()) * mask).sum(dim=1) / n.clamp(min=1)
    w = torch.exp(temperature * log_ratio).clamp(clip_min, clip_max)
    return (w[:, None] * mask).to(torch.float32)


def shard_like(module: nn.Module, sharded: nn.Module) -> None:
    """Apply FSDP2 to ``module`` (a copy of ``sharded`` taken before it was sharded) with the same groups of
    submodules on the same device mesh: innermost first, the root last, as FSDP2 requires. Modules sharded as one
    group (accelerate groups tied embeddings: ``fully_shard([wte, lm_head])``) stay one group."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = next(p.device_mesh for p in sharded.parameters() if hasattr(p, "device_mesh"))
    groups: dict[int, list[str]] = {}
    for name, m in sharded.named_modules():
        if isinstance(m, FSDPModule):
            groups.setdefault(id(m._get_fsdp_state()), []).append(name)
    for names in sorted(groups.values(), key=lambda g: ("" in g, -min(n.count(".") for n in g))):
        targets = [module.get_submodule(n) for n in names]
        fully_shard(targets if len(targets) > 1 else targets[0], mesh=mesh)


@register
class IwSFT(TokenWeighting):
    name = "iw_sft"
    Config = IwSFTConfig

    def __init__(
        self, cfg: IwSFTConfig, model: nn.Module, reference: nn.Module | None = None, loss_chunk_size: int = 0
    ) -> None:
        """``reference``: a frozen copy of the start model (full fine-tuning), or None under LoRA, where the reference
        is ``model`` with its adapters off, so no second copy of the weights exists."""
        super().__init__(cfg)
        self.chunk_size = loss_chunk_size
        self.uses_adapters = hasattr(model, "disable_adapter")
        if self.uses_adapters and reference is not None:
            raise ValueError("iw_sft under LoRA: the reference is the model with its adapters off; pass no reference")
        if not self.uses_adapters and reference is None:
            raise ValueError("iw_sft under full fine-tuning needs a frozen copy of the start model as its reference")
        self.reference = None if self.uses_adapters else reference.eval().requires_grad_(False)

    @classmethod
    def build(cls, cfg: IwSFTConfig, ctx: MethodContext) -> IwSFT:
        # Full fine-tuning: a frozen copy of the starting weights (loaded afresh when ctx.model has already moved away
        # from them, as in the inspector). LoRA: the base model itself, adapters off.
        reference = None if hasattr(ctx.model, "disable_adapter") else ctx.load_start_model()
        return cls(cfg, ctx.model, reference, ctx.loss_chunk_size)

    @classmethod
    def check_backend(cls, cfg: IwSFTConfig, backend: Backend) -> None:
        if backend.fsdp and backend.fsdp_version != 2:
            raise ConfigError(
                "method=iw_sft under FSDP1 is not supported: its reference copy is sharded the way FSDP2 sharded the "
                "policy. Use FSDP2 (`fsdp_version: 2` in the accelerate config) or DDP (docs/distributed.md)."
            )

    def _reference_context(self, model: nn.Module):
        return model.disable_adapter() if self.uses_adapters else contextlib.nullcontext()

    @torch.no_grad()
    def prepare_step(self, model: nn.Module, step: list[MicroBatch]) -> dict[str, torch.Tensor]:
        ref = model if self.uses_adapters else self.reference
        device = step[0].inputs["input_ids"].device
        if not self.uses_adapters and is_sharded(model.parameters()) and not is_sharded(ref.parameters()):
            shard_like(ref, model)  # FSDP: the copy is sharded as the policy is (a whole copy per rank would not fit)
        elif not self.uses_adapters and next(ref.parameters()).device != device:
            ref.to(device)  # the Trainer moves the policy to the GPU after this method was built
        was_training = ref.training
        ref.eval()
        try:
            with self._reference_context(model):
                for micro in step:
                    micro.state = IwSFTState(model_token_loss(ref, micro.inputs, chunk_size=self.chunk_size)[0])
        finally:
            ref.train(was_training)
        return {}

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        if micro.state is None:
            raise RuntimeError(
                "iw_sft: the reference losses were not prepared for this batch (prepare_step not called)"
            )
        return iw_sft_weights(
            forward.token_loss,
            micro.state.ref_token_loss,
            forward.mask,
            temperature=self.cfg.temperature,
            clip_min=self.cfg.clip_min,
            clip_max=self.cfg.clip_max,
        )
