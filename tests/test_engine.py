"""Engine: determinism, checkpoints, resume equivalence, accumulation, schedule, run-directory caching."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
import yaml

from imae.checkpoint import load_checkpoint
from imae.config import build_config, derived
from imae.errors import RunDirError, TrainingInterrupted
from imae.runs import read_metrics
from imae.train import Trainer, lr_factor, pretrain

from .conftest import micro

LOSS_KEYS = ("loss", "loss_rec_sub", "loss_rec_dom", "loss_distill_sub", "loss_distill_dom")


def losses(run_dir, keys=("loss",)):
    return [[r[k] for k in keys] for r in read_metrics(run_dir) if "event" not in r]


def test_run_directory_is_complete(mae_run):
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt"} <= {p.name for p in mae_run.iterdir()}
    ckpt = load_checkpoint(mae_run)
    assert ckpt["finished"] and ckpt["step"] == 2 * 6  # 200 images / batch 32 -> 6 steps, 2 epochs
    for key in ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "config", "rng", "fingerprint"):
        assert key in ckpt
    assert ckpt["optimizer"]["state"], "optimizer moments must be saved"
    saved = yaml.safe_load((mae_run / "config.yaml").read_text())
    assert saved["fingerprint"] == ckpt["fingerprint"] and saved["derived"]["lr"] == pytest.approx(1.5e-3 * 32 / 256)
    assert not [p for p in mae_run.iterdir() if p.name.endswith(".tmp")]


def test_every_loss_term_is_logged_every_step(imae_run):
    recs = read_metrics(imae_run)
    assert [r["step"] for r in recs] == list(range(1, 13))
    for r in recs:
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS)
        assert r["loss"] == pytest.approx(sum(r[k] for k in LOSS_KEYS[1:]), rel=1e-5)


def test_same_seed_same_losses_and_other_seed_differs(toy_root, tmp_path, mae_run):
    again = pretrain(micro(toy_root), tmp_path / "again", progress=False)
    assert losses(again, ("loss",)) == losses(mae_run, ("loss",))
    other = pretrain(micro(toy_root, **{"train.seed": 1}), tmp_path / "other", progress=False)
    assert losses(other) != losses(mae_run)


def test_finished_run_is_returned_without_retraining(mae_run, toy_root):
    mtime = os.path.getmtime(mae_run / "checkpoint.pt")
    assert pretrain(micro(toy_root), mae_run, progress=False) == mae_run
    assert os.path.getmtime(mae_run / "checkpoint.pt") == mtime


def test_a_folder_of_another_config_is_refused_then_replaced_on_request(mae_run, toy_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mae_run, copy)
    cfg = micro(toy_root, **{"train.epochs": 3})
    with pytest.raises(RunDirError, match=r"different configuration .*train.epochs: 2 -> 3.*--overwrite"):
        pretrain(cfg, copy, progress=False)
    assert load_checkpoint(copy)["finished"]  # nothing was lost
    pretrain(cfg, copy, overwrite=True, progress=False)
    assert load_checkpoint(copy)["step"] == 18


def _interrupt_after(monkeypatch, calls: int, signum=signal.SIGTERM):
    """Deliver ``signum`` to this process during the ``calls``-th forward pass."""
    original = Trainer._forward
    count = {"n": 0}

    def forward(self, batch):
        count["n"] += 1
        if count["n"] == calls:
            os.kill(os.getpid(), signum)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_forward", forward)


@pytest.mark.parametrize("method", ["mae", "imae"])
def test_interrupted_then_resumed_equals_uninterrupted(method, toy_root, mae_run, imae_run, tmp_path, monkeypatch):
    extra = {"method": "imae", "imae.teacher": str(mae_run)} if method == "imae" else {}
    reference = mae_run if method == "mae" else imae_run
    cfg = micro(toy_root, **extra)
    _interrupt_after(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted) as e:
        pretrain(cfg, tmp_path / "run", progress=False)
    assert e.value.signum == signal.SIGTERM and "SIGTERM received: stopped at step 5/12" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 5 and not ckpt["finished"]
    monkeypatch.undo()
    pretrain(cfg, tmp_path / "run", progress=False)
    keys = LOSS_KEYS if method == "imae" else ("loss",)
    assert losses(tmp_path / "run", keys) == losses(reference, keys)
    final, ref = load_checkpoint(tmp_path / "run"), load_checkpoint(reference)
    assert all(torch.equal(final["model"][k], ref["model"][k]) for k in ref["model"])


def test_resume_from_a_mid_epoch_checkpoint(toy_root, mae_run, tmp_path, monkeypatch):
    """ckpt_every=1 makes every step a checkpoint; stopping at step 3 resumes mid-epoch (batch 3 of 6)."""
    cfg = micro(toy_root, **{"train.ckpt_every": 1})
    _interrupt_after(monkeypatch, 3, signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        pretrain(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run")["batch"] == 3
    monkeypatch.undo()
    pretrain(cfg, tmp_path / "run", progress=False)
    assert losses(tmp_path / "run") == losses(mae_run)


def test_accumulation_still_steps_on_a_dataset_shorter_than_one_group(toy_root, tmp_path):
    # 200 images, batch 64 -> 3 micro-batches per epoch, accum 4 -> one (short) optimizer step per epoch
    cfg = micro(toy_root, **{"train.batch_size": 64, "train.accum_iter": 4, "train.epochs": 3})
    run = pretrain(cfg, tmp_path / "acc", progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert load_checkpoint(run)["step"] == 3
    assert derived(cfg)["lr"] == pytest.approx(1.5e-3 * 256 / 256)


def test_accumulation_gives_the_gradient_of_one_big_batch(toy_root, tmp_path):
    """Two micro-batches of 16 accumulated (accum_iter 2) give the gradient of the same 32 images, under the
    same masks, in one batch: the loss of each micro-batch is scaled by 1/group, so the sum is the mean."""
    from imae.distributed import init_distributed

    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = {}
    for name, (bs, accum) in {"one": (32, 1), "two": (16, 2)}.items():
        cfg = micro(toy_root, **{"train.batch_size": bs, "train.accum_iter": accum})
        tr = Trainer(cfg, tmp_path / name, fp="test", device=torch.device("cpu"), info=init_distributed("cpu"),
                     teacher=None, progress=False)
        noise = torch.rand(32, tr.model_mae.num_patches, generator=torch.Generator().manual_seed(1))
        for rows in (slice(0, 32),) if accum == 1 else (slice(0, 16), slice(16, 32)):
            tr.micro_step({"x_a": x[rows], "seed": 0, "noise": noise[rows]}, accum)
        grads[name] = {k: p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None}
    assert grads["one"].keys() == grads["two"].keys() and len(grads["one"]) > 10
    for k, g in grads["one"].items():
        torch.testing.assert_close(grads["two"][k], g, rtol=1e-4, atol=1e-6, msg=k)
    # and the check can fail: without the 1/group scale, the accumulated gradient is twice as large
    doubled = {k: 2 * g for k, g in grads["two"].items()}
    assert not all(torch.allclose(doubled[k], g, rtol=1e-4, atol=1e-6) for k, g in grads["one"].items())


def test_lr_schedule_warmup_then_cosine():
    cfg = build_config("tiny", epochs=10, warmup_epochs=2, min_lr=0.0)
    f = [lr_factor(s, 10, cfg, 1.0) for s in range(101)]
    assert f[0] == 0 and f[10] == pytest.approx(0.5) and f[20] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.5) and f[100] == pytest.approx(0.0, abs=1e-12)
    assert all(x >= y for x, y in zip(f[20:], f[21:]))


def test_losses_fall_when_training_longer(toy_root, tmp_path, mae_run):
    cfg = micro(toy_root, **{"train.epochs": 8})
    run = pretrain(cfg, tmp_path / "long", progress=False)
    recs = read_metrics(run)
    first, last = recs[:6], recs[-6:]
    assert sum(r["loss"] for r in last) < 0.8 * sum(r["loss"] for r in first)


def test_one_schedule_for_pretraining_and_fine_tuning():
    import importlib

    from imae.schedule import warmup_cosine

    assert importlib.import_module("imae.metrics.finetune").warmup_cosine is warmup_cosine  # fine-tuning uses the same function as pretraining
    kw = dict(warmup=4, total=12, peak=2.0, floor=0.5)
    assert warmup_cosine(1, **kw) == pytest.approx(0.5) and warmup_cosine(8, **kw) == pytest.approx(1.25)
    assert warmup_cosine(12, **kw) == pytest.approx(0.5) and warmup_cosine(30, **kw) == pytest.approx(0.5)
    # the end of warmup: on the cosine (pretraining, as MAE) or still on the ramp (fine-tuning): both the peak
    assert warmup_cosine(4, **kw) == pytest.approx(2.0) == warmup_cosine(4, ramp_to_peak=True, **kw)
    assert warmup_cosine(0.0, warmup=0, total=5, peak=1.0) == pytest.approx(1.0)  # no warmup: starts at the peak
