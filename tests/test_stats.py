"""Intervals: coverage of known quantities on synthetic data, pairing, and the generated sentences."""

import numpy as np
import pytest

from imae.companion import stats
from imae.companion.stats import Items


def _coverage(make, truth, trials=200, n_boot=300):
    hits = 0
    for t in range(trials):
        est = stats.estimate(make(np.random.default_rng(t)), n_boot=n_boot, seed=t)
        hits += bool(est.lo <= truth <= est.hi)
    return hits / trials


def test_accuracy_interval_covers_the_true_rate():
    p, n = 0.6, 400
    cov = _coverage(lambda rng: [Items("accuracy", (rng.random(n) < p).astype(float))], p)
    assert 0.90 <= cov <= 0.99, cov


def test_r2_interval_covers_the_population_r2():
    # y = signal + noise with Var(signal) = 3, Var(noise) = 1: a predictor equal to the signal has R² = 0.75.
    n = 500

    def make(rng):
        signal = rng.normal(0, np.sqrt(3), n)
        y = signal + rng.normal(0, 1, n)
        return [Items("r2", (y - signal) ** 2, (y - y.mean()) ** 2)]

    cov = _coverage(make, 0.75)
    assert 0.90 <= cov <= 0.99, cov


def test_seed_spread_widens_the_interval_and_covers_the_mean_over_seeds():
    # Three training seeds whose accuracies differ by a seed effect (sd 0.03) around 0.5; items are shared.
    def make(rng):
        base = rng.random(2000)
        return [Items("accuracy", (base < 0.5 + rng.normal(0, 0.03)).astype(float)) for _ in range(3)]

    cov = _coverage(make, 0.5, trials=150)
    assert cov >= 0.90, cov
    one = stats.estimate(make(np.random.default_rng(0))[:1], n_boot=300)
    three = stats.estimate(make(np.random.default_rng(0)), n_boot=300)
    assert three.hi - three.lo > one.hi - one.lo


def test_paired_difference_is_narrower_than_unpaired_and_detects_a_small_gain():
    rng = np.random.default_rng(1)
    n = 3000
    hard = rng.random(n)  # item difficulty shared by both models
    a = Items("accuracy", (hard < 0.62).astype(float))
    b = Items("accuracy", (hard < 0.60).astype(float))
    d = stats.difference([a], [b], n_boot=500)
    assert d.lo > 0, "a 2-point gain on shared items must be detected when paired"
    ea = stats.estimate([a], n_boot=500)
    assert (ea.hi - ea.lo) > (d.hi - d.lo) * 3
    assert stats.direction(float(d.lo), float(d.hi)) == "higher"


def test_identical_models_are_within_noise_and_the_sentence_says_so():
    rng = np.random.default_rng(2)
    a = Items("accuracy", (rng.random(1000) < 0.5).astype(float))
    b = Items("accuracy", (rng.random(1000) < 0.5).astype(float))
    d = stats.difference([a], [b], n_boot=500)
    text = stats.compare_text("i-MAE", "MAE", d, scale=100, unit=" points", fmt=".1f")
    if d.lo <= 0 <= d.hi:
        assert "within noise" in text and "one training seed" in text
    else:  # a 5 % false positive is allowed by the interval itself; the text must then name the direction
        assert ("higher" in text) or ("lower" in text)


def test_metric_axes_are_kept_per_alpha():
    rng = np.random.default_rng(3)
    vals = (rng.random((4, 800)) < np.array([0.2, 0.4, 0.6, 0.8])[:, None]).astype(float)
    est = stats.estimate([Items("accuracy", vals)], n_boot=200)
    assert est.mean.shape == (4,)
    assert np.all(np.diff(est.mean) > 0.1)
    assert np.all(est.lo < est.mean) and np.all(est.mean < est.hi)


def test_r2_point_equals_the_variance_weighted_r2():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(300, 5)) * np.array([1, 2, 3, 4, 5])
    pred = y + rng.normal(size=y.shape)
    sse = ((y - pred) ** 2).sum(1)
    sst = ((y - y.mean(0)) ** 2).sum(1)
    from imae.metrics.ridge import r2_score
    import torch

    assert Items("r2", sse, sst).point() == pytest.approx(r2_score(torch.tensor(y), torch.tensor(pred)), abs=1e-10)


def test_mismatched_items_are_refused():
    with pytest.raises(ValueError, match="same pairs"):
        stats.estimate([Items("accuracy", np.ones(10)), Items("accuracy", np.ones(11))])


def test_seed_only_interval_for_curves():
    pts = np.array([[0.40, 0.50], [0.42, 0.52], [0.44, 0.54]])
    est = stats.over_seeds(pts)
    assert np.allclose(est.mean, [0.42, 0.52])
    half = 4.302652729911275 * 0.02 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(3)
    assert np.allclose(est.hi - est.mean, half) and np.allclose(est.mean - est.lo, half)
    single = stats.over_seeds(pts[:1])
    assert np.allclose(single.lo, single.hi)


def test_moves_text_groups_by_variant_and_drops_noise():
    moves = {("mask 0.5", "LS"): (0.01, 0.03), ("mask 0.5", "PSNR"): (-2.0, -1.0), ("mask 0.9", "LS"): (-0.01, 0.02),
             ("no distillation", "LS"): (-0.2, -0.1), ("no distillation", "PSNR"): (-0.5, 0.5)}
    assert stats.moves_text(moves) == "mask 0.5: LS higher, PSNR lower; no distillation: LS lower"
    assert stats.moves_text({("a", "m"): (-1.0, 1.0)}) == ""


def test_a_lower_sentence_gives_the_amount_and_its_interval_with_one_sign():
    from imae.companion.stats import Estimate

    d = Estimate(mean=np.array(-12.36), lo=np.array(-12.50), hi=np.array(-12.22), n_seeds=3, n_items=100)
    text = stats.compare_text("the branch", "the mixture", d, unit=" dB", fmt=".2f")
    assert text == "the branch is lower than the mixture by 12.36 dB (95 % CI 12.22 to 12.50 dB, 3 training seeds)"
    up = Estimate(mean=np.array(0.031), lo=np.array(0.012), hi=np.array(0.050), n_seeds=3, n_items=100)
    assert stats.compare_text("i-MAE", "MAE", up).endswith("by 0.031 (95 % CI 0.012 to 0.050, 3 training seeds)")
