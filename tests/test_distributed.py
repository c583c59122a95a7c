"""Multi-GPU training on CPU with gloo: 2 ranks × b train exactly as 1 rank × 2b; only rank 0 writes run files;
unsupported backends are refused; gradient checkpointing leaves both probe modes' gradients unchanged.

The 2-rank side runs under ``torchrun`` in a subprocess (this file is also its worker script); the 1-rank side
runs in the test process. Models are float64 end to end (GPT-2 architecture), so "equal" means a tight tolerance
rather than float32 noise amplified by Adam.
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
from tests.helpers import TINY_TEST, tiny_causal_lm, torchrun, train_tiny, varied_rows
from vcore.methods import method_names

METHODS = (*method_names(), "vcore_jvp")  # every method (VCORE with its default probe, finite differences), and jvp


def worker(out: Path) -> None:
    from vcore.distributed import init_distributed, rank

    init_distributed()
    for method in METHODS:
        params = train_tiny(out, method, per_device=B, probe_batch=B)
        if rank() == 0:
            torch.save(params, out / f"ddp-{method}.pt")


@pytest.fixture(scope="module")
def ddp_params(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun([__file__, str(out)], cwd=out)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_rank_with_twice_the_batch(ddp_params, tmp_path, method):
    """Same global batch (2 × b × k), same global probe batch: the same final parameters in float64."""
    ddp = torch.load(ddp_params / f"ddp-{method}.pt")
    single = train_tiny(tmp_path, method, per_device=2 * B, probe_batch=2 * B)
    start = tiny_causal_lm(tmp_path / "start", arch="gpt2").state_dict()
    for name, p in single.items():
        assert not torch.equal(p, start[name]), f"{name} did not train"
        torch.testing.assert_close(
            ddp[name], p, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{method} {name}: {m}"
        )


@pytest.mark.slow  # ~13 s: the default suite keeps one run of each kind (test_sweeps, the two-rank tests)
def test_run_py_under_torchrun_writes_one_run_dir_from_rank_zero(tmp_path):
    """No hydra.run.dir given: both ranks still share rank 0's timestamped dir; one config, one W&B run."""
    overrides = [o for o in TINY_TEST if not o.startswith("logger=")] + [
        "logger=wandb",
        "trainer.use_cpu=true",
        "eval.after_train=false",
        "trainer.save_steps=1",
        "trainer.max_steps=2",
    ]
    proc = torchrun([str(REPO / "run.py"), *overrides], cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-6000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / "config.yaml").exists() and (run / "metrics.json").exists() and (run / "final").is_dir()
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    ckpt = run / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in ckpt.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]  # per rank
    assert (ckpt / "vcore_method_state.pt").exists() and (ckpt / "trainer_state.json").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["nll"] > 0 and metrics["eval"]["test/nll"] > 0


def test_unsupported_launch_configs_are_refused_before_loading(make_cfg, monkeypatch):
    """What `accelerate launch` puts in the environment: DeepSpeed, FSDP1 or the jvp probe with VCORE, full-state-dict
    checkpoints, rank-0 generation, accelerate's own autocast (it would reach the probe's forwards)."""
    from vcore.config import ConfigError
    from vcore.run.training import train

    fsdp2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    after = "eval.after_train=false"
    refused = [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "sft", [], "DeepSpeed.*DDP"),
        ({"ACCELERATE_USE_FSDP": "true"}, "vcore", [], "FSDP1.*fsdp_version: 2"),  # accelerate launch's default
        ({"ACCELERATE_USE_FSDP": "true"}, "iw_sft", [], "iw_sft under FSDP1.*fsdp_version: 2"),
        (fsdp2, "vcore", ["method.probe.mode=jvp"], "probe.mode=jvp under FSDP.*finite_difference"),
        (fsdp2, "vcore", ["method.probe.fidelity_every=2"], "fidelity_every=0"),
        ({**fsdp2, "FSDP_STATE_DICT_TYPE": "full_state_dict"}, "vcore", [after], "SHARDED_STATE_DICT"),
        ({**fsdp2, "FSDP_STATE_DICT_TYPE": "1"}, "sft", [after], "SHARDED_STATE_DICT"),  # torch's enum number
        (fsdp2, "sft", [], after),
        ({"ACCELERATE_MIXED_PRECISION": "bf16"}, "vcore", [], "trainer.precision=bf16"),
    ]
    for env, method, overrides, message in refused:
        with monkeypatch.context() as m:
            for var, value in env.items():
                m.setenv(var, value)
            with pytest.raises(ConfigError, match=message):
                train(make_cfg(*overrides, method=method))


