"""Model cards and licences: the published models' card is generated from the stored results (and is current),
quotes the campaign's own evaluations, names no machine path; the weights' JSON cards are portable; LICENSE is
the MIT licence pyproject.toml declares."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from imae.cards import measurements, published_readme
from imae.config import build_config
from imae.export import Source, absolute_paths
from imae.models import mae_from_config
from imae.pretrained import load_pretrained, make_portable, portable_card, read_card

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = sorted(REPO.glob("campaign/*/weights"))
MIT_GRANT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
             "associated documentation files (the \"Software\"), to deal in the Software without restriction")


def _words(text: str) -> str:
    return " ".join(text.split())


def test_license_is_the_mit_licence_pyproject_declares():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    text = (REPO / "LICENSE").read_text()
    assert project["license"] == cff["license"] == "MIT"
    assert text.splitlines()[0] == "MIT License"
    assert re.search(r"^Copyright \(c\) \d{4} \S", text, re.M)
    assert MIT_GRANT in _words(text) and 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in _words(text)


def test_the_absolute_path_check_finds_machine_paths_and_nothing_else():
    assert absolute_paths('"root": "/tmp/imae-campaign/data"') == ["/tmp/imae-campaign/data"]
    assert absolute_paths("teacher C:\\runs\\cifar-mae here") == ["C:\\runs\\cifar-mae"]
    assert absolute_paths("see `/home/me/x` and (/work/main/runs/a)") == ["/home/me/x", "/work/main/runs/a"]
    harmless = ("https://arxiv.org/abs/2210.11470, 19,710 images/s, kNN / probe, book/results/cifar/paper_scale.json, "
                "local-dir:PATH/TO/THIS/FOLDER, hf-hub:OWNER/NAME, α·x_sub + (1 − α)·x_dom")
    assert absolute_paths(harmless) == []


def test_published_files_hold_no_machine_path():
    files = [f for w in WEIGHTS for f in sorted(w.iterdir()) if f.suffix in (".json", ".md")] + [REPO / "LICENSE"]
    assert any(f.suffix == ".json" for f in files) and any(f.name == "README.md" for f in files)
    found = {f.relative_to(REPO).as_posix(): absolute_paths(f.read_text()) for f in files}
    assert not {f: p for f, p in found.items() if p}, (
        f"machine paths in published files: { {f: p for f, p in found.items() if p} }. Fix: "
        "python -m imae.cards (makes the weights' cards portable and rewrites the README)")


@pytest.mark.parametrize("folder", WEIGHTS, ids=lambda p: p.parent.name)
def test_published_card_is_generated_from_the_stored_results(folder):
    committed = (folder / "README.md").read_text()
    assert committed == published_readme(folder.parent.name), (
        f"{folder / 'README.md'} is not what the stored cards and results give. Fix: python -m imae.cards")


def _row(card: str, model: str, measure: str) -> list[float]:
    """The numbers of a measure's row in the section of ``model``: [mean, lo, hi, (control...)]."""
    section = card.split(f"## {model}:")[1].split("\n## ")[0]
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {measure} |"))
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line.split("|")[2])]


@pytest.mark.parametrize("model,stage", [("cifar-mae", "mae"), ("cifar-imae", "imae")])
def test_card_numbers_are_the_campaigns_own_evaluations(model, stage):
    """Read back against the raw stored evaluations (not the book's record the card is made from)."""
    card = (REPO / "campaign" / "cifar" / "weights" / "README.md").read_text()
    evals = REPO / "campaign" / "cifar" / "results" / "eval" / "evals" / stage
    fingerprint = read_card(REPO / "campaign" / "cifar" / "weights" / f"{model}.json")["fingerprint"]
    for what, measure in (("linear-probe", "linear probe top-1"), ("knn", "kNN top-1 (k = 20, T = 0.07)")):
        stored = json.loads((evals / f"{what}.json").read_text())
        assert stored["metadata"]["fingerprint"] == fingerprint
        mean, lo, hi = _row(card, model, measure)
        assert mean == pytest.approx(100 * stored["accuracy"]["mean"], abs=0.051)
        assert lo < mean < hi and hi - lo < 2.5  # a 95 % interval over 10,000 test images
    import numpy as np

    sep = json.loads((evals / "separability.json").read_text())
    k = sep["alphas"].index(0.3)
    with np.load(evals / sep["items_file"]) as z:
        sse, sst = z["mean/sub/sse"].astype(np.float64)[k], z["mean/sub/sst"].astype(np.float64)
    mean, lo, hi = _row(card, model, "LS: subordinate image's R² at α = 0.3")
    assert mean == pytest.approx(1 - sse.sum() / sst.sum(), abs=0.0006) and lo < mean < hi


