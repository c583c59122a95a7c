"""``task=rl``: GRPO with TRL from our own checkpoints; the reward, the Table 8 preset, resume and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import CONF, REPO, SHARED_DATA, TINY_TEST, subprocess_env

pytest.importorskip("trl")

# A few GRPO steps on the tiny test model: 2 prompts x 2 completions per rollout, one update per rollout.
TINY_RL = [
    "task=rl",
    "rl=tiny",
    "rl.max_steps=2",
    "rl.prompts_per_step=2",
    "rl.num_generations=2",
    "rl.mini_batch_prompts=2",
    "rl.micro_batch_size=2",
    "rl.max_completion_length=24",
    "rl.grading_workers=1",
    "rl.logging_steps=1",
    "rl.data.synthetic.kwargs.num_examples=8",
    "rl.eval_before=false",
    "eval.after_train=false",
]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vcore.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_dir):
    """Two finished tiny SFT runs, full weights and LoRA adapters: what RL starts from."""
    from vcore.run.training import train

    root = tmp_path_factory.mktemp("sft")
    runs = {}
    for lora in (False, True):
        out = root / ("lora" if lora else "full")
        sft = [o for o in TINY_TEST if not o.startswith("method.probe")]
        train(
            compose(
                *sft,
                "method=sft",
                f"model.name_or_path={tiny_dir}",
                f"output_dir={out}",
                f"model.lora.enabled={lora}",
                "eval.after_train=false",
            )
        )
        runs["lora" if lora else "full"] = out
    return runs


def rl_cfg(out: Path, start: Path | None, tiny_dir: Path, *extra: str):
    model = [o for o in TINY_TEST if o.startswith("model.")] + [
        f"model.name_or_path={tiny_dir}",
        "logger=none",
        "decoding.max_new_tokens=24",
    ]
    rl = [o for o in TINY_RL if "rl/data=bigmath" not in extra or not o.startswith("rl.data.synthetic")]
    return compose(*model, *rl, f"output_dir={out}", *([f"rl.start={start}"] if start else []), *extra)


# --------------------------------------------------------------------------------------------------- reward
def _ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_reward_is_evaluations_verdict(tiny_tokenizer):
    """1 exactly when evaluation's grader counts the completion correct: right (also in another form math-verify
    equates), wrong, no box, cut off before the answer; the no-answer share is logged."""
    from vcore.eval.math_grader import grade_many
    from vcore.rl.reward import BoxedMathReward

    completions = [
        "<think>\n6 * 2 = 12, 12 + 8 = 20.\n</think>\nThe answer is \\boxed{20}.",
        "<think>\n6 * 2 = 12, 12 + 8 = 21.\n</think>\nThe answer is \\boxed{21}.",
        "<think>\n6 * 2 = 12, 12 + 8 = 20.\n</think>\nThe answer is 20.",
        "<think>\nWe start with 6 cookies. Milo doubles the pile, so 6 * 2 =",  # truncated mid-thought
        "<think>\nhalf of 1\n</think>\n\\boxed{\\frac{1}{2}}",
    ]
    golds = ["20", "20", "20", "20", "0.5"]
    logged: dict[str, list[float]] = {}
    with BoxedMathReward(tiny_tokenizer, workers=1) as reward:
        got = reward(
            prompts=[""] * 5,
            completions=completions,
            completion_ids=_ids(tiny_tokenizer, completions),
            answer=golds,
            log_metric=lambda k, v: logged.setdefault(k, []).append(v),
        )
        again = reward(
            prompts=[""],
            completions=completions[:1],
            completion_ids=_ids(tiny_tokenizer, completions[:1]),
            answer=golds[:1],
        )
    assert got == [1.0, 0.0, 0.0, 0.0, 1.0] and again == [1.0]  # the kept workers serve a second call
    # Text after one of the model's end tokens is never graded, as evaluation cuts generations there.
    wrong_then_right = (
        _ids(tiny_tokenizer, ["\\boxed{21}"])[0]
        + [tiny_tokenizer.eos_token_id]
        + _ids(tiny_tokenizer, [" \\boxed{20}"])[0]
    )
    with BoxedMathReward(tiny_tokenizer, workers=1, eos_token_ids=[tiny_tokenizer.eos_token_id]) as reward:
        assert reward(prompts=[""], completions=[""], completion_ids=[wrong_then_right], answer=["20"]) == [0.0]
    assert logged == {"no_answer_rate": [0.4], "grading_failure_rate": [0.0]}
    # the same verdicts as evaluation's grader on the same decoded text
    from vcore.boxed import extract_boxed

    texts = tiny_tokenizer.batch_decode(_ids(tiny_tokenizer, completions), skip_special_tokens=True)
    verdicts = grade_many(golds, [extract_boxed(t) for t in texts], workers=1, progress=False)
    assert [float(v.correct) for v in verdicts] == got


@pytest.mark.skipif(not (SHARED_DATA / "tokenizers" / "qwen3").is_dir(), reason="needs ../shared/data/tokenizers/qwen3")
def test_reward_ignores_a_box_inside_unfinished_thinking():
    """With Qwen3's tokenizer the thinking tags survive decoding: a box written while thinking, in a completion cut
    off before </think>, is not a final answer (as in evaluation's after_think scope)."""
    from transformers import AutoTokenizer

    from vcore.rl.reward import BoxedMathReward

    tok = AutoTokenizer.from_pretrained(SHARED_DATA / "tokenizers" / "qwen3")
    texts = ["<think>\nmaybe \\boxed{20}? let me check", "<think>\nok\n</think>\n\\boxed{20}"]
    with BoxedMathReward(tok, workers=1) as reward:
        assert reward(prompts=["", ""], completions=texts, completion_ids=_ids(tok, texts), answer=["20", "20"]) == [
            0.0,
            1.0,
        ]


# --------------------------------------------------------------------------------------------------- preset
# The paper's Table 8 (verl), as the issue quotes it, and where each lands in TRL's GRPOConfig.
TABLE8 = {
    "learning_rate": 5e-6,
    "warmup_steps": 0.1,  # lr_warmup_steps_ratio, a fraction
    "lr_scheduler_type": "cosine",
    "num_generations": 4,
    "max_completion_length": 8192,
    "num_train_epochs": 2.0,
    "per_device_train_batch_size": 2,  # micro-batch 2 per GPU
    "beta": 0.02,  # KL loss coefficient
    "entropy_coef": 0.001,
    "loss_type": "dapo",  # verl's token-mean aggregation
    "scale_rewards": "group",
    "epsilon": 0.2,
    "num_iterations": 1,
}


def test_table8_preset_maps_every_setting(tmp_path):
    from vcore.config import to_object
    from vcore.run.rl import grpo_args

    c = to_object(compose("task=rl", "rl=paper", f"output_dir={tmp_path}"))
    assert c.rl.data.hub[0].path == "SynthLabsAI/Big-Math-RL-Verified" and c.rl.data.sample.size == 16800
    assert c.rl.max_prompt_length == 4096 and c.rl.kl_coef > 0  # KL as a loss term (TRL never puts it in the reward)
    # 8 GPUs: 128 prompts x 4 per rollout batch, 32 prompts x 4 per update, 2 completions per GPU per forward
    plan = c.rl.batch_plan(8)
    assert plan == {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "steps_per_generation": 32}
    args = grpo_args(c.rl, tmp_path, seed=0, world_size=1, vllm=False)  # built here on one process
    for key, value in TABLE8.items():
        assert getattr(args, key) == value, key
    assert (
        args.generation_batch_size == 128 * 4
        and args.gradient_accumulation_steps * args.per_device_train_batch_size == 32 * 4
    )


def test_batch_sizes_that_do_not_split_name_the_option(tmp_path):
    from vcore.checks import ConfigError
    from vcore.config import to_object

    c = to_object(compose("task=rl", "rl=paper", f"output_dir={tmp_path}", "rl.micro_batch_size=3"))
    with pytest.raises(ConfigError, match="rl.micro_batch_size"):
        c.rl.batch_plan(8)
    with pytest.raises(ConfigError, match="rl.mini_batch_prompts"):
        to_object(compose("task=rl", "rl=paper", f"output_dir={tmp_path}", "rl.mini_batch_prompts=48"))
    with pytest.raises(ConfigError, match="rl=tiny"):
        to_object(compose("task=rl", f"output_dir={tmp_path}"))
    with pytest.raises(ConfigError, match="rl.save_steps.*4 updates per rollout"):  # rl=paper: 128 / 32 prompts
        to_object(compose("task=rl", "rl=paper", f"output_dir={tmp_path}", "rl.save_steps=50"))


# --------------------------------------------------------------------------------------------------- runs
def test_rl_from_a_full_checkpoint_through_run_py(sft_runs, tiny_dir, tmp_path):
    """python run.py task=rl ... as a user runs it: trains, saves a loadable final model, logs the RL metrics."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "rl"
    model = [o for o in TINY_TEST if o.startswith("model.")] + [f"model.name_or_path={tiny_dir}", "logger=none"]
    args = [*model, *TINY_RL, f"rl.start={sft_runs['full']}", f"hydra.run.dir={out}", "rl.save_steps=1"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["start"] == {
        "source": str(sft_runs["full"] / "final"),
        "method": "sft",
        "model": tiny_dir.name,
        "lora": False,
        "seed": 42,
    }
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for key in (
        "rl/reward_mean",
        "rl/accuracy",
        "rl/kl",
        "rl/entropy",
        "rl/completion_length",
        "rl/truncation_rate",
        "rl/no_answer_rate",
    ):
        assert any(key in h for h in history), key
    assert metrics["rl"]["final/rl/reward_mean"] == [h for h in history if "rl/reward_mean" in h][-1]["rl/reward_mean"]
    assert (out / "checkpoints" / "checkpoint-2" / "vcore_config.json").is_file()  # sealed like SFT checkpoints
    trained = AutoModelForCausalLM.from_pretrained(out / "final")
    start = AutoModelForCausalLM.from_pretrained(sft_runs["full"] / "final")
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(start.named_parameters())[n])]
    assert changed, "GRPO did not change the policy"


def test_rl_from_a_lora_checkpoint_merges_the_adapters(sft_runs, tiny_dir, tmp_path):
    """RL continues the SFT run's LoRA adapters (the KL reference is TRL's frozen copy); final/ is a full model."""
    from transformers import AutoModelForCausalLM

    from vcore.config import to_object
    from vcore.run.rl import load_start
    from vcore.run.tasks import run_task

    out = tmp_path / "rl"
    metrics = run_task(rl_cfg(out, sft_runs["lora"], tiny_dir))
    assert metrics["start"]["lora"] is True and metrics["start"]["method"] == "sft"
    assert (out / "final" / "config.json").is_file() and not (out / "final" / "adapter_config.json").exists()
    trained = dict(AutoModelForCausalLM.from_pretrained(out / "final").named_parameters())
    start = dict(
        load_start(to_object(rl_cfg(out, sft_runs["lora"], tiny_dir))).model.merge_and_unload().named_parameters()
    )
    assert trained.keys() == start.keys()
    changed = [n for n in start if not torch.equal(start[n], trained[n])]
    # GRPO moved the adapters (merged into the linear layers), and nothing that LoRA does not train
    assert changed and all("proj" in n for n in changed), changed


def test_rl_resumes_where_it_stopped(sft_runs, tiny_dir, tmp_path):
    """A run of 4 steps stopped after step 2 (its later checkpoint and results lost) and run again: it continues from
    checkpoint-2 and ends with the same policy, bit for bit, as the run that was never stopped."""
    import shutil

    from safetensors.torch import load_file

    from vcore.run.tasks import run_task

    # 2 updates per rollout batch (4 prompts, updates of 2), as rl=paper has 4: checkpoints on batch boundaries
    two = ("rl.prompts_per_step=4", "rl.mini_batch_prompts=2", "rl.max_steps=4")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_task(rl_cfg(whole, sft_runs["full"], tiny_dir, *two))
    run_task(rl_cfg(parts, sft_runs["full"], tiny_dir, *two, "rl.save_steps=2"))
    shutil.rmtree(parts / "checkpoints" / "checkpoint-4")
    shutil.rmtree(parts / "final")
    metrics = run_task(rl_cfg(parts, sft_runs["full"], tiny_dir, *two, "rl.save_steps=2"))
    history = [json.loads(line) for line in (parts / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "rl/reward_mean" in h] == [1, 3]  # a rollout every 2 steps, on after resume
    assert metrics["rl"]["final/rl/reward_mean"] == [h for h in history if "rl/reward_mean" in h][-1]["rl/reward_mean"]
    a, b = load_file(whole / "final" / "model.safetensors"), load_file(parts / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another config cannot continue it
    from vcore.checks import ConfigError

    with pytest.raises(ConfigError, match="rl.kl_coef.*rl.resume=never"):
        run_task(rl_cfg(parts, sft_runs["full"], tiny_dir, *two, "rl.save_steps=2", "rl.kl_coef=0.1"))


def test_rl_stopped_in_its_final_evaluation_does_not_train_again(sft_runs, tiny_dir, tmp_path, monkeypatch):
    """SIGTERM once the final evaluation has recorded a grade: status 75. The rerun evaluates the saved final/ from
    where it stopped and does not run GRPO again (vcore.run.checkpoints.trained_metrics)."""
    import os
    import signal

    import vcore.run.rl as rl_job
    from vcore.eval.journal import JournalFile
    from vcore.eval.preemption import PREEMPTED_EXIT_CODE
    from vcore.run.tasks import run_task

    out = tmp_path / "rl"
    evaluation = (
        "eval.after_train=true",
        "benchmark=synthetic_test",
        "decoding.max_new_tokens=8",
        "eval.num_workers=0",
        "benchmark.synthetic_test.synthetic.kwargs.num_examples=4",
    )
    append = JournalFile.append

    def sigterm_after_first_grade(self, records):
        append(self, records)
        if self.path.name == "synthetic_test.grades.jsonl":
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(JournalFile, "append", sigterm_after_first_grade)
        with pytest.raises(SystemExit) as stopped:
            run_task(rl_cfg(out, sft_runs["full"], tiny_dir, *evaluation))
    assert stopped.value.code == PREEMPTED_EXIT_CODE and not (out / "metrics.json").exists()
    monkeypatch.setattr(rl_job, "_train", lambda *a, **k: pytest.fail("GRPO ran again"))
    metrics = run_task(rl_cfg(out, sft_runs["full"], tiny_dir, *evaluation))
    assert "synthetic_test/accuracy" in metrics["eval"] and metrics["start"]["method"] == "sft"
    assert len((out / "eval" / "journal" / "synthetic_test.grades.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow  # ~40 s: two RL jobs with evaluation, in a subprocess
def test_table2_sweep_runs_one_job_per_sft_run(sft_runs, tiny_dir, tmp_path):
    """sweeps/rl_table2.yaml, shrunk to the tiny model: one RL job per SFT run given, and the report's Table 2."""
    from vcore.tools.report import main

    model = [o for o in TINY_TEST if o.startswith("model.")] + [f"model.name_or_path={tiny_dir}"]
    small = [o for o in TINY_RL if o not in ("task=rl", "rl=tiny", "rl.eval_before=false", "eval.after_train=false")]
    args = [
        "-m",
        "--config-dir",
        str(REPO / "sweeps"),
        "--config-name",
        "rl_table2",
        *model,
        "rl/data=synthetic",
        *small,
        "benchmark=synthetic_test",
        "decoding=tiny",
        "decoding.max_new_tokens=16",
        "dataset.eval_examples=4",
        "rl.precision=fp32",
        "rl.gradient_checkpointing=false",
        "rl.max_prompt_length=256",
        "logger.mode=disabled",
        f"rl.start={sft_runs['full']},{sft_runs['lora']}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main([str(tmp_path / "sweep")]) == 0
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert f"| {tiny_dir.name} | sft | 42,42 |" in report and "ID test: before" in report  # both runs in one row


def test_table2_sweep_composes(tmp_path):
    from vcore.config import to_object

    c = to_object(compose("experiment=paper_rl_table2", "rl.start=outputs/sft_dft", f"output_dir={tmp_path}"))
    assert (c.task, c.rl.data.name, list(c.benchmark), c.decoding.name) == (
        "rl",
        "bigmath",
        ["olympiad", "sgpqa_1k"],
        "paper",
    )


def test_rl_stops_at_non_finite_gradients(sft_runs, tiny_dir, tmp_path):
    """A learning rate that blows the weights up after one update: step 2's gradients are NaN; the run stops before
    applying them, names the option, and saves nothing as final."""
    from vcore.run.tasks import run_task
    from vcore.run.trainer import NonFiniteTraining

    with pytest.raises(NonFiniteTraining, match="RL step 2: .*rl.learning_rate"):
        run_task(
            rl_cfg(
                tmp_path / "rl",
                sft_runs["full"],
                tiny_dir,
                "rl.learning_rate=1e30",
                "rl.warmup_ratio=0",
                "rl.max_grad_norm=0",
            )
        )
    assert not (tmp_path / "rl" / "final").exists()


def test_a_final_dir_or_checkpoint_of_ours_is_known_as_ours(sft_runs, tiny_dir, tmp_path):
    """rl.start at a full run's final/ (which holds config.json like any model dir) still finds its run: the SFT
    method and seed reach Table 2's rows."""
    from vcore.config import to_object
    from vcore.run.rl import load_start

    for start in (sft_runs["full"] / "final", sft_runs["full"], sft_runs["lora"] / "final"):
        s = load_start(to_object(rl_cfg(tmp_path / "out", start, tiny_dir)))
        assert (s.method, s.seed, s.model_name) == ("sft", 42, tiny_dir.name), start


def test_table_2_labels_the_tiny_base_tiny_whether_rl_starts_from_it_or_from_a_run_on_it(tiny_dir):
    from vcore.run.rl import model_label

    assert model_label(compose(*TINY_TEST).model) == "tiny"  # name_or_path null: the cached base, not tiny-<hash>
    assert model_label(compose(f"model.name_or_path={tiny_dir}/").model) == tiny_dir.name


# --------------------------------------------------------------------------------------------------- bad input
def test_a_start_that_is_not_a_checkpoint_is_named(tiny_dir, tmp_path):
    from vcore.checks import ConfigError
    from vcore.run.tasks import run_task

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="rl.start=.*not_a_run"):
        run_task(rl_cfg(tmp_path / "out1", empty, tiny_dir))
    unfinished = tmp_path / "unfinished"  # a run dir whose training never wrote final/
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("task: train\n")
    with pytest.raises(ConfigError, match="did the run finish"):
        run_task(rl_cfg(tmp_path / "out2", unfinished, tiny_dir))


