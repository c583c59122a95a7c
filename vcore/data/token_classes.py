"""Which tokens of a vocabulary carry an arithmetic trace's content, and which only its wording.

A token is *reasoning-bearing* when it decodes (spaces stripped) to digits and the signs ``+ - * =`` only, or when it
is one of the tokenizer's special or added tokens (the thought's tags, the end of the turn): the numbers, equations and
answer of a chain of thought, and where it stops. Every other token is *style*: the words a trace wraps its arithmetic
in. Read by the training's weight statistics (``weights/style_share``: the share of the weight on style tokens, which
uniform weights put at their share of the tokens) and by the synthetic study's positive control
(``experiments/synthetic_study/reasoning_sft.py``). Made for the synthetic task and digit-split tokenizers (Qwen's,
the tiny model's); on prose-heavy data it only separates digits from the rest.
"""

from __future__ import annotations

import re

import torch

_REASONING = re.compile(r"[0-9+\-*=]+")


def reasoning_token_mask(tokenizer, vocab_size: int | None = None) -> torch.Tensor:
    """``[vocab]`` bool: True for the reasoning-bearing tokens of ``tokenizer`` (ids past its vocabulary: False)."""
    n = max(vocab_size or 0, len(tokenizer))
    mask = torch.zeros(n, dtype=torch.bool)
    for i in range(len(tokenizer)):
        if _REASONING.fullmatch(tokenizer.decode([i]).strip()):
            mask[i] = True
    # Special and added tokens: <|im_end|>, <think> and </think> (Qwen3 adds the think tags as non-special tokens).
    for i in [*tokenizer.all_special_ids, *getattr(tokenizer, "added_tokens_decoder", {})]:
        if 0 <= i < n:
            mask[i] = True
    return mask
