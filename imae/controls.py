"""Controls every model comparison is shown beside (SPEC, "Controls and uncertainty").

* :func:`untrained_run`: the encoder of the same architecture at its initialisation (same init seed as the
  trained run), stored as a finished run directory so every evaluation treats it like a trained model. A
  metric that scores it like the trained MAE is not measuring what training learnt.
* :class:`PixelEncoder`: "features" that are the input's raw pixels, so the same ridge / probe / kNN code
  measures what is linearly readable from the mixture's pixels alone.
* The constant (mean-prediction) baseline is computed inside the metrics (``const_r2``; chance levels).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, save_checkpoint
from .config import RunConfig, build_config, derived, fingerprint
from .runs import open_run_dir, runs_root

UNTRAINED = "untrained"


def untrained_run(preset: str, *, seed: int = 0, runs_dir: str | os.PathLike | None = None,
                  **overrides) -> Path:
    """A finished run directory holding the MAE of ``preset`` at initialisation (seed ``seed``).

    Args:
        preset: the config preset (its architecture is used).
        seed: the init seed (a trained run of seed s starts from exactly these weights).
        runs_dir: cache folder (default ``$IMAE_RUNS`` or ``./runs``).
        **overrides: config overrides, as :func:`imae.config.build_config` (only the model and seed matter).
    Returns:
        ``<runs>/<preset>-untrained-<fingerprint>``, created once and reused.
    """
    from .models import mae_from_config

    cfg = build_config(preset, "mae", **{**overrides, "train.seed": int(seed)})
    fp = f"{UNTRAINED}-{fingerprint(RunConfig(preset=preset, model=cfg.model, train=cfg.train))}"

    def weights() -> dict:
        torch.manual_seed(cfg.train.seed)  # as imae.train.build_model does before building the model
        return mae_from_config(cfg.model).state_dict()

    return _stored_run(runs_root(runs_dir) / f"{preset}-{fp}", cfg, fp, "untrained", weights,
                       "none (not trained)")


def _stored_run(run_dir: Path, cfg: RunConfig, fp: str, flag: str, weights, hardware: str) -> Path:
    """A finished run directory for a control (created once, then reused): ``config.yaml`` and a checkpoint
    flagged ``flag`` holding ``weights()``."""
    ckpt = run_dir / CHECKPOINT_NAME
    if ckpt.is_file() and load_checkpoint(ckpt).get("finished"):
        return run_dir
    open_run_dir(run_dir, cfg, fp, derived=derived(cfg))
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "fingerprint": fp, "finished": True, flag: True,
                     "model": weights(), "step": 0, "epoch": 0, "batch": 0, "elapsed_s": 0.0,
                     "hardware": hardware}, ckpt)
    return run_dir


class PixelEncoder(torch.nn.Module):
    """A stand-in encoder whose feature is the (normalised) input image itself, at half resolution.

    ``forward_features(x)`` returns (N, 2, C*(H/2)*(W/2)): 2x2 pixel averages (768 values for CIFAR), as both
    the "cls" and the one "patch" token, so ``cls`` and ``mean`` pooling give the same pixel vector. Half
    resolution keeps the ridge's D x D solve cheap on a CPU (768-d instead of 3,072-d, 64x fewer flops); a
    linear map of the full-resolution pixels could only do better, so this control is a lower bound of the
    pixel baseline (and still 8x wider than the 96-d features of the CPU edition's encoder). It has no
    decoder, so refit-free and reconstruction scores do not apply to it.
    """

    POOL = 2

    def __init__(self, model_config=None):
        super().__init__()
        m = model_config
        side = m.img_size // self.POOL if m is not None else None
        self.img_size = m.img_size if m is not None else None
        self.embed_dim = (m.in_chans * side ** 2) if m is not None else None
        self.decoder_embed_dim = None  # no heads: refit-free scores are skipped
        self.num_patches = None
        self.norm_pix_loss = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.nn.functional.avg_pool2d(x.float(), self.POOL).flatten(1)
        return torch.stack([flat, flat], dim=1)


def pixel_run(preset: str, *, runs_dir: str | os.PathLike | None = None, **overrides) -> Path:
    """A finished pseudo-run whose "encoder" is :class:`PixelEncoder` (ridge / probe on raw pixels), so the
    pixel control goes through the same cached evaluations as every model."""
    cfg = build_config(preset, "mae", **overrides)
    fp = f"pixels{PixelEncoder.POOL}-{cfg.data.dataset}-{cfg.model.img_size}"
    return _stored_run(runs_root(runs_dir) / f"{preset}-{fp}", cfg, fp, "pixels", dict, "none (raw pixels)")
