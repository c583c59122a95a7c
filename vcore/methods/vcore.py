"""VCORE (Gong et al., arXiv 2510.27462): Gibbs weights of probe utilities with variance control (SPEC §4.4-6).

Per example i with supervised tokens t = 1..n and utilities s_t (from :mod:`vcore.methods.probe`):
``q_t = exp(τ s_t) / Σ_j exp(τ s_j)`` (masked log-sum-exp), ``w_t = n q_t`` (mean weight 1 inside the example),
and a detached step factor α:
- ``paper``: ``α = sqrt(V_u / V_q)`` with ``V_q = Var_i(Σ_t q_t s_t)``, ``V_u = Var_i((1/n) Σ_t s_t)`` over the examples of the whole step batch;
  α = 1 with fewer than 2 examples or ``V_q = 0``; capped at ``alpha_max``.
- ``loss_ratio`` (the authors' released code): ``α = min(1, L_uniform / L_weighted)``, 1 when ``L_weighted = 0``.
- ``none``: α = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vcore.config import ProbeMode, VCOREConfig
from vcore.distributed import all_reduce_sum
from vcore.methods.base import Batch, TokenWeighting, step_counts
from vcore.methods.precision import check_finite_difference_precision
from vcore.methods.probe import Probe, finite_difference_scores, jvp_scores, trainable_parameters
from vcore.ops.losses import supervised_mask, weighted_loss


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
        z = torch.where(m[None], taus.double()[:, None, None] * s.double()[None], torch.tensor(-math.inf, device=s.device))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        q2 = torch.where(m[None], torch.exp(2 * (z - torch.where(n[None, :, None] > 0, lse, torch.zeros_like(lse)))), torch.zeros_like(z))
        sums[:-1] += (n[None] ** 2 * q2.sum(dim=-1)).sum(dim=-1)
        sums[-1] += n.sum()
    sums = all_reduce_sum(sums)
    return torch.where(sums[:-1] > 0, sums[-1] / sums[:-1].clamp(min=1e-300), torch.ones_like(sums[:-1]))


def tau_for_ess(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], target: float, lo: float = 1e-6, hi: float = 1e6) -> torch.Tensor:
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
        grid = torch.exp(torch.linspace(0, 1, 33, dtype=torch.float64, device=device) * (torch.log(b) - torch.log(a)) + torch.log(a))
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
    alpha = torch.where(ok, (uniform_loss / torch.where(ok, weighted, torch.ones_like(weighted))).clamp(max=1.0), torch.ones_like(weighted))
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


def score_agreement(fd: list[torch.Tensor], exact: list[torch.Tensor], masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
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
    if mode != ProbeMode.auto:
        return mode
    low = any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())
    return ProbeMode.jvp if low else ProbeMode.finite_difference


class VCORE(TokenWeighting):
    name = "vcore"

    def __init__(
        self, cfg: VCOREConfig, model: nn.Module, dataset: Sequence[Any], collate: Callable[[list[Any]], Batch], loss_chunk_size: int = 0
    ) -> None:
        self.mode = resolve_probe_mode(cfg.probe.mode, model)
        if self.mode == ProbeMode.finite_difference:
            check_finite_difference_precision(model, cfg.probe.allow_low_precision)
        self.cfg, self.chunk_size = cfg, loss_chunk_size
        self.probe = Probe(cfg.probe, dataset, collate, loss_chunk_size)
        self.steps = 0

    def scores(self, model: nn.Module, params, g, batches: list[Batch], mode: ProbeMode):
        """``(l_t(θ), s_t)`` per micro-batch by the chosen probe."""
        if mode == ProbeMode.jvp:
            return jvp_scores(model, params, g, batches, self.cfg.probe.attention_block, self.cfg.probe.jvp_attention, self.chunk_size)
        return finite_difference_scores(model, params, g, batches, self.cfg.probe.epsilon, chunk_size=self.chunk_size)

    def prepare_step(self, model: nn.Module, batches: list[Batch]) -> dict[str, torch.Tensor]:
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
        return {**self.weigh_step(batches, losses, scores), **fidelity}

    def weigh_step(self, batches: list[Batch], losses: list[torch.Tensor], scores: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights and α for the whole step batch from its float32 losses and scores; stored in each batch."""
        masks = [supervised_mask(b["labels"]) for b in batches]
        if self.cfg.target_ess is not None:  # τ chosen per step for a fixed sharpness of the weights
            tau = tau_for_ess(scores, masks, self.cfg.target_ess).to(scores[0].dtype)
        else:
            tau = torch.tensor(self.cfg.tau, dtype=scores[0].dtype, device=scores[0].device)
        wq = [gibbs_weights(s, m, tau if self.cfg.target_ess is not None else self.cfg.tau) for s, m in zip(scores, masks)]
        alpha = self._alpha(batches, losses, scores, masks, wq)
        for b, s, (w, q) in zip(batches, scores, wq):
            b.setdefault("weighting", {}).update(weights=w, alpha=alpha, scores=s, q=q)
        return {**self._diagnostics(scores, masks, wq, alpha), "vcore/tau": tau.detach().float()}

    def _alpha(self, batches, losses, scores, masks, wq) -> torch.Tensor:
        vc, device = self.cfg.variance_control.value, scores[0].device
        # τ = 0: the weights are exactly uniform, so every variant's α is 1 by definition; computing it would give
        # 1 only up to rounding (q = exp(log q) is not exactly 1/n), and τ = 0 must be SFT bit for bit.
        if vc == "none" or (self.cfg.tau == 0 and self.cfg.target_ess is None):
            return torch.ones((), dtype=torch.float64, device=device)
        if vc == "paper":
            return paper_alpha(scores, [q for _, q in wq], masks, self.cfg.alpha_max)
        norm = self.cfg.loss_normalization.value
        counts = batches[0].get("step_counts") or step_counts(batches)  # the trainer's, computed once per step
        # float32 as the losses: the counts are integers, exact in either type
        n_tok, n_ex = counts["num_tokens"].float(), counts["num_examples"].float()
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
            "vcore/q_entropy_over_log_n": (h_sum / max(int(h_count), 1)).float() if h_count else torch.tensor(float("nan")),
            "vcore/score_mean": flat.mean().float() if flat.numel() else torch.tensor(float("nan")),
            "vcore/score_std": flat.std(unbiased=False).float() if flat.numel() else torch.tensor(float("nan")),
            "vcore/probe_grad_norm": self.probe.last_norm.detach().float(),
        }

    def weights(self, token_loss: torch.Tensor, mask: torch.Tensor, batch: Batch) -> torch.Tensor:
        if "weighting" not in batch:
            raise RuntimeError("vcore: weights were not prepared for this batch (prepare_step not called)")
        return batch["weighting"]["weights"]

    def loss_scale(self, batch: Batch) -> torch.Tensor:
        return batch["weighting"]["alpha"]

    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe.load_state_dict(state["probe"])
        self.steps = state.get("steps", 0)  # the fidelity schedule's counter (absent in older checkpoints)

    def rank_state_dict(self) -> dict[str, Any] | None:
        return self.probe.rank_state_dict()

    def load_rank_state_dict(self, state: dict[str, Any] | None) -> None:
        self.probe.load_rank_state_dict(state)
