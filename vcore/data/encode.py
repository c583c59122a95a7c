"""Prompt + response -> token ids, completion-only labels and the final-answer mask.

The conversation is rendered by the tokenizer's own chat template twice: the user turn with the generation
prompt, and the user turn plus the assistant response. The first must be a prefix of the second (checked).
Labels supervise exactly what the model must generate after the generation prompt, up to and including the
end-of-turn token; nothing after it is kept.

Two things differ between templates and are handled explicitly here:
- The end-of-turn token is not always ``eos_token`` (LLaMA-3.1 closes turns with ``<|eot_id|>`` while its eos may
  be ``<|end_of_text|>``). :func:`end_of_turn_id` reads it off the template (the first special token after an
  assistant message) unless ``dataset.end_of_turn`` names it.
- A template may insert an empty ``<think>\\n\\n</think>\\n\\n`` before a response that has no think block (Qwen3
  does). That block is not in the data; it joins the unsupervised prompt side (as in Qwen3's non-thinking
  generation prompt) unless ``supervise_inserted_think`` asks to train on it (``dataset.think=train_empty``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vcore.boxed import final_answer_box
from vcore.checks import ConfigError
from vcore.ops.losses import IGNORE_INDEX
from vcore.prompts import THINK_CLOSE, THINK_OPEN

_EMPTY_THINK = re.compile(rf"\s*{re.escape(THINK_OPEN)}\s*{re.escape(THINK_CLOSE)}\s*")
_SENTINEL = "vcore-end-of-turn-probe"


class BadRecord(ValueError):
    """A record cannot be used; the message names the record and the field."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    answer_mask: list[bool]
    truncated: bool = False  # cut to max_length (overlength=truncate): the end-of-turn token is gone
    prompt_tokens: int = 0  # unsupervised tokens before the response (template, prompt, inserted empty think)


def render(tokenizer, prompt: str, response: str | None, enable_thinking: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=response is None, enable_thinking=enable_thinking
    )


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False))
    return ids


def end_of_turn_id(tokenizer, token: str | None = None) -> int:
    """Id of the token that closes an assistant turn: ``token`` if given (``dataset.end_of_turn``), else read off
    the chat template: the first special token rendered after an assistant message, or ``eos_token`` if the
    template ends the turn with it.
    """
    if token is not None:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ConfigError(f"dataset.end_of_turn: {token!r} is not a token of this tokenizer")
        return tid
    text = render(tokenizer, "x", _SENTINEL, enable_thinking=True)
    tail = text[text.rfind(_SENTINEL) + len(_SENTINEL) :]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if ids and ids[0] in special_ids(tokenizer):
        return ids[0]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in ids:
        return tokenizer.eos_token_id
    raise ConfigError(
        f"dataset.end_of_turn: the chat template renders {tail!r} after an assistant message, with no special "
        "token to supervise as the end of the turn; name it (e.g. dataset.end_of_turn='<|eot_id|>')"
    )


def inserted_think_length(assistant: str, response: str, record: str) -> int:
    """Characters of an empty think block the template put before a response that has none (0: none)."""
    if THINK_OPEN in response or THINK_CLOSE in response:
        if assistant.count(THINK_OPEN) != 1 or assistant.count(THINK_CLOSE) != 1:
            raise BadRecord(
                f"record {record}: the chat template renders the response's think block "
                f"{assistant.count(THINK_OPEN)} times"
            )
        return 0
    if THINK_OPEN not in assistant and THINK_CLOSE not in assistant:
        return 0
    m = _EMPTY_THINK.match(assistant)
    if m is None or THINK_OPEN in assistant[m.end() :] or THINK_CLOSE in assistant[m.end() :]:
        raise BadRecord(f"record {record}: the chat template adds think tags that are not in the response")
    return m.end()


