"""Every config option and experiment composes and instantiates; bad values fail early, naming the option."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from tests.conftest import CONF
from vcore.config import ConfigError, compose_config, to_object

GROUPS = ["model", "dataset", "method", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_instantiates(make_cfg, group, option):
    method = option if group == "method" else "vcore"
    cfg = make_cfg(f"{group}={option}", method=method, tiny=group != "model")
    obj = to_object(cfg)
    assert type(getattr(obj, group)).__name__.endswith("Config")


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
    [("method.tau=-1", "method.tau"), ("trainer.precision=fp8", "trainer.precision"), ("method.probe.every=0", "method.probe.every"), ("model.dtype=float8", "model.dtype")],
)
def test_bad_values_name_their_option(make_cfg, override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        to_object(make_cfg(override))


def test_method_specific_keys_do_not_leak_between_methods(make_cfg):
    with pytest.raises((ConfigCompositionException, ConfigAttributeError, ConfigKeyError)):
        make_cfg("method.tau=1.0", method="sft")


def test_vcore_yaml_documents_conventions():
    text = (CONF / "method" / "vcore.yaml").read_text()
    for needle in ("τ·ε", "vcore_temperature", "tau = 1/T", "Table 5"):
        assert needle in text, needle


def test_configs_live_in_their_groups():
    assert (CONF / "train.yaml").exists()
    assert {p.name for p in Path(CONF).iterdir() if p.is_dir()} >= set(GROUPS) | {"experiment"}
