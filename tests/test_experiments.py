"""Every experiment overlay (conf/experiment/*.yaml) trains for one step through the real entry point
(``vcore.run.tasks.run_task``, what ``run.py`` calls), with the tiny test model and the synthetic data substituted for
the paper's models and data: what the overlay sets for the method, the trainer and the model's adapters must reach
the run."""

import json
import math

import pytest
from omegaconf import OmegaConf

from tests.helpers import CONF, TINY_MODEL
from vcore.config import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# What the substitution replaces; everything else is the overlay's own.
SUBSTITUTED = (
    "model.name_or_path",
    "model.tiny",
    "dataset",
    "trainer.max_steps",
    "trainer.warmup_ratio",
    "trainer.per_device_train_batch_size",
    "trainer.gradient_accumulation_steps",
    "eval",
    "logger",
    "output_dir",
)


def substitution(experiment: str, tiny_dir) -> list[str]:
    """Overrides that keep the overlay's method, trainer recipe and model settings (LoRA, checkpointing, chunked CE)
    but load the session's tiny model and train on 32 synthetic examples for one step."""
    composed = compose_config(
        [f"experiment={experiment}", "output_dir=/unused"]
        + (["rl.start=/unused"] if task_of(experiment) == "rl" else [])
    )
    model = [f"model.name_or_path={tiny_dir}"] + (TINY_MODEL if composed.model.tiny is not None else [])
    return [
        *model,
        "dataset=synthetic",
        "dataset.num_examples=32",
        "dataset.eval_examples=8",
        "trainer.max_steps=1",
        "trainer.per_device_train_batch_size=2",
        "trainer.gradient_accumulation_steps=2",
        "trainer.warmup_ratio=0",  # step 1 then runs at the overlay's own learning rate, which the test checks
        "eval.after_train=false",
        "eval.before_train=false",
        "logger=none",
    ]


def own_settings(experiment: str) -> dict:
    """The overlay's explicit values (dotted keys), minus what the substitution replaces."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"), resolve=False)
    raw.pop("defaults", None)
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(raw, "")
    return {k: v for k, v in flat.items() if not k.startswith(SUBSTITUTED)}


def task_of(experiment: str) -> str:
    return OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").get("task", "train")


TRAINING = [e for e in EXPERIMENTS if task_of(e) == "train"]
RL = [e for e in EXPERIMENTS if task_of(e) == "rl"]
# An RL overlay's prompts (Big-Math for the paper) and batch sizes are replaced; its algorithm, coefficients,
# precision and checkpointing stay.
RL_SUBSTITUTED = (
    "rl.data",
    "rl.start",
    "rl.max_steps",
    "rl.prompts_per_step",
    "rl.num_generations",
    "rl.mini_batch_prompts",
    "rl.micro_batch_size",
    "rl.max_completion_length",
    "rl.max_prompt_length",
    "rl.eval_before",
    "benchmark",
)


# ~4 s each on 2 cores (the nine in ~35 s): in the default suite.
@pytest.mark.parametrize("experiment", TRAINING)
def test_experiment_trains_one_step_with_the_tiny_model(experiment, tiny_tokenizer, tiny_dir, tmp_path):
    """Fails if an overlay no longer composes with the substitution, if its run does not train (no finite loss, no
    final model), or if its learning rate, method (τ for VCORE) or LoRA adapters do not reach the trained run."""
    from vcore.run.tasks import run_task as run

    out = tmp_path / "run"
    cfg = compose_config([f"experiment={experiment}", *substitution(experiment, tiny_dir), f"output_dir={out}"])
    expected = OmegaConf.to_container(cfg, resolve=True)
    metrics = run(cfg)

    written = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"), resolve=True)
    for key, value in own_settings(experiment).items():  # the substitution left the overlay's values alone
        expect = OmegaConf.select(OmegaConf.create(expected), key)
        assert OmegaConf.select(OmegaConf.create(written), key) == expect, key
        if isinstance(value, (int, float, str, bool)) and not str(value).startswith("${"):
            assert expect == value, key

    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    steps = [h for h in history if "train/nll" in h]
    assert [h["step"] for h in steps] == [1]
    (step,) = steps
    assert math.isfinite(step["train/nll"]) and step["train/nll"] > 0 and math.isfinite(step["loss"])
    assert step["learning_rate"] == pytest.approx(expected["trainer"]["learning_rate"], rel=1e-9)
    method = expected["method"]
    assert ("vcore/alpha" in step) == (method["name"] == "vcore")
    if method["name"] == "vcore" and method["target_ess"] is None:
        assert step["vcore/tau"] == pytest.approx(method["tau"], rel=1e-6)
    assert metrics["train"]["nll"] == step["train/nll"]
    assert all(math.isfinite(v) and v > 0 for k, v in metrics["eval"].items() if k.endswith("/nll"))

    final = out / "final"
    lora = expected["model"]["lora"]
    if lora["enabled"]:
        adapter = json.loads((final / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (lora["r"], lora["alpha"])
        assert not (final / "model.safetensors").exists()
    else:
        assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()


@pytest.mark.parametrize("experiment", RL)
def test_rl_experiment_runs_one_step_with_the_tiny_model(experiment, tiny_tokenizer, tiny_dir, tmp_path):
    """An RL overlay (task=rl) runs one GRPO step from the tiny model on synthetic prompts; its own settings (the
    algorithm's coefficients, learning rate, precision) reach the run."""
    from vcore.run.tasks import run_task as run

    out = tmp_path / "run"
    small = [
        "rl/data=synthetic",
        "rl.data.synthetic.kwargs.num_examples=4",
        "rl.max_steps=1",
        "rl.prompts_per_step=2",
        "rl.num_generations=2",
        "rl.mini_batch_prompts=2",
        "rl.micro_batch_size=2",
        "rl.max_completion_length=16",
        "rl.max_prompt_length=256",
        "rl.eval_before=false",
        "rl.grading_workers=1",
    ]
    cfg = compose_config([f"experiment={experiment}", *substitution(experiment, tiny_dir), *small, f"output_dir={out}"])
    expected = OmegaConf.to_container(cfg, resolve=True)
    metrics = run(cfg)
    written = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"), resolve=True)
    overlay = {k: v for k, v in own_settings(experiment).items() if not k.startswith(RL_SUBSTITUTED)}
    preset = OmegaConf.to_container(OmegaConf.load(CONF / "rl" / f"{compose_rl_name(experiment)}.yaml"))
    preset = {f"rl.{k}": v for k, v in preset.items() if k != "defaults" and not f"rl.{k}".startswith(RL_SUBSTITUTED)}
    for key, value in {**overlay, **preset}.items():
        assert (
            OmegaConf.select(OmegaConf.create(written), key)
            == OmegaConf.select(OmegaConf.create(expected), key)
            == value
        ), key
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    (step,) = [h for h in history if "rl/reward_mean" in h]
    assert step["step"] == 1 and math.isfinite(step["loss"]) and step["learning_rate"] >= 0
    assert (
        metrics["rl"]["final/rl/reward_mean"] == step["rl/reward_mean"]
        and (out / "final" / "model.safetensors").exists()
    )


def compose_rl_name(experiment: str) -> str:
    """The rl preset an RL overlay picks (its defaults list: override /rl: <name>)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml")).get("defaults", [])
    (name,) = [d["override /rl"] for d in defaults if isinstance(d, dict) and "override /rl" in d]
    return name
