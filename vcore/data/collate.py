"""Batching: padded rows, or padding-free packed rows, always with per-example metadata in example layout.

Padded (default): one row per example, right padding, ``attention_mask``.

Packed (``trainer.packing=true``): the examples of the micro-batch are concatenated into one row (or, with
``trainer.pack_length=L``, into rows of at most ``L`` tokens, filled in order), with ``position_ids`` restarting at 0
for each example and no ``attention_mask``; transformers (SDPA/flash varlen) and :mod:`vcore.ops.attention` then keep
attention inside each example. One row is what flash-attention's varlen kernels want; several short rows are what
dense attention wants (its cost grows with the square of the row: on CPU, 32 examples of ~100 tokens in one row
cost more than padding them, while rows of 256 tokens remove most of the padding at no attention cost). A row's
unused tail is padding that forms its own segment (positions from 0, never supervised). Everything per example
(VCORE's softmax and α, iw-SFT's means, Random's 20%, sequence normalisation) must still see examples, not rows: the
batch therefore keeps
``labels``, ``answer_mask`` and ``example_id`` in example layout ``[E, T_max]`` plus ``pack_index [E, T_max]`` (the
flat packed position of each example token, -1 on padding), and the model's per-token losses are gathered back
into that layout (:func:`vcore.ops.forward.model_token_loss`). Packed and padded batches give the same losses, weights
and gradients (tests/test_packing.py).
"""

from __future__ import annotations

from typing import Any

import torch

from vcore.ops.losses import IGNORE_INDEX


class Collator:
    def __init__(
        self, pad_token_id: int, pad_to_multiple_of: int | None = None, pack: bool = False, pack_length: int = 0
    ) -> None:
        self.pad_token_id, self.multiple, self.pack, self.pack_length = (
            pad_token_id,
            pad_to_multiple_of,
            pack,
            pack_length,
        )

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
        # Rows: examples in order, a new row when the next one would overflow pack_length (0: everything in one row).
        rows: list[list[int]] = [[]]
        fill = 0
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            if self.pack_length and rows[-1] and fill + n > self.pack_length:
                rows.append([])
                fill = 0
            rows[-1].append(i)
            fill += n
        width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        packed_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        index = torch.full(batch["labels"].shape, -1, dtype=torch.long)
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                e = examples[i]
                n = len(e["input_ids"])
                ids[r, offset : offset + n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
                positions[r, offset : offset + n] = torch.arange(n)
                packed_labels[r, offset + 1 : offset + n] = torch.as_tensor(
                    e["labels"][1:], dtype=torch.long
                )  # the first token is predicted by no one
                index[i, :n] = torch.arange(r * width + offset, r * width + offset + n)
                offset += n
            positions[r, offset:] = torch.arange(width - offset)  # the tail: its own segment, never supervised
        batch["input_ids"] = ids
        batch["position_ids"] = positions
        batch["packed_labels"] = packed_labels
        batch["pack_index"] = index
        return batch
