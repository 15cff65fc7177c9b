"""Data: dataset loading and errors, subsets, paired sampling, mixing, batch sources."""

from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest
import torch

from imae.data import (BatchAugment, ClassIndex, PairedDataset, TensorPairSource, draw_partners, load_arrays, mix,
                       sample_lambda)
from imae.data.datasets import first_per_class
from imae.data.sources import ArrayImageDataset, LoaderPairSource, build_source, pil_transform
from imae.errors import ConfigError, DatasetNotFoundError, ImaeError

from .conftest import SHARED_MINI, micro


def test_toy_data_reads_like_cifar10_and_through_torchvision(toy_root):
    import torchvision

    arrays = load_arrays("cifar10", "train", toy_root, download=False)
    assert arrays.images.shape == (200, 3, 32, 32) and arrays.images.dtype == torch.uint8
    assert torch.bincount(arrays.labels).tolist() == [20] * 10
    class NoMd5(torchvision.datasets.CIFAR10):
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

        def _check_integrity(self):  # our files are not the official bytes; the layout is what matters
            return True

    tv = NoMd5(str(toy_root), train=False, download=False)
    test = load_arrays("cifar10", "test", toy_root, download=False)
    assert np.array_equal(tv.data.transpose(0, 3, 1, 2), test.images.numpy())
    assert tv.targets == test.labels.tolist()


@pytest.mark.skipif(not (SHARED_MINI / "cifar-10-mini").is_dir(), reason="shared CIFAR-10 mini set not present")
def test_real_cifar10_mini_set():
    arrays = load_arrays("cifar10-mini", "train", SHARED_MINI)
    assert len(arrays) == 1000 and arrays.classes[0] == "airplane"
    assert torch.bincount(arrays.labels).tolist() == [100] * 10


def test_subset_keeps_the_first_n_of_every_class_in_order(toy_root):
    full = load_arrays("cifar10", "train", toy_root, download=False)
    sub = load_arrays("cifar10", "train", toy_root, subset_per_class=3, download=False)
    assert len(sub) == 30 and torch.bincount(sub.labels).tolist() == [3] * 10
    idx = first_per_class(full.labels, 3)
    assert torch.equal(sub.images, full.images[idx]) and bool((idx[1:] > idx[:-1]).all())


