"""The package as a user installs it, and the install requirements as CI and conda use them.

* fast: pyproject.toml states compatible ranges for torch/torchvision (the GPU machine's torch 2.11 through the
  tested 2.14.1); constraints.txt holds the exact pins, and the Makefile and environment.yml take them from there.
* slow (``-m "not slow"`` deselects it; ``make test`` runs it): ``python -m build`` makes an sdist and a wheel
  from a copy of the checkout, ``twine check --strict`` passes, and the wheel installed with ``--no-deps`` into a
  fresh venv (no torch in it) answers ``python -m imae --help``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _constraints() -> dict[str, Requirement]:
    reqs = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            r = Requirement(line)
            reqs[r.name] = r
    return reqs


def test_requirements_are_ranges_and_the_pins_live_in_constraints():
    deps = {Requirement(d).name: Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    pins = _constraints()
    for name in ("torch", "torchvision"):
        assert not any(s.operator in ("==", "===") for s in deps[name].specifier), f"{name} is pinned in pyproject"
        pin = pins[name]
        assert [s.operator for s in pin.specifier] == ["=="], f"constraints.txt must pin {name} exactly"
        assert deps[name].specifier.contains(Version(next(iter(pin.specifier)).version))
    # the GPU machine's versions and the tested ones are both admitted
    assert deps["torch"].specifier.contains("2.11.0") and deps["torch"].specifier.contains("2.14.1")
    assert deps["torchvision"].specifier.contains("0.26.0") and deps["torchvision"].specifier.contains("0.29.1")
    for name, pin in pins.items():  # every pin satisfies the range the package states
        if name in deps:
            assert deps[name].specifier.contains(next(iter(pin.specifier)).version), name


def test_makefile_and_conda_take_the_pins_from_constraints():
    make = (REPO / "Makefile").read_text()
    assert not re.search(r"torch(vision)?==", make), "the Makefile must not repeat the pins"
    assert "grep -E '^(torch|torchvision)==' $(CONSTRAINTS)" in make and "CONSTRAINTS := constraints.txt" in make
    assert "pip install -q -c $(CONSTRAINTS) -e" in make
    install = make[make.index("$(STAMP):"):]
    assert install.index("$(TORCH_PINS)\n") < install.index("-c $(CONSTRAINTS) -e")  # torch first
    out = subprocess.run(["make", "-s", "-n", "-B", "-f", "Makefile", ".venv/.installed"], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode == 0:  # make is present: the recipe really expands to the pinned torch install
        pins = " ".join(str(_constraints()[n]) for n in ("torch", "torchvision"))
        assert f"pip install -q {pins}" in out.stdout, out.stdout
    import yaml

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-c constraints.txt" in pip and not [p for p in pip if re.match(r"torch(vision)?\b", p)]


def test_help_needs_no_third_party_package():
    """What a fresh install without torch can do: --help of every subcommand (the slow test proves it with a
    real wheel in a real venv; this one blocks the imports in the development venv, on every run)."""
    block = "import sys\nfor m in ('torch', 'torchvision', 'timm', 'numpy', 'yaml', 'pandas'): sys.modules[m] = None\n"
    for argv in (["--help"], ["export", "--help"], ["pretrain", "--help"], ["evaluate", "--help"]):
        code = block + f"sys.argv = ['imae', *{argv!r}]\nimport runpy\nrunpy.run_module('imae', run_name='__main__')"
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, f"{argv}: {r.stderr[-2000:]}"


def _checkout_copy(dst: Path) -> Path:
    """The files a clone would have (tracked + new, not ignored), copied to ``dst``."""
    if shutil.which("git") and (REPO / ".git").exists():
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for rel in filter(None, files):
            src = REPO / rel
            if src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
    else:
        shutil.copytree(REPO, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "_build", "runs", "data", "*.egg-info", "__pycache__", "dist", "build"))
    return dst


@pytest.mark.slow
def test_sdist_and_wheel_build_check_and_install_in_a_clean_venv(tmp_path):
    src = _checkout_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run = lambda cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)

    r = run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], timeout=900)  # sdist, wheel from it
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdists, wheels = sorted(dist.glob("imae-*.tar.gz")), sorted(dist.glob("imae-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())

    r = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, sdists + wheels)], timeout=300)
    assert r.returncode == 0 and r.stdout.count("PASSED") == 2, r.stdout + r.stderr

    modules = {p.relative_to(src).as_posix() for p in (src / "imae").rglob("*.py")}
    in_wheel = set(zipfile.ZipFile(wheels[0]).namelist())
    assert modules <= in_wheel, f"missing from the wheel: {sorted(modules - in_wheel)}"
    with tarfile.open(sdists[0]) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md"} | modules <= in_sdist, sorted(({"pyproject.toml", "README.md"} | modules)
                                                                        - in_sdist)

    venv = tmp_path / "venv"
    r = run([sys.executable, "-m", "venv", str(venv)], timeout=300)  # no --system-site-packages: no torch
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    r = run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    elsewhere = tmp_path / "cwd"  # not the checkout: imae must come from the installed wheel
    elsewhere.mkdir()
    probe = ("import importlib.util as u, imae; print(imae.__file__); print(imae.__version__); "
             "print(u.find_spec('torch') is None)")
    r = run([str(py), "-c", probe], cwd=elsewhere, timeout=120)
    where, version, no_torch = r.stdout.split()
    assert Path(where).is_relative_to(venv) and version == _pyproject()["project"]["version"] and no_torch == "True"
    r = run([str(py), "-m", "imae", "--help"], cwd=elsewhere, timeout=120)
    assert r.returncode == 0, r.stderr
    for command in ("pretrain", "evaluate", "reproduce", "export", "make-toy-data"):
        assert command in r.stdout
    r = run([str(py), "-m", "imae", "export", "--help"], cwd=elsewhere, timeout=120)
    assert r.returncode == 0 and "--to" in r.stdout and "RUN" in r.stdout, r.stderr
