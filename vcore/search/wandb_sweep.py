"""W&B Sweeps files (``sweeps/wandb/*.yaml``): what an agent runs for a parameter set, and a check before creating one.

    python -m vcore.search.wandb_sweep sweeps/wandb/synthetic_vcore.yaml   # check it; print what an agent would run

A sweep file's ``command`` runs ``run.py`` with Hydra overrides: fixed ones (``experiment=synthetic_search``, the run
dir and W&B group named after the sweep) and the agent's parameters as ``key=value`` (``${args_no_hyphens}``), so a
parameter's name is a key of the typed config (``method.tau``). The agent expands the command with W&B's own
functions (``wandb.sdk.launch.sweeps.utils``); :func:`agent_command` does the same, for tests and this check.

The check (:func:`check_sweep`): the file has the keys W&B needs (a ``program``, a ``method``, a ``metric`` for
``bayes`` and Hyperband, parameters W&B can read: numbers written as numbers), and for every value a parameter can
take (both ends of a distribution, each listed value) the agent's command composes through Hydra and passes every
schema check (:func:`vcore.config.to_object`: a misspelt key or a value out of range fails, naming the key). The
metric must be a key the runs log; Hyperband needs the validation curve during training (``eval.every > 0``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from vcore.checks import ConfigError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]  # W&B's, when a file gives none
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = {
    "uniform",
    "log_uniform_values",
    "inv_log_uniform_values",
    "q_uniform",
    "q_log_uniform_values",
    "int_uniform",
}
# The agent's environment for a run: what the commands' ${oc.env:...} read (values for composing here).
AGENT_ENV = {"WANDB_SWEEP_ID": "sweepid", "WANDB_RUN_ID": "runid"}


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file as ``wandb sweep`` reads it (YAML 1.1: ``1e-5`` is a string there, ``0.00001`` a number)."""
    sweep = yaml.safe_load(Path(path).read_text())
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: not a W&B sweep configuration (a YAML mapping)")
    return sweep


def agent_command(sweep: dict[str, Any], params: dict[str, Any], python: str = "python") -> list[str]:
    """The command line a W&B agent runs for ``params`` (``{name: value}``), expanded by W&B's own functions the way
    its agent does (``wandb.wandb_agent.Agent._command_run``): ``${env}``, ``${interpreter}``, ``${program}`` and
    the argument macros (``${args_no_hyphens}``: ``name=value``)."""
    from wandb.sdk.launch.sweeps import utils

    macros = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=[python], program=[str(sweep["program"])])
    command: list[str] = []
    for item in utils.create_sweep_command(list(sweep.get("command") or DEFAULT_COMMAND)):
        item = str(item)
        if item.startswith("${") and item.endswith("}"):
            command += macros.get(item[2:-1]) or []
        else:
            command.append(item)
    return command


def run_overrides(command: list[str], program: str) -> list[str]:
    """The Hydra overrides ``command`` passes to ``program`` (what follows it)."""
    ends = [i for i, c in enumerate(command) if c == program or c.endswith("/" + program)]
    if not ends:
        raise ConfigError(f"the command does not run {program}: {command}")
    args = command[ends[0] + 1 :]
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise ConfigError(f"{' '.join(flags)}: the command passes Hydra overrides only (configs: experiment=...)")
    return args


