"""Evaluation survives preemption: stopped at several points (SIGKILL, SIGTERM, a record cut short) and rerun into the
same dir, it generates and grades only what it lacks, and its per-item files and summary equal an uninterrupted run's.
HF backend on CPU, the tiny test model, a few items of a math and a code benchmark.

The tiny random model writes neither answers nor programs, so :func:`answering` appends one to each generated text: a
boxed answer or a fenced program, right or wrong by a hash of the sampled text. The graders, the sandbox, avg@n and
pass@k then all have something to decide, and a sample drawn differently after a resume would change the results.
Kill points come from wrapping the journal's append inside the evaluation process (this file run as a script, or
monkeypatched here): the product has no test hooks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import ClassVar

import pytest

from tests.eval.eval_helpers import FN_PY, PY, lcb_local_overrides, load_benchmarks
from vcore.checks import ConfigError
from vcore.eval import DecodingConfig, GradingConfig, evaluate
from vcore.eval.generate import HFGenerator
from vcore.eval.journal import JournalFile
from vcore.eval.preemption import PREEMPTED_EXIT_CODE
from vcore.locks import DirBusy

N_MATH = 6  # synthetic_test items; batches of 2 (decoding below): 3 generation batches
SAMPLED = {
    "name": "resume-sampled",
    "temperature": 1.0,
    "top_p": 0.95,
    "n": 2,
    "max_new_tokens": 8,
    "batch_size": 2,
    "pass_k": [1, 2],
}
GREEDY = {"name": "resume-greedy", "max_new_tokens": 8, "batch_size": 2}
GENERATED_LOG = "generated.log"  # one line per item generated, appended by every process (beside the eval dir)


def benchmarks(data_dir: Path) -> list:
    """synthetic_test (math grader) and a two-problem LiveCodeBench (code grader, Python), from local files."""
    math = load_benchmarks(["synthetic_test"], [f"benchmark.synthetic_test.synthetic.kwargs.num_examples={N_MATH}"])
    code = load_benchmarks(["lcb"], lcb_local_overrides(data_dir) + ["benchmark.lcb.code.language=python"], local=False)
    return math + code


def answering(generate, benches, log: Path):
    """``HFGenerator.generate`` with an answer appended to each sample, right when the sampled text hashes even."""
    from vcore.eval.benchmarks import load_benchmark

    items = {it.prompt: it for b in benches for it in load_benchmark(b).items}

    def answer(item, right: bool) -> str:
        if item.code is None:
            return f"\\boxed{{{item.gold if right else 'no'}}}"
        code = (FN_PY if item.code["functional"] else PY)["AC" if right else "WA"]
        return f"```python\n{code}\n```"

    def wrapped(self, prompts, seeds=None, desc="generate", progress=True):
        out = generate(self, prompts, seeds, desc, progress)
        with log.open("a") as f:
            f.write("".join(f"{items[p].id}\n" for p in prompts))
        for p, samples in zip(prompts, out):
            for g in samples:
                g.text += "\n</think>\n" + answer(items[p], zlib.crc32(g.text.encode()) % 2 == 0)
        return out

    return wrapped


def stop_at(name: str, count: int, how: str, original=JournalFile.append):
    """``JournalFile.append`` that, at the ``count``-th append to ``<name>.jsonl``, SIGKILLs the process before writing
    (``sigkill``), writes half the records' text and SIGKILLs (``torn``), or writes them and sends SIGTERM
    (``sigterm``: the evaluation finishes the write, then stops with status 75)."""
    calls = []

    def append(self, records):
        if self.path.name == f"{name}.jsonl":
            calls.append(1)
            if len(calls) == count:
                if how == "sigterm":
                    original(self, records)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                if how == "torn":
                    text = "".join(json.dumps(r) + "\n" for r in records)
                    with self.path.open("a") as f:
                        f.write(text[: len(text) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        original(self, records)

    return append


def run_evaluation(model: Path, data: Path, out: Path, decoding: dict) -> dict:
    """The evaluation of these tests, from a model folder, with the answering model. Grading runs in this process
    (``num_workers=0``): a worker process would add its start-up, and killing the evaluation mid-grading is the same."""
    benches = benchmarks(data)
    generate = HFGenerator.generate
    HFGenerator.generate = answering(generate, benches, out.parent / GENERATED_LOG)
    try:
        dec, grading = DecodingConfig(**decoding), GradingConfig(num_workers=0)
        return evaluate(str(model), None, benches, dec, out, grading=grading, progress=False)
    finally:
        HFGenerator.generate = generate


def main(args: list[str]) -> None:
    """``python test_eval_resume.py MODEL DATA OUT [NAME COUNT HOW]``: the sampled evaluation, stopped as told."""
    model, data, out = (Path(a) for a in args[:3])
    if len(args) > 3:
        JournalFile.append = stop_at(args[3], int(args[4]), args[5])
    run_evaluation(model, data, out, SAMPLED)


def start(tiny_dir: Path, data: Path, out: Path, *stop: str) -> subprocess.Popen:
    from tests.helpers import subprocess_env

    cmd = [sys.executable, __file__, str(tiny_dir), str(data), str(out), *stop]
    return subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output[-3000:]


def results(out: Path) -> dict:
    """Everything an evaluation leaves for readers: per-item files and the summary, less its start time."""
    summary = json.loads((out / "summary.json").read_text())
    del summary["created"]
    files = {p.name: p.read_text() for p in sorted(out.glob("*.jsonl"))}
    return {"summary": summary, **files}


def journal_lines(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / "journal" / f"{name}.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------- kill and resume
def test_killed_twice_and_resumed_it_ends_as_an_uninterrupted_run(tiny_tokenizer, tiny_dir, tmp_path):
    """Sampled decoding (n=2: avg@2 and pass@k), math and code. The evaluation process is SIGKILLed while it writes the
    second math generation batch (half a record reaches the disk), then, rerun, before it writes the second code grade
    (a program running in the sandbox); the third run (here) finishes. An uninterrupted run is the reference."""
    reference = run_evaluation(tiny_dir, tmp_path, tmp_path / "ref" / "eval", SAMPLED)
    out = tmp_path / "run" / "eval"
    for stop in (("synthetic_test.generations", "2", "torn"), ("lcb.grades", "2", "sigkill")):
        code, output = finish(start(tiny_dir, tmp_path, out, *stop))
        assert code == -signal.SIGKILL, (stop, output)
    assert not (out / "summary.json").exists()
    resumed = run_evaluation(tiny_dir, tmp_path, out, SAMPLED)

    assert results(out) == results(tmp_path / "ref" / "eval")
    assert {**resumed, "created": None} == {**reference, "created": None}  # the returned summary too
    metrics = resumed["benchmarks"]["synthetic_test"]["metrics"]
    assert 0 < metrics["accuracy"] < 1 and set(metrics["pass@k"]) == {"1", "2"} and "avg@2" in metrics  # not vacuous
    assert {r["verdict"] for r in journal_lines(out, "lcb.grades")} == {"AC", "WA"}  # the programs ran in the sandbox
    # Only what was missing was generated again: the math batch cut short (2 items), nothing else.
    generated = (tmp_path / "run" / GENERATED_LOG).read_text().split()
    assert len(generated) == len((tmp_path / "ref" / GENERATED_LOG).read_text().split()) + 2
    for name in ("synthetic_test", "lcb"):  # each item and grade recorded once (the torn line was dropped)
        ids = [r["id"] for r in journal_lines(out, f"{name}.generations")]
        assert len(ids) == len(set(ids))
        graded = [(r["id"], r["sample"]) for r in journal_lines(out, f"{name}.grades")]
        assert len(graded) == len(set(graded)) == 2 * len(ids)


@pytest.fixture
def greedy_run(tiny_tokenizer, tiny_dir, tmp_path, monkeypatch):
    """``run(out)``: the greedy evaluation in this process, grading in-process (fast), with the answering model."""
    benches = benchmarks(tmp_path)
    monkeypatch.setattr(HFGenerator, "generate", answering(HFGenerator.generate, benches, tmp_path / GENERATED_LOG))

    def run(out: Path, **decoding):
        dec = DecodingConfig(**{**GREEDY, **decoding})
        return evaluate(str(tiny_dir), None, benches, dec, out, grading=GradingConfig(num_workers=0), progress=False)

    return run


def test_sigterm_at_several_points_then_resume_gives_the_uninterrupted_results(greedy_run, tmp_path, monkeypatch):
    """Greedy decoding; SIGTERM (as SLURM sends it) in a generation batch, while a batch is being recorded, while a
    grade is being recorded, and while the summary is written: each stops with status 75 and loses nothing recorded."""
    from vcore.eval import harness

    greedy_run(tmp_path / "ref")
    out = tmp_path / "run"
    generate, write_whole = HFGenerator.generate, harness.write_whole

    def sigterm_on_call(fn, n):
        calls = []

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, before the call goes on
            return fn(*args, **kwargs)

        return wrapped

    points = [
        (HFGenerator, "generate", sigterm_on_call(generate, 2)),  # mid-generation: that batch is lost
        (JournalFile, "append", stop_at("synthetic_test.generations", 1, "sigterm")),  # recorded, then stops
        (JournalFile, "append", stop_at("lcb.grades", 2, "sigterm")),
        (harness, "write_whole", sigterm_on_call(write_whole, 1)),  # every item done, the summary not yet written
    ]
    for owner, name, stop in points:
        with monkeypatch.context() as m:
            m.setattr(owner, name, stop)
            with pytest.raises(SystemExit) as stopped:
                greedy_run(out)
        assert stopped.value.code == PREEMPTED_EXIT_CODE, name
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is installed only while evaluating
    assert not (out / "summary.json").exists()
    greedy_run(out)
    assert results(out) == results(tmp_path / "ref")


# --------------------------------------------------------------------------------------------- safety
def test_other_settings_stop_and_name_the_keys_and_one_evaluation_holds_a_dir(greedy_run, tmp_path):
    out = tmp_path / "eval"
    greedy_run(out)
    with pytest.raises(ConfigError, match=r"decoding\.max_new_tokens: 8 -> 9.*Evaluate into another dir"):
        greedy_run(out, max_new_tokens=9)
    with pytest.raises(ConfigError, match=r"decoding\.name: 'resume-greedy' -> 'other'"):
        greedy_run(out, name="other")
    from vcore.eval.journal import EvalJournal

    with EvalJournal(out).hold(), pytest.raises(DirBusy, match=rf"in use by pid {os.getpid()}.*another dir"):
        greedy_run(out)
    greedy_run(out)  # the same settings again: nothing left to do, the same results


def test_other_weights_in_the_same_folder_stop_a_resume(tiny_tokenizer, tiny_dir, tmp_path):
    """Retrained into the same folder: same path, other weights (weights_digest), so the journal is not theirs."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    benches = benchmarks(tmp_path)[:1]
    dec = DecodingConfig(**GREEDY)
    grading = GradingConfig(num_workers=0)
    evaluate(str(model), None, benches, dec, tmp_path / "eval", grading=grading, progress=False)
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"weights: '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        evaluate(str(model), None, benches, dec, tmp_path / "eval", grading=grading, progress=False)


