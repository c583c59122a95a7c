"""Real-schema sources: loading through each dataset config, the paper's curation, the cache, nested subsets,
bad records.

Most tests write their own small files in the real schemas (nvidia/OpenMathReasoning ``cot``,
nvidia/OpenCodeReasoning-2 ``cpp``, a generic jsonl), so they run without ``../shared/data``; the tests on the
shared schema samples check exactly the survivors that ``shared/data/README.md`` (section 6) documents.
"""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import SHARED_DATA
from vcore.checks import ConfigError
from vcore.data import curation
from vcore.data.build import build_data
from vcore.data.config import (
    JsonlDatasetConfig,
    OpenCodeDatasetConfig,
    OpenMathDatasetConfig,
    ParquetDatasetConfig,
    VcoreDataDatasetConfig,
)
from vcore.data.curation import curate
from vcore.data.encode import BadRecord
from vcore.data.subsets import SELECTED_IDS
from vcore.ops.losses import IGNORE_INDEX

SAMPLES = SHARED_DATA / "schema_samples"
needs_samples = pytest.mark.skipif(not SAMPLES.exists(), reason="schema samples not available (../shared/data)")


# ------------------------------------------------------------------------------------------ fixtures (real schemas)
def omr_row(
    a, b, days, *, problem_type="has_answer_extracted", model="DeepSeek-R1", boxed=None, expected=None, final=None
):
    total = (a + b) * days
    answer = f"\\boxed{{{total if boxed is None else boxed}}}"
    final = f"The shop sells {total} pens.\n\n{answer}" if final is None else final
    return {
        "expected_answer": str(total) if expected is None else expected,
        "problem_type": problem_type,
        "problem_source": "test",
        "generation_model": model,
        "pass_rate_72b_tir": "0.9",
        "problem": f"A shop sells {a} red and {b} blue pens a day. How many pens in {days} days?",
        "generated_solution": f"<think>\n{a} + {b} = {a + b}, times {days} is {total}.\n</think>\n\n{final}",
        "inference_mode": "cot",
        "used_in_kaggle": False,
    }


OMR_ROWS = [
    omr_row(1, 2, 3),  # 0 kept
    omr_row(2, 2, 3, problem_type="no_answer_extracted"),  # 1 filtered/problem_type
    omr_row(3, 2, 3, model="QwQ-32B"),  # 2 filtered/generation_model
    omr_row(4, 2, 3, boxed=19),  # 3 filtered/answer_mismatch (18 expected)
    omr_row(5, 3, 2, expected="\\frac{32}{2}"),  # 4 kept: 16 == 32/2 under math-verify
    omr_row(6, 2, 2, final="The shop sells 16 pens."),  # 5 filtered/no_boxed_answer
    omr_row(
        1, 1, 1, final="Two pens."
    ),  # 6 filtered/no_boxed_answer (a box only inside the think block would not count)
    omr_row(7, 3, 2),  # 7 kept
]
OMR_KEPT = ["0", "4", "7"]


