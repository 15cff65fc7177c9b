"""Shipped runs (imae.shipped): a fresh clone restores the CPU edition's trained runs from the repository's
weights instead of training them, bit for bit as the book computed them; IMAE_RETRAIN=1 trains instead."""

import gzip
import importlib
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


FT = dict(epochs=1, batch_size=64, max_images=100, seed=0, device="cpu")


def test_a_shipped_fine_tune_is_scored_not_trained(toy_root, tmp_path, monkeypatch):
    """A fine-tune (an evaluation that trains) ships its classifier: a fresh clone scores those weights on the
    test images and trains nothing; the accuracy is the trained one's (float16 weights), the record is kept;
    another recipe is refused; IMAE_RETRAIN=1 trains again."""
    from imae.companion.experiments import cached_evaluation
    from imae.errors import ImaeError
    ft_module = importlib.import_module("imae.metrics.finetune")  # the module (imae.metrics.finetune is the function)

    monkeypatch.setattr(shipped, "weights_root", lambda: tmp_path / "weights")
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    opts = {**MICRO, "data.root": str(toy_root)}
    mae = cached_run("tiny", "mae", runs_dir=tmp_path / "trained", progress=False, **opts)
    trained = cached_evaluation(mae, "finetune", **FT)
    assert "restored" not in trained
    folder = next((mae / "eval").glob("finetune-*"))
    assert (folder / ft_module.CLASSIFIER_FILE).is_file()  # the trained classifier is kept with the result
    shipped.ship(mae)
    [stored] = shipped.ship_finetunes(tmp_path / "trained", "tiny")
    record = json.loads(stored.with_suffix(".json").read_text())
    assert record["recipe"]["blr"] == trained["blr"] and record["accuracy"] == trained["accuracy"]
    assert str(tmp_path) not in stored.with_suffix(".json").read_text()  # no machine paths
    assert shipped.finetune_for(mae.name, {**FT, "device": "cuda", "data_root": "/elsewhere"}) == stored
    assert shipped.finetune_for(mae.name, {**FT, "blr": 1e-3}) is None  # another recipe is another fine-tune

    def refuse(*a, **k):
        raise AssertionError("a fine-tuning step ran")

    monkeypatch.setattr(ft_module, "probe_head", refuse)
    monkeypatch.setattr(ft_module.torch.optim, "AdamW", refuse)
    fresh = cached_run("tiny", "mae", runs_dir=tmp_path / "fresh", progress=False, **opts)
    restored = cached_evaluation(fresh, "finetune", **FT)
    assert restored["restored"]["file"] == stored.name
    assert restored["restored"]["recorded_accuracy"] == trained["accuracy"]
    n_test = restored["n_test"]
    assert abs(restored["accuracy"] - trained["accuracy"]) <= 2 / n_test  # float16 weights: at most a flip or two
    assert restored["curve"][0] == trained["curve"][0] and len(restored["curve"]) == len(trained["curve"])
    assert restored["curve"][-1]["test_accuracy"] == restored["accuracy"]
    assert restored["items"]["mean/correct"].shape == (n_test,)

    with pytest.raises(ImaeError, match="another recipe.*blr stored 0.0002 != asked 0.001"):
        cached_evaluation(fresh, "finetune", **{**FT, "blr": 1e-3, "restore_from": str(stored)})

    monkeypatch.setenv(shipped.RETRAIN_ENV, "1")  # retraining fine-tunes again: the refusals above fire
    with pytest.raises(AssertionError, match="a fine-tuning step ran"):
        cached_evaluation(fresh, "finetune", **{**FT, "seed": 0})


def test_the_repositorys_shipped_fine_tunes_are_portable_and_complete():
    records = sorted(shipped.weights_root().glob(f"*/{shipped.FINETUNE}/*.json"))
    for rec in records:
        text = rec.read_text()
        assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text, rec
        body = json.loads(text)
        assert rec.with_suffix(".safetensors").is_file() and body["curve"] and body["recipe"]["epochs"] >= 1
        # the record belongs to a run the repository ships (or an untrained control, built from its seed)
        run = body["run"]
        assert rec.name.startswith(run + "-") and (shipped.card_for(run) is not None or "-untrained-" in run)
