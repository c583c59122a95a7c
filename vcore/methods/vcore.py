"""VCORE (Gong et al., arXiv 2510.27462): Gibbs weights of probe utilities with variance control (SPEC §4.4-6).

Per example i with supervised tokens t = 1..n and utilities s_t (from :mod:`vcore.methods.probe`):
``q_t = exp(τ s_t) / Σ_j exp(τ s_j)`` (masked log-sum-exp), ``w_t = n q_t`` (mean weight 1 inside the example),
and a detached step factor α:
- ``paper``: ``α = sqrt(V_u / V_q)`` with ``V_q = Var_i(Σ_t q_t s_t)``, ``V_u = Var_i((1/n) Σ_t s_t)`` over the
  examples of the whole step batch; α = 1 with fewer than 2 examples or ``V_q = 0``; capped at ``alpha_max``.
- ``loss_ratio`` (the authors' released code): ``α = min(1, L_uniform / L_weighted)``, 1 when ``L_weighted = 0``.
- ``none``: α = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import torch
from torch import nn

from vcore.checks import ConfigError, check
from vcore.distributed import Backend, all_reduce_sum
from vcore.methods.base import Batch, MethodConfig, MethodContext, MicroBatch, TokenWeighting
from vcore.methods.precision import LOW_PRECISION, check_finite_difference_precision
from vcore.methods.probe import (
    Probe,
    ProbeConfig,
    ProbeMode,
    finite_difference_scores,
    jvp_scores,
    trainable_parameters,
)
from vcore.methods.registry import register
from vcore.ops.forward import TokenForward
from vcore.ops.losses import supervised_mask, weighted_loss


class VarianceControl(str, Enum):
    paper = "paper"
    loss_ratio = "loss_ratio"
    none = "none"


@dataclass
class VCOREConfig(MethodConfig):
    name: str = "vcore"
    tau: float = 0.5  # the paper's τ, multiplies s_t; see conf/method/vcore.yaml for the paper's values
    # Set: τ is chosen every step so that the weights' Kish effective sample size is this fraction of the step's
    # supervised tokens (method.tau is then unused; the chosen τ is logged as vcore/tau). null: τ fixed.
    target_ess: Optional[float] = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    variance_control: VarianceControl = VarianceControl.paper
    alpha_max: Optional[float] = 1.0  # cap on α; null: unbounded

    def __post_init__(self) -> None:
        check(self.tau >= 0.0, "method.tau", f"must be >= 0 (got {self.tau}); 0 gives uniform weights")
        check(
            self.target_ess is None or 0.0 < self.target_ess < 1.0,
            "method.target_ess",
            f"must be in (0, 1) or null (got {self.target_ess}); 1 would be uniform weights (tau=0)",
        )
        check(self.probe.epsilon > 0.0, "method.probe.epsilon", f"must be > 0 (got {self.probe.epsilon})")
        check(self.probe.batch_size >= 1, "method.probe.batch_size", "must be >= 1")
        check(self.probe.accumulation >= 1, "method.probe.accumulation", "must be >= 1")
        check(self.probe.every >= 1, "method.probe.every", "must be >= 1")
        check(self.probe.clip_norm is None or self.probe.clip_norm > 0, "method.probe.clip_norm", "must be > 0 or null")
        check(self.alpha_max is None or self.alpha_max > 0, "method.alpha_max", "must be > 0 or null")
        check(self.probe.attention_block >= 1, "method.probe.attention_block", "must be >= 1")
        check(self.probe.fidelity_every >= 0, "method.probe.fidelity_every", "must be >= 0 (0: off)")


@dataclass
class VCOREState:
    """A micro-batch's share of the step's weighting, from :meth:`VCORE.prepare_step` (all ``[B, T]`` but ``alpha``)."""

    weights: torch.Tensor  # w_t = n q_t
    alpha: torch.Tensor  # the step's variance-control factor (a scalar)
    scores: torch.Tensor  # s_t, the probe utilities
    q: torch.Tensor  # the Gibbs probabilities


def gibbs_weights(scores: torch.Tensor, mask: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SPEC §4.4-5. ``scores [B, T]``, ``mask [B, T] bool`` -> ``(w, q)``, both ``[B, T]``, 0 off the mask.

    ``w = exp(τ s - lse + log n)`` rather than ``n · q`` so that τ = 0 gives exactly 1 (``lse = log n`` then).
    A row with no supervised token gets zeros, never NaN.
    """
    z = torch.where(mask, tau * scores, torch.full_like(scores, -math.inf))
    n = mask.sum(dim=1, keepdim=True)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    safe_lse = torch.where(n > 0, lse, torch.zeros_like(lse))
    log_q = z - safe_lse
    zero = torch.zeros_like(scores)
    q = torch.where(mask, torch.exp(log_q), zero)
    w = torch.where(mask, torch.exp(log_q + torch.log(n.clamp(min=1).to(scores.dtype))), zero)
    return w, q


