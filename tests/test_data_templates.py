"""Completion-only labels through real chat templates: Qwen3 (thinking) and a LLaMA-3.1 style template.

Checked for every template: labels are exactly the assistant tokens after the generation prompt, the think tags
appear once, the end-of-turn token is supervised (and nothing after it is kept), and a template-inserted empty
think block is never supervised unless ``dataset.think=train_empty`` asks for it.

The real Qwen3 tokenizer comes from ``../shared/data/tokenizers/qwen3``; without it the Qwen3 tests use a
tokenizer saved here whose template renders single-turn conversations like Qwen3's (checked against the real
one when both exist). The LLaMA-3.1 style tokenizer (no real copy is available offline) ends turns with
``<|eot_id|>`` while its eos is ``<|end_of_text|>``, the case an eos-based mask gets wrong.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.helpers import SHARED_DATA
from vcore.checks import ConfigError
from vcore.data.encode import BadRecord, encode_example, end_of_turn_id
from vcore.data.think import apply_think_policy
from vcore.ops.losses import IGNORE_INDEX

QWEN3 = SHARED_DATA / "tokenizers" / "qwen3"
THINKING = "<think>\nAdd 3 and 4.\n3 + 4 = 7.\n</think>\n\nThe sum is 7, so the answer is \\boxed{7}."
PLAIN = "The sum is 7, so the answer is \\boxed{7}."

# Single-turn equivalent of Qwen3's official template (user turns; the last assistant turn re-rendered as
# <think>\n{reasoning}\n</think>\n\n{content}, with an empty block when the message has no reasoning).
QWEN3_LIKE_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + "
    "content.lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# The structure of Llama-3.1-Instruct's template for a conversation without tools: a system header carrying the
# knowledge-cutoff lines, each turn between header tokens, turns closed by <|eot_id|>, contents trimmed.
LLAMA31_LIKE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content | trim }}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CORPUS = [
    THINKING,
    PLAIN,
    "What is 3 + 4?",
    "Please reason step by step, and put the correct answer within \\boxed{}.",
] * 4


def saved_tokenizer(path, special: list[str], template: str, **tokens) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``special`` tokens and ``template``, saved and loaded back as a user would."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **tokens).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    if QWEN3.exists():
        return AutoTokenizer.from_pretrained(QWEN3)
    path = tmp_path_factory.mktemp("qwen3_like")
    return saved_tokenizer(
        path,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        QWEN3_LIKE_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def llama31(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama31_like")
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return saved_tokenizer(
        path, special, LLAMA31_LIKE_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
    )


def supervised(tok, enc) -> tuple[str, str]:
    """(prompt-side text, supervised text); asserts the supervised tokens are one span ending the sequence."""
    sup = [i for i, l in enumerate(enc.labels) if l != IGNORE_INDEX]
    assert sup == list(range(sup[0], len(enc.input_ids))), "one contiguous span, and nothing after the end of turn"
    assert [enc.labels[i] for i in sup] == [enc.input_ids[i] for i in sup]
    return tok.decode(enc.input_ids[: sup[0]]), tok.decode(enc.input_ids[sup[0] :])


def test_qwen3_thinking_response(qwen3):
    enc = encode_example(qwen3, "What is 3 + 4?", THINKING, max_length=4096)
    prompt, target = supervised(qwen3, enc)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert target == THINKING + "<|im_end|>"
    assert enc.input_ids[-1] == qwen3.convert_tokens_to_ids("<|im_end|>") == end_of_turn_id(qwen3)
    full = qwen3.decode(enc.input_ids)
    assert full.count("<think>") == 1 and full.count("</think>") == 1
    assert (
        qwen3.decode([t for t, a in zip(enc.input_ids, enc.answer_mask) if a]).strip(" .") == "\\boxed{7}"
    )  # whole tokens


def test_qwen3_response_without_think_never_trains_on_the_inserted_empty_block(qwen3):
    enc = encode_example(qwen3, "What is 3 + 4?", PLAIN, max_length=4096)
    prompt, target = supervised(qwen3, enc)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), "the template's empty block is context"
    assert target == PLAIN + "<|im_end|>" and "<think>" not in target
    trained = encode_example(qwen3, "What is 3 + 4?", PLAIN, max_length=4096, supervise_inserted_think=True)
    assert supervised(qwen3, trained)[1] == "<think>\n\n</think>\n\n" + PLAIN + "<|im_end|>"
    # non-thinking generation prompt: the empty block is already in the prompt; same supervised tokens
    off = encode_example(qwen3, "What is 3 + 4?", PLAIN, max_length=4096, enable_thinking=False)
    assert off.input_ids == enc.input_ids and off.labels == enc.labels


def test_qwen3_non_thinking_prompt_refuses_a_thinking_response(qwen3):
    with pytest.raises(BadRecord, match="enable_thinking=true"):
        encode_example(qwen3, "q", THINKING, max_length=4096, enable_thinking=False, record="train 3")


@pytest.mark.skipif(not QWEN3.exists(), reason="real Qwen3 tokenizer not available (../shared/data)")
def test_fallback_template_renders_like_the_real_qwen3(tmp_path):
    real = AutoTokenizer.from_pretrained(QWEN3)
    like = AutoTokenizer.from_pretrained(QWEN3)
    like.chat_template = QWEN3_LIKE_TEMPLATE
    user = [{"role": "user", "content": "What is 3 + 4?"}]
    for response in (THINKING, PLAIN, "reasoning</think>answer", "<think>\n\n</think>\n\nx"):
        for thinking in (True, False):
            conv = user + [{"role": "assistant", "content": response}]
            assert like.apply_chat_template(conv, tokenize=False, enable_thinking=thinking) == real.apply_chat_template(
                conv, tokenize=False, enable_thinking=thinking
            )
            gen = dict(tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
            assert like.apply_chat_template(user, **gen) == real.apply_chat_template(user, **gen)


def test_llama31_supervises_eot_not_eos(llama31):
    eot = llama31.convert_tokens_to_ids("<|eot_id|>")
    assert llama31.eos_token == "<|end_of_text|>" and end_of_turn_id(llama31) == eot
    enc = encode_example(llama31, "What is 3 + 4?", THINKING, max_length=4096)
    prompt, target = supervised(llama31, enc)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system") and prompt.count("<|begin_of_text|>") == 1
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert target == THINKING + "<|eot_id|>" and enc.input_ids[-1] == eot
    assert llama31.decode(enc.input_ids).count("<think>") == 1
    plain = encode_example(llama31, "What is 3 + 4?", PLAIN, max_length=4096)
    assert supervised(llama31, plain)[1] == PLAIN + "<|eot_id|>"  # no think block appears from nowhere


def test_end_of_turn_option(llama31, qwen3):
    eos = llama31.convert_tokens_to_ids("<|end_of_text|>")
    assert end_of_turn_id(llama31, "<|end_of_text|>") == eos
    with pytest.raises(BadRecord, match="no end-of-turn token '<\\|end_of_text\\|>'"):
        encode_example(llama31, "q", THINKING, max_length=4096, end_of_turn=eos, record="train 0")
    with pytest.raises(ConfigError, match="dataset.end_of_turn"):
        end_of_turn_id(qwen3, "<|no_such_token|>")


def test_response_holding_the_end_of_turn_text_is_a_bad_record(qwen3):
    with pytest.raises(BadRecord, match="record train 5: the response contains the end-of-turn token"):
        encode_example(qwen3, "q", "a<|im_end|>b", max_length=4096, record="train 5")


@pytest.mark.parametrize(
    "response,mode,expected",
    [
        (THINKING, "require", THINKING),
        (PLAIN, "optional", PLAIN),
        ("Add.\n</think>\n\nx", "require", "<think>\nAdd.\n</think>\n\nx"),  # opening tag restored (R1 prefill)
        ("<think>\n\n</think>\n\nx", "optional", "x"),  # an empty block is "no reasoning"
        ("<think>\n\n</think>\n\nx", "train_empty", "<think>\n\n</think>\n\nx"),
    ],
)
def test_think_policy_accepts(response, mode, expected):
    stats = {}
    assert apply_think_policy(response, mode, "record train 1", "generated_solution", stats) == expected


@pytest.mark.parametrize(
    "response,mode,message",
    [
        (PLAIN, "require", "has no <think> block.*dataset.think=optional"),
        (THINKING + THINKING, "optional", "2 '<think>' and 2 '</think>'"),
        ("<think>\nnever closed", "optional", "never closes it"),
        ("Sure. " + THINKING, "require", "text before <think>"),
        ("<think>\nonly reasoning\n</think>\n", "require", "nothing after </think>"),
        ("<think>\n\n</think>\n\nx", "require", "empty think block"),
    ],
)
def test_think_policy_rejects_naming_record_and_field(response, mode, message):
    with pytest.raises(BadRecord, match=r"record train 1: field 'generated_solution' .*" + message):
        apply_think_policy(response, mode, "record train 1", "generated_solution", {})
