"""The project's own ruff settings (pyproject.toml: [tool.ruff]) hold on the whole repository.

``ruff check`` (E, F, W, I at 120 columns) and ``ruff format --check`` run on the checkout as a developer runs them
by hand, so a failure here is fixed with ``ruff format .`` and ``ruff check --fix .`` (long strings and comments by
hand). Ruff comes with the ``test`` extra; without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SHOWN = 200  # lines of ruff's report kept in a failure message


def ruff_command() -> list[str] | None:
    """The ruff of this interpreter's environment (the binary beside ``sys.executable``, or ``-m ruff``), or None."""
    binary = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if binary:
        return [binary]
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return None


@pytest.fixture(scope="module")
def ruff() -> list[str]:
    command = ruff_command()
    if command is None:
        reason = "ruff is not installed in this environment: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs the test extra, so it must be there)")
        pytest.skip(reason)
    return command


def run_ruff(ruff: list[str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    # --no-cache: a test writes nothing into the checkout.
    return subprocess.run(
        [*ruff, *args, "--no-cache"], cwd=REPO, input=stdin, capture_output=True, text=True, timeout=300
    )


def report(proc: subprocess.CompletedProcess, ruff: list[str], fix: str) -> str:
    version = run_ruff(ruff, "--version").stdout.strip() if proc.returncode else ""
    lines = (proc.stdout + proc.stderr).splitlines()
    more = f"\n... ({len(lines) - SHOWN} more lines)" if len(lines) > SHOWN else ""
    return f"{version} (pyproject.toml pins the test extra's ruff); fix with {fix}:\n" + "\n".join(lines[:SHOWN]) + more


def test_the_project_settings_are_the_ones_in_force(ruff):
    """The checks below would pass vacuously if ruff read other settings or skipped files: a probe shows they do not."""
    probe = "import sys\nimport os\n\nx = " + repr("a" * 114) + "\ny = " + repr("b" * 115) + "\nprint(os, sys, x, y)\n"
    assert [len(line) for line in probe.splitlines()][3:5] == [120, 121]
    proc = run_ruff(
        ruff, "check", "--output-format", "concise", "--stdin-filename", str(REPO / "lint_probe.py"), "-", stdin=probe
    )
    found = {line.split(": ", 1)[1].split()[0] for line in proc.stdout.splitlines() if line.count(":") >= 3}
    assert proc.returncode == 1 and found == {"I001", "E501"}, proc.stdout + proc.stderr  # unsorted imports, y only
    assert ":5:121: E501" in proc.stdout, proc.stdout

    listed = run_ruff(ruff, "check", "--show-files", ".")
    assert listed.returncode == 0, listed.stderr
    checked = {Path(line).resolve() for line in listed.stdout.splitlines() if line.strip()}
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0:  # a git checkout: every tracked Python file is checked
        missing = sorted(f for f in tracked.stdout.split() if (REPO / f).resolve() not in checked)
        assert not missing, f"ruff skips these tracked files (an exclude in pyproject.toml?): {missing}"
    assert {REPO / "run.py", REPO / "vcore" / "__init__.py", Path(__file__).resolve()} <= checked


def test_ruff_check_passes(ruff):
    proc = run_ruff(ruff, "check", "--output-format", "concise", ".")
    assert proc.returncode == 0, report(proc, ruff, "`ruff check --fix .` (long lines by hand)")


def test_ruff_format_leaves_the_code_as_it_is(ruff):
    proc = run_ruff(ruff, "format", "--diff", ".")
    assert proc.returncode == 0, report(proc, ruff, "`ruff format .`")
