"""A method from outside vcore: its class here, its YAML in a config dir of its own (named with ``_target_``), trained
by ``python run.py --config-dir <dir> method=<name>`` with no edit to vcore/ (docs/adding_a_method.md), logged to W&B
(offline), weighed by the inspector and rendered by the report like a built-in method."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.helpers import CONF, REPO, TINY_TEST, subprocess_env
from vcore.checks import ConfigError, check
from vcore.config import register_configs, to_object, typed_config
from vcore.methods import MethodConfig, MicroBatch, TokenWeighting, method_names
from vcore.ops.forward import ForwardNeeds, TokenForward

NAME = "test_top_k_mass"
TARGET = f"{__name__}.TopKMass"


@dataclass
class TopKMassConfig(MethodConfig):
    name: str = NAME
    k: int = 2

    def __post_init__(self) -> None:
        check(self.k >= 1, "method.k", "must be >= 1")


@dataclass
class MassState:
    examples: torch.Tensor  # the step's examples (a step-level fact kept per micro-batch, as a method's record would)


def mass_weights(top_k_mass: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``n m_t / Σ_j m_j`` per example (``m``: the top-k mass): tokens the model is sure about weigh more."""
    m = torch.where(mask, top_k_mass.double(), 0.0)
    return (mask.sum(1, keepdim=True) * m / m.sum(1, keepdim=True).clamp(min=1e-300)).float() * mask


class TopKMass(TokenWeighting):
    name = NAME
    Config = TopKMassConfig

    def __init__(self, cfg: TopKMassConfig) -> None:
        super().__init__(cfg)
        self.needs = ForwardNeeds(entropy=True, top_k=cfg.k)  # declared from the config: k

    def prepare_step(self, model, step: list[MicroBatch]) -> dict[str, torch.Tensor]:
        for micro in step:
            micro.state = MassState(micro.counts.num_examples)
        return {f"{NAME}/examples": step[0].counts.num_examples.float()}

    def weights(self, forward: TokenForward, micro: MicroBatch) -> torch.Tensor:
        assert isinstance(micro.state, MassState)
        return mass_weights(forward.top_k_mass, forward.mask)

    def token_values(self, forward: TokenForward, micro: MicroBatch) -> dict[str, torch.Tensor]:
        return {"entropy": forward.entropy, "top_k_mass": forward.top_k_mass}


def write_yaml(conf_dir, body: str, name: str = NAME):
    (conf_dir / "method").mkdir(parents=True, exist_ok=True)
    (conf_dir / "method" / f"{name}.yaml").write_text(body)


