"""Shared fixtures: offline environment, the composed test config, the tiny model built once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models the tests build never land in the user's cache (~/.cache/vcore/tiny). One cache per test session:
# worker processes that import this module (torchrun ranks) inherit the session's instead of making their own.
if "VCORE_TEST_SESSION_CACHE" not in os.environ:
    os.environ["VCORE_TEST_SESSION_CACHE"] = tempfile.mkdtemp(prefix="vcore-test-cache-")
os.environ["VCORE_CACHE"] = os.environ["VCORE_TEST_SESSION_CACHE"]

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("VCORE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Small enough for a test to train in seconds, big enough to have every kind of layer.
TINY_TEST = [
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=1",
    "model.tiny.pretrain.steps=0",  # random init: tests need the code path, not a useful model
    "dataset.num_examples=32",
    "dataset.eval_examples=8",
    "trainer.max_steps=2",
    "trainer.per_device_train_batch_size=4",
    "trainer.gradient_accumulation_steps=2",
    "trainer.logging_steps=1",
    "method.probe.batch_size=2",
    "method.probe.accumulation=1",
    "decoding.max_new_tokens=48",
    "eval.num_workers=1",
    "eval.before_train=false",
    "logger=none",
]


@pytest.fixture
def one_thread():
    """Tiny models train ~10x faster on one thread than on two on this 2-core machine (measured by the distributed
    and resume tests, whose subprocess ranks also use one thread each)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The tiny test model + tokenizer, built once and shared (build_tiny skips an identical existing build)."""
    return tmp_path_factory.mktemp("tiny_model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    """The tiny tokenizer of the test config, built (once) exactly as a training run builds it."""
    from hydra import compose, initialize_config_dir

    from vcore.config import register_configs, to_object
    from vcore.run.training import prepare_model

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=TINY_TEST + [f"model.name_or_path={tiny_dir}", f"output_dir={tiny_dir}"])
    tokenizer, _ = prepare_model(to_object(cfg))
    return tokenizer


@pytest.fixture
def make_cfg(tmp_path, tiny_dir):
    """``make_cfg(*overrides, method="vcore")`` -> composed DictConfig for a tiny CPU run in ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    from vcore.config import register_configs

    register_configs()

    def _make(*overrides: str, method: str = "vcore", tiny: bool = True):
        base = [f"method={method}", f"output_dir={tmp_path}"]
        small = [o for o in TINY_TEST if method == "vcore" or not o.startswith("method.probe")] if tiny else ["logger=none"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "train", overrides=base + small + [f"model.name_or_path={tiny_dir}"] * tiny + list(overrides)
            )

    return _make


def tiny_causal_lm(path: Path, *, dtype=None, vocab_size: int = 37, seed: int = 0, attn: str = "sdpa", arch: str = "qwen3"):
    """A tiny model built from a config, saved to ``path`` and loaded back through ``from_pretrained``.

    ``arch="gpt2"`` gives a model that computes entirely in float64 when loaded so; Qwen3's RMSNorm upcasts to
    float32 internally, which puts a float32 noise floor under any finite difference.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen3Config

    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        config = Qwen3Config(
            vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float64, attn_implementation=attn)


def random_lm_batch(B: int = 3, T: int = 10, vocab_size: int = 37, seed: int = 0, pad_from: int | None = 7):
    """A batch in the collator's format: a 2-token prompt per row, the last row padded from ``pad_from``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_size, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    labels = ids.clone()
    labels[:, :2] = -100
    if pad_from is not None:
        attn[-1, pad_from:] = 0
        labels[-1, pad_from:] = -100
    answer = torch.zeros(B, T, dtype=torch.bool)
    answer[:, -2:] = labels[:, -2:] != -100
    return {"input_ids": ids, "attention_mask": attn, "labels": labels, "answer_mask": answer, "example_id": torch.arange(B)}
