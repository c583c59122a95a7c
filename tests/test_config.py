"""Every config option and experiment composes and instantiates; bad values fail early, naming the option."""

import copy

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from tests.helpers import CONF, random_lm_batch, reference_weights, tiny_causal_lm
from vcore.config import SCHEMAS, ConfigError, compose_config, to_object

GROUPS = ["model", "dataset", "method", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def option_file(group: str, option: str) -> tuple[type, DictConfig]:
    """``(schema, values)`` of ``conf/<group>/<option>.yaml``: the schema its defaults list names (``base_<kind>``, or
    through the option it extends) and the values it sets, over those of the option it extends."""
    raw = OmegaConf.load(CONF / group / f"{option}.yaml")
    schema, values = None, OmegaConf.create({})
    for entry in raw.get("defaults", []):
        if entry == "_self_":
            continue
        if entry.startswith("base_"):
            schema = SCHEMAS[group][entry]
        else:
            schema, values = option_file(group, entry)
    own = copy.deepcopy(raw)
    own.pop("defaults", None)
    assert schema is not None, f"conf/{group}/{option}.yaml names no schema (base_<kind>) in its defaults"
    return schema, OmegaConf.merge(values, own)


def family(group: str, option: str) -> str:
    """The option that ``option`` extends, followed to its root: a preset (vcore_qwen3_8b) is of its family (vcore)."""
    parents = [
        e
        for e in OmegaConf.load(CONF / group / f"{option}.yaml").get("defaults", [])
        if e != "_self_" and not e.startswith("base_")
    ]
    return family(group, parents[0]) if parents else option


def expected_group(group: str, option: str) -> dict:
    """What choosing ``option`` must give: its schema's defaults with the file's values on top (unresolved)."""
    schema, values = option_file(group, option)
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), values), resolve=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(tmp_path, group, option):
    """Choosing an option gives its schema's dataclass holding exactly the file's values, and the schema is attached
    (a misspelt key fails at compose time). Fails if an option lost its ``base_<kind>`` (a plain dict, no checks), if
    a value were dropped or changed between the file and the object, if an option named after one method or logger
    built another, or if a key escaped the schema."""
    cfg = compose_config([f"{group}={option}", f"output_dir={tmp_path}"])
    schema, _ = option_file(group, option)
    obj = getattr(to_object(cfg), group)
    assert type(obj) is schema
    if hasattr(obj, "name"):  # what the code dispatches on: the file's name (e.g. sft.yaml on DFT's schema trains DFT)
        assert obj.name == family(group, option)
    assert OmegaConf.to_container(cfg[group], resolve=False) == expected_group(group, option)
    assert OmegaConf.to_container(OmegaConf.structured(obj), resolve=True) == OmegaConf.to_container(
        cfg[group], resolve=True
    )
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)):
        compose_config([f"{group}={option}", f"output_dir={tmp_path}", f"{group}.no_such_key=1"])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_instantiates(tmp_path, experiment):
    first = (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()[:3]
    assert any(line.startswith("# Run:") for line in first), "experiments start with the command that runs them"
    to_object(compose_config([f"experiment={experiment}", f"output_dir={tmp_path}"]))


def test_unknown_key_fails_at_compose_time_naming_the_key(make_cfg):
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)) as err:
        make_cfg("method.temprature=3")
    assert "temprature" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_at_compose_time(make_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        make_cfg("method.probe.epsilon=small")
    assert "epsilon" in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("eps", ["0", "-1e-4"])
def test_nonpositive_epsilon_is_a_config_error(make_cfg, eps):
    with pytest.raises(ConfigError, match="method.probe.epsilon"):
        to_object(make_cfg(f"method.probe.epsilon={eps}"))


@pytest.mark.parametrize(
    "override,option",
    [
        ("method.tau=-1", "method.tau"),
        ("method.probe.every=0", "method.probe.every"),
        ("model.dtype=float8", "model.dtype"),
    ],
)
def test_bad_values_name_their_option(make_cfg, override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        to_object(make_cfg(override))


@pytest.mark.parametrize(
    "override,choices",
    [
        ("trainer.precision=fp8", "fp32, bf16"),
        ("logger.mode=offlne", "offline, online, disabled"),
        ("eval.backend=vlm", "hf, vllm"),
        ("method.probe.jvp_attention=flash", "vcore_blocked, eager, fused"),
    ],
)
def test_a_choice_outside_its_enum_fails_at_compose_time_naming_the_option_and_the_choices(make_cfg, override, choices):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("logger=wandb", override)
    message = str(err.value) + str(err.value.__cause__)
    assert override.split("=")[0] in message and f"expected one of [{choices}]" in message, message


def test_method_specific_keys_do_not_leak_between_methods(make_cfg):
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)):
        make_cfg("method.tau=1.0", method="sft")


