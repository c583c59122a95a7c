"""Every command the docs show works as written: README.md, docs/*.md and sweeps/README.md, code blocks and inline code.

- ``python run.py ARGS`` (also after ``torchrun`` / ``accelerate launch`` / ``srun``): ARGS are parsed by Hydra's own
  argument parser and composed the way ``run.py`` composes them (``conf/`` on the search path, ``--config-dir``
  added in front of it, ``--config-name``), then validated by the typed schema (:func:`vcore.config.to_object`).
  Under ``-m`` the sweep's keys come from the command line and the sweep config's ``hydra.sweeper.params``; its
  first job is composed through Hydra's own ``load_sweep_config``, as a launcher would, and every swept value of a
  config group must name an option of that group. The slow test composes jobs until every swept value of every key
  has been composed once (``python -m pytest -m slow tests/test_docs_commands.py``).
- ``python -m vcore.<module> ARGS``: the module's ``--help`` runs (in-process, as ``python -m`` would) and lists every
  documented ``--flag``; modules that take Hydra overrides of the training config also compose them.

Nothing is trained, loaded or downloaded. A misspelt key, a renamed option, a removed module or flag in the docs
fails here with the file and line. Placeholders are substituted from the tables below, or the test fails asking for
an entry, so a new kind of placeholder is a decision, not a silent skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict, read_write

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "sweeps" / "README.md"]

# ``<...>`` placeholders and the plausible values they stand for.
PLACEHOLDERS = {
    "<date>": "2026-01-01",
    "<time>": "12-00-00",
    "<run>": "outputs/2026-01-01/12-00-00",
    "<run dir>": "outputs/2026-01-01/12-00-00",
    "<sweep>": "synthetic_study",
    "<dft run>": "outputs/2026-01-01/12-00-00",  # the SFT runs RL starts from (sweeps/rl_table2.yaml)
    "<vcore run>": "outputs/2026-01-01/12-01-00",
}
# ``key=...``: an elided value the reader fills in.
ELIDED_VALUES = {
    "eval.model": "outputs/2026-01-01/12-00-00",  # a run dir, a checkpoint dir or a hub id
    "model": "qwen3_4b",  # any option of the model group
}
# Shell variables of the SLURM examples.
SHELL_VARIABLES = {"SLURM_JOB_ID": "1234", "RUN_DIR": "outputs/slurm-1234", "SLURM_NNODES": "1"}
# A standalone ``...`` (or ``…``) means "your other overrides": dropped, the rest must compose on its own.
ELLIPSES = {"...", "…"}
# Commands that are documented but cannot be checked here, with the reason (none at present).
SKIPPED: dict[str, str] = {}
# Modules whose positional arguments are Hydra overrides of conf/train.yaml (composed like run.py's).
OVERRIDE_MODULES = {"vcore.tools.fidelity", "vcore.tools.curate"}
# Hydra launcher plugins that a documented command picks (pip install -e ".[sweeps]").
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
}


# ------------------------------------------------------------------------------------------------ extraction
@dataclass(frozen=True)
class DocCommand:
    where: str  # docs/x.md:12
    text: str  # the command as documented (continuation lines joined, comment dropped)
    kind: str  # run | module
    target: str  # run.py | the module's dotted name
    args: tuple[str, ...]  # after run.py / the module name, placeholders substituted
    env: tuple[tuple[str, str], ...] = ()  # VAR=value before the command, or exported earlier in its code block

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


_START = re.compile(
    r"(?P<env>(?:\b[A-Z_][A-Z0-9_]*=\S*\s+)*)"  # VAR=value prefixes
    r"(?:(?:\bpython3?\s+|\b(?:torchrun|accelerate\s+launch)\b[^`\n]*?\s)run\.py\b"  # run.py, or a launcher
    r"|\bpython3?\s+-m\s+(?P<module>vcore(?:\.\w+)*))"
)
_EXPORT = re.compile(r"^\s*export\s+([A-Z_][A-Z0-9_]*)=(\S+)\s*$")
_END = re.compile(r"\s(?:&&|\|\||;|\|)\s|\s*$")  # the command ends at the next shell operator
_FENCE = re.compile(r"^\s*```")
_INLINE = re.compile(r"`([^`]+)`")
_COMMENT = re.compile(r"(?:^|\s)#.*$")


def _commands_in(text: str, where: str, exported: dict[str, str] | None = None) -> list[DocCommand]:
    out = []
    for m in _START.finditer(text):
        rest = text[m.end() :]
        rest = rest[: _END.search(rest).start()]
        kind, target = ("module", m["module"]) if m["module"] else ("run", "run.py")
        env = {**(exported or {}), **dict(a.split("=", 1) for a in m["env"].split())}
        shown = " ".join((m.group(0) + rest).split())
        out.append(DocCommand(where, shown, kind, target, tuple(_substitute(rest, where)), tuple(sorted(env.items()))))
    return out


def _substitute(rest: str, where: str) -> list[str]:
    def variable(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in SHELL_VARIABLES, f"{where}: add a value for ${name} to SHELL_VARIABLES"
        return SHELL_VARIABLES[name]

    rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", variable, rest)
    for placeholder, value in PLACEHOLDERS.items():
        rest = rest.replace(placeholder, value)
    assert not re.search(r"<[^<>=]+>", rest), f"{where}: add the placeholder in {rest!r} to PLACEHOLDERS"
    args = []
    for token in shlex.split(rest):
        if token in ELLIPSES:
            continue
        key, eq, value = token.partition("=")
        if eq and value in ELLIPSES:
            assert key in ELIDED_VALUES, f"{where}: add a plausible value for {key}=... to ELIDED_VALUES"
            token = f"{key}={ELIDED_VALUES[key]}"
        args.append(token)
    return args


def collect(paths: list[Path] = DOCS, root: Path = REPO) -> list[DocCommand]:
    """Commands of the docs in ``paths``: fenced code (continuations joined, comments dropped) and inline code."""
    commands = []
    for path in paths:
        name = path.relative_to(root).as_posix()
        lines = path.read_text().splitlines()
        in_code, i, exported = False, 0, {}
        while i < len(lines):
            line, first = lines[i], i + 1
            if _FENCE.match(line):
                in_code, exported = not in_code, {}
            elif in_code:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i]
                line = _COMMENT.sub("", line)
                if m := _EXPORT.match(line):
                    exported[m[1]] = m[2]
                commands += _commands_in(line, f"{name}:{first}", exported)
            else:
                # inline code may wrap onto the next line: look at each paragraph line joined with the next
                joined = line + ("\n" + lines[i + 1] if i + 1 < len(lines) and not _FENCE.match(lines[i + 1]) else "")
                for m in _INLINE.finditer(joined):
                    if m.start() < len(line):
                        commands += _commands_in(" ".join(m.group(1).split()), f"{name}:{first}")
            i += 1
    return commands


COMMANDS = collect()
RUN = [c for c in COMMANDS if c.kind == "run"]
MODULES = [c for c in COMMANDS if c.kind == "module"]


def _param(c: DocCommand):
    marks = [pytest.mark.skip(reason=SKIPPED[c.text])] if c.text in SKIPPED else []
    return pytest.param(c, id=str(c)[:120], marks=marks)


def test_the_docs_show_commands_of_both_kinds():
    """The extraction itself works: it finds the commands of each file (a broken regex would pass everything)."""
    files = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/datasets.md", "docs/distributed.md", "sweeps/README.md"} <= files
    assert len(RUN) >= 30 and len(MODULES) >= 5
    assert any(c.args[:1] == ("-m",) and "--config-dir" in c.args for c in RUN)  # sweeps
    assert any("hydra/launcher=submitit_slurm" in c.args for c in RUN)  # continuation lines joined


def test_extraction_handles_placeholders_and_inline_code(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "Run `python run.py task=eval eval.model=... benchmark=aime` or\n"
        "```bash\n"
        "srun python run.py hydra.run.dir=outputs/${SLURM_JOB_ID} \\\n"
        "    method=dft ...   # a comment: python run.py method.not_a_command=1\n"
        "python -m vcore.tools.report multirun/<sweep>/<date> --out r   # tables\n"
        "```\n"
    )
    found = [(c.where, c.kind, c.target, c.args) for c in collect([doc], root=tmp_path)]
    assert found == [
        ("x.md:1", "run", "run.py", ("task=eval", "eval.model=outputs/2026-01-01/12-00-00", "benchmark=aime")),
        ("x.md:3", "run", "run.py", ("hydra.run.dir=outputs/1234", "method=dft")),
        ("x.md:5", "module", "vcore.tools.report", ("multirun/synthetic_study/2026-01-01", "--out", "r")),
    ]


# ------------------------------------------------------------------------------------------------ run.py
def _hydra(config_dir: str | None):
    """The Hydra object that ``run.py`` builds: ``conf/`` as its config path, ``--config-dir`` put in front of it
    (the code of Hydra's ``_run_hydra``)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(str(REPO / "run.py"), None, "conf")
    if config_dir is not None:
        path = (REPO / config_dir).resolve()
        assert path.is_dir(), f"--config-dir {config_dir} does not exist"
        search_path.prepend(provider="command-line", path=f"file://{path}", anchor=SearchPathQuery(provider="schema"))
    return Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)


