"""Batching: right padding, attention mask, labels -100 on padding, example ids for per-example methods."""

from __future__ import annotations

from typing import Any

import torch

from vcore.losses import IGNORE_INDEX


class Collator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.multiple = pad_token_id, pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        length = max(len(e["input_ids"]) for e in examples)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple
        batch = {
            "input_ids": torch.full((len(examples), length), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), length), dtype=torch.long),
            "labels": torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long),
            "answer_mask": torch.zeros((len(examples), length), dtype=torch.bool),
            "example_id": torch.tensor([int(e["example_id"]) for e in examples], dtype=torch.long),
        }
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            batch["input_ids"][i, :n] = torch.as_tensor(e["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.as_tensor(e["labels"])
            batch["answer_mask"][i, :n] = torch.as_tensor(e["answer_mask"], dtype=torch.bool)
        return batch
