"""Batching: padded rows, or padding-free packed rows, always with per-example metadata in example layout.

Padded (default): one row per example, right padding, ``attention_mask``.

Packed (``trainer.packing=true``): all examples of the micro-batch are concatenated into one row, with
``position_ids`` restarting at 0 for each example and no ``attention_mask``; transformers (SDPA/flash varlen) and
:mod:`vcore.attention` then keep attention inside each example. Everything per example (VCORE's softmax and α,
iw-SFT's means, Random's 20%, sequence normalisation) must still see examples, not rows: the batch therefore keeps
``labels``, ``answer_mask`` and ``example_id`` in example layout ``[E, T_max]`` plus ``pack_index [E, T_max]`` (the
flat packed position of each example token, -1 on padding), and the model's per-token losses are gathered back
into that layout (:func:`vcore.forward.model_token_loss`). Packed and padded batches give the same losses, weights
and gradients (tests/test_packing.py).
"""

from __future__ import annotations

from typing import Any

import torch

from vcore.losses import IGNORE_INDEX


class Collator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, pack: bool = False) -> None:
        self.pad_token_id, self.multiple, self.pack = pad_token_id, pad_to_multiple_of, pack

    def _padded(self, examples: list[dict[str, Any]], key: str, fill, dtype) -> torch.Tensor:
        length = max(len(e["input_ids"]) for e in examples)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple
        out = torch.full((len(examples), length), fill, dtype=dtype)
        for i, e in enumerate(examples):
            out[i, : len(e[key])] = torch.as_tensor(e[key], dtype=dtype)
        return out

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        batch = {
            "labels": self._padded(examples, "labels", IGNORE_INDEX, torch.long),
            "answer_mask": self._padded(examples, "answer_mask", False, torch.bool),
            "example_id": torch.tensor([int(e["example_id"]) for e in examples], dtype=torch.long),
        }
        if not self.pack:
            batch["input_ids"] = self._padded(examples, "input_ids", self.pad_token_id, torch.long)
            lengths = torch.tensor([len(e["input_ids"]) for e in examples])
            batch["attention_mask"] = (torch.arange(batch["labels"].shape[1])[None, :] < lengths[:, None]).long()
            return batch
        ids, positions, packed_labels = [], [], []
        index = torch.full(batch["labels"].shape, -1, dtype=torch.long)
        offset = 0
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids.extend(e["input_ids"])
            positions.extend(range(n))
            packed_labels.extend([IGNORE_INDEX] + list(e["labels"][1:]))  # the first token is predicted by no one
            index[i, :n] = torch.arange(offset, offset + n)
            offset += n
        batch["input_ids"] = torch.tensor([ids], dtype=torch.long)
        batch["position_ids"] = torch.tensor([positions], dtype=torch.long)
        batch["packed_labels"] = torch.tensor([packed_labels], dtype=torch.long)
        batch["pack_index"] = index
        return batch
