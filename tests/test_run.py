"""``python run.py`` end to end in a subprocess, single run and multirun, as a user runs it."""

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, TINY_TEST, reference_token_nll, subprocess_env
from vcore.run.loggers import run_name


def run(args, cwd, timeout=300):
    # the tiny model is built into the test's dir, not the user's cache
    env = subprocess_env(VCORE_CACHE=str(cwd / "cache"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def tiny(logger="none", probe=True):
    keep = [o for o in TINY_TEST if not o.startswith("logger=") and (probe or not o.startswith("method.probe"))]
    return keep + [f"logger={logger}"]


SPLITS = ("test", "ood_test", "forget")


def last_boxed_int(text: str):
    """The integer in the last ``\\boxed{...}`` after the thinking block, or None (the synthetic task's answers)."""
    body = text.split("</think>")[-1]
    found = re.findall(r"\\boxed\{(-?\d+)\}", body)
    return found[-1] if found else None


def split_nll(model, dataset) -> float:
    """Held-out NLL of ``dataset`` from float64 per-token log-softmaxes (tests.helpers.reference_token_nll)."""
    tokens = [
        x
        for i in range(len(dataset))
        for x in reference_token_nll(model, dataset[i]["input_ids"], dataset[i]["labels"])
    ]
    return math.fsum(tokens) / len(tokens)


def test_run_py_end_to_end(tmp_path):
    """The main job as a user runs it: the start model and the fine-tuned one evaluated on every split, and every
    number in metrics.json recomputed here from what the run wrote. Fails if an eval split is graded against another
    split's answers or marks an item right without its boxed answer, if a summary is not its per-item file's mean,
    if the held-out NLL is not the final model's on that split (recomputed in float64 from final/; the start
    model's differs), or if the train summary is not the last logged step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vcore.config import load_run_config
    from vcore.data.build import build_data
    from vcore.data.synthetic import make_split

    overrides = [o for o in tiny() if o != "eval.before_train=false"]  # the default job evaluates the start model
    run([*overrides, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    c = load_run_config(out / "config.yaml")
    assert metrics["method"]["name"] == "vcore" and metrics["model"].startswith(
        str(tmp_path / "cache" / "tiny" / "tiny-")
    )

    for stage, folder in (("eval", "eval"), ("eval_before", "eval_before")):
        for split in SPLITS:
            name = f"synthetic_{split}"
            items = [json.loads(x) for x in (out / folder / f"{name}.jsonl").read_text().splitlines()]
            records = make_split(
                split,
                8,
                c.dataset.seed,
                id_steps=c.dataset.id_steps,
                id_max_number=c.dataset.id_max_number,
                ood_steps=c.dataset.ood_steps,
                ood_max_number=c.dataset.ood_max_number,
            )
            assert [i["gold"] for i in items] == [r["expected_answer"] for r in records]  # this split's problems
            assert all(r["problem"] in i["prompt"] for i, r in zip(items, records))
            for i in items:
                assert i["correct"] == (last_boxed_int(i["output"]) == i["gold"]), i
                assert i["n_tokens"] <= 48 and (not i["truncated"] or i["n_tokens"] == 48)
            m = metrics[stage]
            assert m[f"{name}/accuracy"] == sum(i["correct"] for i in items) / 8
            assert m[f"{name}/truncation_rate"] == sum(i["truncated"] for i in items) / 8
            assert m[f"{name}/accuracy_ci95_low"] <= m[f"{name}/accuracy"] <= m[f"{name}/accuracy_ci95_high"]

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    final = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float64).eval()
    start = AutoModelForCausalLM.from_pretrained(metrics["model"], dtype=torch.float64).eval()
    data = build_data(c.dataset, tokenizer)
    assert set(data.eval) == set(SPLITS)
    for split in SPLITS:
        expected = split_nll(final, data.eval[split])
        assert metrics["eval"][f"{split}/nll"] == pytest.approx(expected, rel=1e-5), split
        assert (
            abs(split_nll(start, data.eval[split]) - expected) > 1e-3 * expected
        )  # training moved it: the check has power

    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    steps = [h for h in history if "train/nll" in h]
    assert [h["step"] for h in steps] == [1, 2]
    train = metrics["train"]
    assert train["nll"] == steps[-1]["train/nll"] and train["weighted_loss"] == steps[-1]["train/weighted_loss"]
    for key in ("weights/mean", "weights/ess_frac", "vcore/alpha", "vcore/tau"):
        assert train[f"final/{key}"] == steps[-1][key]
        assert train[f"mean/{key}"] == pytest.approx((steps[0][key] + steps[1][key]) / 2, rel=1e-12)
    assert train["final/vcore/tau"] == pytest.approx(c.method.tau, rel=1e-6)  # logged as float32

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["model"].startswith(f"{out / 'final'} (trained from ")  # not the start model's path
    assert summary["decoding"]["max_new_tokens"] == 48 and "prompt_templates" in summary
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "tokenizer_config.json").exists()
    assert (out / ".hydra" / "config.yaml").exists() and (out / "config.yaml").exists()


@pytest.mark.slow  # ~13 s: the default suite keeps one run of each kind (test_sweeps, the two-rank tests)
def test_multirun_gives_separate_runs_and_wandb_runs(tmp_path):
    # No generation: what is checked here is the jobs and their W&B runs (test_run_py_end_to_end evaluates).
    proc = run(
        [
            "-m",
            "method=sft,vcore",
            *tiny("wandb", probe=False),
            "eval.after_train=false",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
    )
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout[-2000:]
    names, ids = [], set()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        names.append(metrics["method"]["name"])
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        run_id = runs[0].name.rsplit("-", 1)[-1]
        ids.add(run_id)
        # The run is named after this job's own overrides (seeds and paths left out).
        record = (runs[0] / f"run-{run_id}.wandb").read_bytes()
        name = run_name(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert name.startswith(f"method={metrics['method']['name']},") and name.encode() in record
    assert names == ["sft", "vcore"] and len(ids) == 2


def test_task_eval_on_a_finished_run_full_and_lora(make_cfg, tmp_path):
    from vcore.run.evaluation import evaluate
    from vcore.run.training import train

    for lora in (False, True):
        train_dir = tmp_path / f"train_{lora}"
        train(make_cfg(f"output_dir={train_dir}", f"model.lora.enabled={lora}", "eval.after_train=false", method="sft"))
        eval_dir = tmp_path / f"eval_{lora}"
        # One split is enough here (generation dominates the cost); test_run_py_end_to_end evaluates all four.
        metrics = evaluate(
            make_cfg(
                f"output_dir={eval_dir}",
                "task=eval",
                f"eval.model={train_dir}",
                "benchmark=synthetic_test",
                method="sft",
            )
        )
        assert set(metrics["eval"]) == {
            f"synthetic_test/{k}" for k in ("accuracy", "truncation_rate", "accuracy_ci95_low", "accuracy_ci95_high")
        }
        assert (eval_dir / "eval" / "summary.md").exists() and (eval_dir / "metrics.json").exists()


def test_task_eval_needs_a_model(make_cfg):
    from vcore.config import ConfigError, to_object

    with pytest.raises(ConfigError, match="eval.model"):
        to_object(make_cfg("task=eval"))
