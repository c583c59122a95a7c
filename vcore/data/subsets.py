"""Seeded, nested data-scaling subsets (SPEC §5, Figure 2a: 4k ⊂ 8k ⊂ 16k ⊂ 32k).

Each curated record gets a rank key ``blake2b(seed, id)``; records sorted by key give one fixed order per seed.
The held-out eval records are the ``eval_examples`` records with the *largest* keys, and training takes usable
records from the *front* of the order until it has ``num_examples``. So for one seed:
- a smaller ``num_examples`` is a prefix of a larger one (nested), whatever the max_length drops are, since drops
  depend on the record alone;
- the training order does not depend on ``eval_examples`` (the tail is only removed), nor on how many records the
  curation kept elsewhere (keys depend on the id alone, not on positions or numpy's RNG version).

The ids actually trained on (in order), the held-out ids and the ids dropped on the way are saved to
``<run dir>/selected_ids.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SELECTED_IDS = "selected_ids.json"


def rank_keys(ids: list[str], seed: int) -> np.ndarray:
    salt = f"vcore-subset/{seed}/".encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(salt + i.encode("utf-8"), digest_size=8).digest(), "big") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def subset_order(ids: list[str], seed: int, eval_examples: int) -> tuple[list[int], list[int]]:
    """``(train_candidates, eval_positions)``: positions into ``ids``, training candidates in their seeded order."""
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        log.warning(
            "%d record ids occur more than once (e.g. %r): selected_ids.json cannot tell them apart; "
            "set dataset.id_field to a unique field",
            len(dupes),
            dupes[0],
        )
    order = np.argsort(rank_keys(ids, seed), kind="stable").tolist()  # stable: equal ids keep source order
    if eval_examples >= len(order) and order:
        from vcore.checks import ConfigError

        raise ConfigError(f"dataset.eval_examples={eval_examples} holds out all {len(order)} curated records; lower it")
    split = len(order) - eval_examples
    return order[:split], order[split:]


def save_selected_ids(out_dir: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(out_dir) / SELECTED_IDS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    tmp.replace(path)
    return path