def ocr_row(i, judgement="right", question=None):
    return {
        "id": f"ocr-{i}",
        "question_id": f"q{i}",
        "question": f"Read n and print n times {i}." if question is None else question,
        "r1_generation": f"<think>\nMultiply by {i}.\n</think>\n\n"
        f"```cpp\nint main(){{long long n;std::cin>>n;std::cout<<n*{i};}}\n```",
        "qwq_critique": "ok",
        "solution": "int main(){}",
        "judgement": judgement,
        "pass_rate": 1.0,
        "source": "test",
        "license": "cc-by-4.0",
        "dataset": "test",
        "split": "cpp",
        "difficulty": "1",
        "index": str(i),
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(n, long_every=0):
    """``n`` prompt/response records; every ``long_every``-th response is long (dropped at a small max_length)."""
    rows = []
    for i in range(n):
        steps = "\n".join(
            f"step {j}: {i} + {j} = {i + j}" for j in range(60 if long_every and i % long_every == 0 else 2)
        )
        rows.append(
            {
                "uid": f"r{i}",
                "prompt": f"What is {i} + 1?",
                "response": f"<think>\n{steps}\n</think>\n\n\\boxed{{{i + 1}}}",
            }
        )
    return rows


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


# ------------------------------------------------------------------------------------------ curation
def test_openmath_curation_filters_with_math_verify(tmp_path, cache):
    src = write_jsonl(tmp_path / "cot.jsonl", OMR_ROWS)
    cur = curate(OpenMathDatasetConfig(source=str(src), cache_dir=cache))
    assert cur.ids() == OMR_KEPT
    assert cur.counts == {
        "rows": 8,
        "kept": 3,
        "skipped_bad_records": 0,
        "filtered/problem_type": 1,
        "filtered/generation_model": 1,
        "filtered/answer_mismatch": 1,
        "filtered/no_boxed_answer": 2,
    }
    rec = cur[1]
    assert (rec.id, rec.answer) == ("4", "\\frac{32}{2}") and rec.prompt == OMR_ROWS[4]["problem"]
    assert rec.response == OMR_ROWS[4]["generated_solution"]


@needs_samples
def test_shared_openmath_samples_keep_exactly_the_documented_rows(tmp_path, cache):
    cur = curate(OpenMathDatasetConfig(source=str(SAMPLES / "openmathreasoning_cot.jsonl"), cache_dir=cache))
    dropped = {3, 13, 23, 33} | {5, 15, 25, 35} | {7, 17, 27, 37}
    assert cur.ids() == [str(i) for i in range(40) if i not in dropped]
    assert len(cur) == 28 and {"9", "19", "29", "39"} <= set(cur.ids())  # equivalent fractions survive
    assert (
        cur.counts["filtered/problem_type"]
        == cur.counts["filtered/generation_model"]
        == cur.counts["filtered/answer_mismatch"]
        == 4
    )


@needs_samples
def test_shared_opencode_and_vcore_data_samples(tmp_path, cache):
    cur = curate(OpenCodeDatasetConfig(source=str(SAMPLES / "opencodereasoning2_cpp.jsonl"), cache_dir=cache))
    assert cur.ids() == [f"sample-{i}" for i in range(20) if i % 4 != 0] and cur.counts["filtered/judgement"] == 5
    raw = json.loads((SAMPLES / "vcore_data_math.json").read_text())
    cur = curate(VcoreDataDatasetConfig(source=str(SAMPLES / "vcore_data_math.json"), cache_dir=cache))
    assert len(cur) == 12 and [cur[i].prompt for i in range(12)] == [r["question"] for r in raw]


def test_opencode_config_on_parquet_dir_named_by_split(tmp_path, cache):
    root = tmp_path / "ocr2" / "train"
    for split, n in (("cpp", 6), ("python", 3)):
        (root / split).mkdir(parents=True)
        rows = [ocr_row(i, "wrong" if i % 3 == 0 else "right") for i in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), root / split / "train-00000-of-00001.parquet")
    cur = curate(OpenCodeDatasetConfig(source=str(tmp_path / "ocr2"), cache_dir=cache))
    assert cur.ids() == ["ocr-1", "ocr-2", "ocr-4", "ocr-5"]  # the cpp files only; judgement == right
    py = curate(OpenCodeDatasetConfig(source=str(tmp_path / "ocr2"), split="python", cache_dir=cache))
    assert py.ids() == ["ocr-1", "ocr-2"]


def test_opencode_placeholder_question_stops_even_when_skipping(tmp_path, cache):
    src = write_jsonl(tmp_path / "cpp.jsonl", [ocr_row(1, question="-")])
    with pytest.raises(ValueError, match="placeholder '-'.*dataset card"):
        curate(OpenCodeDatasetConfig(source=str(src), cache_dir=cache, on_bad_record="skip"))


