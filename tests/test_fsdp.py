"""FSDP2 on CPU with gloo, through the real Trainer and accelerate: 2 ranks × b with sharded parameters train
exactly as 1 rank × 2b (sft, dft, iw-SFT with a sharded reference copy, VCORE's finite-difference probe on sharded
parameters, a stored probe direction, chunked CE with gradient checkpointing), and a resumed FSDP run, whose stored
direction is saved shard by shard, ends as the uninterrupted one; run.py runs under the shipped FSDP2 config.

accelerate only turns FSDP on for accelerator devices (on CPU it silently keeps plain data parallelism), so the worker
lifts that one policy check (:func:`allow_fsdp_on_cpu`); wrapping, sharding, all-gathers, reduce-scatters, sharded
checkpoints and the Trainer's FSDP code paths are the real ones. Float64 end to end (GPT-2 architecture).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # as a torchrun worker script, this file is not imported from the repo root

from tests.helpers import RANK_BATCH as B
from tests.helpers import TINY_TEST, tiny_causal_lm, torchrun, train_tiny
from vcore.methods import method_names

FSDP = {
    "fsdp": True,
    "fsdp_config": {
        "fsdp_version": 2,
        "transformer_layer_cls_to_wrap": ["GPT2Block"],
        "state_dict_type": "SHARDED_STATE_DICT",
    },
}
RUNS = {  # name: (method, train_tiny options); iw-SFT's frozen reference copy is sharded like the policy
    **{name: (name, {}) for name in method_names()},
    "vcore_every2": ("vcore", {"every": 2}),  # steps 2 and 4 reuse the sharded direction drawn at steps 1 and 3
    # chunked CE reads the lm-head weight outside the model's forward; checkpointing recomputes under FSDP's hooks
    "vcore_chunked_ce_checkpointing": ("vcore", {"loss_chunk": 5, "checkpointing": True}),
}


def allow_fsdp_on_cpu() -> None:
    """Make accelerate honour an FSDP plugin on CPU (it otherwise falls back to MULTI_CPU data parallelism)."""
    import accelerate.state as state
    from accelerate.utils import DistributedType

    init = state.AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin

    state.AcceleratorState.__init__ = patched


def worker(out: Path) -> None:
    import vcore.methods.iw_sft as iw_sft
    from vcore.distributed import init_distributed, rank

    allow_fsdp_on_cpu()
    init_distributed()
    sharded_references = []  # iw-SFT's reference copy must be sharded (once), not kept whole on every rank
    shard_like = iw_sft.shard_like
    iw_sft.shard_like = lambda module, like: sharded_references.append(1) or shard_like(module, like)
    for name, (method, options) in RUNS.items():
        params = train_tiny(out / name, method, per_device=B, probe_batch=B, **options, **FSDP)
        if rank() == 0:
            torch.save(params, out / f"fsdp-{name}.pt")
    # Kill-free resume: checkpoint-2 falls between two refreshes (every=3), so its direction is stored, in shards.
    ckpt = {"save_strategy": "steps", "save_steps": 2, "output_dir": str(out / "resume" / "ckpt")}
    whole = train_tiny(out / "resume", "vcore", per_device=B, probe_batch=B, every=3, **ckpt, **FSDP)
    shards = sorted(p.name for p in (out / "resume" / "ckpt" / "checkpoint-2").glob("vcore_method_state*"))
    resumed = train_tiny(
        out / "resume",
        "vcore",
        per_device=B,
        probe_batch=B,
        every=3,
        resume=str(out / "resume" / "ckpt" / "checkpoint-2"),
        **ckpt,
        **FSDP,
    )
    if rank() == 0:
        torch.save({"whole": whole, "resumed": resumed, "files": shards}, out / "fsdp-resume.pt")
        (out / "sharded_references.txt").write_text(str(len(sharded_references)))


@pytest.fixture(scope="module")
def fsdp_params(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    proc = torchrun([__file__, str(out)], cwd=out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp_two_ranks_equal_one_rank_with_twice_the_batch(fsdp_params, tmp_path, name):
    method, options = RUNS[name]
    sharded = torch.load(fsdp_params / f"fsdp-{name}.pt")
    # The reference: one process, whole parameters, full logits, no checkpointing.
    single = train_tiny(tmp_path, method, per_device=2 * B, probe_batch=2 * B, every=options.get("every", 1))
    start = tiny_causal_lm(tmp_path / "start", arch="gpt2").state_dict()
    assert sharded.keys() == single.keys()
    for key, p in single.items():
        assert not torch.equal(p, start[key]), f"{key} did not train"
        torch.testing.assert_close(sharded[key], p, rtol=1e-9, atol=1e-12, msg=lambda m, key=key: f"{name} {key}: {m}")


@pytest.mark.parametrize(
    ("method", "lora"),
    [
        # ~25 s each (two torchrun launches): smoke runs; the sharded maths and the sharded resume are tested above
        pytest.param("vcore", False, marks=pytest.mark.slow),
        pytest.param("vcore", True, marks=pytest.mark.slow),
        pytest.param("iw_sft", True, marks=pytest.mark.slow),
    ],
    ids=["vcore-full", "vcore-lora", "iw_sft-lora"],
)
def test_run_py_under_fsdp(tmp_path, monkeypatch, method, lora):
    """The main job with VCORE under FSDP2, configured as `accelerate launch --config_file docs/accelerate_fsdp2.yaml`
    configures its ranks: one run dir, sharded checkpoints with per-rank probe-direction shards, a from_pretrained
    final model (LoRA: the adapters), held-out NLL from all ranks; then a second launch resumes from the last
    checkpoint and trains on."""
    from safetensors.torch import load_file

    for var, value in accelerate_launch_env(REPO / "docs" / "accelerate_fsdp2.yaml").items():
        monkeypatch.setenv(var, value)
    run = tmp_path / "run"
    vcore = method == "vcore"
    overrides = [o for o in TINY_TEST if "max_steps" not in o and (vcore or "method.probe" not in o)] + [
        f"hydra.run.dir={run}",
        "trainer.use_cpu=true",
        "eval.after_train=false",
        "trainer.save_steps=2",
        f"method={method}",
        f"model.lora.enabled={lora}",
        *(["method.probe.every=3"] if vcore else []),
    ]
    weights = run / "final" / ("adapter_model.safetensors" if lora else "model.safetensors")
    proc = torchrun([__file__, "--run-py", *overrides, "trainer.max_steps=2"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in ckpt.glob("vcore_method_state*")) == [
        "vcore_method_state.pt",
        *(["vcore_method_state_rank0.pt", "vcore_method_state_rank1.pt"] if vcore else []),
    ]
    assert (ckpt / "pytorch_model_fsdp_0").is_dir()  # sharded model checkpoint (torch.distributed.checkpoint)
    assert (run / "final" / "tokenizer_config.json").exists()
    first = load_file(weights)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval"]["test/nll"] > 0 and metrics["train"]["nll"] > 0

    proc = torchrun([__file__, "--run-py", *overrides, "trainer.max_steps=4"], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "resuming from" in proc.stderr + proc.stdout
    resumed = load_file(weights)
    assert resumed.keys() == first.keys()
    assert any(not torch.equal(v, first[k]) for k, v in resumed.items()), "the resumed run did not train"


def test_fsdp_shards_the_iw_sft_reference_once(fsdp_params):
    assert (fsdp_params / "sharded_references.txt").read_text() == "1"


def test_fsdp_resume_restores_the_sharded_probe_direction(fsdp_params):
    saved = torch.load(fsdp_params / "fsdp-resume.pt")
    assert saved["files"] == ["vcore_method_state.pt", "vcore_method_state_rank0.pt", "vcore_method_state_rank1.pt"]
    for key, p in saved["whole"].items():
        assert torch.equal(saved["resumed"][key], p), key


def accelerate_launch_env(config_file: Path) -> dict[str, str]:
    """The accelerate/FSDP variables `accelerate launch --config_file F` gives each rank (its own parser)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "run.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def run_py_worker(argv: list[str]) -> None:
    """``run.py`` itself, as a rank launched in accelerate's FSDP2 environment (see :func:`test_run_py_under_fsdp`)."""
    import runpy

    allow_fsdp_on_cpu()
    sys.argv = [str(REPO / "run.py"), *argv]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


