"""The notebooks' library side: cached runs and evaluations, provenance, status, plots (the parameter checks:
tests/test_parameters.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import imae.companion.experiments as ex
from imae.errors import ImaeError
from imae.companion.reproduce import notebook_parameters, repo_root, write_status

from .conftest import micro

MICRO = {"data.download": False, "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
         "model.decoder_embed_dim": 32, "model.decoder_depth": 1, "model.decoder_num_heads": 2,
         "train.batch_size": 32, "train.device": "cpu"}


def test_standard_runs_are_cached_and_unset_parameters_leave_overrides(toy_root, tmp_path):
    runs = ex.standard_runs("tiny", data_root=str(toy_root), overrides={**MICRO, "train.epochs": 1},
                            runs_dir=tmp_path, device="cpu")
    assert ex.describe_run(runs["mae"])["epochs"] == 1  # mae_epochs=None must not undo the override
    assert ex.describe_run(runs["imae"])["epochs"] == 1 and ex.describe_run(runs["imae"])["method"] == "imae"
    mtime = (runs["imae"] / "checkpoint.pt").stat().st_mtime
    again = ex.standard_runs("tiny", data_root=str(toy_root), overrides={**MICRO, "train.epochs": 1},
                             runs_dir=tmp_path, device="cpu")
    assert again == runs and (runs["imae"] / "checkpoint.pt").stat().st_mtime == mtime
    other = ex.standard_runs("tiny", data_root=str(toy_root), mae_epochs=2, overrides={**MICRO, "train.epochs": 1},
                             runs_dir=tmp_path, device="cpu")
    assert other["mae"] != runs["mae"] and other["imae"] != runs["imae"]  # a new teacher is a new student
    assert ex.describe_run(other["mae"])["epochs"] == 2


def test_evaluations_are_cached_by_options(mae_run):
    a = ex.cached_evaluation(mae_run, "knn", device="cpu", max_images=50)
    files = sorted((mae_run / "eval").iterdir())
    b = ex.cached_evaluation(mae_run, "knn", device="cpu", max_images=50)
    items_a, items_b = a.pop("items"), b.pop("items")  # per-item numpy arrays, read back from the npz
    assert items_a.keys() == items_b.keys() and all(np.array_equal(items_a[k], items_b[k]) for k in items_a)
    assert a == b and sorted((mae_run / "eval").iterdir()) == files
    ex.cached_evaluation(mae_run, "knn", device="cpu", max_images=100)
    assert len(list((mae_run / "eval").iterdir())) == len(files) + 1


def test_provenance_counts_a_shared_run_once_and_status_names_the_hardware(mae_run, imae_run, tmp_path):
    rec = ex.provenance("semantics", {"mae": mae_run, "imae": imae_run, "same_prob = 1.0": imae_run})
    assert list(rec["runs"]) == ["mae", "imae"]
    assert rec["runs"]["mae"]["hardware"].startswith("CPU")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "semantics.json").write_text(json.dumps(rec))
    text = write_status(tmp_path).read_text()
    row = next(line for line in text.splitlines() if "(semantics.ipynb)" in line)
    wall = sum(r["wall_time_s"] for r in rec["runs"].values())
    assert "| tiny |" in row and f"| {wall:.0f} s |" in row and "CPU" in row
    assert "not run yet" in next(line for line in text.splitlines() if "(pretrain.ipynb)" in line)


def test_params_files_exist_for_every_documented_preset():
    assert notebook_parameters("cifar", repo_root())["max_images"] is None
    assert notebook_parameters("tiny", repo_root())["preset"] == "tiny"
    with pytest.raises(ImaeError, match="no notebook parameters for preset 'imagenet'"):
        notebook_parameters("imagenet", repo_root())


def test_bands_draw_one_line_and_band_per_model_with_its_style():
    import pandas as pd

    from imae.companion import plots

    df = pd.DataFrame([{"model": m, "alpha": a, "mean": v, "lo": v - 0.1, "hi": v + 0.1}
                       for m, v in (("MAE", 0.3), ("i-MAE", 0.4), ("untrained", 0.2)) for a in (0.1, 0.5)])
    fig = plots.bands(df, ylabel="R²", chance=0.1)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"MAE", "i-MAE", "untrained", "chance"}
    assert lines["untrained"].get_linestyle() == "--" and lines["i-MAE"].get_linestyle() == "-"
    assert lines["MAE"].get_color() != lines["i-MAE"].get_color()
    assert len(fig.axes[0].collections) == 3  # one shaded interval per model


def test_unknown_loss_weight_is_refused():
    from imae.models import IMAE, mae_from_config

    with pytest.raises(ValueError, match="unknown loss weight"):
        IMAE(mae_from_config(micro("x").model), weights={"w_distil_sub": 0.0})


def test_paired_dataset_leaves_the_global_rng_alone(toy_root):
    from imae.data import PairedDataset, load_arrays
    from imae.data.sources import ArrayImageDataset, pil_transform

    ds = PairedDataset(ArrayImageDataset(load_arrays("cifar10", "train", toy_root, download=False)), same_prob=1.0,
                       transform=pil_transform(32, (0.5,) * 3, (0.25,) * 3), seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ds[0]
    assert torch.equal(torch.rand(3), expected)


def test_no_resume_starts_over(toy_root, tmp_path):
    from imae.runs import read_metrics
    from imae.train import pretrain

    cfg = micro(toy_root)
    run = pretrain(cfg, tmp_path / "r", progress=False)
    first = read_metrics(run)
    pretrain(cfg, run, resume=False, progress=False)
    assert read_metrics(run) == [{**r, "img_per_s": s["img_per_s"], "elapsed_s": s["elapsed_s"]}
                                 for r, s in zip(first, read_metrics(run))]
    assert len(read_metrics(run)) == len(first)