def compose_with(conf_dir, *overrides: str):
    """As ``python run.py --config-dir <conf_dir> ...`` composes: conf/ plus the user's dir on the search path."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"hydra.searchpath=[file://{conf_dir}]", "output_dir=/unused", *overrides])


def test_a_method_of_ones_own_trains_through_run_py_and_is_read_like_a_built_in(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vcore.config import load_run_config
    from vcore.data.build import build_data
    from vcore.tools import inspector, report

    conf = tmp_path / "my_conf"
    write_yaml(conf, f"# a method outside vcore\n_target_: {TARGET}\nk: 3\n")
    run = tmp_path / "run"
    overrides = [o for o in TINY_TEST if not o.startswith(("logger=", "method.probe"))] + [
        "logger=wandb",
        "benchmark=synthetic_test",
        f"hydra.run.dir={run}",
        "trainer.max_steps=2",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--config-dir", str(conf), f"method={NAME}", *overrides],
        cwd=tmp_path,
        env=subprocess_env(VCORE_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # config.yaml holds the method's typed settings and its class; the run's config loads back with its schema.
    c = load_run_config(run / "config.yaml")
    assert isinstance(c.method, TopKMassConfig) and c.method.k == 3 and c.method._target_ == TARGET
    # The training step used the method: its diagnostic every step, weights of mean 1 per example (hence overall).
    steps = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "train/nll" in s]
    assert len(steps) == 2 and all(s[f"{NAME}/examples"] == 8.0 for s in steps)  # 4 examples x 2 micro-batches
    assert all(s["weights/mean"] == pytest.approx(1.0, rel=1e-6) and s["weights/std"] > 0.02 for s in steps), steps
    # W&B (offline): the diagnostic and the token-weight heatmap, whose tokens show the method's values.
    (wandb_run,) = (run / "wandb").glob("offline-run-*")
    assert f"{NAME}/examples".encode() in next(wandb_run.glob("run-*.wandb")).read_bytes()
    (page,) = (wandb_run / "files" / "media" / "html").rglob("*.html")
    assert "top_k_mass=" in page.read_text() and "entropy=" in page.read_text()

    # The inspector weighs with the method's own hooks; checked against float64 top-k masses of the final model.
    out = tmp_path / "weights.jsonl"
    assert inspector.main([str(run), "--num-examples", "3", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    final = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float64).eval()
    data = build_data(c.dataset, AutoTokenizer.from_pretrained(run / "final")).train
    for line in lines:
        assert line["method"] == NAME and line["score"] is None and line["batch_alpha"] is None
        ids = data[line["example"]]["input_ids"]
        assert len(ids) == len(line["tokens"])
        with torch.no_grad():
            p = torch.softmax(final(input_ids=torch.tensor([ids])).logits[0], -1)
        sup = [t for t, s in enumerate(line["supervised"]) if s]
        mass = {t: float(p[t - 1].topk(3).values.sum()) for t in sup}
        total = math.fsum(mass.values())
        assert max(mass.values()) > 1.1 * min(mass.values())  # the weights differ: the comparison has power
        for t in sup:
            assert line["top_k_mass"][t] == pytest.approx(mass[t], rel=1e-5)
            assert line["weight"][t] == pytest.approx(len(sup) * mass[t] / total, rel=1e-5)
    # The report reads the run like any other: the method's row in the synthetic table, its heatmap page.
    assert report.main([str(run), "--out", str(tmp_path / "report"), "--weights", str(out)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"| {NAME} |" in md, md
    assert "top_k_mass=" in (tmp_path / "report" / "token_weights.html").read_text()


def test_its_config_is_typed_when_composed_and_its_errors_name_the_option(tmp_path):
    write_yaml(tmp_path, f"_target_: {TARGET}\nk: 2\n")  # the settings a command line may override are listed
    cfg = typed_config(compose_with(tmp_path, f"method={NAME}", "method.k=4"))
    assert cfg.method.k == 4 and cfg.method.name == NAME and NAME in method_names()
    assert cfg.method.loss_normalization == "token"  # from the schema, though the YAML does not list it
    with pytest.raises(ConfigError, match="method.k"):  # the schema's own checks
        to_object(compose_with(tmp_path, f"method={NAME}", "method.k=0"))
    write_yaml(tmp_path, f"_target_: {TARGET}\nkk: 3\n", "misspelt")
    with pytest.raises(ConfigError, match="kk"):  # an unknown key, before anything is loaded
        to_object(compose_with(tmp_path, "method=misspelt"))
    write_yaml(tmp_path, "_target_: nowhere_to_be_found.Method\n", "missing")
    with pytest.raises(ConfigError, match="method._target_=.*PYTHONPATH"):
        to_object(compose_with(tmp_path, "method=missing"))
    write_yaml(tmp_path, f"_target_: {__name__}.mass_weights\n", "not_a_method")
    with pytest.raises(ConfigError, match="not a TokenWeighting subclass"):
        to_object(compose_with(tmp_path, "method=not_a_method"))
    write_yaml(tmp_path, "name: entropy_of_mine\nloss_normalization: token\n", "nameless")
    with pytest.raises(ConfigError, match="unknown method 'entropy_of_mine'.*_target_"):
        to_object(compose_with(tmp_path, "method=nameless"))


def test_a_name_taken_by_a_built_in_is_refused():
    from vcore.methods import register

    @dataclass
    class ImposterConfig(MethodConfig):
        name: str = "sft"

    class Imposter(TokenWeighting):
        name = "sft"
        Config = ImposterConfig

    with pytest.raises(ConfigError, match="method.name='sft' is taken by vcore.methods.sft.SFT"):
        register(Imposter)


def test_the_worked_example_weighs_each_token_by_its_entropy(make_cfg, tmp_path):
    """experiments/entropy_weighting.py (docs/adding_a_method.md) through the training job's own construction: its
    weights against n H^p / Σ H^p from float64 log-softmaxes of the model's logits, written here."""
    from vcore.methods.base import micro_batches
    from vcore.ops.forward import model_forward
    from vcore.run.training import build_job

    search = f"hydra.searchpath=[file://{REPO / 'experiments' / 'conf'}]"
    job = build_job(to_object(make_cfg(search, "method.power=2", method="entropy")), tmp_path)
    model, weighting = job.trainer.model.eval(), job.trainer.weighting
    assert weighting.name == "entropy" and weighting.cfg.power == 2 and weighting.needs.entropy
    batch = job.collator([job.data.train[i] for i in range(4)])
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10)  # the randomly initialised model is near uniform: sharpen it
        forward = model_forward(model, batch, weighting.needs)
        w = weighting.weights(forward, micro_batches([batch])[0])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_p = torch.log_softmax(logits.double(), -1)
    h = -(log_p.exp() * log_p).sum(-1)  # h[:, t - 1] is the entropy of the prediction of token t
    for b in range(4):
        sup = forward.mask[b].nonzero().squeeze(1).tolist()
        powered = [float(h[b, t - 1]) ** 2 for t in sup]
        for t, x in zip(sup, powered):
            assert w[b, t].item() == pytest.approx(len(sup) * x / math.fsum(powered), rel=1e-4, abs=1e-5)  # float32
        assert max(powered) > 2 * min(powered)  # the weights differ: the comparison has power
        assert (w[b][~forward.mask[b]] == 0).all()
