"""The VCORE probe (SPEC §4 steps 1-3): a probe gradient on an independent batch, and per-token utilities.

``s_t = <g, ∇θ l_t(θ)>``: how much a small step along ``-g`` lowers ``l_t``, per unit of step. With
``probe.mode: finite_difference``: ``s_t = (l_t(θ) - l_t(θ - εg)) / ε`` from two no-grad forwards in exact
float32 (eval mode, so no dropout mask differs between them). The parameters are restored from a copy, bit for
bit (``x - εg + εg`` is not ``x`` in floating point).

Sharded parameters (FSDP2, ``torch.distributed.tensor.DTensor``): ``torch.autograd.grad`` cannot reach them (the
forward runs on all-gathered copies), so ``g`` comes from FSDP's own backward (reduce-scatter) into ``.grad``, which
is emptied again before the training micro-batches; the finite-difference shift and restore act on each rank's
shard, and every forward all-gathers the shifted weights. The jvp probe needs ``functional_call`` on whole
parameters and is not available there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

import torch
from torch import nn

from vcore.distributed import all_reduce_sum, is_sharded, rank, world_size
from vcore.methods.base import RANK_STATE_FILE, Batch
from vcore.methods.precision import exact_float32
from vcore.ops.forward import model_token_loss
from vcore.ops.losses import supervised_mask


class ProbeMode(str, Enum):
    auto = "auto"  # finite_difference for float32 weights, jvp for bf16/fp16 weights (see README, "Choosing the probe")
    finite_difference = "finite_difference"  # (l_t(θ) - l_t(θ - εg)) / ε, two exact-float32 forwards
    jvp = "jvp"  # exact directional derivative by forward-mode AD, one pass, any precision


class JvpAttention(str, Enum):
    """The attention of the jvp probe's forward (it needs a forward-mode derivative, which SDPA lacks)."""

    vcore_blocked = "vcore_blocked"  # linear memory: blocks of queries (vcore/ops/attention.py)
    eager = "eager"  # materialises T×T; the reference
    # one Triton kernel on CUDA, vcore_blocked where it does not apply (logged once); pip install -e ".[gpu]"
    fused = "fused"


@dataclass
class ProbeConfig:
    mode: ProbeMode = ProbeMode.auto
    epsilon: float = 1e-4  # finite-difference step along -g
    batch_size: int = 4  # examples per probe micro-batch
    accumulation: int = 2  # probe micro-batches per probe gradient
    clip_norm: Optional[float] = 1.0  # clip g to this norm before use (authors: max_grad_norm); null: no clipping
    every: int = 1  # recompute g every k optimizer steps, reuse it in between
    seed: int = 0  # seed of the probe batch generator
    # Finite differences under bf16/fp16 weights are rounding noise (SPEC §6); only set this to study that.
    allow_low_precision: bool = False
    attention_block: int = 256  # jvp: queries per block of the forward-mode attention (memory O(block · T))
    jvp_attention: JvpAttention = JvpAttention.vcore_blocked  # jvp: see JvpAttention; vcore/ops/fused_attention.py
    fidelity_every: int = 0  # k > 0: every k steps also compute the other probe's scores and log their agreement


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Exactly the parameters the optimizer updates (all weights under full fine-tuning, adapters under LoRA)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameter; VCORE's probe gradient would be empty")
    return params


def probe_gradient(
    model: nn.Module, params: Sequence[torch.Tensor], batches: Sequence[Batch], chunk_size: int = 0
) -> list[torch.Tensor]:
    """``g = ∇θ L_{B'}(θ; w = 1)`` over ``params``, token-normalised over all probe micro-batches and ranks.

    Uses ``torch.autograd.grad`` so the ``.grad`` buffers of the main step are never touched (sharded parameters:
    :func:`sharded_probe_gradient`).
    """
    num_tokens = sum(supervised_count(b) for b in batches)
    num_tokens = all_reduce_sum(torch.tensor(float(num_tokens), device=params[0].device)).clamp(min=1)
    if is_sharded(params):
        return sharded_probe_gradient(model, params, batches, num_tokens, chunk_size)
    # float32 accumulators (bf16 weights get an exact-enough sum), float64 for float64 weights (exact tests).
    grads = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in params]
    for batch in batches:
        token_loss, mask = model_token_loss(model, batch, chunk_size=chunk_size)
        loss = (token_loss * mask).sum() / num_tokens
        for acc, gr in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gr is not None:
                acc.add_(gr.to(acc.dtype))
    for gr in grads:  # data parallel: g is the all-reduced gradient of the global probe batch
        all_reduce_sum(gr)
    return grads


