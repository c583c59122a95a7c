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
import copy

import torch
from torch import nn

from vcore.distributed import is_sharded
from vcore.methods.base import Batch, TokenWeighting
from vcore.ops.forward import model_token_loss


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


class IwSFT(TokenWeighting):
    name = "iw_sft"

    def __init__(
        self, model: nn.Module, temperature: float, clip_min: float, clip_max: float, reference: nn.Module | None = None, loss_chunk_size: int = 0
    ) -> None:
        self.temperature, self.clip_min, self.clip_max, self.chunk_size = temperature, clip_min, clip_max, loss_chunk_size
        self.uses_adapters = hasattr(model, "disable_adapter")
        if self.uses_adapters and reference is not None:
            raise ValueError("iw_sft under LoRA: the reference is the model with its adapters off; pass no reference")
        # Full fine-tuning: a frozen copy of the starting weights (``reference`` when ``model`` has already moved
        # away from them). LoRA: the base model itself, adapters off.
        start = reference if reference is not None else model
        self.reference = None if self.uses_adapters else copy.deepcopy(start).eval().requires_grad_(False)

    def _reference_context(self, model: nn.Module):
        return model.disable_adapter() if self.uses_adapters else contextlib.nullcontext()

    @torch.no_grad()
    def prepare_step(self, model: nn.Module, batches: list[Batch]) -> dict[str, torch.Tensor]:
        ref = model if self.uses_adapters else self.reference
        device = batches[0]["input_ids"].device
        if not self.uses_adapters and is_sharded(model.parameters()) and not is_sharded(ref.parameters()):
            shard_like(ref, model)  # FSDP: the copy is sharded as the policy is (a whole copy per rank would not fit)
        elif not self.uses_adapters and next(ref.parameters()).device != device:
            ref.to(device)  # the Trainer moves the policy to the GPU after this method was built
        was_training = ref.training
        ref.eval()
        try:
            with self._reference_context(model):
                for batch in batches:
                    batch.setdefault("weighting", {})["ref_token_loss"] = model_token_loss(ref, batch, chunk_size=self.chunk_size)[0]
        finally:
            ref.train(was_training)
        return {}

    def weights(self, token_loss: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        if "weighting" not in batch:
            raise RuntimeError("iw_sft: the reference losses were not prepared for this batch (prepare_step not called)")
        return iw_sft_weights(
            token_loss,
            batch["weighting"]["ref_token_loss"],
            mask,
            temperature=self.temperature,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
        )
