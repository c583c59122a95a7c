"""Generation backends: HF ``generate`` (CPU, tests, small runs) and vLLM (GPUs; optional, imported lazily).

Both take user-turn texts, apply the tokenizer's chat template (one user turn, no system message,
``add_generation_prompt=True``; ``enable_thinking`` is passed when the template uses it, as Qwen3's does) and
return, per prompt, ``decoding.n`` :class:`Generation` objects with the decoded text (special tokens skipped;
Qwen3's ``<think>``/``</think>`` are ordinary added tokens and stay in the text), the number of generated
tokens and whether the length limit cut the output off.

Prompts go in batches of ``decoding.batch_size`` fixed by :func:`plan_batches` (HF: longest first, to waste less
padding), and each prompt has a seed (:func:`vcore.eval.journal.item_seed` in the harness). vLLM seeds each request
with its prompt's seed, so a prompt's samples do not depend on its neighbours. HF ``generate`` draws a batch from one
random stream, seeded with the seed of the batch's first prompt: a batch's samples depend on the whole batch, which
is why batches are fixed by the full prompt list, so that a resumed evaluation regenerates a batch exactly.
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
    seed: int | None = None  # the seed of the random stream it was drawn from (its own with vLLM, its batch's with HF)


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
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, **extra
        )
        for p in prompts
    ]


def plan_batches(backend: str, tokenizer: Any, prompts: list[str], decoding: DecodingConfig) -> list[list[int]]:
    """Indices of ``prompts`` in generation batches of ``decoding.batch_size``; for HF sorted longest first (less
    padding), ties in prompt order. A function of the prompts alone, so every run of one evaluation has the same."""
    order = list(range(len(prompts)))
    if backend == "hf":
        texts = chat_prompts(tokenizer, prompts, decoding.enable_thinking)
        lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order.sort(key=lambda i: -lengths[i])
    return [order[start : start + decoding.batch_size] for start in range(0, len(order), decoding.batch_size)]


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
    """Batched ``model.generate`` with left padding, in the batches of :func:`plan_batches`."""

    def __init__(self, model: Any, tokenizer: Any, decoding: DecodingConfig) -> None:
        self.model, self.tokenizer, self.decoding = model, tokenizer, decoding

    def generate(
        self, prompts: list[str], seeds: list[int] | None = None, desc: str = "generate", progress: bool = True
    ) -> list[list[Generation]]:
        """``decoding.n`` generations per prompt; ``seeds``: one per prompt (default: all ``decoding.seed``)."""
        import torch
        from transformers import GenerationConfig

        dec, tok, model = self.decoding, self.tokenizer, self.model
        seeds = seeds if seeds is not None else [dec.seed] * len(prompts)
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
        out: list[list[Generation] | None] = [None] * len(texts)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            # Seeded sampling without touching the caller's global RNG state.
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                for idx in tqdm(plan_batches("hf", tok, prompts, dec), desc=desc, leave=False, disable=not progress):
                    torch.manual_seed(seeds[idx[0]])
                    width = max(len(encoded[i]) for i in idx)
                    ids = torch.full((len(idx), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        seq = encoded[i]
                        ids[row, width - len(seq) :] = torch.tensor(seq)
                        mask[row, width - len(seq) :] = 1
                    gen = model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
                    )
                    gen = gen[:, width:].cpu()
                    for row, i in enumerate(idx):
                        out[i] = [self._finish(gen[row * dec.n + s].tolist(), eos, seeds[idx[0]]) for s in range(dec.n)]
        finally:
            model.train(was_training)
        return out  # type: ignore[return-value]

    def _finish(self, tokens: list[int], eos: list[int], seed: int) -> Generation:
        stop = next((j for j, t in enumerate(tokens) if t in eos), None)
        if stop is None:
            kept, truncated = tokens, len(tokens) >= self.decoding.max_new_tokens
        else:
            kept, truncated = tokens[: stop + 1], False
        return Generation(self.tokenizer.decode(kept, skip_special_tokens=True), len(kept), truncated, seed)


class VLLMGenerator:
    """vLLM offline inference (paper Table 7). ``decoding.vllm`` is passed to ``vllm.LLM``."""

    def __init__(self, model: str | Path, tokenizer: Any, decoding: DecodingConfig) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "backend='vllm' needs the vllm package (pip install vllm) on a GPU machine; use backend='hf' otherwise"
            ) from err
        if not isinstance(model, (str, Path)):
            raise ConfigError(
                "backend='vllm' needs a model path or hub id: save the model with save_pretrained first, "
                "or use backend='hf'"
            )
        self.vllm, self.tokenizer, self.decoding = vllm, tokenizer, decoding
        args = {"model": str(model), "seed": decoding.seed, "dtype": decoding.dtype}
        if tokenizer is not None and getattr(tokenizer, "name_or_path", None):
            args["tokenizer"] = tokenizer.name_or_path
        args.update(decoding.vllm)
        self.llm = vllm.LLM(**args)
        if self.tokenizer is None:
            self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[str], seeds: list[int] | None = None, desc: str = "generate", progress: bool = True
    ) -> list[list[Generation]]:
        """``decoding.n`` generations per prompt, each request seeded with its prompt's seed (default:
        ``decoding.seed``)."""
        dec = self.decoding
        seeds = seeds if seeds is not None else [dec.seed] * len(prompts)
        texts = chat_prompts(self.tokenizer, prompts, dec.enable_thinking)
        out: list[list[Generation] | None] = [None] * len(texts)
        for idx in tqdm(
            plan_batches("vllm", self.tokenizer, prompts, dec), desc=desc, leave=False, disable=not progress
        ):
            params = [self._params(seeds[i]) for i in idx]
            for i, req in zip(idx, self.llm.generate([texts[i] for i in idx], params, use_tqdm=False)):
                out[i] = [
                    Generation(c.text, len(c.token_ids), c.finish_reason == "length", seeds[i]) for c in req.outputs
                ]
        return out  # type: ignore[return-value]

    def _params(self, seed: int):
        dec = self.decoding
        return self.vllm.SamplingParams(
            n=dec.n,
            temperature=dec.temperature,
            top_p=dec.top_p,
            top_k=dec.top_k,
            min_p=dec.min_p,
            repetition_penalty=dec.repetition_penalty,
            max_tokens=dec.max_new_tokens,
            seed=seed,
            skip_special_tokens=True,
        )


def make_generator(backend: str, model: Any, tokenizer: Any, decoding: DecodingConfig) -> HFGenerator | VLLMGenerator:
    if backend == "hf":
        return HFGenerator(model, tokenizer, decoding)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, decoding)
    raise ConfigError(f"backend {backend!r}: use 'hf' or 'vllm'")
