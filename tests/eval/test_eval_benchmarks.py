"""Benchmark configs: every YAML composes into its typed schema, every real data file loads through its config,
SGPQA-1k sampling is deterministic and proportional, fixtures in the R-Bench and LiveCodeBench schemas load."""

import json
from collections import Counter

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tests.eval.eval_helpers import CONF, SHARED_DATA, compose_cfg, lcb_local_overrides, load_benchmarks, needs_data
from vcore.checks import ConfigError
from vcore.eval import layout
from vcore.eval.benchmarks import load_benchmark
from vcore.eval.code_grader import decode_tests
from vcore.eval.config import (
    BenchmarkConfig,
    DecodingConfig,
    GraderKind,
    benchmarks_from_cfg,
    decoding_from_cfg,
)
from vcore.eval.stratified import largest_remainder, stratified_sample

# Single benchmarks (their YAML starts from the schema); the others are presets that list several.
BENCHMARKS = sorted(p.stem for p in (CONF / "benchmark").glob("*.yaml") if "base_benchmark" in p.read_text())
PRESETS = {
    "table1_math": 4,
    "table1_code": 4,
    "gsm8k_math500": 2,
    "synthetic": 3,
    "table2": 2,
    "synthetic_rl": 2,
    "synthetic_validation": 2,
    "synthetic_study": 4,
}
DECODINGS = sorted(p.stem for p in (CONF / "decoding").glob("*.yaml"))


def test_every_benchmark_and_decoding_config_composes():
    cfg = compose_cfg(["+benchmark=[" + ",".join(BENCHMARKS) + "]"])
    benches = benchmarks_from_cfg(cfg.benchmark)
    assert [b.name for b in benches] == BENCHMARKS
    assert all(isinstance(b, BenchmarkConfig) for b in benches)
    for name in DECODINGS:
        assert decoding_from_cfg(compose_cfg([f"+decoding={name}"]).decoding).name == name


def test_every_preset_composes():
    presets = {p.stem for p in (CONF / "benchmark").glob("*.yaml")} - set(BENCHMARKS)
    assert presets == set(PRESETS)
    for name, count in PRESETS.items():
        assert len(benchmarks_from_cfg(compose_cfg([f"+benchmark={name}"]).benchmark)) == count


def test_table1_presets_select_the_paper_columns():
    math = benchmarks_from_cfg(compose_cfg(["+benchmark=table1_math"]).benchmark)
    code = benchmarks_from_cfg(compose_cfg(["+benchmark=table1_code"]).benchmark)
    assert [b.table1_column for b in math] == ["AIME", "Olympiad", "RBench", "SGPQA-1k"]
    assert [b.table1_column for b in code] == ["LCB", "OJBench", "RBench", "SGPQA-1k"]
    for preset, domain in ((math, "math"), (code, "code")):  # the configs say what vcore.eval.layout says
        assert [(b.name, b.table1_column) for b in preset] == [tuple(c) for c in layout.columns(domain)]


def test_every_table1_benchmark_config_agrees_with_the_layout():
    benches = benchmarks_from_cfg(compose_cfg(["+benchmark=[" + ",".join(BENCHMARKS) + "]"]).benchmark)
    claimed = {b.name: (b.role.value, b.domain.value, b.table1_column) for b in benches if b.table1_column is not None}
    want = {c.benchmark: ("id", domain, c.title) for domain, cols in layout.IN_DOMAIN.items() for c in cols}
    want.update({c.benchmark: ("ood", "general", c.title) for c in layout.OUT_OF_DOMAIN})
    assert claimed == want


def test_decoding_presets_match_the_protocol():
    paper = decoding_from_cfg(compose_cfg(["+decoding=paper"]).decoding)
    assert (
        paper.temperature,
        paper.top_p,
        paper.top_k,
        paper.n,
        paper.max_new_tokens,
        paper.seed,
        paper.enable_thinking,
    ) == (0.0, 1.0, -1, 1, 8192, 42, True)
    qwen = decoding_from_cfg(compose_cfg(["+decoding=qwen_recommended"]).decoding)
    assert (qwen.temperature, qwen.top_p, qwen.top_k) == (0.6, 0.95, 20) and qwen.n > 1