def parameter_values(name: str, spec: Any) -> list[Any]:
    """The values a parameter stands for in the check: its value, every listed value, both ends of a distribution."""
    if not isinstance(spec, dict):
        raise ConfigError(f"parameters.{name}: give value:, values: or a distribution with min: and max:")
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"parameters.{name}.values: a non-empty list")
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        dist = spec.get("distribution", "int_uniform" if isinstance(spec["min"], int) else "uniform")
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"parameters.{name}.distribution={dist!r}: use one of {', '.join(sorted(DISTRIBUTIONS))}")
        low, high = spec["min"], spec["max"]
        for end, v in (("min", low), ("max", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(
                    f"parameters.{name}.{end}={v!r} is not a number to W&B (YAML reads 1e-5 as text: write 0.00001)"
                )
        if not low < high:
            raise ConfigError(f"parameters.{name}: min ({low}) must be below max ({high})")
        if dist.startswith(("log_", "inv_log_", "q_log_")) and low <= 0:
            raise ConfigError(f"parameters.{name}: a log-scale distribution needs min > 0 (got {low})")
        return [low, high]
    raise ConfigError(f"parameters.{name}: give value:, values: or a distribution with min: and max:")


def parameter_sets(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameter sets in which every value of every parameter appears once at least (the parameters have no checks
    across each other, so this covers what the whole space would)."""
    params = sweep.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError("parameters: the sweep searches nothing")
    values = {name: parameter_values(name, spec) for name, spec in params.items()}
    width = max(len(v) for v in values.values())
    return [{name: v[i % len(v)] for name, v in values.items()} for i in range(width)]


def grid_size(sweep: dict[str, Any]) -> int | None:
    """The number of runs of a grid sweep (None for random and bayes: ``run_cap`` or the agents' ``--count``)."""
    if sweep.get("method") != "grid":
        return None
    return math.prod(len(parameter_values(name, spec)) for name, spec in sweep["parameters"].items())


def check_structure(sweep: dict[str, Any]) -> None:
    """The keys W&B needs, with values it accepts (the subset of W&B's sweep schema these files use)."""
    if sweep.get("program") != "run.py":
        raise ConfigError("program: run.py (agents run from the repository root)")
    if sweep.get("method") not in METHODS:
        raise ConfigError(f"method={sweep.get('method')!r}: one of {', '.join(METHODS)}")
    metric, stop = sweep.get("metric"), sweep.get("early_terminate")
    if (sweep["method"] == "bayes" or stop) and not (isinstance(metric, dict) and metric.get("name")):
        raise ConfigError("metric: bayes and early_terminate need the metric's name (and goal)")
    if metric is not None and metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise ConfigError(f"metric.goal={metric.get('goal')!r}: minimize or maximize")
    if stop is not None:
        if stop.get("type") != "hyperband":
            raise ConfigError("early_terminate.type: hyperband")
        if not (isinstance(stop.get("min_iter"), int) and stop["min_iter"] >= 1) and "max_iter" not in stop:
            raise ConfigError("early_terminate: min_iter (an integer >= 1: the evaluation that starts stopping runs)")
        if not stop.get("eta", 3) > 1:
            raise ConfigError("early_terminate.eta must be > 1")
    command = sweep.get("command") or DEFAULT_COMMAND
    if not any(str(c) in ("${args_no_hyphens}", "${args_override_hydra}") for c in command):
        raise ConfigError("command: pass the parameters as Hydra overrides with ${args_no_hyphens}")


@contextmanager
def _agent_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in AGENT_ENV}
    os.environ.update({k: os.environ.get(k) or v for k, v in AGENT_ENV.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_sweep(path: str | Path, out_dir: str = "/tmp/vcore-sweep-check") -> list[list[str]]:
    """Check the sweep file at ``path`` (module docstring); the overrides of each parameter set it composed."""
    from vcore.config import compose_config, to_object

    sweep = load_sweep(path)
    check_structure(sweep)
    checked = []
    for params in parameter_sets(sweep):
        overrides = run_overrides(agent_command(sweep, params), sweep["program"])
        with _agent_env():
            cfg = compose_config([*overrides, f"output_dir={out_dir}"])
            c = to_object(cfg)  # every schema check, every value in its range
        _check_parameter_names(params, cfg)
        _check_metric(sweep, c)
        checked.append(overrides)
    return checked


def _check_parameter_names(params: dict[str, Any], cfg: Any) -> None:
    """A parameter must name a value, not a config group: W&B writes each parameter into the run's config under its
    name, over the run's own entry (``method: sft`` would replace the whole ``method`` node the dashboard reads)."""
    from omegaconf import DictConfig, OmegaConf

    for name in params:
        if isinstance(OmegaConf.select(cfg, name), DictConfig):
            raise ConfigError(
                f"parameters.{name}: a config group, which W&B would record as this bare value over the run's "
                f"{name} config; fix it in the command ({name}=...), one sweep per choice (--set {name}=... writes one)"
            )


def _check_metric(sweep: dict[str, Any], c: Any) -> None:
    metric = (sweep.get("metric") or {}).get("name")
    if metric is None:
        return
    benches = list(c.benchmark or {})
    logged = {f"eval/{b}/{m}" for b in benches for m in ("accuracy", "truncation_rate")}
    if metric not in logged:
        raise ConfigError(f"metric.name={metric!r} is not logged by these runs; they log {', '.join(sorted(logged))}")
    if sweep.get("early_terminate") and not c.eval.every:
        raise ConfigError("early_terminate needs the validation curve during training: set eval.every in the command")


def with_overrides(sweep: dict[str, Any], overrides: list[str], name: str | None = None) -> dict[str, Any]:
    """A copy of ``sweep`` whose command sets ``overrides`` (``key=value``: replacing the command's own ``key=...``,
    else added before the parameters), named ``name`` (default: the old name and the new values)."""
    command = [str(c) for c in sweep.get("command") or DEFAULT_COMMAND]
    for override in overrides:
        key, eq, _ = override.partition("=")
        if not eq or key.startswith("-"):
            raise ConfigError(f"--set {override}: give key=value (a Hydra override)")
        at = [i for i, c in enumerate(command) if c.partition("=")[0] == key]
        if at:
            command[at[0]] = override
        else:
            command.insert(next(i for i, c in enumerate(command) if c.startswith("${args")), override)
    suffix = "_".join(o.partition("=")[2] for o in overrides)
    return {**sweep, "name": name or f"{sweep.get('name', 'sweep')}_{suffix}", "command": command}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vcore.search.wandb_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", nargs="+", help="W&B sweep files (sweeps/wandb/*.yaml)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="write a variant of one sweep file whose command sets these overrides (method=dft, "
        "experiment=paper_main_math, ...) to --out, checked",
    )
    parser.add_argument("--out", default=None, help="where --set writes the variant (then: wandb sweep OUT)")
    parser.add_argument("--name", default=None, help="the variant's sweep name (default: the file's, with the values)")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if args.set or args.out:
        if not (args.set and args.out) or len(args.sweep) != 1:
            parser.error("--set and --out go together, with one sweep file")
        variant = with_overrides(load_sweep(args.sweep[0]), args.set, args.name)
        header = f"# {args.sweep[0]} with {' '.join(args.set)} (python -m vcore.search.wandb_sweep --set)\n"
        Path(args.out).write_text(header + yaml.safe_dump(variant, sort_keys=False))
        args.sweep = [args.out]
    for path in args.sweep:
        try:
            checked = check_sweep(path)
        except (ConfigError, HydraException, OmegaConfBaseException) as err:  # their messages name the key to fix
            print(f"{path}: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        sweep = load_sweep(path)
        first = agent_command(sweep, parameter_sets(sweep)[0])
        runs = grid_size(sweep) or sweep.get("run_cap", "until stopped")
        print(
            f"{path}: {sweep['method']}, runs: {runs}; {len(checked)} parameter sets covering every value compose "
            f"and validate. An agent runs e.g.\n  {' '.join(first)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