def test_no_numbers_are_quoted_for_evaluations_of_another_model(tmp_path):
    """The card quotes the book's record only when the campaign's stored evaluations are of this model."""
    repo = tmp_path / "repo"
    for rel in ("book/results/cifar/paper_scale.json", "campaign/cifar/results/eval/evals/mae"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / rel).is_dir():
            shutil.copytree(REPO / rel, repo / rel)
        else:
            shutil.copy(REPO / rel, repo / rel)
    card = read_card(REPO / "campaign" / "cifar" / "weights" / "cifar-mae.json")
    src = Source(mae_from_config(build_config("tiny").model), None, "mae", card["fingerprint"], "cifar-mae",
                 "published", card=card)
    assert measurements(src, repo)["rows"]
    f = repo / "campaign/cifar/results/eval/evals/mae/knn.json"
    body = json.loads(f.read_text())
    body["metadata"]["fingerprint"] = "someoneelse"
    f.write_text(json.dumps(body))
    assert measurements(src, repo) is None
    retrained = {**card, "trained": {**card["trained"], "epochs": card["trained"]["epochs"] + 1}}
    f.write_text(json.dumps({**body, "metadata": {**body["metadata"], "fingerprint": card["fingerprint"]}}))
    assert measurements(Source(src.mae, None, "mae", card["fingerprint"], "cifar-mae", "published", card=retrained),
                        repo) is None


def test_a_run_of_the_books_cpu_edition_gets_its_arms_numbers():
    record = json.loads((REPO / "book" / "results" / "small" / "classification.json").read_text())
    label, run = next((k, v) for k, v in record["runs"].items() if k.startswith("MAE (seed"))
    cfg = build_config("small", method="mae")
    src = Source(mae_from_config(build_config("tiny").model), cfg, "mae", run["fingerprint"], run["run"], "run")
    m = measurements(src, REPO)
    assert m["scope"] == "arm" and m["label"] == "MAE" and m["seed"] == run["seed"]
    probe = next(r for r in m["rows"] if r["measure"] == "linear probe top-1")
    est = record["accuracy"]["linear probe"]["MAE"]
    assert probe["value"] == f"{100 * est['mean']:.1f} % [{100 * est['lo']:.1f}, {100 * est['hi']:.1f}]"
    assert probe["seeds"] == est["n_seeds"] == len(record["seeds"])
    other = Source(src.mae, cfg, "mae", "0000000000", "x", "run")
    assert measurements(other, REPO) is None


def test_a_runs_own_stored_evaluations_are_quoted_with_intervals(tmp_path, toy_root):
    from imae.checkpoint import FORMAT, save_checkpoint
    from imae.metrics import evaluate

    cfg = build_config("tiny", method="mae", **{"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
                                                "data.root": str(toy_root), "data.download": False})
    torch.manual_seed(0)
    mae = mae_from_config(cfg.model)
    run = tmp_path / "run"
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "model": mae.state_dict(), "fingerprint": "f1",
                     "finished": True, "epoch": 3, "step": 30, "elapsed_s": 12.5, "hardware": "CPU"},
                    run / "checkpoint.pt")
    src = Source(mae.eval(), cfg, "mae", "f1", "run", "run", run=run)
    assert measurements(src, tmp_path) is None
    r = evaluate(run, "linear-probe", out=run / "eval" / "linear-probe-abc", device="cpu")
    m = measurements(src, tmp_path)
    (row,) = m["rows"]
    mean, lo, hi = (float(x) for x in re.findall(r"\d+\.\d+", row["value"]))
    assert mean == pytest.approx(100 * r["accuracy"]["mean"], abs=0.051) and lo <= mean <= hi and row["n"] == 100


def test_weights_cards_are_portable_and_still_load(tmp_path):
    card = read_card(REPO / "campaign" / "cifar" / "weights" / "cifar-imae.json")
    assert portable_card(card) == card  # what is committed is portable already
    dirty = json.loads(json.dumps(card))
    dirty["config"]["data"]["root"] = "/tmp/imae-campaign/data"
    dirty["config"]["imae"]["teacher"] = "/tmp/imae-campaign/models/cifar-mae"
    clean = portable_card(dirty)
    assert clean["config"]["data"]["root"] is None and clean["config"]["imae"]["teacher"] == "cifar-mae"
    assert {k: v for k, v in clean.items() if k != "config"} == {k: v for k, v in dirty.items() if k != "config"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dirty))
    assert make_portable(path) and not make_portable(path)
    assert not absolute_paths(path.read_text())
    model = load_pretrained("cifar-imae")  # the portable card still builds and verifies the model
    assert model.card["config"]["imae"]["teacher"] == "cifar-mae"