# Paper Table 5 (ε, τ·ε) per preset, as conf/method/vcore.yaml transcribes it.
TABLE5 = {
    "vcore_qwen3_4b_math": (1e-4, 0.5),
    "vcore_qwen3_4b_code": (1e-4, 0.8),
    "vcore_qwen3_8b": (1e-5, 0.5),
    "vcore_qwen3_32b": (1e-4, 0.8),
    "vcore_llama3_1_8b": (1e-5, 0.8),
}


def test_vcore_presets_follow_table_5_in_the_documented_convention(tmp_path):
    """tau is the paper's τ, so a preset's tau · probe.epsilon is Table 5's τ·ε. Fails if a preset stored τ·ε (or
    1/T) in ``tau``, or another ε, or if a new preset has no Table 5 entry here."""
    assert set(TABLE5) == {o for o in options("method") if o.startswith("vcore_")}
    for preset, (eps, tau_eps) in TABLE5.items():
        m = to_object(compose_config([f"method={preset}", f"output_dir={tmp_path}"])).method
        assert m.probe.epsilon == pytest.approx(eps, rel=1e-12) and m.tau * m.probe.epsilon == pytest.approx(
            tau_eps, rel=1e-12
        ), preset


def test_tau_is_one_over_the_authors_vcore_temperature(tmp_path):
    """The authors' code weighs tokens by softmax((l_t(θ) - l_t(θ - εg)) / (ε·T)); with tau = 1/T our probe and Gibbs
    weights give the same n·softmax. The reference shifts a copy of the model by hand (float64 GPT-2). Fails if the
    probe stepped along +g, divided by anything but ε, or if tau entered the weights other than as a factor."""
    from vcore.methods import gibbs_weights
    from vcore.methods.probe import finite_difference_scores, trainable_parameters
    from vcore.ops.forward import model_token_loss

    model = tiny_causal_lm(tmp_path, arch="gpt2").eval()
    batch = random_lm_batch()
    params = trainable_parameters(model)
    g = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) * 1e-2
        for i, p in enumerate(params.values())
    ]
    eps, T = 1e-4, 0.05

    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for (name, p), d in zip(params.items(), g):
            shifted.get_parameter(name).sub_(eps * d)
        l0, mask = model_token_loss(model, batch)
        l1, _ = model_token_loss(shifted, batch)
    utility = ((l0 - l1) / (eps * T)).numpy()
    m = mask.numpy()
    w_ref, _ = reference_weights(utility, m, 1.0)  # the authors' softmax of the utility, times n

    _, (scores,) = finite_difference_scores(model, params, g, [batch], eps)
    w, _ = gibbs_weights(scores, mask, 1 / T)
    assert np.abs(w_ref[m] - 1).max() > 0.05  # the weights are not all ~1: the comparison has power
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-6, atol=1e-9)


def test_train_yaml_only_picks_among_the_groups(tmp_path):
    """conf/train.yaml chooses one option per group and sets nothing inside a group: each group of the default
    config is exactly the chosen option file on its schema. Fails if train.yaml (or any other file) edited a group's
    values, or chose an option that is not a file of the group's folder."""
    train = OmegaConf.load(CONF / "train.yaml")
    choices = {k: v for entry in train.defaults if isinstance(entry, DictConfig) for k, v in entry.items()}
    assert set(GROUPS) <= set(choices) and choices.get("experiment") is None  # no experiment unless asked
    assert not set(train) & {*GROUPS, "experiment"}, "train.yaml sets values inside a group"
    default = compose_config([f"output_dir={tmp_path}"])
    for group in GROUPS:
        assert (CONF / group / f"{choices[group]}.yaml").is_file(), (group, choices[group])
        assert OmegaConf.to_container(default[group], resolve=False) == expected_group(group, choices[group]), group