def sweep_jobs(overrides: list[str]) -> tuple[int, list[list[str]]]:
    """Jobs of a sweep as Hydra's basic sweeper orders the overrides (later keys replace earlier ones): the number of
    jobs, and a covering subset in which every value of every key appears at least once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lists: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_interval_sweep():
            # An Optuna search space (sweeps/optuna_*.yaml): its two ends stand for the values it draws.
            lists[key] = [f"{key}={o.value().start}", f"{key}={o.value().end}"]
        elif o.is_sweep_override():
            assert o.is_discrete_sweep(), f"{o.input_line}: only comma-separated and interval sweeps are checked"
            lists[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            lists[key] = [f"{key}={o.get_value_element_as_str()}"]
    values = list(lists.values())
    width = max((len(v) for v in values), default=1)
    return math.prod(len(v) for v in values), [[v[i % len(v)] for v in values] for i in range(width)]


def _validate(cfg, out_dir: Path) -> None:
    from vcore.config import to_object

    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
        cfg.output_dir = str(out_dir)  # ${hydra:runtime.output_dir} only exists inside a running job
    to_object(cfg)


@lru_cache(maxsize=None)
def check_run_args(args: tuple[str, ...], out_dir: Path, every_value: bool = False, env: tuple = ()) -> int:
    """Compose and validate ``python run.py *args`` as Hydra would; the number of configs validated.

    A multirun validates its first job (every key it sets) and checks that each swept value of a config group names
    an option of that group; ``every_value`` validates jobs until every swept value has been composed once. ``env``
    holds the command's environment variables; the test's own ``VCORE_DATA_ROOT`` is not used.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VCORE_DATA_ROOT", raising=False)
        for name, value in env:
            mp.setenv(name, value)
        return _check_run_args(args, out_dir, every_value)


