"""The feature cache: one extraction per (encoder, images, pairs, alphas), never a stale or foreign one."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from imae.companion import experiments
from imae.metrics import clean_features, load_eval_data, load_model, make_pairs, mixture_features
from imae.metrics import features as F
from imae.metrics.features import FEATURES, use_feature_cache


@pytest.fixture()
def model_and_data(mae_run):
    m = load_model(mae_run)
    return m, load_eval_data(m.config)


def _counts():
    return FEATURES.hits, FEATURES.misses


def test_cached_features_equal_fresh_ones_bit_for_bit(model_and_data, tmp_path):
    m, data = model_and_data
    index = torch.tensor([5, 3, 3, 17, 0])
    fresh = clean_features(m.mae, data.train, index=index, batch_size=4)  # outside the block: no cache
    pairs = make_pairs(data.test.labels, 30, seed=1)
    fresh_mix = mixture_features(m.mae, data.test, pairs, [0.1, 0.4], batch_size=7)
    with use_feature_cache(tmp_path):
        FEATURES.clear()
        for _ in range(2):  # first a miss (the whole split, other batches), then a hit
            got = clean_features(m.mae, data.train, index=index, batch_size=16)
            for p in fresh:
                assert torch.equal(got[p], fresh[p])
            mix = mixture_features(m.mae, data.test, pairs, [0.1, 0.4], batch_size=16)
            for p in fresh_mix:
                assert torch.equal(mix[p], fresh_mix[p])
        assert _counts() == (2, 2)
        got["mean"].add_(1.0)  # callers get copies
        assert torch.equal(clean_features(m.mae, data.train, index=index)["mean"], fresh["mean"])


def test_a_change_of_weights_images_pairs_or_alphas_misses(model_and_data):
    m, data = model_and_data
    pairs = make_pairs(data.test.labels, 20, seed=0)
    with use_feature_cache():
        FEATURES.clear()
        base = clean_features(m.mae, data.test)["cls"]
        mixture_features(m.mae, data.test, pairs, [0.3])
        assert _counts() == (0, 2)
        with torch.no_grad():
            m.mae.blocks[0].mlp.fc1.bias.add_(0.5)  # the same object, other weights
        changed = clean_features(m.mae, data.test)["cls"]
        assert not torch.equal(changed, base)
        mixture_features(m.mae, data.test, pairs, [0.2])
        mixture_features(m.mae, data.test, make_pairs(data.test.labels, 20, seed=1), [0.2])
        assert FEATURES.hits == 0
        other = F.Split(data.test.images.flip(-1).contiguous(), data.test.labels, data.test.num_classes,
                        data.test.norm, "test")  # same name and labels, other pixels
        clean_features(m.mae, other)
        assert FEATURES.hits == 0 and FEATURES.misses == 6


def test_plain_attributes_are_part_of_the_key(model_and_data):
    """Two encoders of one class with equal weights, differing only by a flag, must not share features."""
    m, data = model_and_data

    class Scaled(type(m.mae)):
        def forward_features(self, x):
            return super().forward_features(x) * self.scale

    a, b = copy.deepcopy(m.mae), copy.deepcopy(m.mae)
    a.__class__ = b.__class__ = Scaled
    a.scale, b.scale = 1.0, 2.0
    with use_feature_cache():
        FEATURES.clear()
        fa = clean_features(a, data.test)["cls"]
        fb = clean_features(b, data.test)["cls"]
        assert FEATURES.hits == 0 and torch.allclose(fb, 2 * fa)


def test_features_persist_across_processes_in_the_folder_and_a_corrupt_file_is_recomputed(model_and_data, tmp_path):
    m, data = model_and_data
    with use_feature_cache(tmp_path):
        FEATURES.clear()
        want = clean_features(m.mae, data.test)
        files = list(tmp_path.glob("*.pt"))
        assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))
        FEATURES._memory.clear()  # as a new process would start
        got = clean_features(m.mae, data.test)
        assert FEATURES.hits == 1 and torch.equal(got["mean"], want["mean"])
        FEATURES._memory.clear()
        files[0].write_bytes(b"truncated")
        again = clean_features(m.mae, data.test)
        assert torch.equal(again["mean"], want["mean"]) and FEATURES.misses == 2
    assert not FEATURES.enabled  # the block restores the default: off


def test_cached_evaluations_share_one_extraction_between_probe_and_knn(mae_run, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "m"
    shutil.copytree(mae_run, run)
    encoded = []
    real = F._encode_rows
    monkeypatch.setattr(F, "_encode_rows", lambda *a, **k: encoded.append(len(a[2])) or real(*a, **k))
    FEATURES.clear()  # features of this model from other tests (same content) would be served from memory
    probe = experiments.cached_evaluation(run, "linear-probe")
    knn = experiments.cached_evaluation(run, "knn")
    assert len(encoded) == 2  # the train and the test split, once each, for both metrics
    assert len(list((tmp_path / "runs" / ".features").glob("*.pt"))) == 2
    assert set(probe["accuracy"]) == set(knn["accuracy"]) == {"cls", "mean"}
    assert not FEATURES.enabled
