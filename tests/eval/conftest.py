"""Fixtures of the evaluation-harness tests: offline environment, the shared data folder, composing configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never touch the network: set before datasets / transformers are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
# The benchmark copies of this project's development machines (users set benchmark.<name>.data_root or
# $VCORE_DATA_ROOT themselves; nothing in vcore/ defaults to this folder). Tests that read it pass it as data_root
# and are marked needs_data, so they skip where it is absent.
SHARED_DATA = Path(os.environ.get("VCORE_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
QWEN3_TOKENIZER = SHARED_DATA / "tokenizers" / "qwen3"

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared benchmark data not found at {SHARED_DATA}")
needs_qwen3 = pytest.mark.skipif(not (QWEN3_TOKENIZER / "vocab.json").is_file(), reason=f"Qwen3 tokenizer not found at {QWEN3_TOKENIZER}")


def compose_cfg(overrides: list[str]):
    """Compose ``conf/`` with no primary config, e.g. ``["+benchmark=[aime,gsm8k]", "+decoding=paper"]``."""
    from hydra import compose, initialize_config_dir

    from vcore.eval.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=None, overrides=overrides)


def load_benchmarks(names: list[str], extra: list[str] | None = None, local: bool = True):
    """BenchmarkConfig objects for ``names`` composed from conf/benchmark (local copies by default)."""
    from vcore.eval.config import benchmarks_from_cfg

    overrides = ["+benchmark=[" + ",".join(names) + "]"]
    if local:
        overrides += [f"benchmark.{n}.source=local" for n in names if not n.startswith("synthetic")]
        overrides += [f"benchmark.{n}.data_root={SHARED_DATA}" for n in names]
    return benchmarks_from_cfg(compose_cfg(overrides + (extra or [])).benchmark)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    if not (QWEN3_TOKENIZER / "vocab.json").is_file():
        pytest.skip(f"Qwen3 tokenizer not found at {QWEN3_TOKENIZER}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN3_TOKENIZER))
