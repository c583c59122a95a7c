"""The RL prompts: ``rl.data`` (a benchmark-style source: hub id, local files or the synthetic generator) as the
dataset TRL's ``GRPOTrainer`` reads.

Items are loaded by evaluation's own loader (:func:`vcore.eval.benchmarks.load_benchmark`): the same field mapping,
answer clean-ups, prompt templates (``prompt_domain``; the paper's math template for BigMath) and seeded subset
(``rl.data.sample``: 16,800 of Big-Math's 251,122 problems for the paper). Each row becomes a one-turn conversation
that TRL renders with the tokenizer's chat template (``enable_thinking`` as evaluation passes it) and the gold answer
the reward compares against. Prompts longer than ``rl.max_prompt_length`` tokens are dropped (verl's
``filter_overlong_prompts``; TRL has no prompt limit).
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from vcore.checks import ConfigError
from vcore.eval.benchmarks import load_benchmark
from vcore.eval.generate import chat_prompts
from vcore.rl.config import RLConfig

log = logging.getLogger(__name__)


def build_prompts(cfg: RLConfig, tokenizer: Any) -> tuple[Dataset, dict[str, Any]]:
    """``(dataset with columns prompt | answer | id, stats)`` for ``cfg.data``."""
    try:
        loaded = load_benchmark(cfg.data)
    except (ConfigError, KeyError) as err:  # the loader names the row and the column; say which option holds them
        raise ConfigError(f"rl.data ({cfg.data.name}): {err}") from err
    items = loaded.items
    if not items:
        raise ConfigError(
            f"rl.data ({cfg.data.name}): no prompts (check rl.data.sample.size, rl.data.limit and the source)"
        )
    texts = chat_prompts(tokenizer, [it.prompt for it in items], cfg.enable_thinking)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [i for i, n in enumerate(lengths) if n <= cfg.max_prompt_length]
    dropped = len(items) - len(kept)
    if dropped:
        log.warning(
            "rl.data: %d of %d prompts are longer than rl.max_prompt_length=%d tokens and are left out",
            dropped,
            len(items),
            cfg.max_prompt_length,
        )
    if not kept:
        raise ConfigError(
            f"rl.max_prompt_length={cfg.max_prompt_length}: every prompt of rl.data ({cfg.data.name}) is longer "
            f"(shortest: {min(lengths)} tokens)"
        )
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": items[i].prompt}] for i in kept],
            "answer": [items[i].gold or "" for i in kept],  # as evaluation grades an item without a gold answer
            "id": [items[i].id for i in kept],
        }
    )
    stats = {
        "prompts": len(kept),
        "dropped_overlong": dropped,
        "population": loaded.population,
        "mean_prompt_tokens": sum(lengths[i] for i in kept) / len(kept),
    }
    return dataset, stats