def test_missing_dataset_offline_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_arrays("cifar10", "train", tmp_path / "empty", download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "IMAE_DATA" in msg
    assert "cifar-10-python.tar.gz" in msg


def test_missing_dataset_when_download_fails(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="Downloading it failed too .*no network"):
        load_arrays("cifar10", "train", tmp_path, download=True)


def test_data_root_defaults_to_env(monkeypatch, toy_root):
    monkeypatch.setenv("IMAE_DATA", str(toy_root))
    assert len(load_arrays("cifar10", "test", download=False)) == 100


def test_tampered_dataset_file_cannot_run_code(tmp_path, toy_root):
    import shutil

    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(toy_root / "cifar-10-batches-py", folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(ImaeError, match="refusing to load"):
        load_arrays("cifar10", "test", tmp_path, download=False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- pairs
@pytest.fixture
def labels():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 7, (500,), generator=g)


def test_same_prob_one_gives_same_class_partners_other_than_self(labels):
    idx = ClassIndex(labels)
    anchors = torch.arange(500)
    p = draw_partners(idx, anchors, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(labels[p], labels[anchors]) and bool((p != anchors).all())


def test_same_prob_zero_gives_other_class_partners_uniformly(labels):
    idx = ClassIndex(labels)
    anchors = torch.zeros(20000, dtype=torch.long)  # one anchor, many draws
    p = draw_partners(idx, anchors, 0.0, torch.Generator().manual_seed(1))
    assert bool((labels[p] != labels[0]).all())
    counts = torch.bincount(p, minlength=500).float()
    outside = labels != labels[0]
    expect = 20000 / outside.sum()
    assert counts[~outside].sum() == 0
    assert abs(counts[outside].mean() - expect) < 1e-3 and counts[outside].std() < 0.35 * expect  # ~Poisson


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_same_prob_fraction(labels, p):
    idx = ClassIndex(labels)
    anchors = torch.randint(0, 500, (20000,), generator=torch.Generator().manual_seed(2))
    partners = draw_partners(idx, anchors, p, torch.Generator().manual_seed(3))
    frac = (labels[partners] == labels[anchors]).float().mean().item()
    assert abs(frac - p) < 0.02


def test_lambda_modes():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_lambda("random", generator=g) for _ in range(4000)])
    assert 0.45 < draws.mean() < 0.55 and draws.min() >= 0 and draws.max() <= 1
    assert float(sample_lambda("fixed", alpha=0.3)) == pytest.approx(0.3)
    r = torch.stack([sample_lambda("range", alpha_range=(0.1, 0.2), generator=g) for _ in range(500)])
    assert r.min() >= 0.1 and r.max() <= 0.2
    x_a, x_b = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert torch.allclose(mix(x_a, x_b, 0.3), torch.full((1, 1, 2, 2), 0.3))


def test_paired_dataset_is_reproducible_and_pairs_independently_augmented(toy_root):
    arrays = load_arrays("cifar10", "train", toy_root, download=False)
    base = ArrayImageDataset(arrays)
    tf = pil_transform(32, (0.5,) * 3, (0.25,) * 3)
    ds = PairedDataset(base, same_prob=1.0, transform=tf, seed=5)
    a1, b1, ya, yb = ds[7]
    a2, b2, _, _ = ds[7]
    assert ya == yb and torch.equal(a1, a2) and torch.equal(b1, b2)
    ds.set_epoch(1)
    a3, _, _, _ = ds[7]
    assert not torch.equal(a1, a3)  # a new epoch, new augmentation


# -------------------------------------------------------------------------------------------- sources
def test_tensor_source_batches_are_a_pure_function_of_seed_epoch_and_index(toy_root):
    arrays = load_arrays("cifar10", "train", toy_root, download=False)
    aug = BatchAugment(32, (0.5,) * 3, (0.25,) * 3)
    src = TensorPairSource(arrays, batch_size=64, same_prob=0.5, pairs=True, augment=aug, seed=1, device="cpu")
    assert src.num_batches == 3
    full = list(src.batches(epoch=2))
    resumed = list(src.batches(epoch=2, start=1))
    assert len(full) == 3 and len(resumed) == 2
    for k in ("x_a", "x_b", "y_a", "y_b"):
        assert torch.equal(full[1][k], resumed[0][k])
    assert full[0]["x_a"].shape == (64, 3, 32, 32) and full[0]["x_a"].dtype == torch.float32
    other_epoch = next(iter(src.batches(epoch=3)))
    assert not torch.equal(other_epoch["y_a"], full[0]["y_a"])


def test_data_parallel_slices_tile_the_global_batch(toy_root):
    arrays = load_arrays("cifar10", "train", toy_root, download=False)
    aug = BatchAugment(32, (0.5,) * 3, (0.25,) * 3)
    make = lambda r, w: TensorPairSource(arrays, batch_size=64, same_prob=1.0, pairs=True, augment=aug,  # noqa
                                         seed=1, device="cpu", rank=r, world=w)
    whole = next(iter(make(0, 1).batches(0)))
    parts = [next(iter(make(r, 2).batches(0))) for r in range(2)]
    for k in ("x_a", "x_b", "y_b"):
        assert torch.allclose(torch.cat([p[k] for p in parts]), whole[k], atol=1e-6)


def test_batch_larger_than_dataset_is_refused(toy_root):
    cfg = micro(toy_root, **{"train.batch_size": 512})
    with pytest.raises(ConfigError, match="batch_size=512 is larger than the dataset .200 images"):
        build_source(cfg, device="cpu", pairs=False)


def test_loader_source_yields_the_same_pairs_for_resume(toy_root):
    arrays = load_arrays("cifar10", "train", toy_root, download=False)
    src = LoaderPairSource(ArrayImageDataset(arrays), batch_size=50, same_prob=0.0, pairs=True,
                           transform=pil_transform(32, (0.5,) * 3, (0.25,) * 3), seed=3, device="cpu",
                           num_workers=0)
    full = list(src.batches(0))
    later = list(src.batches(0, start=2))
    assert len(full) == 4 and torch.equal(full[2]["x_b"], later[0]["x_b"])
    assert bool((full[0]["y_a"] != full[0]["y_b"]).all())
