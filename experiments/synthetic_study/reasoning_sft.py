"""The synthetic study's positive control: SFT whose loss covers only the reasoning-bearing tokens.

A supervised token keeps weight when it carries the trace's content (digits, ``+ - * =``, and the special tokens that
end the thought and the turn: :func:`vcore.data.token_classes.reasoning_token_mask`); the verbose style's words get
weight 0. Within each example the kept tokens share the example's token count, ``w_t = n / k`` on the ``k`` kept of
its ``n`` supervised tokens (the Random baseline's normalisation), so the loss keeps SFT's scale. An example with no
kept token contributes nothing (weights 0, never a division by 0).

Why it is a positive control: in this task the fine-tuning data's style is what is new to the base and what an
out-of-distribution phrasing does not share; a learner that never fits the style should keep the base's reading of
other phrasings better than SFT. If the study cannot detect that gain, it cannot detect VCORE's either
(experiments/synthetic_study/PREREG.md, gate 1). A method from outside vcore (docs/adding_a_method.md):

    python run.py --config-dir experiments/synthetic_study/conf method=reasoning_sft
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcore.checks import ConfigError
from vcore.data.token_classes import reasoning_token_mask
from vcore.methods import MethodConfig, MethodContext, MicroBatch, TokenWeighting
from vcore.ops.forward import TokenForward


@dataclass
class ReasoningSFTConfig(MethodConfig):
    name: str = "reasoning_sft"


def kept_token_weights(kept: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``kept``, ``mask`` ``[B, T]`` bool -> ``[B, T]`` float32: ``n / k`` on the kept supervised tokens of each row
    (``n`` supervised, ``k`` kept), 0 elsewhere and on rows with ``k = 0``."""
    keep = kept & mask
    n, k = mask.sum(dim=1, keepdim=True).double(), keep.sum(dim=1, keepdim=True).double()
    return torch.where(keep, n / k.clamp(min=1), 0.0).float()


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
        return kept_token_weights(kept, forward.mask)
