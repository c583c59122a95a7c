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

from tests.helpers import CONF, TINY_TEST  # noqa: E402

# Thread policy, deliberate per workload:
# - in this process, one torch thread for every test: the suite's models are tiny, and on the 2-core test machine a
#   tiny model trains ~10x faster on one thread than on two (measured by the distributed and resume tests);
# - processes a test starts (run.py, torchrun ranks, benchmarks) get OMP_NUM_THREADS=1 from
#   tests.helpers.subprocess_env, and inherit it from this environment when a test copies os.environ;
# - a test that really wants more threads says so with @pytest.mark.threads(n).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core this process may run on, at most 8.

    Every test runs on one torch thread (below), so two cores run the suite in about half the time. The count comes
    from the CPU affinity, not ``os.cpu_count()``: in a container that is the cores it was given, not the host's.
    ``--dist loadfile`` keeps a file's tests on one worker, so a module fixture (a torchrun result, a tiny base) is
    built once. One process: ``python -m pytest -n 0``."""
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def pytest_configure(config):
    config.addinivalue_line("markers", "threads(n): torch intra-op threads for this test (default: one)")
    config.addinivalue_line(
        "markers", "alone: no other test runs meanwhile in any worker (the test looks at the whole machine)"
    )


@pytest.fixture(autouse=True)
def _alone_or_shared(request):
    """Under xdist, a test marked ``alone`` (it checks that nothing of the sandbox is left anywhere on the machine:
    processes, box folders, cgroups) must not see another worker's sandboxes. Every test holds a shared lock on a
    file of the session; an ``alone`` test takes it exclusively. A turnstile lock in front of it stops new shared
    holders while an exclusive one waits, so the exclusive test is not starved by the other worker's next tests."""
    import fcntl

    root = Path(os.environ["VCORE_TEST_SESSION_CACHE"])
    alone = request.node.get_closest_marker("alone") is not None
    with open(root / "turnstile.lock", "a") as gate, open(root / "alone.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_session():
    """One thread from the start, so that session and module fixtures (the tiny base, torchrun results) get it too."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _torch_threads(request):
    import torch

    marker = request.node.get_closest_marker("threads")
    wanted = int(marker.args[0]) if marker else 1
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Kept for tests that still request it: every test already runs on one thread (see the policy above)."""
    yield


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
        small = (
            [o for o in TINY_TEST if method == "vcore" or not o.startswith("method.probe")] if tiny else ["logger=none"]
        )
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(
                "train", overrides=base + small + [f"model.name_or_path={tiny_dir}"] * tiny + list(overrides)
            )

    return _make
