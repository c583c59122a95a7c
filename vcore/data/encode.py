"""Prompt + response -> token ids, completion-only labels and the final-answer mask.

The conversation is rendered by the tokenizer's own chat template twice: the user turn with the generation
prompt, and the user turn plus the assistant response. The first must be a prefix of the second (checked);
labels supervise exactly the assistant tokens after that prefix up to and including the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass

from vcore.losses import IGNORE_INDEX


class BadRecord(ValueError):
    """A record cannot be used; the message names the record and the field."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    answer_mask: list[bool]


def find_last_boxed(text: str, start: int = 0) -> tuple[int, int] | None:
    """Character span ``[a, b)`` of the last ``\\boxed{...}`` at or after ``start``, matched by brace depth."""
    a = text.rfind("\\boxed{")
    if a < start:
        return None
    depth = 0
    for i in range(a + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return a, i + 1
    return None


def render(tokenizer, prompt: str, response: str | None, enable_thinking: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=response is None, enable_thinking=enable_thinking
    )


def encode_example(
    tokenizer,
    prompt: str,
    response: str,
    *,
    max_length: int,
    overlength: str = "drop",
    enable_thinking: bool = True,
    record: str = "?",
) -> Encoded | None:
    """Tokenize one example. Returns None when it must be dropped for length (the caller counts drops).

    Raises:
        BadRecord: empty response, or a chat template that does not render the prompt as a prefix.
    """
    if not response.strip():
        raise BadRecord(f"record {record}: the response is empty")
    prompt_text = render(tokenizer, prompt, None, enable_thinking)
    full_text = render(tokenizer, prompt, response, enable_thinking)
    if not full_text.startswith(prompt_text):
        raise BadRecord(
            f"record {record}: the chat template renders the prompt differently with and without the response; "
            "completion-only labels need the generation prompt to be a prefix of the full conversation"
        )
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = len(prompt_text)
    start = next((i for i, (a, _) in enumerate(offsets) if a >= cut), len(ids))
    if start > 0 and offsets[start - 1][1] > cut:
        raise BadRecord(f"record {record}: a token straddles the prompt/response boundary; the tokenizer merges across it")
    eos = tokenizer.eos_token_id
    ends = [i for i in range(start, len(ids)) if ids[i] == eos]
    if not ends:
        raise BadRecord(f"record {record}: the rendered response has no end-of-turn token {tokenizer.eos_token!r}")
    stop = ends[-1] + 1  # end-of-turn is supervised (the model must learn to stop); what follows it is not
    labels = [IGNORE_INDEX] * start + ids[start:stop] + [IGNORE_INDEX] * (len(ids) - stop)
    box = find_last_boxed(full_text, cut)
    answer = [bool(box) and a < box[1] and b > box[0] and labels[i] != IGNORE_INDEX for i, (a, b) in enumerate(offsets)]
    if len(ids) > max_length:
        if overlength == "drop":
            return None
        ids, labels, answer = ids[:max_length], labels[:max_length], answer[:max_length]
    if all(l == IGNORE_INDEX for l in labels[1:]):
        return None  # truncated to nothing: no token left to learn from
    return Encoded(ids, labels, answer)
