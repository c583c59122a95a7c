"""The token-weight inspector writes the documented schema with the values the training step uses."""

import json
import math

import numpy as np
import pytest

from tests.helpers import reference_paper_alpha
from vcore.methods import method_names
from vcore.run.training import train
from vcore.tools.inspector import main


@pytest.mark.parametrize("method", method_names())
def test_inspector_schema_and_values(make_cfg, tmp_path, method):
    # VCORE with α uncapped (alpha_max=null): batch_alpha is then checked against the SPEC formula, not against a cap.
    train(make_cfg("trainer.max_steps=1", *(["method.alpha_max=null"] if method == "vcore" else []), method=method))
    out = tmp_path / "w.jsonl"
    assert main([str(tmp_path), "--num-examples", "5", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5 and [x["example"] for x in lines] == [0, 1, 2, 3, 4]
    for x in lines:
        assert set(x) == {"example", "method", "tokens", "supervised", "loss", "score", "q", "weight", "batch_alpha"}
        n = len(x["tokens"])
        assert all(len(x[k]) == n for k in ("supervised", "loss", "weight"))
        assert x["method"] == method and any(x["supervised"])
        sup = [i for i, s in enumerate(x["supervised"]) if s]
        assert all(x["weight"][i] == 0.0 for i in range(n) if not x["supervised"][i])
        assert all(isinstance(t, str) for t in x["tokens"]) and "<think>" in x["tokens"]
        if method == "vcore":
            assert len(x["score"]) == n and len(x["q"]) == n
            assert math.isclose(sum(x["q"][i] for i in sup), 1.0, rel_tol=1e-5)
            assert all(math.isclose(x["weight"][i], len(sup) * x["q"][i], rel_tol=1e-4) for i in sup)
            assert all(x["score"][i] is None for i in range(n) if not x["supervised"][i])
        else:
            assert x["score"] is None and x["q"] is None and x["batch_alpha"] is None
        if method == "sft":
            assert all(x["weight"][i] == 1.0 for i in sup)
        if method == "random":
            assert sum(w > 0 for w in x["weight"]) == max(1, math.floor(0.2 * len(sup) + 0.5))
    if method == "vcore":
        # The five examples fall in one step batch (4 x 2 per step): one α, the SPEC §4.6 value over their scores and
        # Gibbs probabilities (float64 reference). Fails if the inspector reported another batch's α or a capped one.
        assert len({x["batch_alpha"] for x in lines}) == 1
        width = max(len(x["tokens"]) for x in lines)
        pad = lambda v: [0.0 if t is None else t for t in v] + [0.0] * (width - len(v))  # noqa: E731
        scores = np.array([pad(x["score"]) for x in lines])
        q = np.array([pad(x["q"]) for x in lines])
        mask = np.array([list(x["supervised"]) + [False] * (width - len(x["supervised"])) for x in lines])
        assert lines[0]["batch_alpha"] == pytest.approx(reference_paper_alpha(scores, q, mask, None), rel=1e-5)


def test_inspector_on_a_checkpoint_and_bad_path(make_cfg, tmp_path):
    train(make_cfg("trainer.max_steps=2", "trainer.save_steps=1", "trainer.save_total_limit=null"))
    ckpt = tmp_path / "checkpoints" / "checkpoint-1"
    assert (ckpt / "vcore_method_state.pt").exists()
    out = tmp_path / "c.jsonl"
    assert main([str(ckpt), "--num-examples", "2", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        main([str(tmp_path.parent / "nowhere"), "--out", str(out)])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_inspector_weighs_iw_sft_against_the_start_model_as_training_does(make_cfg, tmp_path, lora):
    """iw-SFT's weight is exp(mean log-ratio of the policy to the *starting* model): the inspector must not use the
    trained checkpoint as its own reference (every weight would read 1.0)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from vcore.config import load_run_config
    from vcore.data.build import build_data
    from vcore.data.collate import Collator
    from vcore.modeling import load_tokenizer
    from vcore.ops.forward import model_token_loss

    train(
        make_cfg(
            "trainer.max_steps=4",
            "trainer.learning_rate=3e-2",
            "trainer.warmup_ratio=0",
            f"model.lora.enabled={lora}",
            "model.lora.dropout=0.0",
            "eval.after_train=false",
            "trainer.eval_at_end=false",
            method="iw_sft",
        )
    )
    out = tmp_path / "w.jsonl"
    assert main([str(tmp_path), "--num-examples", "4", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]

    # Reference values, computed here from the saved files: the start model is the run's model.name_or_path.
    c = load_run_config(tmp_path / "config.yaml")
    start = AutoModelForCausalLM.from_pretrained(c.model.name_or_path, dtype=torch.float32).eval()
    if lora:
        trained = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(c.model.name_or_path, dtype=torch.float32), tmp_path / "final"
        ).eval()
    else:
        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "final", dtype=torch.float32).eval()
    data = build_data(c.dataset, load_tokenizer(c.model.name_or_path)).train
    collate = Collator(0)
    weights = []
    with torch.no_grad():
        for i in range(4):
            batch = collate([data[i]])
            policy, mask = model_token_loss(trained, batch)
            ref, _ = model_token_loss(start, batch)
            log_ratio = float(((ref - policy) * mask).sum() / mask.sum())
            weights.append(min(max(math.exp(log_ratio), 0.0), 16.0))
    assert any(abs(w - 1.0) > 0.05 for w in weights)  # training moved the model: a weight of 1 would be wrong
    for line, w in zip(lines, weights):
        sup = [x for x, s in zip(line["weight"], line["supervised"]) if s]
        assert sup and all(x == pytest.approx(w, rel=1e-4) for x in sup)