def test_unknown_keys_and_bad_values_fail_at_compose_time(tmp_path):
    from hydra import compose, initialize_config_dir

    # a misspelt key in a benchmark YAML
    (tmp_path / "benchmark").mkdir()
    text = (CONF / "benchmark" / "aime.yaml").read_text().replace("expected_size:", "expected_sizee:")
    (tmp_path / "benchmark" / "aime.yaml").write_text(text)
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="expected_sizee"):
            compose(config_name=None, overrides=["+benchmark=[aime]"])
    # ... and on the command line
    with pytest.raises(ConfigCompositionException, match="sizee"):
        compose_cfg(["+benchmark=[aime]", "benchmark.aime.sizee=3"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["+benchmark=[aime]", "benchmark.aime.grader=maths"])
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["+decoding=paper", "decoding.max_new_tokens=lots"])
    bad = compose_cfg(["+decoding=paper", "decoding.n=4"])  # greedy with n > 1: caught when building the object
    with pytest.raises(ConfigError, match="decoding.n"):
        decoding_from_cfg(bad.decoding)
    bad = compose_cfg(["+benchmark=[aime]", "benchmark.aime.answer_transforms=[strip_zeros]"])
    with pytest.raises(ConfigError, match="answer_transforms"):
        benchmarks_from_cfg(bad.benchmark)


