"""CITATION.cff is well-formed CFF 1.2.0 naming the paper; data/README.md is tracked and says what the code does.

(The CFF file was also validated against the official schema with `cffconvert --validate`; cffconvert is not a
test dependency because it pins jsonschema 3.x, older than the Jupyter stack needs.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import imae
from imae.data.datasets import data_root, load_arrays
from imae.errors import DatasetNotFoundError

REPO = Path(__file__).resolve().parents[1]
PAPER = "i-MAE: Are Latent Representations in Masked Autoencoders Linearly Separable?"


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomli = pytest.importorskip("tomli")
        return tomli.loads((REPO / "pyproject.toml").read_text())
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _person_ok(a: dict) -> bool:
    return bool(a.get("name") or (a.get("family-names") and a.get("given-names")))


def test_citation_cff_has_the_required_keys_and_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors"):  # required by CFF 1.2.0
        assert cff.get(key), f"CITATION.cff lacks {key}"
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert all(_person_ok(a) for a in cff["authors"])
    project = _pyproject()["project"]
    assert str(cff["version"]) == project["version"] == imae.__version__
    assert cff["license"] == project["license"]  # an SPDX expression in both
    refs = [r for r in cff.get("references", []) if r.get("title") == PAPER]
    assert len(refs) == 1, "the i-MAE paper must be listed under references"
    ref = refs[0]
    assert ref["type"] and ref["year"] == 2022
    assert [(a["given-names"], a["family-names"]) for a in ref["authors"]] == [("Kevin", "Zhang"),
                                                                              ("Zhiqiang", "Shen")]
    ids = {i["type"]: str(i["value"]) for i in ref["identifiers"]}
    assert ids["doi"] == "10.48550/arXiv.2210.11470" and "2210.11470" in ref["url"]
    for r in cff["references"]:  # every reference needs type, title and authors
        assert r.get("type") and r.get("title") and r.get("authors") and all(_person_ok(a) for a in r["authors"])


def test_data_readme_is_tracked_and_the_data_is_not():
    assert (REPO / "data" / "README.md").is_file()
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    check = lambda p: subprocess.run(["git", "check-ignore", "-q", p], cwd=REPO).returncode  # 0: ignored
    assert check("data/README.md") == 1
    assert check("data/cifar-10-batches-py/data_batch_1") == 0 and check("data/anything.npz") == 0


def test_data_readme_quotes_the_real_missing_data_message():
    readme = (REPO / "data" / "README.md").read_text()
    with pytest.raises(DatasetNotFoundError) as e:
        load_arrays("cifar10", "train", "/path/to/imae/data", download=False)
    assert f"error: {e.value}" in readme


def test_data_root_lookup_order_is_as_documented(monkeypatch, tmp_path):
    monkeypatch.delenv("IMAE_DATA", raising=False)
    assert data_root() == Path("data")
    monkeypatch.setenv("IMAE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root(tmp_path / "given") == tmp_path / "given"
    readme = (REPO / "data" / "README.md").read_text()
    assert readme.index("--data-root") < readme.index("IMAE_DATA") < readme.index("`./data`")
