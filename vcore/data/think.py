"""What a response's ``<think>...</think>`` block must look like before it is templated (``dataset.think``).

Reasoning traces put their chain of thought in one think block followed by the final answer. Chat templates
treat the block specially (Qwen3 re-renders it, and adds an *empty* block to a response that has none), so a
malformed or missing block silently changes what is trained on. This module makes each case explicit:

- one well-formed block with reasoning: kept, in every mode;
- no block: a bad record under ``require``; allowed under ``optional`` / ``train_empty`` (what the template then
  inserts is handled by :func:`vcore.data.encode.encode_example`: never supervised unless ``train_empty``);
- an empty block written in the data: a bad record under ``require``; removed under ``optional`` (so it is
  treated like no block; counted); kept and supervised under ``train_empty``;
- ``</think>`` without ``<think>`` (R1 traces whose opening tag was part of the generation prompt): the opening
  tag is restored and counted, so every template sees a complete block;
- several blocks, an unclosed block, text before ``<think>`` (Qwen3's template would drop it) or nothing after
  ``</think>`` (no final answer): bad records naming the record and the field.
"""

from __future__ import annotations

from vcore.data.encode import BadRecord
from vcore.prompts import THINK_CLOSE, THINK_OPEN


def has_think_block(response: str) -> bool:
    return THINK_OPEN in response or THINK_CLOSE in response


def apply_think_policy(response: str, mode: str, where: str, field: str, stats: dict) -> str:
    """``response`` checked (and where said above, normalised) for ``dataset.think=mode``.

    Raises:
        BadRecord: naming ``where`` and ``field`` and the option that would accept the record.
    """
    opens, closes = response.count(THINK_OPEN), response.count(THINK_CLOSE)
    if opens > 1 or closes > 1:
        raise BadRecord(
            f"{where}: field {field!r} has {opens} {THINK_OPEN!r} and {closes} {THINK_CLOSE!r} tags; "
            "a response holds one think block at most"
        )
    if closes == 1 and opens == 0:
        response = f"{THINK_OPEN}\n{response}"
        stats["think_open_tag_restored"] = stats.get("think_open_tag_restored", 0) + 1
    elif opens == 1 and closes == 0:
        raise BadRecord(
            f"{where}: field {field!r} opens {THINK_OPEN!r} but never closes it (a trace cut off by a length limit?)"
        )
    if not has_think_block(response):
        if mode == "require":
            raise BadRecord(
                f"{where}: field {field!r} has no {THINK_OPEN} block (dataset.think=require); "
                "set dataset.think=optional to train on responses without reasoning"
            )
        return response
    before, rest = response.split(THINK_OPEN, 1)
    reasoning, final = rest.split(THINK_CLOSE, 1)
    if before.strip():
        raise BadRecord(
            f"{where}: field {field!r} has text before {THINK_OPEN}; chat templates such as Qwen3's drop it"
        )
    if not final.strip():
        raise BadRecord(f"{where}: field {field!r} has nothing after {THINK_CLOSE}: no final answer to train on")
    if not reasoning.strip():
        if mode == "require":
            raise BadRecord(f"{where}: field {field!r} has an empty think block (dataset.think=require)")
        if mode == "optional":  # an empty block is "no reasoning": handled like a response without a block
            stats["empty_think_removed"] = stats.get("empty_think_removed", 0) + 1
            return final.lstrip()
    return response