def sharded_probe_gradient(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    num_tokens: torch.Tensor,
    chunk_size: int = 0,
) -> list[torch.Tensor]:
    """FSDP2: ``g`` through FSDP's backward, sharded like ``params``; ``.grad`` is left empty as it was found.

    Runs at the start of the optimizer step (before any training backward), where the Trainer has zeroed the
    gradients; anything already there would be mixed into ``g``, hence the check.
    """
    held = [p.grad.to_local().any() for p in params if p.grad is not None]
    if held and bool(torch.stack(held).any()):  # one device sync, not one per parameter
        raise RuntimeError(
            "VCORE probe under FSDP: the parameters already hold gradients at the start of the optimizer step, so the "
            "probe gradient (computed through FSDP's backward into .grad) would be mixed with them"
        )
    for p in params:
        p.grad = None
    for batch in batches:
        token_loss, mask = model_token_loss(model, batch, chunk_size=chunk_size)
        # FSDP averages the reduce-scattered gradient over ranks while num_tokens already counts every rank's.
        ((token_loss * mask).sum() / num_tokens * world_size()).backward()
    if all(p.grad is None for p in params):
        # FSDP left the gradient unsharded and unreduced (gradient sync turned off): zeros would make VCORE SFT.
        raise RuntimeError(
            "VCORE probe under FSDP: the probe backward reduced no gradient into the sharded parameters (is gradient "
            "sync disabled, e.g. inside no_sync / set_requires_gradient_sync(False)?)"
        )
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]  # a parameter the loss does not use
    for p in params:
        p.grad = None
    return grads


def supervised_count(batch: Batch) -> int:
    return int(supervised_mask(batch["labels"]).sum())


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The norm of all ``tensors`` as one vector (for DTensor shards: of the whole tensors, the same on every rank)."""
    wide = [t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]  # bf16 -> float32, float64 stays
    if is_sharded(tensors):
        return _sharded_norm(wide)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in wide]))


def _sharded_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Norm of DTensors laid out alike (FSDP2: one mesh, one placement): local sums of squares, then one
    all-reduce per sharded mesh dimension (replicas, as in HSDP, are not summed twice). Otherwise DTensor's own
    reduction, one collective per tensor."""
    import torch.distributed as dist

    first = tensors[0]
    if any(t.device_mesh != first.device_mesh or t.placements != first.placements for t in tensors):
        return sum(torch.linalg.vector_norm(t) ** 2 for t in tensors).full_tensor().sqrt()
    squares = torch.stack([t.to_local().pow(2).sum() for t in tensors]).sum()
    for dim, placement in enumerate(first.placements):
        if placement.is_shard():
            dist.all_reduce(squares, group=first.device_mesh.get_group(dim))
    return squares.sqrt()


