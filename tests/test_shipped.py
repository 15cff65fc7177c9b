"""Shipped runs (imae.shipped): a fresh clone restores the CPU edition's trained runs from the repository's
weights instead of training them, bit for bit as the book computed them; IMAE_RETRAIN=1 trains instead."""

import gzip
import json

import pytest
import torch

from imae import shipped
from imae.companion.experiments import cached_run

MICRO = {"data.download": False, "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
         "model.decoder_embed_dim": 32, "model.decoder_depth": 1, "model.decoder_num_heads": 2,
         "train.batch_size": 32, "train.epochs": 1, "train.warmup_epochs": 0.5, "train.device": "cpu"}


@pytest.fixture()
def no_training(monkeypatch):
    """Training anything fails the test: what is asked must come from the shipped weights."""
    from imae import train

    def refuse(self, *a, **k):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(train.Trainer, "fit", refuse)


def _weights(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def test_a_fresh_clone_restores_shipped_runs_without_training(toy_root, tmp_path, monkeypatch, request):
    monkeypatch.setattr(shipped, "weights_root", lambda: tmp_path / "weights")
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    opts = {**MICRO, "data.root": str(toy_root)}
    mae = cached_run("tiny", "mae", runs_dir=tmp_path / "trained", progress=False, **opts)
    imae = cached_run("tiny", "imae", runs_dir=tmp_path / "trained", teacher=mae, progress=False, **opts)
    cards = [shipped.ship(r) for r in (mae, imae)]
    text = " ".join(c.read_text() for c in cards)
    assert str(tmp_path) not in text and str(toy_root) not in text  # no machine paths in what ships
    assert all((c.parent / f"{c.stem}.metrics.jsonl.gz").is_file() for c in cards)

    request.getfixturevalue("no_training")
    fresh = tmp_path / "fresh-clone-runs"
    mae2 = cached_run("tiny", "mae", runs_dir=fresh, progress=False, **opts)
    imae2 = cached_run("tiny", "imae", runs_dir=fresh, teacher=mae2, progress=False, **opts)
    assert (mae2.name, imae2.name) == (mae.name, imae.name)  # the same configurations, the same names
    for a, b in ((mae, mae2), (imae, imae2)):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k].half().float(), wb[k].float()) for k in wa if wa[k].is_floating_point())
    log = (imae2 / "metrics.jsonl").read_text().splitlines()
    assert log and log == (imae / "metrics.jsonl").read_text().splitlines()
    # the restored i-MAE's teacher verifies against the restored MAE (what the metrics check)
    from imae.metrics.loading import load_model, load_reference
    ref = load_reference(load_model(imae2, device="cpu"), device="cpu")
    assert ref.fingerprint == json.loads(cards[0].read_text())["fingerprint"]


def test_retrain_ignores_the_shipped_runs(toy_root, tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "weights_root", lambda: tmp_path / "weights")
    opts = {**MICRO, "data.root": str(toy_root)}
    mae = cached_run("tiny", "mae", runs_dir=tmp_path / "a", progress=False, **opts)
    shipped.ship(mae)
    monkeypatch.setenv(shipped.RETRAIN_ENV, "1")
    from imae import train

    calls = []
    real = train.Trainer.fit
    monkeypatch.setattr(train.Trainer, "fit", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    again = cached_run("tiny", "mae", runs_dir=tmp_path / "b", progress=False, **opts)
    assert calls and again.name == mae.name and "stored_weights" not in torch.load(
        again / "checkpoint.pt", map_location="cpu", weights_only=False)


def test_an_unfinished_run_is_not_shipped(toy_root, tmp_path):
    from imae.checkpoint import save_checkpoint
    from imae.errors import ImaeError

    run = tmp_path / "tiny-mae-0000000000"
    run.mkdir()
    save_checkpoint({"finished": False, "config": {}, "fingerprint": "0000000000"}, run / "checkpoint.pt")
    with pytest.raises(ImaeError, match="not finished"):
        shipped.ship(run, root=tmp_path / "w")


def test_the_repositorys_shipped_runs_are_portable_and_verified():
    from imae.pretrained import verify

    cards = sorted(shipped.weights_root().glob("*/*.json"))
    for card in cards:
        text = card.read_text()
        assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text, card
        verify(card)  # checksum of the weights file
        assert gzip.open(card.with_name(card.stem + ".metrics.jsonl.gz")).readline()
