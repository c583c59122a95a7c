"""``torchrun --nproc_per_node 1`` on CUDA over NCCL: the data-parallel and FSDP2 code paths of
tests/test_distributed.py and tests/test_fsdp.py (same runs, ``train_tiny(device="cuda")``) against one plain
process on the same GPU, float64 end to end.

With one rank, accelerate creates the NCCL process group but wraps no DDP module (it does so from two processes), so
the DDP side checks the launch, the process group and the single-rank code; FSDP2 does shard (a mesh of one) and
runs its NCCL all-gathers and reduce-scatters, and VCORE's sharded probe (finite differences) with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # as a torchrun worker script, this file is not imported from the repo root

from tests.helpers import RANK_BATCH as B
from tests.helpers import needs_cuda, tiny_causal_lm, torchrun, train_tiny
from vcore.methods import method_names

pytestmark = needs_cuda()

FSDP = {
    "fsdp": True,
    "fsdp_config": {
        "fsdp_version": 2,
        "transformer_layer_cls_to_wrap": ["GPT2Block"],
        "state_dict_type": "SHARDED_STATE_DICT",
    },
}
RUNS = {  # name: (method, FSDP or not): every method under DDP and under FSDP2, and VCORE's jvp probe under DDP
    **{f"{kind}-{name}": (name, fsdp) for kind, fsdp in (("ddp", False), ("fsdp", True)) for name in method_names()},
    "ddp-vcore_jvp": ("vcore_jvp", False),
}


def worker(out: Path) -> None:
    import torch.distributed as dist

    from vcore.distributed import init_distributed

    init_distributed()  # one rank: a no-op; accelerate creates the process group (NCCL on CUDA)
    for name, (method, fsdp) in RUNS.items():
        params = train_tiny(out / name, method, per_device=B, probe_batch=B, device="cuda", **(FSDP if fsdp else {}))
        torch.save({k: v.cpu() for k, v in params.items()}, out / f"{name}.pt")
    (out / "backend.txt").write_text(str(dist.get_backend()) if dist.is_initialized() else "none")


@pytest.fixture(scope="module")
def nccl_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nccl")
    proc = torchrun([__file__, str(out)], cwd=out, timeout=300, ranks=1)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


def test_the_launch_used_nccl(nccl_runs):
    assert "nccl" in (nccl_runs / "backend.txt").read_text()


@pytest.mark.parametrize("name", list(RUNS))
def test_one_nccl_rank_trains_as_one_plain_process(nccl_runs, tmp_path, name):
    method, _ = RUNS[name]
    launched = torch.load(nccl_runs / f"{name}.pt")
    plain = {k: v.cpu() for k, v in train_tiny(tmp_path, method, per_device=B, probe_batch=B, device="cuda").items()}
    start = tiny_causal_lm(tmp_path / "start", arch="gpt2").state_dict()
    assert launched.keys() == plain.keys()
    for key, p in plain.items():
        assert not torch.equal(p, start[key]), f"{key} did not train"
        torch.testing.assert_close(launched[key], p, rtol=1e-9, atol=1e-12, msg=lambda m, key=key: f"{name} {key}: {m}")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
