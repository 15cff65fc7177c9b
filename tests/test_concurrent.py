"""Independent runs trained in one process, a step of each in turn (imae.train.pretrain_concurrent): each run is
exactly the run pretrain trains alone (same losses, weights, folder), one failing run does not stop the others,
and a concurrent run is resumed by pretrain like any other."""

from __future__ import annotations

import pytest
import torch

from imae import train
from imae.config import build_config
from imae.runs import read_metrics
from imae.train import pretrain, pretrain_concurrent

MICRO = {"data.download": False, "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
         "model.decoder_embed_dim": 32, "model.decoder_depth": 1, "model.decoder_num_heads": 2,
         "train.batch_size": 32, "train.epochs": 2, "train.warmup_epochs": 0.5, "train.device": "cpu"}


def _cfg(root, method, seed, **kw):
    return build_config("tiny", method=method, **{**MICRO, "data.root": str(root), "train.seed": seed, **kw})


def _losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run) if "loss" in r]


def _weights(run):
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def teacher(toy_root, tmp_path_factory):
    return pretrain(_cfg(toy_root, "mae", 0), tmp_path_factory.mktemp("teacher") / "mae", progress=False)


def _jobs(root, teacher):
    """An MAE of another seed, the i-MAE of the teacher and the teacher continued: three kinds of run at once."""
    return [_cfg(root, "mae", 1), _cfg(root, "imae", 0, **{"imae.teacher": str(teacher)}),
            _cfg(root, "mae", 2, **{"train.init_from": str(teacher), "train.epochs": 1})]


def test_concurrent_runs_are_the_runs_trained_alone(toy_root, teacher, tmp_path):
    jobs = _jobs(toy_root, teacher)
    alone = [pretrain(c, tmp_path / "alone" / str(k), progress=False) for k, c in enumerate(jobs)]
    together = pretrain_concurrent(jobs, [tmp_path / "together" / str(k) for k in range(len(jobs))])
    for a, b in zip(alone, together):
        la, lb = _losses(a), _losses(b)
        assert len(la) >= 4 and la == lb  # bit for bit: every draw comes from (config, seed, step)
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
    # finished runs are returned at once, by either entry point
    assert pretrain_concurrent(jobs, together) == together
    assert pretrain(jobs[0], together[0], progress=False) == together[0]


def test_one_failing_run_does_not_stop_the_others(toy_root, teacher, tmp_path, monkeypatch):
    jobs = _jobs(toy_root, teacher)
    outs = [tmp_path / str(k) for k in range(len(jobs))]
    real = train.Trainer.micro_step

    def broken(self, batch, group_size, *, sync=True):
        if self.run_dir == outs[1] and self.step == 3:
            raise RuntimeError("the i-MAE broke at step 3")
        return real(self, batch, group_size, sync=sync)

    monkeypatch.setattr(train.Trainer, "micro_step", broken)
    with pytest.raises(RuntimeError, match="the i-MAE broke at step 3"):
        pretrain_concurrent(jobs, outs)
    done = [torch.load(o / "checkpoint.pt", map_location="cpu", weights_only=False) for o in (outs[0], outs[2])]
    assert all(c["finished"] for c in done)  # the others trained to the end
    monkeypatch.setattr(train.Trainer, "micro_step", real)
    # the broken run (no checkpoint yet: it broke inside its first epoch) is trained by pretrain as if alone
    resumed = pretrain(jobs[1], outs[1], progress=False)
    alone = pretrain(jobs[1], tmp_path / "alone", progress=False)
    assert _losses(resumed) == _losses(alone)


def test_concurrent_runs_need_their_own_folders(toy_root, teacher, tmp_path):
    jobs = _jobs(toy_root, teacher)[:2]
    with pytest.raises(ValueError, match="share a folder"):
        pretrain_concurrent(jobs, [tmp_path / "x", tmp_path / "x"])
    with pytest.raises(ValueError, match="one folder per run"):
        pretrain_concurrent(jobs, [tmp_path / "x"])