def test_hub_id_goes_through_load_dataset_streaming(monkeypatch, cache):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        return iter(OMR_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cur = curate(OpenMathDatasetConfig(cache_dir=cache, revision="abc123"))
    assert calls == [
        (
            "nvidia/OpenMathReasoning",
            None,
            {"split": "cot", "revision": "abc123", "data_files": None, "streaming": True},
        )
    ]
    assert cur.ids() == OMR_KEPT


def test_answer_check_in_worker_processes(tmp_path, cache):
    src = write_jsonl(tmp_path / "cot.jsonl", OMR_ROWS)
    cur = curate(OpenMathDatasetConfig(source=str(src), cache_dir=cache, num_proc=2))
    assert cur.ids() == OMR_KEPT


# ------------------------------------------------------------------------------------------ cache
def test_cache_is_reused_and_keyed_on_settings_and_file(tmp_path, cache, monkeypatch):
    src = write_jsonl(tmp_path / "cot.jsonl", OMR_ROWS)
    cfg = OpenMathDatasetConfig(source=str(src), cache_dir=cache)
    first = curate(cfg)
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["records"] == 3 and manifest["settings"]["filters"]["generation_model"] == ["DeepSeek-R1"]

    def no_reading(cfg):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(curation, "iter_rows", no_reading)
    again = curate(OpenMathDatasetConfig(source=str(src), cache_dir=cache, max_length=99, num_examples=2))
    assert again.path == first.path and again.ids() == OMR_KEPT  # lengths and subsets do not re-curate
    with pytest.raises(AssertionError, match="read again"):
        curate(
            OpenMathDatasetConfig(source=str(src), cache_dir=cache, filters={"problem_type": ["has_answer_extracted"]})
        )
    monkeypatch.undo()
    write_jsonl(src, OMR_ROWS + [omr_row(9, 9, 9)])  # the file changed: a new cache
    changed = curate(cfg)
    assert changed.path != first.path and changed.ids() == OMR_KEPT + ["8"]


def test_failed_curation_leaves_no_cache(tmp_path, cache):
    src = tmp_path / "cot.jsonl"
    src.write_text(json.dumps(OMR_ROWS[0]) + "\n{broken\n")
    with pytest.raises(BadRecord, match="cot.jsonl line 2: not valid JSON"):
        curate(OpenMathDatasetConfig(source=str(src), cache_dir=cache))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


# ------------------------------------------------------------------------------------------ bad records
BAD_LINES = [
    json.dumps({"prompt": "ok 1", "response": "<think>\nr\n</think>\n\nfine"}).encode(),
    b"{not json",
    json.dumps({"prompt": "p"}).encode(),
    json.dumps({"prompt": 3, "response": "<think>\nr\n</think>\n\nx"}).encode(),
    json.dumps({"prompt": "p", "response": "   "}).encode(),
    b"[1, 2]",
    b'{"prompt": "bad byte \xff", "response": "<think>\\nr\\n</think>\\n\\nx"}',
    b"",
    json.dumps({"prompt": "ok 2", "response": "<think>\nr\n</think>\n\nfine"}).encode(),
    json.dumps({"prompt": "no reasoning", "response": "just an answer"}).encode(),
]


@pytest.mark.parametrize(
    "line,message",
    [
        (1, "bad.jsonl line 2: not valid JSON"),
        (2, "bad.jsonl line 3: missing field 'response'"),
        (3, "bad.jsonl line 4: field 'prompt' must be a string, got int"),
        (4, "bad.jsonl line 5: field 'response' is empty"),
        (5, "bad.jsonl line 6: a JSON list, not an object"),
        (6, "bad.jsonl line 7: not valid JSON"),
    ],
)
def test_bad_record_error_names_record_and_field(tmp_path, cache, line, message):
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(BAD_LINES[:1] + [b""] * (line - 1) + [BAD_LINES[line]]) + b"\n")
    with pytest.raises(BadRecord, match=message + ".*on_bad_record=skip"):
        curate(JsonlDatasetConfig(source=str(tmp_path / "bad.jsonl"), cache_dir=cache))


