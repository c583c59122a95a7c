"""Tiny wrappers so single-process code and data-parallel code are the same lines.

Launched by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) or by ``srun`` with one
task per GPU (:func:`torch_env_from_slurm` fills in what torchrun would have set), the process group is
created by :func:`init_distributed` (``run.py`` does it before Hydra, so that every rank shares one output dir;
see :mod:`vcore.run.launch`); accelerate then reuses it. Outside a launcher every helper is the identity.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from vcore.checks import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_sharded(tensors: Iterable[torch.Tensor]) -> bool:
    """True when the tensors are FSDP2 shards (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) for t in tensors)


def torch_env_from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """The variables torchrun would set, for ranks started by ``srun`` itself (one task per GPU: an sbatch script's
    ``srun python run.py``, or hydra-submitit-launcher with ``tasks_per_node`` > 1). Empty when a launcher already
    set ``RANK`` or when this is not a multi-task job step (a plain ``python`` inside an allocation stays alone).
    """
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "RANK" in env or tasks <= 1 or "SLURM_PROCID" not in env:
        return {}
    out = {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "WORLD_SIZE": str(tasks),
        # A requeued job keeps its id, hence its port.
        "MASTER_PORT": env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)),
    }
    if "MASTER_ADDR" in env or int(env.get("SLURM_STEP_NUM_NODES", "1")) == 1:
        out["MASTER_ADDR"] = env.get("MASTER_ADDR", "127.0.0.1")
    else:
        nodes = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_STEP_NODELIST"]], capture_output=True, text=True, check=True
        )
        out["MASTER_ADDR"] = nodes.stdout.split()[0]
    return out


def launched_world_size() -> int:
    """World size announced by the launcher's environment (before any process group exists); under ``srun``,
    torchrun's variables are first filled in from SLURM's (:func:`torch_env_from_slurm`)."""
    os.environ.update(torch_env_from_slurm(os.environ))
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> None:
    """Create the default process group when a launcher started us and nobody has yet (idempotent).

    ``cuda:nccl,cpu:gloo`` is what accelerate itself picks when CPU collectives are needed next to GPU ones: our
    object broadcasts and the CPU test path go through gloo, gradients through NCCL.
    """
    if launched_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        # Bind this rank's GPU before the first collective (a barrier, say), as accelerate would later: otherwise
        # NCCL puts every rank on cuda:0.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned); identity in a single process."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (through gloo on CPU, so it works before any GPU is bound)."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def same_on_all_ranks(obj: Any) -> bool:
    """True on every rank iff every rank holds an ``obj`` equal to rank 0's (all ranks get the same answer)."""
    if world_size() <= 1:
        return True
    differs = torch.tensor([float(broadcast_object(obj) != obj)])  # a CPU tensor: gloo, whatever GPU is bound
    return all_reduce_max(differs).item() == 0


@dataclass(frozen=True)
class Backend:
    """How training runs, as far as a method may care: data parallelism (DDP, FSDP, DeepSpeed), accelerate's mixed
    precision, packed rows, LoRA, and the weights' dtype (None while unknown). Built from the launcher's environment
    and the config before anything is loaded (:func:`launcher_backend`), then from the Trainer's state."""

    world_size: int = 1
    fsdp: bool = False
    fsdp_version: int = 2
    fsdp_state_dict_type: str = "SHARDED_STATE_DICT"
    deepspeed: bool = False
    mixed_precision: str = "no"
    packing: bool = False
    lora: bool = False
    weights_dtype: Optional[str] = None  # float32 | bfloat16 | float16 | float64

    @property
    def low_precision_weights(self) -> Optional[bool]:
        """True for bf16/fp16 weights, None while the dtype is unknown."""
        return None if self.weights_dtype is None else self.weights_dtype in ("bfloat16", "float16")


def launcher_backend(**known: Any) -> Backend:
    """What ``accelerate launch`` was configured with, readable before any model is loaded, plus ``known`` facts from
    the config (``packing``, ``lora``, ``weights_dtype``)."""

    def flag(name: str) -> bool:
        return os.environ.get(name, "false").lower() == "true"

    return Backend(
        world_size=launched_world_size(),
        fsdp=flag("ACCELERATE_USE_FSDP"),
        deepspeed=flag("ACCELERATE_USE_DEEPSPEED"),
        mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION", "no"),
        # accelerate launch's default is FSDP1 (it writes "1" unless --fsdp_version 2 / fsdp_version: 2 is given)
        fsdp_version=int(os.environ.get("FSDP_VERSION", "1")),
        fsdp_state_dict_type=_state_dict_type(
            os.environ.get(
                "FSDP_STATE_DICT_TYPE",
                "SHARDED_STATE_DICT" if os.environ.get("FSDP_VERSION") == "2" else "FULL_STATE_DICT",
            )
        ),
        **known,
    )


def _state_dict_type(value: str) -> str:
    """accelerate's spellings (``full_state_dict``, or torch's enum number ``1``) as the enum name."""
    numbered = {"1": "FULL_STATE_DICT", "2": "LOCAL_STATE_DICT", "3": "SHARDED_STATE_DICT"}
    return numbered.get(value.strip(), value.strip().upper())


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the body first (builds files, caches), the other ranks afterwards (and find them ready)."""
    if rank() != 0:
        barrier()
    try:
        yield
    finally:
        if rank() == 0:
            barrier()


def check_parallel_backend(backend: Backend, *, generates_after_training: bool = False) -> None:
    """Refuse at start, naming the alternative, every backend that no method supports (no silent fallback).

    What one method does not support is that method's own check (``TokenWeighting.check_backend``: VCORE's probe
    under FSDP, iw-SFT's reference under FSDP1).
    """
    if backend.mixed_precision != "no":
        raise ConfigError(
            f"accelerate's mixed precision ({backend.mixed_precision}) is not supported: it patches the model's "
            "forward with autocast, so the finite-difference probe could no longer run in exact float32 (SPEC §6: its "
            "scores become rounding noise). Launch without --mixed_precision (or set mixed_precision: 'no' in the "
            "accelerate config) and use trainer.precision=bf16, which autocasts the training step only."
        )
    if backend.deepspeed:
        raise ConfigError(
            "DeepSpeed (ZeRO-2/3) is not supported: ZeRO partitions gradients and parameters behind hooks that the "
            "VCORE probe and our step-level token count do not go through. Launch with DDP instead (torchrun or "
            "`accelerate launch` without a DeepSpeed config; add model.lora.enabled=true if the model does not fit "
            "one GPU), or with FSDP2 (docs/distributed.md)."
        )
    if backend.fsdp and backend.fsdp_version == 2 and "FULL_STATE_DICT" in backend.fsdp_state_dict_type:
        raise ConfigError(
            "FSDP2 with state_dict_type FULL_STATE_DICT is not supported: the Trainer's checkpoint save then runs a "
            "collective on rank 0 alone inside save_pretrained (FSDP2, tied embeddings: the ranks deadlock or abort). "
            "Set `fsdp_state_dict_type: SHARDED_STATE_DICT` in the accelerate config (the FSDP2 default); the final "
            "model is still written as one from_pretrained directory (docs/distributed.md)."
        )
    if backend.fsdp and generates_after_training:
        raise ConfigError(
            "eval.after_train=true under FSDP: generation runs on rank 0 only, and a sharded model needs every rank in "
            "each forward. Set eval.after_train=false and evaluate the saved model with task=eval eval.model=<run dir> "
            "on one GPU (docs/distributed.md)."
        )