def _check_run_args(args: tuple[str, ...], out_dir: Path, every_value: bool) -> int:
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from vcore.config import register_configs

    parsed = get_args_parser().parse_args(list(args))
    assert parsed.config_path is None, "run.py takes --config-dir, not --config-path"
    for launcher, module in LAUNCHER_PLUGINS.items():
        if f"hydra/launcher={launcher}" in parsed.overrides and importlib.util.find_spec(module) is None:
            pytest.skip(f"the {launcher} launcher plugin is not installed (pip install -e '.[sweeps]')")
    register_configs()
    name = parsed.config_name or "train"
    hydra = _hydra(parsed.config_dir)
    mode = RunMode.MULTIRUN if parsed.multirun else RunMode.RUN
    try:
        master = hydra.compose_config(name, list(parsed.overrides), run_mode=mode, with_log_configuration=False)
        if mode == RunMode.RUN:
            _validate(master, out_dir)
            return 1
        params = master.hydra.sweeper.params
        lines = [f"{k}={v}" for k, v in (OmegaConf.to_container(params) if params else {}).items()]
        lines += list(master.hydra.overrides.task)
        for o in OverridesParser.create().parse_overrides(lines):
            group = o.key_or_group
            if o.is_sweep_override() and group in hydra.config_loader.list_groups(""):
                # the search path the command composes with (hydra.searchpath=[...] adds a config dir of one's own,
                # on the command line or in the sweep's own file)
                overrides = list(parsed.overrides)
                if master.hydra.searchpath and not any(x.startswith("hydra.searchpath=") for x in overrides):
                    overrides.append(f"hydra.searchpath=[{','.join(master.hydra.searchpath)}]")
                options = hydra.config_loader.get_group_options(group, config_name=name, overrides=overrides)
                unknown = [v for v in o.sweep_string_iterator() if v not in options]
                assert not unknown, f"{group}={','.join(unknown)}: not an option of {group} ({', '.join(options)})"
        _, jobs = sweep_jobs(lines)
        for job in jobs if every_value else jobs[:1]:
            _validate(hydra.config_loader.load_sweep_config(master, job), out_dir)
        return len(jobs) if every_value else 1
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("command", [_param(c) for c in RUN])
def test_documented_run_command_composes_and_validates(command, tmp_path_factory):
    out_dir = tmp_path_factory.getbasetemp() / "docs_run"  # one dir, so repeated commands hit the cache
    check_run_args(command.args, out_dir, env=command.env)


