"""End to end with the HF-generate backend and a tiny random Qwen3 (real Qwen3 tokenizer and chat template):
whatever the model generates, the pipeline writes well-formed per-sample records, metrics and summaries."""

import json

import pytest

from tests.eval.eval_helpers import FN_PY, PY, lcb_local_overrides, load_benchmarks, needs_data
from vcore.eval import DecodingConfig, GradingConfig, evaluate, evaluate_checkpoint
from vcore.eval.generate import chat_prompts

RECORD_KEYS = {
    "benchmark",
    "id",
    "sample",
    "seed",
    "prompt",
    "output",
    "extracted",
    "gold",
    "verdict",
    "correct",
    "n_tokens",
    "truncated",
    "detail",
}


class RecordingLogger:
    def __init__(self):
        self.logged, self.summaries, self.tables = [], [], {}

    def log(self, metrics):
        self.logged.append(metrics)

    def summary(self, metrics):
        self.summaries.append(metrics)

    def log_table(self, name, columns, rows):
        assert all(len(r) == len(columns) for r in rows)
        self.tables[name] = (columns, rows)


@pytest.fixture(scope="module")
def tiny_model_dir(qwen3_tokenizer, tmp_path_factory):
    """A random 2-layer Qwen3 with the real vocabulary, saved and reloaded like any checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=len(qwen3_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny_qwen3")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    qwen3_tokenizer.save_pretrained(path)
    return path


def check_records(path, n_samples, max_new_tokens):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(set(r) == RECORD_KEYS for r in records)
    assert all(
        r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
        for r in records
    )
    assert all(0 < r["n_tokens"] <= max_new_tokens for r in records)
    assert all(r["n_tokens"] == max_new_tokens for r in records if r["truncated"])
    assert all(isinstance(r["correct"], bool) for r in records)
    assert len(records) % n_samples == 0 and {r["sample"] for r in records} == set(range(n_samples))
    return records


@needs_data
def test_evaluate_in_memory_model(tiny_model_dir, qwen3_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.train()  # evaluate switches to eval mode and must give the caller its mode back
    benches = load_benchmarks(
        ["aime", "sgpqa_1k", "synthetic_test"],
        [
            "benchmark.aime.limit=2",
            "benchmark.sgpqa_1k.limit=2",
            "benchmark.synthetic_test.synthetic.kwargs.num_examples=2",
        ],
    ) + load_benchmarks(["lcb"], lcb_local_overrides(tmp_path) + ["benchmark.lcb.limit=2"], local=False)
    decoding = DecodingConfig(name="tiny-greedy", max_new_tokens=8, batch_size=4)
    logger = RecordingLogger()
    out = tmp_path / "eval"
    summary = evaluate(
        model,
        qwen3_tokenizer,
        benches,
        decoding,
        out,
        logger=logger,
        grading=GradingConfig(num_workers=1),
        progress=False,
    )

    for name in ("aime", "sgpqa_1k", "synthetic_test", "lcb"):
        records = check_records(out / f"{name}.jsonl", 1, 8)
        assert len(records) == 2
        metrics = summary["benchmarks"][name]["metrics"]
        assert (
            metrics["n_items"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["truncation_rate"] <= 1.0
        )
        assert sum(metrics["verdicts"].values()) == 2
    lcb_verdicts = {json.loads(l)["verdict"] for l in (out / "lcb.jsonl").read_text().splitlines()}
    assert lcb_verdicts <= {"AC", "WA", "TLE", "RE", "CE", "SE"}
    assert json.loads((out / "sgpqa_1k.manifest.json").read_text())["size"] == 1000

    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert saved["decoding"]["max_new_tokens"] == 8 and saved["decoding"]["seed"] == 42
    assert set(saved["prompt_templates"]) >= {"math", "code", "multiple_choice"} and saved["harness_version"]
    assert set(saved["table1"]) == {"math", "code"}
    assert list(saved["table1"]["math"]["columns"]) == ["AIME", "SGPQA-1k"] and saved["table1"]["math"]["partial"]
    md = (out / "summary.md").read_text()
    assert "| AIME | SGPQA-1k | ID avg | OOD avg |" in md and "limited to the first 2 items" in md
    assert any("eval/aime/accuracy" in m for m in logger.logged)
    # Progress goes to the run's summary, never to its history (history rows would move the run's step).
    progress = {k: v for m in logger.summaries for k, v in m.items()}
    assert progress["eval_progress/aime/generate_done"] == progress["eval_progress/aime/generate_total"] == 2
    assert not any(k.startswith("eval_progress/") for m in logger.logged for k in m)
    assert {"eval/aime/samples", "eval/table1_math", "eval/table1_code"} <= set(logger.tables)
    assert model.training


def test_chat_template_passes_enable_thinking(qwen3_tokenizer):
    on, off = (chat_prompts(qwen3_tokenizer, ["hi"], flag)[0] for flag in (True, False))
    assert on.endswith("<|im_start|>assistant\n") and off.endswith("<think>\n\n</think>\n\n")
    assert "system" not in on


def test_evaluate_checkpoint_with_sampling_is_seeded(tiny_model_dir, tmp_path):
    benches = load_benchmarks(["synthetic_test"], ["benchmark.synthetic_test.synthetic.kwargs.num_examples=2"])
    decoding = DecodingConfig(
        name="tiny-sample",
        temperature=0.7,
        top_p=0.95,
        top_k=20,
        n=3,
        max_new_tokens=6,
        batch_size=2,
        pass_k=[1, 2, 3],
        seed=1,
    )
    runs = []
    for i in range(2):
        summary = evaluate_checkpoint(
            tiny_model_dir,
            benches,
            decoding,
            tmp_path / f"run{i}",
            grading=GradingConfig(num_workers=1),
            progress=False,
        )
        runs.append(check_records(tmp_path / f"run{i}" / "synthetic_test.jsonl", 3, 6))
    metrics = summary["benchmarks"]["synthetic_test"]["metrics"]
    assert metrics["n_samples"] == 3 and set(metrics["pass@k"]) == {"1", "2", "3"} and "avg@3" in metrics
    assert [r["output"] for r in runs[0]] == [r["output"] for r in runs[1]]  # same seed, same samples
    assert summary["table1"] == {}


class EchoTokenizer:
    """Just enough of a tokenizer for evaluate's records (the generator below never tokenizes)."""

    chat_template = "{% if enable_thinking %}{% endif %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, enable_thinking):
        return f"<user>{messages[0]['content']}</user><assistant>"

    def __call__(self, text, add_special_tokens):  # one "token" per character: batches are planned by length
        return {"input_ids": list(text)}


