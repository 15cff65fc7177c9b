"""The notebooks' parameters: checked by name and type before anything trains, with messages that say the fix."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from imae.companion import notebook as nb
from imae.config import coerce
from imae.errors import ConfigError
from imae.parameters import PARAMETER_TYPES, check_parameters, parameters_in
from imae.companion.reproduce import NOTEBOOKS

REPO = Path(__file__).resolve().parents[1]


def test_parameter_types_are_checked_by_name():
    ok = dict(preset="tiny", mae_epochs=None, same_prob=1, overrides={}, same_probs=[0.0])
    assert check_parameters(**ok) == ok  # returned unchanged (same_prob stays the int 1)
    with pytest.raises(ConfigError, match=r"mae_epochs must be a whole number, got 'ten' \(str\).*-p mae_epochs 10"):
        check_parameters(mae_epochs="ten")
    with pytest.raises(ConfigError, match="overrides must be a dict.*-y 'overrides: ...'"):
        check_parameters(overrides="x")
    with pytest.raises(ConfigError, match="unknown notebook parameter 'epochz'"):
        check_parameters(epochz=3)


def test_coerce_is_the_one_public_type_check():
    assert coerce("train.blr", 1, float) == 1.0 and isinstance(coerce("train.blr", 1, float), float)
    assert coerce("x", None, PARAMETER_TYPES["n_pairs"]) is None
    with pytest.raises(ConfigError, match=r"seed must be a whole number, got True \(bool\)"):
        coerce("seed", True, int)


def test_setup_checks_the_notebook_namespace_and_ignores_its_other_names():
    namespace = {"preset": "tiny", "seeds": [0, 1], "results_dir": "results", "arms": object(), "__name__": "x"}
    assert nb.setup(namespace) == {"preset": "tiny", "seeds": [0, 1], "results_dir": "results"}
    assert parameters_in(namespace) == nb.setup(namespace)
    with pytest.raises(ConfigError, match="seeds must be a list"):
        nb.setup({**namespace, "seeds": 3})


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_parameter_is_known_and_its_default_passes(name):
    book = nbformat.read(REPO / "experiments" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    defaults = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        defaults[node.targets[0].id] = ast.literal_eval(node.value)
    assert defaults and set(defaults) <= set(PARAMETER_TYPES), set(defaults) - set(PARAMETER_TYPES)
    assert nb.setup(defaults) == defaults
