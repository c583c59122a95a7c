"""The paper's Random baseline (VCORE paper, App. B.2): train on 20% of each example's supervised tokens.

Tokens inside the final ``\\boxed{...}`` are always kept; the other kept tokens are drawn uniformly without
replacement to reach ``keep_fraction`` of the example's supervised tokens. Kept tokens get ``w = n / k`` (n
supervised, k kept), so the loss is normalised over kept tokens and the mean weight of an example is 1, the same
convention as VCORE's ``w = n·q`` with ``q`` uniform over the kept set.

Draws come from a generator seeded by ``(seed, example_id)``: independent of batch composition, micro-batching
and the global RNG, so an example keeps the same tokens however it is batched (and the inspector shows exactly
the tokens training used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vcore.checks import check
from vcore.methods.base import MethodConfig, MicroBatch, TokenWeighting
from vcore.methods.registry import register
from vcore.ops.forward import TokenForward


@dataclass
class RandomConfig(MethodConfig):
    name: str = "random"
    keep_fraction: float = 0.2  # paper App. B.2
    always_keep_answer: bool = True  # tokens of the final \boxed{...} are always kept
    seed: int = 0

    def __post_init__(self) -> None:
        check(0.0 < self.keep_fraction <= 1.0, "method.keep_fraction", "must be in (0, 1]")


_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, id) pairs over the seed space


def example_generator(seed: int, example_id: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _MIX + int(example_id)) % (2**63 - 1))


def random_weights(
    mask: torch.Tensor,
    answer_mask: torch.Tensor,
    example_ids: torch.Tensor,
    *,
    keep_fraction: float,
    seed: int,
    always_keep_answer: bool = True,
) -> torch.Tensor:
    """Weights of the Random baseline.

    Args:
        mask: ``[B, T]`` bool, supervised positions.
        answer_mask: ``[B, T]`` bool, positions inside the final ``\\boxed{...}``.
        example_ids: ``[B]`` int, dataset index of each row (keys its generator).
    Returns:
        ``[B, T]`` float32: ``n / k`` on the ``k`` kept tokens of each example, 0 elsewhere.
    """
    w = torch.zeros(mask.shape, dtype=torch.float32)
    mask_cpu, answer_cpu = mask.cpu(), answer_mask.cpu() & mask.cpu()
    for b in range(mask.shape[0]):
        supervised = mask_cpu[b].nonzero().squeeze(1)
        n = supervised.numel()
        if n == 0:
            continue
        target = max(1, math.floor(keep_fraction * n + 0.5))
        forced = answer_cpu[b, supervised] if always_keep_answer else torch.zeros(n, dtype=torch.bool)
        others = supervised[~forced]
        num_draw = min(max(target - int(forced.sum()), 0), others.numel())
        drawn = others[
            torch.randperm(others.numel(), generator=example_generator(seed, int(example_ids[b])))[:num_draw]
        ]
        kept = torch.cat([supervised[forced], drawn])
        w[b, kept] = n / kept.numel()
    return w.to(mask.device)


@register
class RandomTokens(TokenWeighting):
    name = "random"
    Config = RandomConfig

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        return random_weights(
            forward.mask,
            micro.inputs["answer_mask"],
            micro.inputs["example_id"],
            keep_fraction=self.cfg.keep_fraction,
            seed=self.cfg.seed,
            always_keep_answer=self.cfg.always_keep_answer,
        )