class ScriptedGenerator:
    """Answers from a script keyed by prompt, so every grader is exercised through evaluate()."""

    def __init__(self, answers):
        self.answers, self.tokenizer = answers, EchoTokenizer()

    def generate(self, prompts, seeds=None, desc="", progress=True):
        from vcore.eval.generate import Generation

        return [[Generation(f"<think>\nthinking\n</think>\n{self.answers(p)}", 12, False, 0)] for p in prompts]


@needs_data
def test_scores_through_evaluate(monkeypatch, tmp_path):
    """Right answers score 1, wrong ones 0, on math, multiple choice and code, through the whole pipeline."""
    from vcore.eval import harness

    benches = load_benchmarks(["gsm8k", "sgpqa_1k"], ["benchmark.gsm8k.limit=6", "benchmark.sgpqa_1k.limit=6"])
    benches += load_benchmarks(
        ["lcb"], lcb_local_overrides(tmp_path) + ["benchmark.lcb.code.language=python"], local=False
    )
    from vcore.eval.benchmarks import load_benchmark

    truth = {}
    for b in benches:
        for k, it in enumerate(load_benchmark(b).items):
            if b.name == "lcb":
                code = FN_PY["AC"] if it.code["functional"] else PY["AC"]
                truth[it.prompt] = f"```python\n{code}\n```"
            else:
                right = k % 2 == 0  # every other item answered correctly
                truth[it.prompt] = f"\\boxed{{{it.gold if right else ('Z' if b.name == 'sgpqa_1k' else '-1')}}}"
    monkeypatch.setattr(
        harness, "make_generator", lambda backend, model, tok, dec: ScriptedGenerator(truth.__getitem__)
    )
    summary = evaluate(
        type("Scripted", (), {"name_or_path": "scripted"})(),
        EchoTokenizer(),
        benches,
        DecodingConfig(name="scripted"),
        tmp_path / "out",
        grading=GradingConfig(num_workers=2),
        progress=False,
    )
    acc = {k: v["metrics"]["accuracy"] for k, v in summary["benchmarks"].items()}
    assert acc == {"gsm8k": 0.5, "sgpqa_1k": 0.5, "lcb": 1.0}
    assert summary["benchmarks"]["sgpqa_1k"]["metrics"]["verdicts"] == {"correct": 3, "no_answer": 3}