def weights_ess(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], taus: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size of the step batch's weights, as a fraction of its tokens, for each τ in ``taus [K]``.

    With ``w = n softmax(τ s)`` per example, ``Σ w = N`` exactly, so ``ESS / N = (Σ w)² / (N Σ w²) = N / Σ w²``: 1 for
    uniform weights, 1/N when one token takes everything. Sums are all-reduced, so every rank gets the global value.
    Non-increasing in τ ≥ 0 (a hotter Gibbs distribution is majorised by a colder one), which :func:`tau_for_ess` uses.
    """
    sums = torch.zeros(len(taus) + 1, dtype=torch.float64, device=taus.device)
    for s, m in zip(scores, masks):
        n = m.sum(dim=1).double()  # [B]
        z = torch.where(
            m[None], taus.double()[:, None, None] * s.double()[None], torch.tensor(-math.inf, device=s.device)
        )
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        q2 = torch.where(
            m[None],
            torch.exp(2 * (z - torch.where(n[None, :, None] > 0, lse, torch.zeros_like(lse)))),
            torch.zeros_like(z),
        )
        sums[:-1] += (n[None] ** 2 * q2.sum(dim=-1)).sum(dim=-1)
        sums[-1] += n.sum()
    sums = all_reduce_sum(sums)
    return torch.where(sums[:-1] > 0, sums[-1] / sums[:-1].clamp(min=1e-300), torch.ones_like(sums[:-1]))


def tau_for_ess(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], target: float, lo: float = 1e-6, hi: float = 1e6
) -> torch.Tensor:
    """The largest τ in ``[lo, hi]`` whose weights keep an ESS of at least ``target`` (a fraction of the step's tokens).

    A log-spaced grid (121 points, 26% apart), then a finer one (33 points) between the bracketing neighbours: τ to
    within 0.7%, on device, without a host sync. Scores that cannot reach the target (all equal) give ``hi``.
    """
    device = scores[0].device
    grid = torch.logspace(math.log10(lo), math.log10(hi), 121, dtype=torch.float64, device=device)
    for _ in range(2):
        ok = weights_ess(scores, masks, grid) >= target
        i = (ok.sum() - 1).clamp(min=0)  # ESS falls with τ: the last grid point still at the target
        a, b = grid[i], grid[(i + 1).clamp(max=len(grid) - 1)]
        best = torch.where(ok.all(), grid[-1], a)
        grid = torch.exp(
            torch.linspace(0, 1, 33, dtype=torch.float64, device=device) * (torch.log(b) - torch.log(a)) + torch.log(a)
        )
    return best


def paper_alpha(
    scores: Sequence[torch.Tensor], q: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], alpha_max: float | None
) -> torch.Tensor:
    """SPEC §4.6 ``paper``: α over every example of the step batch (lists hold the micro-batches).

    Variances come from all-reduced moment sums in float64, so data-parallel ranks agree on one α.
    """
    moments = torch.zeros(5, dtype=torch.float64, device=scores[0].device)
    for s, qq, m in zip(scores, q, masks):
        n = m.sum(dim=1)
        keep = n > 0
        s64 = (s * m).double()
        a = (qq.double() * s64).sum(dim=1)[keep]
        u = (s64.sum(dim=1) / n.clamp(min=1))[keep]
        moments += torch.stack([keep.sum().double(), a.sum(), (a * a).sum(), u.sum(), (u * u).sum()])
    count, sa, saa, su, suu = all_reduce_sum(moments)
    v_q = (saa / count.clamp(min=1) - (sa / count.clamp(min=1)) ** 2).clamp(min=0)
    v_u = (suu / count.clamp(min=1) - (su / count.clamp(min=1)) ** 2).clamp(min=0)
    ok = (count >= 2) & (v_q > 0)
    alpha = torch.where(ok, torch.sqrt(v_u / torch.where(ok, v_q, torch.ones_like(v_q))), torch.ones_like(v_q))
    return _cap(alpha, alpha_max)


def loss_ratio_alpha(uniform_loss: torch.Tensor, weighted: torch.Tensor, alpha_max: float | None) -> torch.Tensor:
    """SPEC §4.6 ``loss_ratio``: ``min(1, L_uniform / L_weighted)`` (both over the step batch); 1 if L_weighted ≤ 0."""
    ok = weighted > 0
    alpha = torch.where(
        ok,
        (uniform_loss / torch.where(ok, weighted, torch.ones_like(weighted))).clamp(max=1.0),
        torch.ones_like(weighted),
    )
    return _cap(alpha, alpha_max)


def _cap(alpha: torch.Tensor, alpha_max: float | None) -> torch.Tensor:
    return alpha if alpha_max is None else alpha.clamp(max=alpha_max)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denom = a.norm() * b.norm()
    return (a * b).sum() / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rank = lambda x: torch.argsort(torch.argsort(x)).double()  # noqa: E731  (ties: measure zero for real scores)
    return pearson(rank(a), rank(b))


def score_agreement(
    fd: list[torch.Tensor], exact: list[torch.Tensor], masks: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fidelity of finite-difference scores against exact (jvp) scores over the step's supervised tokens."""
    a = torch.cat([s[m] for s, m in zip(fd, masks)])
    b = torch.cat([s[m] for s, m in zip(exact, masks)])
    return {"vcore/fidelity_pearson": pearson(a, b).float(), "vcore/fidelity_spearman": spearman(a, b).float()}


def q_entropy_ratio(q: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over examples with n > 1 of ``H(q) / log n`` (1 = uniform, 0 = one token), and their count."""
    n = mask.sum(dim=1)
    h = -(torch.where(q > 0, q * torch.log(q), torch.zeros_like(q))).sum(dim=1)
    keep = n > 1
    return (h[keep] / torch.log(n[keep].double()).to(h.dtype)).sum(), keep.sum()


def resolve_probe_mode(mode: ProbeMode, model: nn.Module) -> ProbeMode:
    """``auto``: the cheapest faithful probe (fidelity ≥ 0.99) for the model's weights. Float32 weights: finite
    differences in exact float32 (Pearson 1.000 at ε ≥ 2e-5, SPEC §6); bf16/fp16 weights: jvp (finite differences
    there are rounding noise, and the exact-float32 forwards would need a float32 copy of the weights)."""
    return probe_mode_for(mode, any(p.dtype in LOW_PRECISION for p in model.parameters()))


def probe_mode_for(mode: ProbeMode, low_precision_weights: bool | None) -> ProbeMode:
    """:func:`resolve_probe_mode` from the weights' precision alone; ``auto`` stays ``auto`` while it is unknown."""
    if mode != ProbeMode.auto or low_precision_weights is None:
        return mode
    return ProbeMode.jvp if low_precision_weights else ProbeMode.finite_difference


@register
class VCORE(TokenWeighting):
    name = "vcore"
    Config = VCOREConfig

    def __init__(
        self,
        cfg: VCOREConfig,
        model: nn.Module,
        dataset: Sequence[Any],
        collate: Callable[[list[Any]], Batch],
        loss_chunk_size: int = 0,
    ) -> None:
        super().__init__(cfg)
        self.mode = resolve_probe_mode(cfg.probe.mode, model)
        if self.mode == ProbeMode.finite_difference:
            check_finite_difference_precision(model, cfg.probe.allow_low_precision)
        self.chunk_size = loss_chunk_size
        self.probe = Probe(cfg.probe, dataset, collate, loss_chunk_size)
        self.steps = 0

    @classmethod
    def build(cls, cfg: VCOREConfig, ctx: MethodContext) -> VCORE:
        return cls(cfg, ctx.model, ctx.train_dataset, ctx.collate, ctx.loss_chunk_size)

    @classmethod
    def check_backend(cls, cfg: VCOREConfig, backend: Backend) -> None:
        """Under FSDP: FSDP2 only, the finite-difference probe only (``auto`` resolved from the weights' dtype), no
        fidelity check (it runs the jvp probe)."""
        if not backend.fsdp:
            return
        if backend.fsdp_version != 2:
            raise ConfigError(
                "method=vcore under FSDP1 is not supported: the probe works on FSDP2's per-parameter shards "
                "(DTensors), and FSDP1 keeps parameters in flat buffers. Use FSDP2: `fsdp_version: 2` in the "
                "accelerate config (or `accelerate launch --fsdp_version 2`), or DDP (docs/distributed.md)."
            )
        if probe_mode_for(cfg.probe.mode, backend.low_precision_weights) == ProbeMode.jvp:
            raise ConfigError(
                "method.probe.mode=jvp under FSDP is not supported: the forward-mode probe substitutes whole "
                "parameters through functional_call, which FSDP's all-gathered shards do not allow. Set "
                "method.probe.mode=finite_difference with model.dtype=float32 (auto picks jvp for bf16 weights), or "
                "use DDP for the jvp probe (docs/distributed.md)."
            )
        if cfg.probe.fidelity_every:
            raise ConfigError(
                "method.probe.fidelity_every > 0 under FSDP: the fidelity check compares against the jvp probe, which "
                "FSDP does not support. Set method.probe.fidelity_every=0, or measure fidelity on one GPU (python -m "
                "vcore.tools.fidelity)."
            )

    def scores(self, model: nn.Module, params, g, batches: list[Batch], mode: ProbeMode):
        """``(l_t(θ), s_t)`` per micro-batch by the chosen probe."""
        if mode == ProbeMode.jvp:
            probe = self.cfg.probe
            return jvp_scores(model, params, g, batches, probe.attention_block, probe.jvp_attention, self.chunk_size)
        return finite_difference_scores(model, params, g, batches, self.cfg.probe.epsilon, chunk_size=self.chunk_size)

    def prepare_step(self, model: nn.Module, step: list[MicroBatch]) -> dict[str, torch.Tensor]:
        batches = [micro.inputs for micro in step]
        was_training = model.training
        model.eval()  # one deterministic function for g and the score passes: no dropout mask differs between them
        fidelity: dict[str, torch.Tensor] = {}
        try:
            params = trainable_parameters(model)
            g = self.probe.gradient(model, params, batches[0]["input_ids"].device)
            losses, scores = self.scores(model, params, g, batches, self.mode)
            every = self.cfg.probe.fidelity_every
            if every and self.steps % every == 0:
                other = ProbeMode.jvp if self.mode == ProbeMode.finite_difference else ProbeMode.finite_difference
                _, other_scores = self.scores(model, params, g, batches, other)
                fd, exact = (scores, other_scores) if other == ProbeMode.jvp else (other_scores, scores)
                fidelity = score_agreement(fd, exact, [supervised_mask(b["labels"]) for b in batches])
        finally:
            model.train(was_training)
        self.steps += 1
        return {**self.weigh_step(step, losses, scores), **fidelity}

    def weigh_step(
        self, step: list[MicroBatch], losses: list[torch.Tensor], scores: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Weights and α for the whole step batch from its float32 losses and scores; kept in each micro-batch."""
        masks = [supervised_mask(micro.inputs["labels"]) for micro in step]
        if self.cfg.target_ess is not None:  # τ chosen per step for a fixed sharpness of the weights
            tau = tau_for_ess(scores, masks, self.cfg.target_ess).to(scores[0].dtype)
        else:
            tau = torch.tensor(self.cfg.tau, dtype=scores[0].dtype, device=scores[0].device)
        wq = [
            gibbs_weights(s, m, tau if self.cfg.target_ess is not None else self.cfg.tau) for s, m in zip(scores, masks)
        ]
        alpha = self._alpha(step, losses, scores, masks, wq)
        for micro, s, (w, q) in zip(step, scores, wq):
            micro.state = VCOREState(weights=w, alpha=alpha, scores=s, q=q)
        return {**self._diagnostics(scores, masks, wq, alpha), "vcore/tau": tau.detach().float()}

    def _alpha(self, step: list[MicroBatch], losses, scores, masks, wq) -> torch.Tensor:
        vc, device = self.cfg.variance_control.value, scores[0].device
        # τ = 0: the weights are exactly uniform, so every variant's α is 1 by definition; computing it would give
        # 1 only up to rounding (q = exp(log q) is not exactly 1/n), and τ = 0 must be SFT bit for bit.
        if vc == "none" or (self.cfg.tau == 0 and self.cfg.target_ess is None):
            return torch.ones((), dtype=torch.float64, device=device)
        if vc == "paper":
            return paper_alpha(scores, [q for _, q in wq], masks, self.cfg.alpha_max)
        norm = self.cfg.loss_normalization.value
        counts = step[0].counts  # the trainer's, computed once per step
        # float32 as the losses: the counts are integers, exact in either type
        n_tok, n_ex = counts.num_tokens.float(), counts.num_examples.float()
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for l, m, (w, _) in zip(losses, masks, wq):
            ones = m.to(l.dtype)
            sums[0] += weighted_loss(l, ones, m, n_tok, normalization=norm, num_examples=n_ex).double()
            sums[1] += weighted_loss(l, w, m, n_tok, normalization=norm, num_examples=n_ex).double()
        uniform, weighted = all_reduce_sum(sums)
        return loss_ratio_alpha(uniform, weighted, self.cfg.alpha_max)

    def _diagnostics(self, scores, masks, wq, alpha) -> dict[str, torch.Tensor]:
        flat = torch.cat([s[m] for s, m in zip(scores, masks)]).double()
        h = [q_entropy_ratio(q, m) for (_, q), m in zip(wq, masks)]
        h_sum, h_count = sum(x for x, _ in h), sum(c for _, c in h)
        return {
            "vcore/alpha": alpha.detach().float(),
            "vcore/q_entropy_over_log_n": (h_sum / max(int(h_count), 1)).float()
            if h_count
            else torch.tensor(float("nan")),
            "vcore/score_mean": flat.mean().float() if flat.numel() else torch.tensor(float("nan")),
            "vcore/score_std": flat.std(unbiased=False).float() if flat.numel() else torch.tensor(float("nan")),
            "vcore/probe_grad_norm": self.probe.last_norm.detach().float(),
        }

    def _state(self, micro: MicroBatch) -> VCOREState:
        if micro.state is None:
            raise RuntimeError("vcore: weights were not prepared for this batch (prepare_step not called)")
        return micro.state

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        return self._state(micro).weights

    def loss_scale(self, micro: MicroBatch) -> torch.Tensor:
        return self._state(micro).alpha

    def token_values(self, forward: TokenForward, micro: MicroBatch) -> dict[str, torch.Tensor]:
        state = self._state(micro)
        return {"score": state.scores, "q": state.q}

    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe.load_state_dict(state["probe"])
        self.steps = state.get("steps", 0)  # the fidelity schedule's counter (absent in older checkpoints)

    def rank_state_dict(self) -> dict[str, Any] | None:
        return self.probe.rank_state_dict()

    def load_rank_state_dict(self, state: dict[str, Any] | None) -> None:
        self.probe.load_rank_state_dict(state)