def check_rendered(assistant: str, response: str, record: str) -> None:
    """The template kept the response: reasoning and final answer both appear (some templates drop reasoning).

    Responses with several think blocks are malformed data, rejected before encoding by :mod:`vcore.data.think`;
    they are not checked here.
    """
    if response.count(THINK_OPEN) > 1 or response.count(THINK_CLOSE) > 1:
        return
    parts = [response]
    if THINK_CLOSE in response:
        reasoning, final = response.split(THINK_CLOSE, 1)
        parts = [reasoning.split(THINK_OPEN, 1)[-1], final]
    for part in parts:
        if part.strip() and part.strip() not in assistant:
            raise BadRecord(
                f"record {record}: the chat template does not render this part of the response: "
                f"{part.strip()[:60]!r}... "
                "(templates that strip reasoning from assistant turns cannot train on it)"
            )


def encode_example(
    tokenizer,
    prompt: str,
    response: str,
    *,
    max_length: int,
    overlength: str = "drop",
    enable_thinking: bool = True,
    supervise_inserted_think: bool = False,
    end_of_turn: int | None = None,
    record: str = "?",
) -> Encoded | None:
    """Tokenize one example. Returns None when it must be dropped for length (the caller counts drops).

    ``end_of_turn``: the id from :func:`end_of_turn_id` (looked up here when None; pass it when encoding many).

    Raises:
        BadRecord: empty response, a response containing the end-of-turn token's text, or a chat template that
            does not render the prompt as a prefix or drops part of the response.
    """
    if not response.strip():
        raise BadRecord(f"record {record}: the response is empty")
    eot = end_of_turn_id(tokenizer) if end_of_turn is None else end_of_turn
    eot_text = tokenizer.convert_ids_to_tokens(eot)
    if eot_text in response:
        raise BadRecord(f"record {record}: the response contains the end-of-turn token text {eot_text!r}")
    prompt_text = render(tokenizer, prompt, None, enable_thinking)
    full_text = render(tokenizer, prompt, response, enable_thinking)
    if not full_text.startswith(prompt_text):
        hint = ""
        if not enable_thinking and THINK_OPEN in response:
            hint = (
                " (dataset.enable_thinking=false closes an empty think block in the generation prompt, "
                "but this response has its own: set dataset.enable_thinking=true)"
            )
        raise BadRecord(
            f"record {record}: the chat template renders the prompt differently with and without the response; "
            f"completion-only labels need the generation prompt to be a prefix of the full conversation{hint}"
        )
    assistant = full_text[len(prompt_text) :]
    check_rendered(assistant, response, record)
    cut = len(prompt_text)
    inserted = inserted_think_length(assistant, response, record)
    if not supervise_inserted_think:
        cut += inserted  # the template's own empty block is context, as in Qwen3's non-thinking generation prompt
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start = next((i for i, (a, _) in enumerate(offsets) if a >= cut), len(ids))
    if start > 0 and offsets[start - 1][1] > cut:
        raise BadRecord(
            f"record {record}: a token straddles the prompt/response boundary; the tokenizer merges across it"
        )
    stop = next((i + 1 for i in range(start, len(ids)) if ids[i] == eot), None)
    if stop is None:
        raise BadRecord(f"record {record}: the rendered response has no end-of-turn token {eot_text!r}")
    ids, offsets = ids[:stop], offsets[:stop]  # what follows the end of the turn is never supervised: drop it
    labels = [IGNORE_INDEX] * start + ids[start:]
    # The answer grading would read (after the response's </think>); the prompt, whose template may mention
    # \boxed{}, is skipped.
    box = final_answer_box(full_text, start=cut)
    answer = [
        box is not None and a < box.end and b > box.start and labels[i] != IGNORE_INDEX
        for i, (a, b) in enumerate(offsets)
    ]
    truncated = False
    if len(ids) > max_length:
        if overlength == "drop":
            return None
        ids, labels, answer, truncated = ids[:max_length], labels[:max_length], answer[:max_length], True
    if all(l == IGNORE_INDEX for l in labels[1:]):
        return None  # truncated to nothing: no token left to learn from
    return Encoded(ids, labels, answer, truncated, min(start, len(ids)))
