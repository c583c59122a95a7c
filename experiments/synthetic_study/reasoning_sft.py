"""The synthetic study's positive control: SFT that learns the reasoning-bearing tokens and barely the style.

A supervised token is reasoning-bearing when it carries the trace's content (digits, ``+ - * =``, and the special
tokens of the thought and the turn: :func:`vcore.data.token_classes.reasoning_token_mask`); the verbose style's words
get ``method.style_weight`` times the weight of a reasoning token. Within each example the weights are normalised to
mean 1 over its supervised tokens, so the loss keeps SFT's scale. ``style_weight=0`` drops the style altogether; on
the tiny base that destroys generation (measured in tuning: 0-4% accuracy at every rate; with nothing to hold the
style tokens' probabilities, training on digits alone makes digits likely everywhere), hence the default 0.1.

Why it is a positive control: in this task the fine-tuning data's style is what is new to the base and what an
out-of-distribution phrasing does not share; a learner that never fits the style should keep the base's reading of
other phrasings better than SFT. If the study cannot detect that gain, it cannot detect VCORE's either
(experiments/synthetic_study/PREREG.md, gate 1). A method from outside vcore (docs/adding_a_method.md):

    python run.py --config-dir experiments/synthetic_study/conf method=reasoning_sft
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcore.checks import ConfigError, check
from vcore.data.token_classes import reasoning_token_mask
from vcore.methods import MethodConfig, MethodContext, MicroBatch, TokenWeighting
from vcore.ops.forward import TokenForward


@dataclass
class ReasoningSFTConfig(MethodConfig):
    name: str = "reasoning_sft"
    style_weight: float = 0.1  # a style token's weight relative to a reasoning-bearing token's (1: SFT)

    def __post_init__(self) -> None:
        check(0 <= self.style_weight <= 1, "method.style_weight", f"must be in [0, 1], got {self.style_weight}")


def kept_token_weights(kept: torch.Tensor, mask: torch.Tensor, style_weight: float = 0.0) -> torch.Tensor:
    """``kept``, ``mask`` ``[B, T]`` bool -> ``[B, T]`` float32: raw weight 1 on the kept supervised tokens and
    ``style_weight`` on the others, scaled to mean 1 over each row's supervised tokens; 0 off the mask and on rows
    whose raw weights sum to 0."""
    raw = torch.where(kept & mask, 1.0, torch.where(mask, style_weight, 0.0)).double()
    n, total = mask.sum(dim=1, keepdim=True).double(), raw.sum(dim=1, keepdim=True)
    return torch.where(total > 0, raw * n / total.clamp(min=1e-300), 0.0).float()


class ReasoningSFT(TokenWeighting):
    name = "reasoning_sft"
    Config = ReasoningSFTConfig

    def __init__(self, cfg: ReasoningSFTConfig, vocab: torch.Tensor) -> None:
        super().__init__(cfg)
        self.vocab = vocab  # [vocab] bool: the reasoning-bearing tokens

    @classmethod
    def build(cls, cfg: ReasoningSFTConfig, ctx: MethodContext) -> ReasoningSFT:
        if ctx.tokenizer is None:
            raise ConfigError("method=reasoning_sft needs the run's tokenizer (MethodContext.tokenizer)")
        return cls(cfg, reasoning_token_mask(ctx.tokenizer))

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        labels = micro.inputs["labels"]
        vocab = self.vocab.to(labels.device)
        kept = vocab[labels.clamp(0, vocab.numel() - 1)]
        return kept_token_weights(kept, forward.mask, self.cfg.style_weight)
