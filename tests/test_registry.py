"""One registry of evaluations (imae.evaluations): a metric registered in one place is seen by the API, the
command line and the campaign; an unknown name is an error that names the known ones."""

import pytest

from imae import evaluations
from imae.errors import ConfigError


def dummy_metric(model, data, *, scale: float = 1.0, device="cpu") -> dict:
    """A registered evaluation for the tests: the number of test images times ``scale``."""
    return {"value": scale * len(data.test)}


@pytest.fixture()
def dummy():
    ev = evaluations.register(evaluations.Evaluation(
        "dummy-count", "tests.test_registry:dummy_metric", "model", "counts test images",
        summary=lambda r: {"value": r["value"]}, forwards=lambda o, ntr, nte, a: nte, fits=lambda o, p, a: 0))
    yield ev
    evaluations.unregister("dummy-count")


def test_a_registered_evaluation_reaches_the_api_the_cli_and_the_campaign(dummy, mae_run):
    from imae import evaluate_cli
    from imae.campaign import planner
    from imae.campaign.stages import default_stages
    from imae.cli import build_parser
    from imae.metrics import evaluate
    from imae.metrics.evaluate import options_for, whats

    assert "dummy-count" in whats() and "scale" in options_for("dummy-count")
    r = evaluate(mae_run, "dummy-count", device="cpu", scale=2.0)
    assert r["value"] == 2.0 * r["metadata"]["n_test_images"] and r["what"] == "dummy-count"
    assert evaluate_cli._whats("dummy-count") == ["dummy-count"] and "dummy-count" in evaluate_cli._whats("all")
    help_text = build_parser().format_help() + " ".join(
        a.help or "" for sp in build_parser()._subparsers._group_actions for p in sp.choices.values()
        for a in p._actions)
    assert "dummy-count" in help_text
    stages = {s.name: s for s in default_stages("tiny")}
    assert ("mae", "dummy-count") in stages["eval"].evals and ("@mae", "dummy-count") in stages["seed1"].evals
    assert planner.eval_forwards("dummy-count", {}, 100, 40) == 40 and planner.eval_fits("dummy-count", {}) == 0
    from imae.campaign.steps import _summary
    assert _summary("dummy-count", {"value": 3.0}) == {"value": 3.0}


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(ConfigError, match="Did you mean 'separability'"):
        evaluations.get("separabilty")
    with pytest.raises(ValueError, match="registered already"):
        evaluations.register(evaluations.Evaluation("knn", "imae.metrics.probes:knn", "encoder", "again"))
    with pytest.raises(ValueError, match="input"):
        evaluations.Evaluation("x", "m:f", "pixels", "bad input")
    from imae.metrics.evaluate import evaluate
    with pytest.raises(ConfigError, match="unknown evaluation"):
        evaluate("nowhere", "no-such-metric")


def test_the_built_in_evaluations_and_their_kinds():
    assert evaluations.names()[:5] == ("knn", "linear-probe", "separability", "semantics", "reconstruction")
    assert evaluations.clean_classifiers() == ("knn", "linear-probe")
    assert "finetune" not in evaluations.frozen() and evaluations.get("finetune").trains
    assert evaluations.get("reconstruction").uses_reference("imae") and not evaluations.get("reconstruction").uses_reference("mae")
    for name in evaluations.names():
        assert callable(evaluations.get(name).load())