def test_rl_data_without_an_answer_field_is_named(tiny_dir, tmp_path):
    from vcore.checks import ConfigError
    from vcore.run.tasks import run_task

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"problem": "1 + 1?", "solution": "2"}) + "\n")
    cfg = rl_cfg(
        tmp_path / "out",
        None,
        tiny_dir,
        "rl/data=bigmath",
        "rl.data.source=local",
        f"rl.data.data_root={tmp_path}",
        "rl.data.local.0.data_files=[data/train.jsonl]",
        "rl.data.sample.size=null",
    )
    with pytest.raises(ConfigError, match=r"rl.data \(bigmath\).*'answer'"):
        run_task(cfg)


# --------------------------------------------------------------------------------------------------- report
def _fake_rl_run(root: Path, method: str, seed: int, before: list[int], after: list[int]) -> None:
    """An RL run dir as task=rl writes it: config, metrics, per-item results before and after, history."""
    import yaml

    run = root / f"{method}-{seed}"
    for sub, correct in (("eval_before", before), ("eval", after)):
        (run / sub).mkdir(parents=True)
        lines = [json.dumps({"id": str(i), "sample": 0, "correct": bool(c)}) for i, c in enumerate(correct)]
        (run / sub / "synthetic_test.jsonl").write_text("\n".join(lines) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "rl", "seed": seed, "method": {"name": "vcore"}}))
    metrics = {
        "start": {"source": f"sft/{method}/final", "method": method, "model": "tiny", "lora": False, "seed": seed},
        "eval_before": {"synthetic_test/accuracy": sum(before) / len(before)},
        "eval": {"synthetic_test/accuracy": sum(after) / len(after)},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "rl/accuracy": 0.5 + 0.1 * s}) for s in (1, 2)) + "\n"
    )


