"""Shared pieces of the benchmark scripts: peak-memory sampling on CPU, isolated runs, device names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import torch


class RssSampler:
    """Peak resident memory above the level at construction, sampled every 0.5 ms from /proc/self/statm.

    The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors go back to the OS and RSS follows
    live memory; the sampled peak is approximate (a peak shorter than the sampling period can be missed).
    """

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak - self.base


def run_isolated(argv: list[str]) -> dict:
    """Run ``python argv...`` in a fresh process (clean peak memory) and parse the JSON of its last output line.

    ``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed tensors to the OS, so resident memory follows live memory.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed: {' '.join(argv)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


_SAVED: dict[str, str] = {}  # config -> the directory it was saved in (one build per process)


def random_qwen3(config_kwargs: dict, max_positions: int, device: torch.device):
    """A randomly initialised Qwen3-shaped model, saved and loaded back through ``from_pretrained``.

    Built once per configuration and process (a 0.6B-parameter initialisation takes seconds; every later call only
    loads the saved weights), initialised on ``device``."""
    import tempfile

    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**config_kwargs, max_position_embeddings=max_positions, tie_word_embeddings=True)
    key = config.to_json_string()
    if key not in _SAVED:
        d = tempfile.mkdtemp(prefix="vcore-bench-model-")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(d)
        _SAVED[key] = d
    return AutoModelForCausalLM.from_pretrained(_SAVED[key], dtype=torch.float32, attn_implementation="sdpa").to(device)


def one_step(trainer, model, optimizer, batch) -> None:
    batches, _ = trainer.get_batch_samples(iter([dict(batch)]), 1, batch["input_ids"].device)
    model.train()
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, batches[0])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