def test_bad_records_skipped_are_counted_and_logged(tmp_path, cache, tiny_tokenizer, caplog):
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(BAD_LINES) + b"\n")
    cfg = JsonlDatasetConfig(source=str(tmp_path / "bad.jsonl"), cache_dir=cache, on_bad_record="skip", max_length=256)
    with caplog.at_level(logging.WARNING):
        bundle = build_data(cfg, tiny_tokenizer, out_dir=tmp_path / "run")
    assert (
        bundle.stats["source/rows"] == 9 and bundle.stats["source/skipped_bad_records"] == 6
    )  # the blank line is no row
    assert bundle.stats["skipped_bad_records"] == 7  # + one without a think block (dataset.think=require)
    assert len(bundle.train) == 2
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skips) == 7 and any("line 3: missing field 'response'" in s for s in skips)
    assert any("field 'response' has no <think> block" in s for s in skips)
    saved = json.loads((tmp_path / "run" / SELECTED_IDS).read_text())
    assert saved["skipped_bad_records"] == ["8"]  # ids default to the row index in the source (a blank line is no row)
    manifest = json.loads((bundle_cache_dir(cache) / "manifest.json").read_text())
    assert len(manifest["skipped"]) == 6 and "line 2" in manifest["skipped"][0]


def bundle_cache_dir(cache):
    from pathlib import Path

    (path,) = [p for p in Path(cache).iterdir() if not p.name.startswith(".")]
    return path


# ------------------------------------------------------------------------------------------ subsets and encoding
def test_nested_subsets_are_prefixes_and_saved(tmp_path, cache, tiny_tokenizer):
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs(60, long_every=7))
    chosen = {}
    for k in (4, 8, 16, 32):
        cfg = JsonlDatasetConfig(
            source=str(src), cache_dir=cache, id_field="uid", num_examples=k, eval_examples=5, max_length=200
        )
        bundle = build_data(cfg, tiny_tokenizer, out_dir=tmp_path / f"run{k}")
        saved = json.loads((tmp_path / f"run{k}" / SELECTED_IDS).read_text())
        assert len(bundle.train) == k == len(saved["train"]) and saved["seed"] == 42
        chosen[k] = saved
    for small, large in ((4, 8), (8, 16), (16, 32)):
        assert chosen[large]["train"][:small] == chosen[small]["train"]  # 4k ⊂ 8k ⊂ 16k ⊂ 32k
    assert chosen[32]["dropped_overlength"], "the long records were met and dropped"
    assert not set(chosen[32]["dropped_overlength"]) & set(chosen[32]["train"])
    assert len({tuple(c["eval"]) for c in chosen.values()}) == 1 and not set(chosen[32]["eval"]) & set(
        chosen[32]["train"]
    )
    other = build_data(
        JsonlDatasetConfig(source=str(src), cache_dir=cache, id_field="uid", num_examples=8, seed=1),
        tiny_tokenizer,
        out_dir=tmp_path / "s1",
    )
    assert (
        json.loads((tmp_path / "s1" / SELECTED_IDS).read_text())["train"] != chosen[8]["train"]
        and len(other.train) == 8
    )


def test_labels_on_real_schema_records(tmp_path, cache, tiny_tokenizer):
    src = write_jsonl(tmp_path / "cot.jsonl", OMR_ROWS)
    bundle = build_data(OpenMathDatasetConfig(source=str(src), cache_dir=cache, eval_examples=1), tiny_tokenizer)
    assert len(bundle.train) == 2 and len(bundle.eval["id"]) == 1 and any(bundle.eval["id"][0]["answer_mask"])
    eot = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ex in bundle.train:
        ids, labels = ex["input_ids"], ex["labels"]
        sup = [i for i, l in enumerate(labels) if l != IGNORE_INDEX]
        assert sup == list(range(sup[0], len(ids))) and ids[-1] == eot
        assert tiny_tokenizer.decode(ids[: sup[0]]).startswith(
            "<|im_start|>user\nYou are a helpful and accurate assistant"
        )
        assert tiny_tokenizer.decode(ids[sup[0] :]).startswith("<think>\n")
        assert "boxed" in tiny_tokenizer.decode([t for t, a in zip(ids, ex["answer_mask"]) if a])
    for key in (
        "train/examples",
        "train/response_tokens_p50",
        "train/response_tokens_p100",
        "source/kept",
        "source/filtered/answer_mismatch",
    ):
        assert key in bundle.stats, key