def test_a_record_cut_short_is_dropped_and_a_damaged_middle_is_named(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "outp')  # killed mid-write
    journal = JournalFile(path)
    assert [r["id"] for r in journal.read()] == ["a", "b"]
    assert "cut short" in caplog.text
    journal.append([{"id": "c"}])  # appends after the last whole line
    journal.close()
    assert [r["id"] for r in JournalFile(path).read()] == ["a", "b", "c"]
    path.write_bytes(b'{"id": "a"}\n' + b"\0" * 300)  # a power loss can leave zeros where data was not yet written
    assert [r["id"] for r in JournalFile(path).read()] == ["a"] and path.read_bytes() == b'{"id": "a"}\n'
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ConfigError, match=r"j\.jsonl, line 2: not a whole record, yet whole ones follow"):
        JournalFile(path).read()


# --------------------------------------------------------------------------------------------- inside a run
def test_a_run_stopped_in_its_final_evaluation_continues_it_without_training_again(make_cfg, tmp_path, monkeypatch):
    """task=train: SIGTERM once the trained model's evaluation has graded 3 samples: status 75. The rerun (same
    command, same dir, as a requeued job) skips training and generation, grades the rest, writes metrics.json."""
    from vcore.run import training

    small = ("benchmark=synthetic_test", "dataset.eval_examples=6", "decoding.max_new_tokens=8", "eval.num_workers=0")
    cfg = make_cfg(*small, method="sft")
    with monkeypatch.context() as m:
        m.setattr(JournalFile, "append", stop_at("synthetic_test.grades", 3, "sigterm"))
        with pytest.raises(SystemExit) as stopped:
            training.train(cfg)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    assert (tmp_path / "final" / "vcore_trained.json").is_file() and not (tmp_path / "metrics.json").exists()
    weights = next((tmp_path / "final").glob("*.safetensors")).read_bytes()

    monkeypatch.setattr(training, "build_job", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(HFGenerator, "generate", lambda *a, **k: pytest.fail("generated again"))
    metrics = training.train(cfg)
    assert 0 <= metrics["eval"]["synthetic_test/accuracy"] <= 1 and metrics["train"]["final/train/nll"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["eval"] == json.loads(json.dumps(metrics["eval"]))
    assert next((tmp_path / "final").glob("*.safetensors")).read_bytes() == weights
    graded = [r["id"] for r in journal_lines(tmp_path / "eval", "synthetic_test.grades")]
    assert len(graded) == len(set(graded)) == 6

    # Trained anew into the same dir: the old model's evaluation is moved aside, not continued or deleted.
    monkeypatch.undo()
    training.train(make_cfg(*small, "trainer.resume=never", "eval.after_train=false", method="sft"))
    (aside,) = tmp_path.glob("eval.replaced-*")
    assert not (tmp_path / "eval").exists() and (aside / "summary.json").is_file()


# --------------------------------------------------------------------------------------------- progress
def test_progress_counts_items_rate_and_time_left_in_the_log_and_on_the_logger(monkeypatch, caplog):
    import logging

    from vcore.eval import progress

    logged, now = [], [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(progress, "LOG_EVERY_S", 5.0)
    logger = type("Logger", (), {"summary": lambda self, d: logged.append(d)})()
    with caplog.at_level(logging.INFO, logger="vcore.eval.progress"):
        bar = progress.Progress("aime", "generate", total=60, done=10, logger=logger, bar=False)  # 10 from the journal
        now[0] = 110.0
        bar.advance(5)  # 10 s in: 5 items, 0.5 items/s, 45 left
        now[0] = 112.0
        bar.advance(1)  # under LOG_EVERY_S since the last report: no line
        now[0] = 120.0
        bar.advance(4)
    assert "generate aime: 10 of 60 items already done (resuming)" in caplog.text
    assert "generate aime: 15/60 items (25.0%), 0.5 items/s, about 1m30s left" in caplog.text
    assert logged[0] == {
        "eval_progress/aime/generate_done": 15,
        "eval_progress/aime/generate_total": 60,
        "eval_progress/aime/generate_per_s": 0.5,
        "eval_progress/aime/generate_eta_s": 90.0,
    }
    assert logged[1]["eval_progress/aime/generate_done"] == 20 and len(logged) == 2


# --------------------------------------------------------------------------------------------- vLLM
class FakeLLM:
    """``vllm.LLM`` where a sample is a function of its request's seed and prompt (vLLM's per-request seeding)."""

    requests: ClassVar[list] = []

    def __init__(self, **kwargs):
        pass

    def generate(self, texts, params, use_tqdm=False):
        from types import SimpleNamespace

        out = []
        for text, p in zip(texts, params):
            FakeLLM.requests.append((text, p.seed))
            samples = []
            for s in range(p.n):
                h = zlib.crc32(f"{p.seed}/{s}/{text}".encode())
                answer = "\\boxed{7}" if h % 2 else "\\boxed{no}"
                text = f"{h}\n</think>\n{answer}"
                samples.append(SimpleNamespace(text=text, token_ids=[0] * (h % 5 + 1), finish_reason="stop"))
            out.append(SimpleNamespace(outputs=samples))
        return out


def test_the_vllm_path_keeps_the_same_records_with_a_seed_per_item(tiny_tokenizer, tiny_dir, tmp_path, monkeypatch):
    """Each request carries its item's seed, and a SIGTERM-stopped vLLM evaluation resumes like the HF one."""
    from types import SimpleNamespace

    from vcore.eval.journal import item_seed

    fake = SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    benches = benchmarks(tmp_path)[:1]
    dec = DecodingConfig(**{**SAMPLED, "batch_size": 4})

    def run(out):
        grading = GradingConfig(num_workers=0)
        return evaluate(str(tiny_dir), None, benches, dec, out, backend="vllm", grading=grading, progress=False)

    run(tmp_path / "ref")
    records = [json.loads(line) for line in (tmp_path / "ref" / "synthetic_test.jsonl").read_text().splitlines()]
    seeds = {r["id"]: r["seed"] for r in records}
    assert seeds == {i: item_seed(dec.seed, "synthetic_test", i) for i in seeds} and len(set(seeds.values())) == N_MATH
    FakeLLM.requests.clear()
    with monkeypatch.context() as m:
        m.setattr(JournalFile, "append", stop_at("synthetic_test.grades", 5, "sigterm"))
        with pytest.raises(SystemExit):
            run(tmp_path / "run")
    assert len(FakeLLM.requests) == N_MATH
    run(tmp_path / "run")
    assert len(FakeLLM.requests) == N_MATH  # nothing generated again
    assert results(tmp_path / "run") == results(tmp_path / "ref")


if __name__ == "__main__":
    main(sys.argv[1:])
