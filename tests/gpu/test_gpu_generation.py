"""Generation on CUDA: HF ``generate`` gives the CPU's greedy answers, and the vLLM backend (when vllm is importable)
gives HF's, on a small saved model with the tiny test tokenizer (its chat template), through
:func:`vcore.eval.generate.make_generator` as the evaluation harness calls it.

The model is random, so its greedy choices can win by small margins: the comparisons run in float32 (TF32 off),
where kernels that sum in different orders still agree on every token. (In bf16 a random model's answers already
differ between two CPU runs after ~10 tokens: measured with this fixture.)
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import needs_cuda

pytestmark = needs_cuda()

PROMPTS = ["What is 2 + 3?", "Name a prime number.", "Spell cat backwards.", "Count to five.", "Is 9 odd?"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_tokenizer):
    """A Qwen3-architecture model (head dim 64, which every vLLM attention backend takes) and the tokenizer, saved."""
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    path = tmp_path_factory.mktemp("gen_model")
    config = Qwen3Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id
    )
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def decoding(**kwargs):
    from vcore.eval.config import DecodingConfig

    return DecodingConfig(name="greedy", temperature=0.0, max_new_tokens=16, batch_size=2, **kwargs)


def hf_generations(path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vcore.eval.generate import make_generator

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return [
        g[0] for g in make_generator("hf", model, AutoTokenizer.from_pretrained(path), decoding()).generate(PROMPTS)
    ]


def hf_answers(path, device: str, dtype: torch.dtype) -> list[str]:
    return [g.text for g in hf_generations(path, device, dtype)]


def test_hf_generation_on_cuda_gives_the_cpu_answers(saved_model):
    cpu = hf_answers(saved_model, "cpu", torch.float32)
    assert any(cpu)  # the model does say something
    assert hf_answers(saved_model, "cuda", torch.float32) == cpu


def test_vllm_backend_gives_hf_greedy_answers(saved_model):
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from vcore.eval.generate import make_generator

    hf = hf_generations(saved_model, "cuda", torch.float32)
    dec = decoding(dtype="float32", vllm={"gpu_memory_utilization": 0.25, "enforce_eager": True, "max_model_len": 1024})
    out = [
        g[0]
        for g in make_generator("vllm", str(saved_model), AutoTokenizer.from_pretrained(saved_model), dec).generate(
            PROMPTS
        )
    ]
    assert [(g.n_tokens, g.truncated) for g in out] == [(g.n_tokens, g.truncated) for g in hf]
    # The random model emits lone pieces of multi-byte characters (most answers have some): HF decodes the whole
    # sequence at once, vLLM incrementally, and they may render broken bytes differently (one U+FFFD per byte, one
    # per sequence, or none); every whole character must agree, in order.
    assert [g.text.replace("\ufffd", "") for g in out] == [g.text.replace("\ufffd", "") for g in hf]