def clip_(tensors: Sequence[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Scale ``tensors`` in place to norm ≤ ``max_norm``; returns the norm before clipping."""
    norm = global_norm(tensors)
    if max_norm is not None:
        scale = (max_norm / (norm + 1e-12)).clamp(max=1.0)
        for t in tensors:
            t.mul_(scale)
    return norm


@torch.no_grad()
def finite_difference_scores(
    model: nn.Module,
    params: dict[str, torch.Tensor] | Sequence[torch.Tensor],
    g: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    epsilon: float,
    exact: bool = True,
    chunk_size: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per micro-batch ``(l_t(θ), s_t)``, both ``[B, T]``, from forwards in exact float32.

    ``l_t(θ)`` is returned because VCORE needs float32 losses at θ anyway (the main step's may be bf16).
    ``exact=False`` keeps the ambient precision (autocast, TF32): only for measuring how much that costs in
    fidelity (:mod:`vcore.tools.fidelity`).
    """
    params = list(params.values()) if isinstance(params, dict) else list(params)
    with exact_float32() if exact else contextlib.nullcontext():
        base = [model_token_loss(model, b, chunk_size=chunk_size)[0] for b in batches]
        saved = [p.detach().clone() for p in params]  # under FSDP: this rank's shards only
        try:
            _reshard(model)
            for p, d in zip(params, g):
                p.sub_(epsilon * d.to(p.dtype))
            shifted = [model_token_loss(model, b, chunk_size=chunk_size)[0] for b in batches]
        finally:
            _reshard(model)
            for p, s in zip(params, saved):
                p.copy_(s)
    return base, [(l0 - l1) / epsilon for l0, l1 in zip(base, shifted)]


def _reshard(model: nn.Module) -> None:
    """FSDP2: drop any all-gathered copy, so the next forward gathers the shards as they are now (the root module
    keeps its parameters gathered after a forward; a shift of the shards alone would not reach them)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


@torch.no_grad()
def jvp_scores(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    g: Sequence[torch.Tensor],
    batches: Sequence[Batch],
    block: int = 256,
    attention: str | JvpAttention = JvpAttention.vcore_blocked,
    chunk_size: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per micro-batch ``(l_t(θ), s_t)`` with ``s_t`` the exact derivative of ``l_t`` along ``g`` (forward-mode AD).

    One forward per micro-batch at the ambient precision (bf16 autocast is fine: SPEC §6 measures 1.000 fidelity);
    attention runs through :mod:`vcore.ops.attention` (linear memory in T, no SDPA forward-mode rule needed).
    Nothing is mutated: the dual parameters exist only inside ``functional_call``.
    """
    import torch.autograd.forward_ad as fwAD

    from vcore.ops.attention import use_attention

    attention = JvpAttention(attention).value  # the name transformers' attention interface knows
    if attention == JvpAttention.fused:  # the Triton kernel; vcore_blocked for calls it cannot take
        from vcore.ops import fused_attention

        fused_attention.register(block)
        attention = fused_attention.NAME
    losses, scores = [], []
    with use_attention(model, attention, block=block), fwAD.dual_level():
        dual = {n: fwAD.make_dual(p, d.to(p.dtype)) for (n, p), d in zip(params.items(), g)}
        for batch in batches:
            token_loss, _ = model_token_loss(model, batch, params=dual, chunk_size=chunk_size)
            primal, tangent = fwAD.unpack_dual(token_loss)
            if tangent is None:
                # The trainable parameters always reach the loss, so a missing tangent means something dropped it:
                # zero scores would silently train as SFT. torch.compile on the model does this (measured).
                raise RuntimeError(
                    "VCORE jvp probe: the loss carries no forward-mode tangent (is the model wrapped in torch.compile? "
                    "the probe needs the eager model); use method.probe.mode=finite_difference otherwise"
                )
            losses.append(primal.clone())
            scores.append(tangent.clone())
    return losses, scores


class Probe:
    """Owns the probe-batch generator and the stored direction ``g`` (reused for ``probe.every`` steps).

    ``sample`` draws probe micro-batches uniformly (with replacement) from the training set with a dedicated
    generator seeded from ``probe.seed``: independent of the step batch and of any global RNG (SPEC §4.1).

    Data parallelism: every rank draws the same *global* index stream (``batch_size × accumulation ×
    world_size`` indices per refresh) and keeps its own contiguous slice, so each rank's examples are its own
    independent uniform draws from one stream. Why one stream rather than a generator per rank: the global probe
    batch (the union over ranks, whose all-reduced gradient is ``g``) then depends only on the seed and its global
    size, not on how it is split: 2 ranks × ``batch_size`` b draw exactly what 1 rank × 2b draws, so a run's
    VCORE weights do not change with the GPU count (tests/test_distributed.py). The generator state is also the
    same on every rank: rank 0's checkpoint restores all of them, on any world size.

    Exact resume (:meth:`state_dict`): the generator state, and with ``probe.every > 1`` the stored direction
    itself (a copy of the trainable parameters' size, on CPU), since recomputing it would need the parameters of
    the step that drew it. Under FSDP that direction is sharded: each rank saves its shards (:meth:`rank_state_dict`).
    """

    def __init__(
        self, cfg: ProbeConfig, dataset: Sequence[Any], collate: Callable[[list[Any]], Batch], chunk_size: int = 0
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("VCORE probe: the training set is empty")
        self.cfg, self.dataset, self.collate, self.chunk_size = cfg, dataset, collate, chunk_size
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.direction: list[torch.Tensor] | None = None
        self._shards: list[torch.Tensor] | None = None  # this rank's direction shards from a checkpoint (FSDP)
        self._expected_shards: int | None = None  # the checkpoint said its direction is in per-rank files
        self.steps_since_refresh = 0
        self.last_norm = torch.tensor(0.0)

    def sample(self, device: torch.device) -> list[Batch]:
        """This rank's probe micro-batches: its slice of the global draw (see the class docstring)."""
        n = self.cfg.batch_size * self.cfg.accumulation
        idx = torch.randint(len(self.dataset), (n * world_size(),), generator=self.generator)
        idx = idx[rank() * n : (rank() + 1) * n].tolist()
        batches = []
        for i in range(0, n, self.cfg.batch_size):
            batch = self.collate([self.dataset[j] for j in idx[i : i + self.cfg.batch_size]])
            batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        return batches

    def gradient(self, model: nn.Module, params: dict[str, torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """``g`` for this step: recomputed every ``probe.every`` steps, reused in between. ``device``: where the
        step's batches are (not necessarily the parameters': FSDP may keep shards on the host)."""
        values = list(params.values())
        if self._shards is not None:  # this rank's shards of a direction restored from a checkpoint
            self.direction, self._shards = _rebuild_shards(self._shards, values), None
        if self.direction is None or self.steps_since_refresh >= self.cfg.every:
            g = probe_gradient(model, values, self.sample(device), self.chunk_size)
            self.last_norm = clip_(g, self.cfg.clip_norm)
            self.direction, self.steps_since_refresh = g, 0
        elif self.direction[0].device != values[0].device:  # restored from a checkpoint onto CPU
            self.direction = [d.to(values[0].device) for d in self.direction]
        self.steps_since_refresh += 1
        return self.direction

    def _reused(self) -> bool:
        """Whether the next step reuses the stored direction (so a checkpoint must carry it)."""
        pending = self.direction is not None or self._shards is not None
        return self.cfg.every > 1 and pending and self.steps_since_refresh < self.cfg.every

    def _sharded(self) -> bool:
        return self._shards is not None or (self.direction is not None and is_sharded(self.direction))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generator": self.generator.get_state(),
            "steps_since_refresh": self.steps_since_refresh,
            "world_size": world_size(),
        }
        if self._reused() and self._sharded():
            state["direction_shards"] = world_size()  # each rank's file holds its shards (rank_state_dict)
        elif self._reused():
            state["direction"] = [d.detach().cpu() for d in self.direction]
            state["last_norm"] = self.last_norm.detach().cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._shards, self._expected_shards = None, state.get("direction_shards")
        if state.get("direction") is not None:
            self.direction, self.steps_since_refresh = list(state["direction"]), state["steps_since_refresh"]
            self.last_norm = state["last_norm"]
        else:
            # No stored direction here (probe.every=1, a refresh is due, an older checkpoint, or FSDP shards that
            # load_rank_state_dict brings): refresh at the next step, never reuse a stale g.
            self.direction, self.steps_since_refresh = None, 0

    def rank_state_dict(self) -> dict[str, Any] | None:
        """Under FSDP, a stored direction is sharded like the parameters: each rank saves its own shards."""
        if not (self._reused() and self._sharded()):
            return None
        shards = self._shards if self._shards is not None else [d.to_local().detach().cpu() for d in self.direction]
        return {
            "shards": shards,
            "last_norm": self.last_norm.detach().cpu(),
            "steps_since_refresh": self.steps_since_refresh,
            "world_size": world_size(),
        }

    def load_rank_state_dict(self, state: dict[str, Any] | None) -> None:
        """``state``: this rank's file, or None when the checkpoint has none for this rank."""
        expected, self._expected_shards = self._expected_shards, None
        if expected is None:
            return
        if state is None:
            raise RuntimeError(
                f"the checkpoint stores VCORE's probe direction in per-rank shards, and rank {rank()}'s file "
                f"({RANK_STATE_FILE.format(rank=rank())}) is missing: copy the whole checkpoint directory"
            )
        if state["world_size"] != world_size():
            raise RuntimeError(
                f"this checkpoint's stored VCORE probe direction is sharded over {state['world_size']} ranks, and this "
                f"run has {world_size()}: resume with {state['world_size']} GPUs, or from a checkpoint where a probe "
                "refresh is due (probe.every steps after the last one)"
            )
        self._shards, self.last_norm = state["shards"], state["last_norm"]
        self.steps_since_refresh = state["steps_since_refresh"]


def _rebuild_shards(shards: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """DTensors sharded like ``params`` from this rank's saved local shards (checked against the current layout)."""
    from torch.distributed.tensor import DTensor

    if len(shards) != len(params) or any(d.shape != p.to_local().shape for d, p in zip(shards, params)):
        raise RuntimeError(
            "the stored VCORE probe direction does not match this run's sharded trainable parameters (a different "
            "model, LoRA setting or device mesh than the checkpoint's): resume with the checkpoint's settings"
        )
    return [
        DTensor.from_local(d.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        for d, p in zip(shards, params)
    ]
