"""Generation backends: HF ``generate`` (CPU, tests, small runs) and vLLM (GPUs; optional, imported lazily).

Both take user-turn texts, apply the tokenizer's chat template (one user turn, no system message,
``add_generation_prompt=True``; ``enable_thinking`` is passed when the template uses it, as Qwen3's does) and
return, per prompt, ``decoding.n`` :class:`Generation` objects with the decoded text (special tokens skipped;
Qwen3's ``<think>``/``</think>`` are ordinary added tokens and stay in the text), the number of generated
tokens and whether the length limit cut the output off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vcore.checks import ConfigError
from vcore.eval.config import DecodingConfig


@dataclass
class Generation:
    text: str
    n_tokens: int
    truncated: bool  # stopped by max_new_tokens, not by an end-of-sequence token


def supports_thinking_switch(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "enable_thinking" in (template if isinstance(template, str) else str(template))


def chat_prompts(tokenizer: Any, prompts: list[str], enable_thinking: bool) -> list[str]:
    """Render each prompt as a single user turn with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the tokenizer has no chat template; evaluation prompts go through it (use an instruct/chat tokenizer, "
            "or set tokenizer.chat_template before calling evaluate)"
        )
    extra = {"enable_thinking": enable_thinking} if supports_thinking_switch(tokenizer) else {}
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, **extra)
        for p in prompts
    ]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids a generation stops at: the model's generation config's end tokens and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError("neither the model's generation_config nor the tokenizer defines an eos token")
    return ids


class HFGenerator:
    """Batched ``model.generate`` with left padding; prompts are sorted by length to waste less padding."""

    def __init__(self, model: Any, tokenizer: Any, decoding: DecodingConfig) -> None:
        self.model, self.tokenizer, self.decoding = model, tokenizer, decoding

    def generate(self, prompts: list[str], desc: str = "generate") -> list[list[Generation]]:
        import torch
        from transformers import GenerationConfig

        dec, tok, model = self.decoding, self.tokenizer, self.model
        eos = eos_ids(model, tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        sampling = not dec.greedy
        # A fresh GenerationConfig: the model's own defaults (Qwen3 ships temperature 0.6) must not leak in.
        gen_cfg = GenerationConfig(
            max_new_tokens=dec.max_new_tokens,
            do_sample=sampling,
            num_return_sequences=dec.n,
            eos_token_id=eos,
            pad_token_id=pad,
            repetition_penalty=dec.repetition_penalty,
            **(
                dict(temperature=dec.temperature, top_p=dec.top_p, top_k=max(0, dec.top_k), min_p=dec.min_p or None)
                if sampling
                else {}
            ),
        )
        texts = chat_prompts(tok, prompts, dec.enable_thinking)
        encoded = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        out: list[list[Generation] | None] = [None] * len(texts)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            # Seeded sampling without touching the caller's global RNG state.
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(dec.seed)
                for start in tqdm(range(0, len(order), dec.batch_size), desc=desc, leave=False):
                    idx = order[start : start + dec.batch_size]
                    width = max(len(encoded[i]) for i in idx)
                    ids = torch.full((len(idx), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        seq = encoded[i]
                        ids[row, width - len(seq) :] = torch.tensor(seq)
                        mask[row, width - len(seq) :] = 1
                    gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
                    gen = gen[:, width:].cpu()
                    for row, i in enumerate(idx):
                        out[i] = [self._finish(gen[row * dec.n + s].tolist(), eos) for s in range(dec.n)]
        finally:
            model.train(was_training)
        return out  # type: ignore[return-value]

    def _finish(self, tokens: list[int], eos: list[int]) -> Generation:
        stop = next((j for j, t in enumerate(tokens) if t in eos), None)
        if stop is None:
            kept, truncated = tokens, len(tokens) >= self.decoding.max_new_tokens
        else:
            kept, truncated = tokens[: stop + 1], False
        return Generation(self.tokenizer.decode(kept, skip_special_tokens=True), len(kept), truncated)


class VLLMGenerator:
    """vLLM offline inference (paper Table 7). ``decoding.vllm`` is passed to ``vllm.LLM``."""

    def __init__(self, model: str | Path, tokenizer: Any, decoding: DecodingConfig) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError("backend='vllm' needs the vllm package (pip install vllm) on a GPU machine; use backend='hf' otherwise") from err
        if not isinstance(model, (str, Path)):
            raise ConfigError("backend='vllm' needs a model path or hub id: save the model with save_pretrained first, or use backend='hf'")
        self.vllm, self.tokenizer, self.decoding = vllm, tokenizer, decoding
        args = {"model": str(model), "seed": decoding.seed, "dtype": decoding.dtype}
        if tokenizer is not None and getattr(tokenizer, "name_or_path", None):
            args["tokenizer"] = tokenizer.name_or_path
        args.update(decoding.vllm)
        self.llm = vllm.LLM(**args)
        if self.tokenizer is None:
            self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], desc: str = "generate") -> list[list[Generation]]:
        dec = self.decoding
        params = self.vllm.SamplingParams(
            n=dec.n,
            temperature=dec.temperature,
            top_p=dec.top_p,
            top_k=dec.top_k,
            min_p=dec.min_p,
            repetition_penalty=dec.repetition_penalty,
            max_tokens=dec.max_new_tokens,
            seed=dec.seed,
            skip_special_tokens=True,
        )
        texts = chat_prompts(self.tokenizer, prompts, dec.enable_thinking)
        out: list[list[Generation]] = []
        for start in tqdm(range(0, len(texts), dec.batch_size), desc=desc, leave=False):
            for req in self.llm.generate(texts[start : start + dec.batch_size], params, use_tqdm=False):
                out.append([Generation(c.text, len(c.token_ids), c.finish_reason == "length") for c in req.outputs])
        return out


def make_generator(backend: str, model: Any, tokenizer: Any, decoding: DecodingConfig) -> HFGenerator | VLLMGenerator:
    if backend == "hf":
        return HFGenerator(model, tokenizer, decoding)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, decoding)
    raise ConfigError(f"backend {backend!r}: use 'hf' or 'vllm'")