@pytest.mark.slow
@pytest.mark.parametrize("command", [_param(c) for c in RUN if "-m" in c.args or "--multirun" in c.args])
def test_documented_multirun_composes_every_swept_value(command, tmp_path_factory):
    check_run_args(command.args, tmp_path_factory.getbasetemp() / "docs_run", every_value=True, env=command.env)


def test_a_documented_key_that_does_not_exist_fails(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        check_run_args(("method=dft", "trainer.not_a_key=1"), tmp_path)
    with pytest.raises(ConfigCompositionException, match="not_a_key"):  # a key of the sweep's jobs
        check_run_args(("-m", "-cd", "sweeps", "-cn", "variance_control", "method.not_a_key=1,2"), tmp_path)
    with pytest.raises(AssertionError, match="dfft"):  # a swept group value that is no option
        check_run_args(("-m", "method=sft,dfft"), tmp_path)


# ------------------------------------------------------------------------------------------------ python -m vcore...
@lru_cache(maxsize=None)
def module_help(module: str) -> str:
    """``python -m <module> --help``, run in-process the way ``python -m`` runs it; its output."""
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    argv, out = sys.argv, io.StringIO()
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    assert exit_.value.code in (0, None), f"python -m {module} --help exited with {exit_.value.code}"
    return out.getvalue()


@pytest.mark.parametrize("command", [_param(c) for c in MODULES])
def test_documented_module_command_exists_with_its_flags(command, tmp_path_factory):
    text = module_help(command.target)
    assert "usage:" in text
    flags = [a.split("=", 1)[0] for a in command.args if a.startswith("-")]
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"python -m {command.target} has no {', '.join(missing)}"
    if command.target in OVERRIDE_MODULES:
        overrides = tuple(a for a in command.args if "=" in a and not a.startswith("-"))
        check_run_args(overrides, tmp_path_factory.getbasetemp() / "docs_run", env=command.env)


# ------------------------------------------------------------------------------------------------ sweeps/README table
def test_sweeps_readme_job_counts():
    """The "jobs" column of sweeps/README.md equals the size of each sweep's grid (Optuna: its trials per run)."""
    text = (REPO / "sweeps" / "README.md").read_text()
    rows = re.findall(r"^\|([^|]*\.yaml[^|]*)\|[^|]*\|\s*(\d+)\s*\|$", text, re.M)
    assert rows
    listed = set()
    for files, jobs in rows:
        for name in re.findall(r"`([\w.]+)\.yaml`", files):
            sweeper = OmegaConf.load(REPO / "sweeps" / f"{name}.yaml").hydra.sweeper
            count, _ = sweep_jobs([f"{k}={v}" for k, v in sweeper.params.items()])
            count = sweeper.get("n_trials", count)
            assert count == int(jobs), f"sweeps/README.md lists {jobs} jobs for {name}.yaml; its grid has {count}"
            listed.add(name)
    assert listed == {p.stem for p in (REPO / "sweeps").glob("*.yaml")}, "every sweep has a row in the table"


def test_sweep_cover_has_every_value():
    count, jobs = sweep_jobs(["method=sft,dft,vcore", "seed=1,2", "trainer.max_steps=3", "method=sft,vcore"])
    assert count == 4  # the later method list replaces the earlier one, as in Hydra's basic sweeper
    assert [j[0] for j in jobs] == ["method=sft", "method=vcore"] and {j[1] for j in jobs} == {"seed=1", "seed=2"}
    assert all(j[2] == "trainer.max_steps=3" for j in jobs)


# ------------------------------------------------------------------------------------------------ W&B sweep files
@pytest.mark.parametrize("path", sorted((REPO / "sweeps" / "wandb").glob("*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweep_agent_commands_compose_and_validate(path, tmp_path_factory):
    """What W&B's agent runs for a sweep file (sweeps/wandb/*.yaml), for parameter sets covering every value, is a
    run.py command checked like the docs' ones; the agent's environment gives the run and sweep ids it reads."""
    from vcore.search.wandb_sweep import agent_command, load_sweep, parameter_sets

    sweep = load_sweep(path)
    env = (("WANDB_RUN_ID", "run1"), ("WANDB_SWEEP_ID", "sweep1"))
    for params in parameter_sets(sweep):
        command = agent_command(sweep, params)
        args = command[command.index(sweep["program"]) + 1 :]
        assert check_run_args(tuple(args), tmp_path_factory.getbasetemp() / "docs_run", env=env) == 1
