"""The learning-rate schedule a run actually uses: warmup from ``trainer.warmup_ratio`` and the optional floor
``trainer.lr_floor``, against the textbook formulas written out here (linear warmup, then half a cosine to 0)."""

import math

import pytest
from transformers import TrainingArguments

from tests.helpers import tiny_causal_lm
from vcore.checks import ConfigError
from vcore.config import compose_config, to_object
from vcore.methods.sft import SFT
from vcore.run.trainer import WeightedTrainer
from vcore.run.training import build_job

BASE, STEPS = 1e-2, 8


def cosine_with_warmup(step: int, warmup: int, total: int, base: float = BASE) -> float:
    """The LR of 0-based optimizer step ``step``."""
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def scheduled_lrs(trainer, steps: int) -> list[float]:
    """The LR each of ``steps`` optimizer steps runs at, from the trainer's own optimizer and scheduler."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    lrs = []
    for _ in range(steps):
        lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
        trainer.optimizer.step()  # no gradients: a no-op, but in the order the Trainer steps them
        trainer.lr_scheduler.step()
    assert all(len(set(x)) == 1 for x in lrs)  # every parameter group at the same rate
    return [x[0] for x in lrs]


def floored_trainer(tmp_path, lr_floor):
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        learning_rate=BASE,
        lr_scheduler_type="cosine",
        warmup_steps=0.25,
        max_steps=STEPS,
        use_cpu=True,
        report_to="none",
    )
    return WeightedTrainer(
        model=tiny_causal_lm(tmp_path / "m", arch="gpt2"), args=args, weighting=SFT(), lr_floor=lr_floor
    )


def test_lr_floor_holds_the_schedule_at_the_floor_and_is_off_by_default(tmp_path):
    """Fails if the floor were not applied (the cosine tail reaches ~0), applied as a fixed LR, or applied if unset."""
    floor = 3e-3
    expected = [max(cosine_with_warmup(s, 2, STEPS), floor) for s in range(STEPS)]
    assert sum(e == floor for e in expected) >= 2 and expected[2] == BASE  # the floor binds, the peak does not
    got = scheduled_lrs(floored_trainer(tmp_path, floor), STEPS)
    assert got == pytest.approx(expected, rel=1e-12)
    plain = scheduled_lrs(floored_trainer(tmp_path, None), STEPS)
    assert plain == pytest.approx([cosine_with_warmup(s, 2, STEPS) for s in range(STEPS)], rel=1e-12, abs=1e-15)
    for option in ("tiny", "paper", "paper_llama"):  # baselines are never floored unless asked (PITFALLS)
        assert to_object(compose_config([f"trainer={option}", "output_dir=/tmp/unused"])).trainer.lr_floor is None


def test_lr_floor_applies_from_the_first_step(tmp_path):
    assert scheduled_lrs(floored_trainer(tmp_path, 3e-3), STEPS)[0] == pytest.approx(3e-3)


def train_lrs(make_cfg, tmp_path, *overrides):
    """The learning_rate the Trainer logged for each optimizer step of a real (tiny, SFT) run of STEPS steps."""
    cfg = make_cfg(
        f"trainer.max_steps={STEPS}",
        f"trainer.learning_rate={BASE}",
        "trainer.lr_scheduler_type=cosine",
        "trainer.per_device_train_batch_size=2",
        "trainer.gradient_accumulation_steps=1",
        *overrides,
        method="sft",
    )
    job = build_job(to_object(cfg), tmp_path)
    job.trainer.train()
    logged = [(h["step"], h["learning_rate"]) for h in job.trainer.state.log_history if "loss" in h]
    assert [s for s, _ in logged] == list(range(1, STEPS + 1))
    return [lr for _, lr in logged]


@pytest.mark.parametrize("ratio,warmup", [(0.25, 2), (0.3, 3), (0.0, 0)])
def test_warmup_ratio_is_a_fraction_of_the_training_steps(make_cfg, tmp_path, ratio, warmup):
    """trainer.warmup_ratio=r warms up over ceil(r · max_steps) steps (HF's rule for a fractional warmup): the logged
    LR of every step of a real run. Fails if the ratio were read as a step count (0.25 -> 0 or 1 steps), or ignored."""
    got = train_lrs(make_cfg, tmp_path, f"trainer.warmup_ratio={ratio}")
    assert got == pytest.approx([cosine_with_warmup(s, warmup, STEPS) for s in range(STEPS)], rel=1e-12, abs=1e-15)


def test_a_warmup_ratio_of_one_is_refused_or_warms_up_over_the_whole_run(make_cfg, tmp_path):
    cfg = make_cfg(
        f"trainer.max_steps={STEPS}",
        f"trainer.learning_rate={BASE}",
        "trainer.lr_scheduler_type=cosine",
        "trainer.warmup_ratio=1.0",
        method="sft",
    )
    try:
        c = to_object(cfg)
    except ConfigError as err:  # refusing it, naming the option, is as good as honouring it
        assert "trainer.warmup_ratio" in str(err)
        return
    got = scheduled_lrs(build_job(c, tmp_path).trainer, STEPS)
    assert got == pytest.approx([BASE * s / STEPS for s in range(STEPS)], rel=1e-12)