def test_hub_sources_go_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, data_files=None, revision=None):
        calls.append((path, name, split, data_files))
        return [{"question": "q", "final_answer": ["7"], "id": 1}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (olympiad,) = load_benchmarks(["olympiad"], local=False)
    items = load_benchmark(olympiad).items
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", None)]
    assert items[0].gold == "7"


EXPECTED_LOCAL = {"aime": 60, "olympiad": 675, "gsm8k": 1319, "math500": 500, "ojbench": 232, "sgpqa_1k": 1000}


@needs_data
@pytest.mark.parametrize("name", sorted(EXPECTED_LOCAL))
def test_real_data_loads_through_its_config(name):
    (cfg,) = load_benchmarks([name])
    lb = load_benchmark(cfg)
    assert len(lb.items) == EXPECTED_LOCAL[name]
    assert len({it.id for it in lb.items}) == len(lb.items)
    for it in lb.items:
        assert it.prompt and it.question
        if cfg.grader == GraderKind.math:
            assert it.gold and it.gold == it.gold.strip() and "####" not in it.gold
        if cfg.grader == GraderKind.multiple_choice:
            assert "(A): " in it.prompt and it.gold in "ABCDEFGHIJ"[: len(it.options)]
        if cfg.grader == GraderKind.code_ojbench:
            assert it.code["language"] == "cpp" and it.prompt == it.question and "```cpp" in it.prompt


@needs_data
def test_data_quirks_are_cleaned():
    aime, gsm8k, olympiad = load_benchmarks(["aime", "gsm8k", "olympiad"])
    golds = {it.id: it.gold for it in load_benchmark(aime).items}
    assert golds["2024-67"] == "25" and golds["2024-85"] == "80"  # "025", "080" in the file
    assert "336" in golds.values() and not any("circ" in g for g in golds.values())
    assert load_benchmark(gsm8k).items[0].gold == "18"
    assert not any(it.gold.startswith("['") for it in load_benchmark(olympiad).items)  # list joined, not repr'd


@needs_data
def test_sgpqa_sample_is_stratified_deterministic_and_manifested():
    (cfg,) = load_benchmarks(["sgpqa_1k"])
    a, b = load_benchmark(cfg), load_benchmark(cfg)
    assert a.manifest == b.manifest and a.population == 3875
    # Science 1,120 and Medicine 2,755 of 3,875: 289.03 and 710.97 -> 289 and 711 by largest remainder
    assert a.manifest["quotas"] == {"Science": 289, "Medicine": 711}
    assert Counter(it.meta["stratum"] for it in a.items) == Counter({"Medicine": 711, "Science": 289})
    assert a.manifest["ids"] == [it.id for it in a.items]
    (other,) = load_benchmarks(["sgpqa_1k"], ["benchmark.sgpqa_1k.sample.seed=7"])
    assert set(load_benchmark(other).manifest["ids"]) != set(a.manifest["ids"])


def test_largest_remainder_and_sampling_properties():
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert largest_remainder({"x": 5}, 10) == {"x": 5}
    counts = {"A": 13, "B": 7, "C": 29, "D": 1}
    q = largest_remainder(counts, 20)
    assert sum(q.values()) == 20 and all(abs(q[k] - 20 * c / 50) < 1 for k, c in counts.items())
    ids = [f"id{i}" for i in range(50)]
    strata = [k for k, c in counts.items() for _ in range(c)]
    idx, _ = stratified_sample(ids, strata, 20, seed=1)
    idx_shuffled, _ = stratified_sample(ids[::-1], strata[::-1], 20, seed=1)
    assert sorted(ids[i] for i in idx) == sorted(ids[::-1][i] for i in idx_shuffled)  # row order does not matter


def test_rbench_schema_fixture(tmp_path):
    rows = [
        {"question": "Which is a prime?", "A": "4", "B": "6", "C": "7", "D": "8", "E": "9", "F": "10", "answer": "C"},
        {
            "question": "Two options only?",
            "A": "yes",
            "B": "no",
            "C": None,
            "D": None,
            "E": None,
            "F": None,
            "answer": "b",
        },
    ]
    (tmp_path / "rbench.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (cfg,) = load_benchmarks(
        ["rbench"],
        [
            "benchmark.rbench.source=local",
            f"benchmark.rbench.data_root={tmp_path}",
            "+benchmark.rbench.local=[{path: json, data_files: [rbench.jsonl], "
            "fields: {option_columns: [A, B, C, D, E, F]}}]",
        ],
        local=False,
    )
    items = load_benchmark(cfg).items
    assert [it.gold for it in items] == ["C", "B"]
    assert items[0].options == ["4", "6", "7", "8", "9", "10"] and "(F): 10" in items[0].prompt
    assert items[1].options == ["yes", "no"] and "(C)" not in items[1].prompt


def test_lcb_schema_fixture(tmp_path):
    (cfg,) = load_benchmarks(["lcb"], lcb_local_overrides(tmp_path), local=False)
    stdin_item, fn_item = load_benchmark(cfg).items
    assert stdin_item.code["functional"] is False and "C++17" in stdin_item.prompt
    assert fn_item.code["functional"] is True and "class Solution" in fn_item.prompt and "Python 3" in fn_item.prompt
    assert len(decode_tests(stdin_item.code["private_tests"])) == 2
    (cfg_cpp,) = load_benchmarks(
        ["lcb"], lcb_local_overrides(tmp_path) + ["benchmark.lcb.code.functional_language=cpp"], local=False
    )
    assert "JSON" in load_benchmark(cfg_cpp).items[1].prompt


def test_synthetic_source_calls_the_named_function():
    (cfg,) = load_benchmarks(["synthetic_test"], ["benchmark.synthetic_test.synthetic.kwargs.num_examples=5"])
    items = load_benchmark(cfg).items
    from vcore.data.synthetic import make_split

    records = make_split("test", 5, 0)
    assert [it.gold for it in items] == [r["expected_answer"] for r in records]
    assert records[0]["problem"] in items[0].prompt
    (bad,) = load_benchmarks(["synthetic_test"], ["benchmark.synthetic_test.synthetic.function=vcore.nowhere.make"])
    with pytest.raises(ConfigError, match="synthetic.function"):
        load_benchmark(bad)


def test_missing_local_files_name_the_option(tmp_path):
    (cfg,) = load_benchmarks(["gsm8k"], [f"benchmark.gsm8k.data_root={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="data_root"):
        load_benchmark(cfg)


def test_local_source_without_a_data_root_fails_when_the_config_is_built(monkeypatch, tmp_path):
    """No default folder: the error names the option and the variable, before anything loads (a training run stops
    at its start, not when evaluation begins after training)."""
    from vcore.config import compose_config, to_object

    monkeypatch.delenv("VCORE_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing is looked up relative to the repository or the working directory
    message = r"benchmark\.gsm8k\.data_root: .*benchmark\.gsm8k\.data_root=.*VCORE_DATA_ROOT=.*gsm8k/test\.jsonl"
    with pytest.raises(ValueError, match=message):
        load_benchmarks(["gsm8k"], ["benchmark.gsm8k.data_root=null"])
    with pytest.raises(ValueError, match=message):
        to_object(compose_config(["benchmark=gsm8k", "benchmark.gsm8k.source=local", f"output_dir={tmp_path}"]))
    to_object(compose_config(["benchmark=gsm8k", f"output_dir={tmp_path}"]))  # the hub copy needs no data root
    monkeypatch.setenv("VCORE_DATA_ROOT", str(tmp_path))
    cfg = to_object(compose_config(["benchmark=gsm8k", "benchmark.gsm8k.source=local", f"output_dir={tmp_path}"]))
    assert cfg.benchmark["gsm8k"].data_root == str(tmp_path)  # resolved with the config: config.yaml records it


@needs_data
def test_data_root_defaults_to_the_environment_variable(monkeypatch):
    monkeypatch.setenv("VCORE_DATA_ROOT", str(SHARED_DATA))
    (cfg,) = load_benchmarks(["gsm8k"], ["benchmark.gsm8k.source=local", "benchmark.gsm8k.limit=3"], local=False)
    assert len(load_benchmark(cfg).items) == 3


def test_config_yaml_is_documented():
    for name in BENCHMARKS:
        text = (CONF / "benchmark" / f"{name}.yaml").read_text()
        assert text.startswith(f"# @package benchmark.{name}"), name
    assert OmegaConf.structured(DecodingConfig(name="x")).temperature == 0.0