def test_auto_probe_mode_resolving_to_jvp_is_refused_under_fsdp(tmp_path):
    """VCORE's backend hook: ``auto`` passes while the weights' dtype is unknown, is the finite-difference probe for
    float32 weights and jvp (refused under FSDP) for bf16 ones; the Trainer checks with the loaded model's dtype."""
    from transformers import TrainingArguments

    from vcore.config import ConfigError, VCOREConfig
    from vcore.data.collate import Collator
    from vcore.distributed import Backend
    from vcore.methods import VCORE, MethodContext, build_method
    from vcore.run.trainer import WeightedTrainer

    cfg = VCOREConfig()
    VCORE.check_backend(cfg, Backend(fsdp=True))  # the dtype unknown: auto passes
    VCORE.check_backend(cfg, Backend(fsdp=True, weights_dtype="float32"))  # finite differences
    VCORE.check_backend(cfg, Backend(weights_dtype="bfloat16"))  # jvp without FSDP
    with pytest.raises(ConfigError, match="probe.mode=jvp under FSDP"):
        VCORE.check_backend(cfg, Backend(fsdp=True, weights_dtype="bfloat16"))
    model = tiny_causal_lm(tmp_path / "bf16", dtype=torch.bfloat16)
    method = build_method(cfg, MethodContext(model, varied_rows(4, spread=11), Collator(pad_token_id=0)))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    trainer = WeightedTrainer(model=model, args=args, weighting=method, data_collator=Collator(0, pack=True))
    assert trainer.backend == Backend(packing=True, weights_dtype="bfloat16")  # what the hook saw


def test_the_shared_hydra_dir_follows_the_configured_pattern(tmp_path):
    from vcore.run.launch import configured_dir

    conf = REPO / "conf"
    assert configured_dir("hydra.run.dir", [], conf) == "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert configured_dir("hydra.run.dir", ["a=1", "hydra.run.dir=/x/${now:%H}"], conf) == "/x/${now:%H}"
    (tmp_path / "study.yaml").write_text("defaults: [train]\nhydra:\n  sweep:\n    dir: multirun/study/${now:%H}\n")
    sweep = ["-m", "--config-dir", str(tmp_path), "--config-name=study"]
    assert configured_dir("hydra.sweep.dir", sweep, conf) == "multirun/study/${now:%H}"


def test_srun_tasks_get_the_variables_torchrun_would_set():
    from vcore.distributed import torch_env_from_slurm

    step = {
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "2",
        "SLURM_JOB_ID": "123",
    }
    assert torch_env_from_slurm(step) == {
        "RANK": "2",
        "LOCAL_RANK": "2",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "20123",
    }
    assert torch_env_from_slurm({**step, "RANK": "0"}) == {}  # torchrun inside the job step already set them
    assert torch_env_from_slurm({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) == {}  # a lone python in an allocation


def step_gradients(tmp_path: Path, mode: str, lora: bool, checkpointing: bool) -> dict[str, torch.Tensor]:
    """One VCORE step (probe + 2 micro-batches) through the Trainer's hooks; the trainable parameters' gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from vcore.config import ProbeConfig, VCOREConfig
    from vcore.data.collate import Collator
    from vcore.methods import MethodContext, build_method
    from vcore.run.trainer import WeightedTrainer

    model = tiny_causal_lm(tmp_path / f"gc{checkpointing}", arch="gpt2")
    if lora:
        model = get_peft_model(
            model,
            LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], lora_dropout=0.0, init_lora_weights=False),
        )
    calls = []
    if checkpointing:  # as vcore.modeling does for model.gradient_checkpointing=true
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
        for m in model.modules():
            if getattr(m, "gradient_checkpointing", False):
                m._gradient_checkpointing_func = lambda f, *a, _f=m._gradient_checkpointing_func: (
                    calls.append(1) or _f(f, *a)
                )
    data, collate = varied_rows(8, spread=11), Collator(pad_token_id=0)
    cfg = VCOREConfig(tau=3.0, probe=ProbeConfig(mode=mode, epsilon=1e-3, batch_size=2, accumulation=2, seed=1))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        use_cpu=True,
        report_to="none",
    )
    trainer = WeightedTrainer(model=model, args=args, weighting=build_method(cfg, MethodContext(model, data, collate)))
    model.train()
    batches, _ = trainer.get_batch_samples(iter([collate(data[:4]), collate(data[4:])]), 2, torch.device("cpu"))
    assert not calls  # the probe runs in eval mode, where transformers never checkpoints
    for batch in batches:
        trainer.compute_loss(model, batch).backward()
    assert bool(calls) == checkpointing  # the training forward did checkpoint
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("mode", ["finite_difference", "jvp"])
def test_gradient_checkpointing_leaves_the_gradients_unchanged(tmp_path, mode, lora):
    plain = step_gradients(tmp_path, mode, lora, checkpointing=False)
    checkpointed = step_gradients(tmp_path, mode, lora, checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        torch.testing.assert_close(
            checkpointed[name], g, rtol=1e-10, atol=1e-14, msg=lambda m, name=name: f"{name}: {m}"
        )


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
