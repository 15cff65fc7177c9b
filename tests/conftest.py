"""Shared fixtures: a synthetic CIFAR-layout dataset and tiny trained runs, made once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from imae.config import build_config
from imae.data.toy import write_toy_cifar

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_MINI = Path(__file__).resolve().parents[2] / "shared" / "data"  # optional, used when present


def micro(root, **overrides):
    """A config small enough to train in seconds on a CPU: the tiny preset with a smaller ViT.
    (The tiny preset's subset of 100 images per class keeps all of the toy set's 20.)"""
    base = {"data.root": str(root), "data.download": False,
            "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "model.decoder_embed_dim": 32,
            "model.decoder_depth": 1, "model.decoder_num_heads": 2, "train.batch_size": 32, "train.epochs": 2,
            "train.warmup_epochs": 1.0, "train.device": "cpu"}
    base.update(overrides)
    method = base.pop("method", "mae")
    return build_config("tiny", method=method, **base)


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_toy_cifar(root, per_class_train=20, per_class_test=10, seed=0)
    return root


@pytest.fixture(scope="session")
def mae_run(toy_root, tmp_path_factory) -> Path:
    from imae.train import pretrain

    return pretrain(micro(toy_root), tmp_path_factory.mktemp("runs") / "mae", progress=False)


@pytest.fixture(scope="session")
def imae_run(toy_root, mae_run, tmp_path_factory) -> Path:
    from imae.train import pretrain

    cfg = micro(toy_root, method="imae", **{"imae.teacher": str(mae_run)})
    return pretrain(cfg, tmp_path_factory.mktemp("runs") / "imae", progress=False)


def micro_cli_args(root, **overrides) -> list[str]:
    """The same configuration as ``micro`` as ``python -m imae pretrain`` arguments."""
    cfg = micro(root, **overrides)
    args = ["--preset", "tiny", "--data-root", str(root), "--device", "cpu"]
    base = build_config("tiny", method=cfg.method).to_dict()
    new = cfg.to_dict()
    for sec in ("model", "data", "imae", "train"):
        for k, v in new[sec].items():
            if v != base[sec][k] and (sec, k) not in {("data", "root"), ("train", "device"), ("train", "method")}:
                args += ["--set", f"{sec}.{k}={json.dumps(v)}"]
    return args


@pytest.fixture()
def nan_loss(monkeypatch):
    """``nan_loss(call, only_under_autocast=False)``: from the ``call``-th forward pass of a model on (1-based),
    every loss term it returns is NaN, as a numerical fault would make it. It wraps the models' public
    ``forward`` (MAE and i-MAE), so training sees the fault exactly where a real one would appear;
    ``only_under_autocast`` limits it to bf16 autocast passes (a fault that fp32 would not have)."""
    from imae.models import IMAE, MaskedAutoencoderViT

    count = {"n": 0}

    def inject(call: int, only_under_autocast: bool = False):
        for cls in (MaskedAutoencoderViT, IMAE):
            original = cls.forward

            def forward(self, *args, _original=original, **kwargs):
                out = _original(self, *args, **kwargs)
                count["n"] += 1
                if count["n"] >= call and (not only_under_autocast or torch.is_autocast_enabled("cpu")):
                    out = {k: (v * float("nan") if k.startswith("loss") else v) for k, v in out.items()}
                return out

            monkeypatch.setattr(cls, "forward", forward)

    return inject