def test_overlength_drop_and_truncate_are_counted(tmp_path, cache, tiny_tokenizer):
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs(10, long_every=3))  # 4 long records
    drop = build_data(JsonlDatasetConfig(source=str(src), cache_dir=cache, max_length=200), tiny_tokenizer)
    assert drop.stats["train/dropped_overlength"] == 4 and len(drop.train) == 6
    cut = build_data(
        JsonlDatasetConfig(source=str(src), cache_dir=cache, max_length=200, overlength="truncate"), tiny_tokenizer
    )
    assert (
        cut.stats["train/truncated"] == 4
        and len(cut.train) == 10
        and max(len(x) for x in cut.train["input_ids"]) == 200
    )


def test_parquet_config_and_field_mapping(tmp_path, cache, tiny_tokenizer):
    rows = [{"q": r["prompt"], "a": r["response"], "gold": str(i + 1)} for i, r in enumerate(pairs(6))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    cfg = ParquetDatasetConfig(
        source=str(tmp_path / "train.parquet"),
        cache_dir=cache,
        prompt_field="q",
        response_field="a",
        answer_field="gold",
        prompt_template="math",
        eval_examples=2,
    )
    bundle = build_data(cfg, tiny_tokenizer)
    assert len(bundle.train) == 4 and "user\nYou are a helpful" in tiny_tokenizer.decode(
        bundle.eval["id"][0]["input_ids"]
    )
    with pytest.raises(ConfigError, match="dataset.source: dataset=jsonl reads"):
        curate(JsonlDatasetConfig(source=str(tmp_path / "train.parquet"), cache_dir=cache))


def test_source_and_subset_errors_name_the_option(tmp_path, cache, tiny_tokenizer):
    with pytest.raises(ConfigError, match="dataset.source: dataset=jsonl needs a source"):
        build_data(JsonlDatasetConfig(cache_dir=cache), tiny_tokenizer)
    with pytest.raises(ConfigError, match="dataset.source: .*does not exist"):
        build_data(JsonlDatasetConfig(source=str(tmp_path / "nope.jsonl"), cache_dir=cache), tiny_tokenizer)
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs(5))
    with pytest.raises(ConfigError, match="dataset.num_examples=9: the curated source has 4 records"):
        build_data(
            JsonlDatasetConfig(source=str(src), cache_dir=cache, num_examples=9, eval_examples=1), tiny_tokenizer
        )
    with pytest.raises(ConfigError, match="dataset.filters.judgement: an empty list keeps nothing"):
        OpenCodeDatasetConfig(filters={"judgement": []})
    with pytest.raises(ConfigError, match="dataset.answer_field"):
        JsonlDatasetConfig(verify_answer=True)


def test_training_steps_run_on_a_real_schema_source(make_cfg, tmp_path):
    import math

    from vcore.config import to_object
    from vcore.run.training import build_job

    src = write_jsonl(tmp_path / "cot.jsonl", [omr_row(i % 9 + 1, i % 7 + 1, i % 5 + 1) for i in range(44)])
    cfg = make_cfg(
        "dataset=openmath",
        f"dataset.source={src}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.max_length=512",
        method="sft",
    )
    job = build_job(to_object(cfg), tmp_path)
    assert len(job.data.train) == 32 and len(job.data.eval["id"]) == 8  # TINY_TEST: num_examples=32, eval_examples=8
    result = job.trainer.train()
    assert math.isfinite(result.training_loss)
