"""The token-weight inspector writes the documented schema with the values the training step uses."""

import json
import math

import pytest

from vcore.inspect import main
from vcore.train import train


@pytest.mark.parametrize("method", ["vcore", "sft", "random"])
def test_inspector_schema_and_values(make_cfg, tmp_path, method):
    train(make_cfg("trainer.max_steps=1", method=method))
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
            assert len(x["score"]) == n and len(x["q"]) == n and 0 < x["batch_alpha"] <= 1
            assert math.isclose(sum(x["q"][i] for i in sup), 1.0, rel_tol=1e-5)
            assert all(math.isclose(x["weight"][i], len(sup) * x["q"][i], rel_tol=1e-4) for i in sup)
            assert all(x["score"][i] is None for i in range(n) if not x["supervised"][i])
        else:
            assert x["score"] is None and x["q"] is None and x["batch_alpha"] is None
        if method == "sft":
            assert all(x["weight"][i] == 1.0 for i in sup)
        if method == "random":
            assert sum(w > 0 for w in x["weight"]) == max(1, math.floor(0.2 * len(sup) + 0.5))


def test_inspector_on_a_checkpoint_and_bad_path(make_cfg, tmp_path):
    train(make_cfg("trainer.max_steps=2", "trainer.save_steps=1", "trainer.save_total_limit=null"))
    ckpt = tmp_path / "checkpoints" / "checkpoint-1"
    assert (ckpt / "vcore_method_state.pt").exists()
    out = tmp_path / "c.jsonl"
    assert main([str(ckpt), "--num-examples", "2", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        main([str(tmp_path.parent / "nowhere"), "--out", str(out)])