def test_pending_direction_shards_survive_a_save_before_any_step_and_missing_files_are_refused():
    """Restored shards are only turned back into DTensors at the next step; a checkpoint written before that (a run
    resumed at max_steps saves final/ at once) must still carry them, and a rank without its file must stop."""
    from vcore.config import ProbeConfig
    from vcore.methods.probe import Probe

    probe = Probe(ProbeConfig(every=3), [0], lambda rows: {})
    main = {"generator": probe.generator.get_state(), "steps_since_refresh": 0, "world_size": 1, "direction_shards": 1}
    shards = {"shards": [torch.ones(2)], "last_norm": torch.tensor(1.0), "steps_since_refresh": 1, "world_size": 1}

    probe.load_state_dict(main)
    probe.load_rank_state_dict(shards)
    again = probe.state_dict()
    assert "direction" not in again and again["direction_shards"] == 1
    assert torch.equal(probe.rank_state_dict()["shards"][0], torch.ones(2))

    probe.load_state_dict(main)
    with pytest.raises(RuntimeError, match="vcore_method_state_rank0.pt.*missing"):
        probe.load_rank_state_dict(None)
    probe.load_state_dict(main)
    with pytest.raises(RuntimeError, match="sharded over 4 ranks.*resume with 4 GPUs"):
        probe.load_rank_state_dict({**shards, "world_size": 4})


if __name__ == "__main__":
    if sys.argv[1] == "--run-py":
        run_py_worker(sys.argv[2:])
    else:
        worker(Path(sys.argv[1]))