def test_report_renders_table2_from_a_sweep_dir(tmp_path):
    """Rows by the SFT method RL started from (not the rl run's unused method group), before/after per benchmark with
    intervals, and the change paired over the same items."""
    from vcore.tools.report import main

    _fake_rl_run(tmp_path, "dft", 1, before=[1, 0, 0, 1] * 5, after=[1, 1, 0, 1] * 5)
    _fake_rl_run(tmp_path, "vcore", 1, before=[1, 1, 0, 1] * 5, after=[1, 1, 0, 1] * 5)
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Table 2" in report
    rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| tiny |")}
    assert set(rows) == {"dft", "vcore"}
    assert (
        "| 50.0 [" in rows["dft"] and "| 75.0 [" in rows["dft"] and "**+25.0 [" in rows["dft"]
    )  # 5 of 20 items gained
    # Nothing changed on 20 items of one run: no point interval (Agresti-Min's floor), and no claim of equivalence.
    assert "| +0.0 [-9.5, +9.5] |" in rows["vcore"]
    tests = {
        line.split(" | ")[0]: line
        for line in report.splitlines()
        if line.startswith("| tiny ") and ": after − before" in line
    }
    assert "higher after RL (adjusted p = " in tests["| tiny dft: after − before"]
    assert (
        "one run: item noise only" in tests["| tiny vcore: after − before"]
        and "not detected" in tests["| tiny vcore: after − before"]
    )
    assert (tmp_path / "report" / "rl_accuracy.png").is_file()
