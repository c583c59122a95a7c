"""Build the default model: a tiny Qwen3-architecture network and a BPE tokenizer for the synthetic task.

Both are saved with ``save_pretrained`` into a local directory and then loaded back through
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, exactly the path a hub id takes.
The chat template mirrors Qwen3's single-turn rendering: the assistant turn opens ``<think>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from vcore.config import TinyModelConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Single-turn Qwen3 rendering: reasoning between <think> tags is split out of the content and re-emitted, so a
# response written with its own <think> block renders exactly once; a response without one gets no empty block.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit numbers (as Qwen's tokenizer), trained on ``corpus``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE, model_max_length=1 << 20
    )


def build_tiny(path: str | Path, spec: TinyModelConfig, corpus: list[str]) -> Path:
    """Write tokenizer + randomly initialised model into ``path`` unless an identical build is already there."""
    path = Path(path)
    corpus_hash = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()
    stamp = json.dumps({"spec": spec.__dict__, "corpus": corpus_hash}, sort_keys=True)
    if (path / "vcore_tiny.json").exists() and (path / "vcore_tiny.json").read_text() == stamp:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "vcore_tiny.json").write_text(stamp)
    return path


def tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: rendered synthetic conversations (fixed seed, both difficulties)."""
    from vcore.data.build import format_prompt
    from vcore.data.synthetic import make_split

    texts = []
    for split in ("train", "ood"):
        for rec in make_split(split, 1000, seed=12345):
            texts.append(format_prompt("math", rec["problem"]))
            texts.append(rec["generated_solution"])
    return texts
