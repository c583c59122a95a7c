"""Synthetic task, chat-template labels, and bad input: every drop is counted, every error names its record."""

import pytest
from transformers import AutoTokenizer

from tests.helpers import SHARED_DATA
from vcore.boxed import final_answer_box
from vcore.config import SyntheticDatasetConfig, to_object
from vcore.data.build import build_data, normalise_openmath
from vcore.data.collate import Collator
from vcore.data.encode import BadRecord, encode_example
from vcore.data.synthetic import make_split
from vcore.ops.losses import IGNORE_INDEX
from vcore.run.training import build_job

QWEN3 = SHARED_DATA / "tokenizers" / "qwen3"
RESPONSE = "<think>\nStart with 3.\n3 + 4 = 7.\n</think>\nThe answer is \\boxed{7}."


def _equations(solution: str) -> list[tuple[int, str, int, int]]:
    import re

    return [(int(a), op, int(b), int(c)) for a, op, b, c in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", solution)]


def test_synthetic_splits_are_seeded_nested_and_arithmetically_right():
    from vcore.data.synthetic import SPLITS

    a, b = make_split("train", 20, seed=1), make_split("train", 20, seed=1)
    assert a == b and a != make_split("train", 20, seed=2)
    assert make_split("train", 50, seed=1)[:20] == a  # the first n records do not depend on how many are drawn
    assert make_split("test", 50, seed=1)[:20] == make_split("test", 20, seed=1)  # evaluated splits too
    assert make_split("test", 20, seed=1) != a and make_split("corpus", 20) != make_split("forget", 20)
    for split in SPLITS:
        for rec in make_split(split, 40, seed=3):
            assert set(rec) == {"problem", "question", "generated_solution", "expected_answer", "signature"}
            sol = rec["generated_solution"]
            assert sol.startswith("<think>\n") and sol.count("</think>") == 1
            assert sol.endswith(f"\\boxed{{{rec['expected_answer']}}}.") or sol.endswith(
                f"\\boxed{{{rec['expected_answer']}}}"
            )
            eqs = _equations(sol)
            ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
            assert eqs and all(ops[op](x, y) == z for x, op, y, z in eqs), (split, sol)  # every step is right
            assert eqs[-1][3] == int(rec["expected_answer"]) and int(rec["expected_answer"]) >= 0
            assert rec["question"] in rec["problem"]
            # The signature is the solution's own arithmetic: its start and its operations.
            assert rec["signature"] == _signature_of_text(rec)


def _signature_of_text(rec) -> str:
    """The signature read back from the solution's equations (independent of the generator's own field); the base's
    long style writes each equation twice ("That gives ... Verify: ...")."""
    eqs = _equations(rec["generated_solution"])
    eqs = eqs[::2] if "Verify:" in rec["generated_solution"] else eqs
    return f"{eqs[0][0]}|" + ",".join(f"{op}{k}" for _, op, k, _ in eqs)


def test_synthetic_splits_share_no_problem_verbatim_or_by_signature():
    """Every pair of splits, as the study draws them (the corpus as the base's pretraining draws it): no question in
    two splits, no signature in two splits, and the evaluated and RL splits repeat no problem of their own."""
    from vcore.data.synthetic import SPLITS

    sizes = {"corpus": 700 * 32, "train": 2000}
    splits = {s: make_split(s, sizes.get(s, 300), seed=0) for s in SPLITS}
    sigs = {s: {_signature_of_text(r) for r in recs} for s, recs in splits.items()}
    questions = {s: {r["question"] for r in recs} for s, recs in splits.items()}
    for i, x in enumerate(SPLITS):
        for y in SPLITS[i + 1 :]:
            assert not sigs[x] & sigs[y], (x, y, sorted(sigs[x] & sigs[y])[:3])
            assert not questions[x] & questions[y], (x, y)
    for s in SPLITS:
        if s not in ("train", "corpus", "rl"):
            assert len(sigs[s]) == len(splits[s]), s
    # Another data seed draws other problems from the same pools: still disjoint from the corpus.
    assert not {_signature_of_text(r) for r in make_split("test", 300, seed=7)} & sigs["corpus"]


def test_synthetic_splits_differ_as_documented():
    from vcore.data.synthetic import UNSEEN_PHRASINGS, wrap

    steps = lambda recs: sum(len(set(_equations(r["generated_solution"]))) for r in recs) / len(recs)  # noqa: E731
    assert steps(make_split("ood_hard", 200)) > steps(make_split("test", 200)) + 1.5
    # Evaluated splits keep the training data's mix of lengths (half two-step, half three-step) despite no repeats.
    for split in ("test", "val", "ood_test", "ood_val", "rl"):
        two = sum(r["signature"].count(",") == 1 for r in make_split(split, 300))
        assert 120 < two < 180, (split, two)
    math_wrapper = wrap("math", "X").split("X")
    for rec in make_split("train", 50) + make_split("test", 50) + make_split("ood_hard", 50) + make_split("rl", 50):
        assert rec["problem"].startswith(math_wrapper[0]) and "Then " in rec["question"]  # one phrasing, one wrapper
        assert "Let me double-check" in rec["generated_solution"]  # the fine-tuning style
    for split in ("ood_val", "ood_test"):  # one shift: the phrasing; the instruction and answer format are training's
        unseen = make_split(split, 100)
        assert all(r["problem"].startswith(math_wrapper[0]) for r in unseen) and len(UNSEEN_PHRASINGS) == 3
        assert all("Then " not in r["question"] for r in unseen)
        assert all("Let me double-check" in r["generated_solution"] for r in unseen)
    corpus = make_split("corpus", 300)
    assert not any("Let me double-check" in r["generated_solution"] for r in corpus)  # its exact wording stays new
    assert any("Verify:" in r["generated_solution"] for r in corpus)  # the base reasons at length in its own words
    with pytest.raises(ValueError, match="choose one of"):
        make_split("ood", 3)


def check_labels(tokenizer, enc, response_text_start: str):
    ids, labels = enc.input_ids, enc.labels
    sup = [i for i, l in enumerate(labels) if l != IGNORE_INDEX]
    assert sup == list(range(sup[0], sup[-1] + 1)), "supervised tokens are one contiguous span"
    assert [labels[i] for i in sup] == [ids[i] for i in sup]
    supervised_text = tokenizer.decode([ids[i] for i in sup])
    prompt_text = tokenizer.decode(ids[: sup[0]])
    assert supervised_text.startswith(response_text_start)
    assert prompt_text.endswith("<|im_start|>assistant\n")
    assert ids[sup[-1]] == tokenizer.convert_tokens_to_ids("<|im_end|>"), "end-of-turn is supervised"
    assert tokenizer.decode(ids).count("<think>") == 1 and tokenizer.decode(ids).count("</think>") == 1
    boxed = tokenizer.decode([ids[i] for i, a in enumerate(enc.answer_mask) if a])
    assert "7" in boxed and all(labels[i] != IGNORE_INDEX for i, a in enumerate(enc.answer_mask) if a)


def test_labels_cover_exactly_the_assistant_turn(tiny_tokenizer):
    enc = encode_example(tiny_tokenizer, "What is 3 + 4?", RESPONSE, max_length=512)
    check_labels(tiny_tokenizer, enc, "<think>")


@pytest.mark.skipif(not QWEN3.exists(), reason="real Qwen3 tokenizer not available (../shared/data)")
def test_labels_with_the_real_qwen3_template():
    tok = AutoTokenizer.from_pretrained(QWEN3)
    enc = encode_example(tok, "What is 3 + 4?", RESPONSE, max_length=4096)
    check_labels(tok, enc, "<think>")


def test_final_answer_box_matches_braces():
    text = "a \\boxed{1} b \\boxed{\\frac{1}{2}} c"
    box = final_answer_box(text)
    assert text[box.start : box.end] == "\\boxed{\\frac{1}{2}}"
    assert final_answer_box("no box") is None
    assert final_answer_box("\\boxed{1} then", start=5) is None


def test_empty_response_is_a_bad_record_naming_it(tiny_tokenizer):
    with pytest.raises(BadRecord, match="record train 7: the response is empty"):
        encode_example(tiny_tokenizer, "q", "   ", max_length=64, record="train 7")


def test_overlength_drop_and_truncation_to_nothing(tiny_tokenizer):
    long = RESPONSE * 20
    assert encode_example(tiny_tokenizer, "q", long, max_length=40, overlength="drop") is None
    kept = encode_example(tiny_tokenizer, "q", long, max_length=40, overlength="truncate")
    assert len(kept.input_ids) == 40 and any(l != IGNORE_INDEX for l in kept.labels)
    prompt = "a very long prompt " * 30
    assert (
        encode_example(tiny_tokenizer, prompt, RESPONSE, max_length=20, overlength="truncate") is None
    )  # nothing left


def test_missing_field_names_field_and_record():
    rows = [
        {"problem": "p", "generated_solution": "s", "expected_answer": "1"},
        {"problem": "p", "expected_answer": "1"},
    ]
    with pytest.raises(BadRecord, match=r"src record 1: missing field 'generated_solution'.*on_bad_record=skip"):
        normalise_openmath(rows, "none", "error", "src", {})
    stats = {}
    assert len(normalise_openmath(rows, "none", "skip", "src", stats)) == 1 and stats["skipped_bad_records"] == 1
    with pytest.raises(BadRecord, match="field 'problem' must be a string, got int"):
        normalise_openmath(
            [{"problem": 3, "generated_solution": "s", "expected_answer": "1"}], "none", "error", "src", {}
        )


def test_empty_dataset_is_a_clear_error(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="no training example left.*dataset.num_examples"):
        build_job(to_object(make_cfg("dataset.num_examples=0")), tmp_path)


def test_all_examples_too_long_is_a_clear_error(tiny_tokenizer):
    cfg = SyntheticDatasetConfig(num_examples=4, eval_examples=2, max_length=8)
    with pytest.raises(ValueError, match="4 dropped for length.*dataset.max_length"):
        build_data(cfg, tiny_tokenizer)


def test_build_data_counts_and_collates(tiny_tokenizer):
    bundle = build_data(SyntheticDatasetConfig(num_examples=6, eval_examples=3), tiny_tokenizer)
    assert len(bundle.train) == 6 and set(bundle.eval) == {"test", "ood_test", "forget"}
    assert bundle.stats["train/examples"] == 6 and bundle.stats["train/dropped_overlength"] == 0
    assert all(any(ex["answer_mask"]) for ex in bundle.eval["ood_test"])  # held-out examples carry their answers
    corpus = build_data(SyntheticDatasetConfig(train_split="corpus", num_examples=4, eval_examples=0), tiny_tokenizer)
    assert len(corpus.train) == 4 and corpus.eval == {}
    batch = Collator(tiny_tokenizer.pad_token_id)([bundle.train[i] for i in range(3)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["answer_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["example_id"].tolist() == [0, 1, 2]
    assert batch["answer_mask"].any(dim=1).all()


def test_collating_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        Collator(0)([])
