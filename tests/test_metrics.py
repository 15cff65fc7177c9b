"""Metrics: sanity cases every metric must pass, exact math checks, and end-to-end evaluation + CLI."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from imae.errors import CheckpointError, ConfigError, RunDirError
from imae.metrics import (PSNR_CAP, RIDGE_GRID, LoadedModel, clean_features, code_version, degree_of_semantics,
                          evaluate, fit_ridge, knn_classifier, linear_classifier, linear_separability,
                          load_eval_data, load_model, load_reference, make_pairs, psnr, r2_score, ssim)
from imae.metrics.features import EvalData, Pairs, Split, encode
from imae.metrics.reconstruction import predicted_image
from imae.metrics.separability import NoRefitScores, reference_pass
from imae.models import MaskedAutoencoderViT

WHATS = ("separability", "semantics", "linear-probe", "knn", "finetune", "reconstruction")
FAST = {"separability": dict(alphas=[0.1, 0.4], n_pairs=60), "semantics": dict(alphas=[0.2], n_pairs=60),
        "linear-probe": dict(max_images=100), "knn": {}, "finetune": dict(epochs=1, batch_size=64, max_images=100),
        "reconstruction": dict(alphas=[0.1, 0.5], n_examples=2, n_pairs=40)}


def _blobs(n_train: int, n_test: int, d: int, c: int, seed: int, spread: float = 10.0):
    """Gaussian clusters (unit noise around centres of scale ``spread``): (x, y) for train and for test."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * spread

    def draw(n):
        y = torch.arange(n) % c
        return centres[y] + torch.randn(n, d, generator=g), y

    return (*draw(n_train), *draw(n_test))


# --------------------------------------------------------------------------------------------- ridge / R²
def test_r2_is_variance_weighted():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)
    pred = y + 0.5 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    sse, sst = ((y - pred) ** 2).sum(), ((y - y.mean(0)) ** 2).sum()
    assert r2_score(y, pred) == pytest.approx(float(1 - sse / sst), abs=1e-12)
    assert r2_score(y, y) == 1.0
    assert r2_score(y, y.mean(0).expand_as(y)) == pytest.approx(0.0, abs=1e-12)


def test_ridge_matches_direct_solve_and_lambda_comes_from_grid():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 12, generator=g)
    y = x @ torch.randn(12, 4, generator=g) + torch.randn(300, 4, generator=g)
    fit = fit_ridge(x, y, seed=0)
    assert math.isfinite(fit.lam) and fit.lam > 0
    assert fit.lam_rel in RIDGE_GRID and len(fit.val_r2) == len(RIDGE_GRID)
    xd, yd = x.double(), y.double()
    xc, yc = xd - xd.mean(0), yd - yd.mean(0)
    direct = torch.linalg.solve(xc.T @ xc + fit.lam * torch.eye(12, dtype=torch.float64), xc.T @ yc)
    assert torch.allclose(fit.coef, direct, atol=1e-8)
    assert torch.allclose(fit.predict(x[:5]), xd[:5] @ direct + (yd.mean(0) - xd.mean(0) @ direct), atol=1e-8)


def test_ridge_recovers_a_known_linear_mixture():
    """X = A [Z_sub; Z_dom] + small noise: both sources are linearly recoverable (R² > 0.99)."""
    g = torch.Generator().manual_seed(2)
    z_sub, z_dom = torch.randn(1500, 8, generator=g), torch.randn(1500, 8, generator=g)
    a = torch.randn(32, 16, generator=g)
    x = torch.cat([z_sub, z_dom], 1) @ a.T + 0.01 * torch.randn(1500, 32, generator=g)
    for z in (z_sub, z_dom):
        fit = fit_ridge(x[:1000], z[:1000])
        assert fit.score(x[1000:], z[1000:]) > 0.99


def test_ridge_oracle_and_random_features(mae_run):
    """The reference's own clean features regressed onto themselves: R² ≈ 1; independent noise: R² ≈ 0."""
    m = load_model(mae_run)
    data = load_eval_data(m.config)
    y_fit, y_test = clean_features(m.mae, data.train)["mean"], clean_features(m.mae, data.test)["mean"]
    assert fit_ridge(y_fit, y_fit).score(y_test, y_test) > 0.99
    g = torch.Generator().manual_seed(3)
    noise_fit, noise_test = torch.randn(len(y_fit), 32, generator=g), torch.randn(len(y_test), 32, generator=g)
    assert abs(fit_ridge(noise_fit, y_fit).score(noise_test, y_test)) < 0.1


# ------------------------------------------------------------------------------------- classifiers
def test_linear_probe_and_knn_on_separable_clusters_and_random_labels():
    x, y, xt, yt = _blobs(600, 300, 16, 5, seed=0)
    lin = linear_classifier(x, y, xt, yt)
    assert lin["accuracy"] > 0.99 and lin["weight_decay"] in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
    assert knn_classifier(x, y, xt, yt)["accuracy"] > 0.99
    # labels drawn independently of the features, in train and test alike: chance (0.2) is all there is
    g = torch.Generator().manual_seed(0)
    y_rand, yt_rand = torch.randint(0, 5, y.shape, generator=g), torch.randint(0, 5, yt.shape, generator=g)
    assert linear_classifier(x, y_rand, xt, yt_rand)["accuracy"] < 0.3
    assert knn_classifier(x, y_rand, xt, yt_rand)["accuracy"] < 0.3


def test_the_penalty_grid_grows_until_validation_accuracy_peaks_inside_it():
    # Overlapping clusters and a grid of strong penalties only: accuracy still rises at the weak edge, so the
    # grid grows weaker until it peaks inside (and says how the final fit stopped).
    x, y, xt, yt = _blobs(2000, 500, 32, 5, seed=1, spread=0.5)
    r = linear_classifier(x, y, xt, yt, weight_decays=(10.0, 3.0))
    assert r["weight_decay"] < 3.0 and r["grid_edge"] is None and len(r["val_accuracy"]) > 2
    assert list(map(float, r["val_accuracy"])) == sorted(map(float, r["val_accuracy"]), reverse=True)
    assert r["fit"]["stop"] in ("tolerance_grad", "tolerance_change") and r["fit"]["grad_max"] < 1e-3
    # Few noisy samples in many dimensions and a grid of weak penalties: it grows stronger.
    x, y, xt, yt = _blobs(300, 500, 200, 5, seed=2, spread=0.2)
    r = linear_classifier(x, y, xt, yt, weight_decays=(1e-3, 1e-6))
    assert r["weight_decay"] > 1e-3 and r["grid_edge"] is None
    # A tie with a penalty inside the grid is a plateau, not a cut: the given grid stays as it is.
    x, y, xt, yt = _blobs(600, 300, 16, 5, seed=0)
    r = linear_classifier(x, y, xt, yt)
    assert r["grid_edge"] is None and len(r["val_accuracy"]) == 9


def test_linear_classifier_reaches_the_logistic_optimum():
    """The closed-form-gradient L-BFGS lands where sklearn's lbfgs does (same penalty, unstandardised check)."""
    from sklearn.linear_model import LogisticRegression

    x, y, _, _ = _blobs(400, 1, 6, 3, seed=4, spread=0.7)
    res = linear_classifier(x, y, x, y, weight_decays=(1e-2,), max_iter=500)
    xs = (x - x.mean(0)) / x.std(0)
    sk = LogisticRegression(C=1.0 / (1e-2 * len(x)), max_iter=5000).fit(xs.numpy(), y.numpy())
    assert res["train_accuracy"] == pytest.approx(sk.score(xs.numpy(), y.numpy()), abs=0.01)


def _fit_problems() -> list[dict]:
    """Small overlapping-cluster problems (the penalty choice matters), one of them grouped by image."""
    out = []
    for seed, (n, d, c) in enumerate([(240, 8, 4), (300, 12, 5), (200, 6, 3), (260, 10, 4)]):
        x, y, xt, yt = _blobs(n, 80, d, c, seed=seed, spread=0.8)
        out.append(dict(x_train=x, y_train=y, x_test=xt, y_test=yt, seed=seed))
    out[2]["groups"] = torch.stack([torch.arange(200) // 2, torch.arange(200) % 7 + 100], dim=1)
    return out


def _same_fit(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in ("accuracy", "train_accuracy", "weight_decay", "val_accuracy", "n_train", "n_test", "n_val"):
        assert a[k] == b[k], k
    assert np.array_equal(a["correct"], b["correct"])
    if "probs" in a:
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=0, atol=1e-6)


def test_linear_classifiers_threaded_is_the_sequential_fits(monkeypatch):
    """The concurrent path (forced on the CPU here; CUDA's default) returns what one call after the other does,
    in order; on the CPU the default is those sequential calls themselves."""
    from imae.metrics import probes
    from imae.metrics.probes import linear_classifiers

    problems = _fit_problems()
    direct = [linear_classifier(**p, return_probs=True) for p in problems]
    threaded = linear_classifiers(problems, parallel=3, return_probs=True)
    assert len(threaded) == len(problems)
    for a, b in zip(direct, threaded):
        _same_fit(a, b)
    assert len({r["weight_decay"] for r in direct}) > 1 or len({r["accuracy"] for r in direct}) > 1  # not all alike

    def no_threads(*args, **kwargs):
        raise AssertionError("the CPU default must not use worker threads")

    monkeypatch.setattr(probes, "_threaded", no_threads)
    for a, b in zip(direct[:2], linear_classifiers(problems[:2], return_probs=True)):
        _same_fit(a, b)
    assert linear_classifiers([], parallel=4) == []


def test_linear_classifiers_raise_a_failing_problem():
    problems = _fit_problems()[:3]
    problems[1] = dict(problems[1], x_train=problems[1]["x_train"][:2], y_train=problems[1]["y_train"][:2])
    from imae.metrics.probes import linear_classifiers

    for parallel in (1, 3):
        with pytest.raises(ConfigError, match="cannot choose a penalty"):
            linear_classifiers(problems, parallel=parallel)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="parallel"):
            linear_classifiers(problems, parallel=bad)


# ------------------------------------------------------------------------------------------ PSNR / SSIM
def test_psnr_cap_and_known_noise():
    x = torch.full((2, 3, 16, 16), 0.5)
    assert torch.all(psnr(x, x) == PSNR_CAP)
    noise = torch.where(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) < 0.5, 0.1, -0.1)
    mse = float((noise.double() ** 2).mean())
    assert torch.allclose(psnr(x + noise, x), torch.full((2,), 10 * math.log10(1 / mse), dtype=torch.float64))


def test_ssim_identity_and_monotone_in_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    scores = [float(ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean())
              for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2]
    with pytest.raises(ValueError, match="window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def _tiny_mae(**kw) -> MaskedAutoencoderViT:
    return MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                                decoder_depth=1, decoder_num_heads=2, **kw)


def test_norm_pix_prediction_uses_only_the_visible_mixture_statistics():
    """A norm-pix prediction of zeros must not get its target's per-patch means for free.

    The old de-normalisation used the scored target's own patch statistics, so a prediction of zeros came
    back as the target's patch-mean image (a good PSNR for nothing). Now it comes back as one flat level per
    image taken from the VISIBLE patches of the mixture the model saw, and the hidden patches of that
    mixture (and the target) do not change it."""
    from imae.metrics.reconstruction import psnr_masked, visible_patch_stats

    torch.manual_seed(0)
    mae = _tiny_mae(norm_pix_loss=True)
    g = torch.Generator().manual_seed(0)
    # targets whose 16 patches have very different means: the patch-mean image is close to the target
    levels = torch.rand(2, 1, 4, 4, generator=g) * 4 - 2
    target = levels.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(2, 3, 16, 16)
    target = target + 0.05 * torch.randn(2, 3, 16, 16, generator=g)
    x_mix = 0.3 * target + 0.7 * torch.randn(2, 3, 16, 16, generator=g)
    visible = torch.zeros(2, 16)
    visible[:, :4] = 1
    removed = 1 - visible
    zeros = torch.zeros(2, 16, 48)
    pixel_mask = removed.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)

    def unit(x):  # a [0, 1] image for PSNR
        return ((x + 3) / 6).clamp(0, 1)

    leaked = mae.unpatchify(mae.patchify(target).mean(dim=-1, keepdim=True).expand(-1, -1, 48))  # the old result
    out = predicted_image(mae, zeros, x_mix, visible)
    mean, _ = visible_patch_stats(mae, x_mix, visible)
    assert torch.allclose(out, mean.view(2, 1, 1, 1).expand_as(out), atol=1e-6)  # one flat level per image
    assert torch.all(psnr_masked(unit(out), unit(target), pixel_mask)
                     < psnr_masked(unit(leaked), unit(target), pixel_mask) - 10)
    # hidden content (of the mixture or of the target) does not reach the de-normalised prediction
    x_changed = x_mix + 5 * removed.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    assert torch.equal(predicted_image(mae, zeros, x_changed, visible), out)
    # in the pipeline: an MAE predicting zeros gives ONE image, whichever component it is scored against
    from imae.metrics.reconstruction import _images

    mae32 = MaskedAutoencoderViT(**REGION_ARCH, norm_pix_loss=True)
    mae32.forward_decoder = lambda latent, ids_restore: torch.zeros(latent.shape[0], mae32.num_patches, 192)
    split = _region_data(1, 1).test  # its normalisation: x / 255
    x_sub, x_dom = torch.rand(1, 3, 32, 32, generator=g) * 0.2, 0.5 + torch.rand(1, 3, 32, 32, generator=g) * 0.5
    imgs = _images(types.SimpleNamespace(mae=mae32), None, x_sub, x_dom, 0.3, 0.75,
                   torch.rand(1, 16, generator=g), split)
    assert torch.equal(imgs["mae"]["sub"], imgs["mae"]["dom"])
    # with every patch visible and the model's own target patches, the round trip keeps each patch's contrast
    pred = mae.target_patches(x_mix)
    back = mae.patchify(predicted_image(mae, pred, x_mix))
    assert torch.allclose(back - back.mean(-1, keepdim=True),
                          (mae.patchify(x_mix) - mae.patchify(x_mix).mean(-1, keepdim=True))
                          * (visible_patch_stats(mae, x_mix)[1] / mae.patchify(x_mix).var(-1, keepdim=True)) ** 0.5,
                          atol=1e-3)


# ------------------------------------------------------------------------------------------------ pairs
def test_pairs_follow_the_pairing_and_the_seed():
    labels = torch.arange(60) % 6
    diff = make_pairs(labels, pairing="different", seed=0)
    assert len(diff) == 60 and torch.all(labels[diff.a] != labels[diff.b])
    assert sorted(diff.a.tolist()) == list(range(60))  # every image is an anchor once
    same = make_pairs(labels, 100, pairing="same", seed=0)
    assert torch.all(labels[same.a] == labels[same.b]) and torch.all(same.a != same.b)
    rnd = make_pairs(labels, pairing="random", seed=0)
    assert torch.all(rnd.a != rnd.b)
    assert torch.equal(make_pairs(labels, seed=5).b, make_pairs(labels, seed=5).b)
    assert not torch.equal(make_pairs(labels, seed=5).b, make_pairs(labels, seed=6).b)
    with pytest.raises(ConfigError, match="pairing='diff'"):
        make_pairs(labels, pairing="diff")


# ---------------------------------------------------------------------------------------------- loading
def test_load_model_kinds_frozen_and_reference(mae_run, imae_run):
    mae, imae = load_model(mae_run), load_model(imae_run)
    assert (mae.kind, imae.kind) == ("mae", "imae") and mae.imae is None and imae.imae is not None
    for m in (mae, imae):
        assert not m.mae.training and not any(p.requires_grad for p in m.mae.parameters())
    assert Path(imae.teacher_path) == Path(mae_run)
    assert load_reference(imae).fingerprint == mae.fingerprint
    assert load_reference(mae) is mae


def test_load_bare_state_dict_needs_a_model_config(mae_run, tmp_path):
    m = load_model(mae_run)
    bare = tmp_path / "bare.pth"
    torch.save(m.mae.state_dict(), bare)
    with pytest.raises(CheckpointError, match="model_config"):
        load_model(bare)
    ext = load_model(bare, model_config=m.config.model)
    assert ext.kind == "mae" and ext.fingerprint.startswith("external:") and ext.decoder_loaded
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(encode(ext.mae, x), encode(m.mae, x))
    enc_only = tmp_path / "enc.pth"
    torch.save({"model": {k: v for k, v in m.mae.state_dict().items() if not k.startswith(("decoder", "mask_"))}},
               enc_only)
    assert not load_model(enc_only, model_config=m.config.model).decoder_loaded


def test_imae_without_reachable_teacher_needs_reference(imae_run, mae_run, tmp_path, monkeypatch):
    m = load_model(imae_run)
    m.teacher_path = str(tmp_path / "gone")
    with pytest.raises(ConfigError, match="--reference"):
        load_reference(m)
    assert load_reference(m, mae_run).kind == "mae"


# ---------------------------------------------------------------------------------- metric sanity cases
class NoiseEncoder(MaskedAutoencoderViT):
    """A random-feature encoder: its tokens ignore the input."""

    def forward_features(self, imgs):
        return torch.randn(imgs.shape[0], 1 + self.num_patches, self.embed_dim, device=imgs.device)


def test_random_feature_encoder_scores_zero_r2_and_chance_accuracy(mae_run):
    ref = load_model(mae_run)
    torch.manual_seed(0)
    noise = NoiseEncoder(**_arch(ref.config.model)).eval()
    fake = LoadedModel(noise, None, ref.config, "mae", Path("noise"), "noise")
    data = load_eval_data(ref.config)
    ls = linear_separability(fake, ref, data, alphas=[0.3], pools=("mean",))
    for t in ("sub", "dom"):
        assert abs(ls["ridge"]["mean"][t]["r2"][0]) < 0.1
    ds = degree_of_semantics(fake, data, alphas=[0.3], pools=("mean",))
    for t in ("sub", "dom"):
        assert ds["accuracy"]["mean"][t][0] < 0.25  # 10 classes, 100 test pairs: chance 0.1
    assert ds["clean_accuracy"]["mean"] < 0.25


def _arch(m):
    keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
            "decoder_depth", "decoder_num_heads", "mlp_ratio")
    return {k: getattr(m, k) for k in keys}


def test_oracle_encoder_scores_one(mae_run):
    """An MAE is its own reference: its clean-image features map to the reference's with R² ≈ 1, and the
    token-level no-refit score of the reference's exact targets is exactly 1."""
    m = load_model(mae_run)
    data = load_eval_data(m.config)
    ls = linear_separability(m, m, data, alphas=[0.05, 0.5])
    assert all(v > 0.99 for v in ls["clean_r2"].values())
    assert ls["no_refit"]["head"] == "decoder_embed" and len(ls["no_refit"]["sub"]["r2"]) == 2
    assert ls["ratio"]["mean"]["sub"] == pytest.approx([r / ls["clean_r2"]["mean"] for r in
                                                        ls["ridge"]["mean"]["sub"]["r2"]])
    # feed the hook the clean subordinate's own tokens: heads == targets for 'sub'
    scores = _no_refit(m, m.mae, data, torch.arange(8), torch.arange(8, 16))
    x_sub, x_dom = data.test.normalized(torch.arange(8), "cpu"), data.test.normalized(torch.arange(8, 16), "cpu")
    scores(0, slice(0, 8), x_sub, x_dom, encode(m.mae, x_sub))
    res = scores.result()
    assert res["sub"]["r2"][0] == pytest.approx(1.0, abs=1e-9)
    assert res["sub"]["centred_cosine"][0] == pytest.approx(1.0, abs=1e-6)
    assert res["dom"]["r2"][0] < 0.9 and "cosine" not in res["sub"]


def _no_refit(model, reference, data, a, b, n_alphas: int = 1) -> NoRefitScores:
    """NoRefitScores for test pairs (a, b), centred on the train split's pairs (one per train image)."""
    fit_pairs = make_pairs(data.train.labels, seed=0)
    _, fit_mean = reference_pass(reference, data.train, fit_pairs)
    _, test_mean = reference_pass(reference, data.test, Pairs(a, b, "different"))
    return NoRefitScores(model, reference, n_alphas, len(a), fit_mean=fit_mean, test_mean=test_mean)


def test_no_refit_r2_matches_flattened_r2(mae_run):
    m = load_model(mae_run)
    data = load_eval_data(m.config)
    scores = _no_refit(m, m.mae, data, torch.cat([torch.arange(0, 10), torch.arange(10, 20)]),
                       torch.cat([torch.arange(30, 40), torch.arange(40, 50)]))
    heads, targets = [], []
    for start in (0, 10):
        idx_a, idx_b = torch.arange(start, start + 10), torch.arange(start + 30, start + 40)
        x_a, x_b = data.test.normalized(idx_a, "cpu"), data.test.normalized(idx_b, "cpu")
        tok = encode(m.mae, 0.3 * x_a + 0.7 * x_b)
        scores(0, slice(start, start + 10), x_a, x_b, tok)
        heads.append(m.mae.decoder_embed(tok).flatten(1))
        targets.append(m.mae.decoder_embed(encode(m.mae, x_a)).flatten(1))
    expected = r2_score(torch.cat(targets), torch.cat(heads))
    assert scores.result()["sub"]["r2"][0] == pytest.approx(expected, abs=1e-6)


def test_no_refit_scores_are_centred_a_constant_head_scores_zero(mae_run):
    """A head that outputs the mean target (a constant) carries no information about the pair. Its raw
    cosine with the targets is high (the tokens share a large common part) — which the old score reported —
    while the centred cosine is 0 and R² is the constant control's, about 0."""
    m = load_model(mae_run)
    data = load_eval_data(m.config)
    pairs = make_pairs(data.test.labels, 40, seed=1)
    holder = {}
    head = types.SimpleNamespace(decoder_embed=lambda tok: holder["m"].to(tok.dtype).expand(tok.shape[0], -1, -1))
    scores = _no_refit(types.SimpleNamespace(imae=None, mae=head), m.mae, data, pairs.a, pairs.b)
    holder["m"] = scores.fit_mean["sub"]
    raw = []
    for sl in (slice(0, 20), slice(20, 40)):
        x_a, x_b = data.test.normalized(pairs.a[sl], "cpu"), data.test.normalized(pairs.b[sl], "cpu")
        scores(0, sl, x_a, x_b, encode(m.mae, 0.3 * x_a + 0.7 * x_b))
        t = m.mae.decoder_embed(encode(m.mae, x_a)).double()
        raw.append(torch.nn.functional.cosine_similarity(holder["m"].expand_as(t), t, dim=-1).mean(dim=1))
    res = scores.result()
    assert float(torch.cat(raw).mean()) > 0.5  # the raw cosine: high for a predictor that knows nothing
    assert res["sub"]["centred_cosine"][0] == pytest.approx(0.0, abs=0.02)  # float32 rounding of the mean
    assert res["sub"]["r2"][0] == pytest.approx(res["sub"]["const_r2"], abs=1e-6)
    assert -0.2 < res["sub"]["r2"][0] <= 0.0
    items = scores.items()
    assert items["no_refit/sub/sse"].shape == (1, 40) and items["no_refit/sub/sst"].shape == (40,)
    assert 1 - items["no_refit/sub/sse"][0].sum() / items["no_refit/sub/sst"].sum() == pytest.approx(
        res["sub"]["r2"][0], abs=1e-5)


# Images whose class is a band of rows: class c lights rows 3c..3c+2 (value 1 after normalisation), so a
# mixture shows the subordinate's band at alpha and the dominant's at 1 - alpha: fake encoders can read
# either exactly, which gives oracles with known scores.
REGION_ARCH = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                   decoder_depth=1, decoder_num_heads=2)


def _region_data(per_class_train: int = 30, per_class_test: int = 20) -> EvalData:
    from imae.data.augment import BatchAugment

    norm = BatchAugment(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False)  # x / 255

    def split(per_class, name):
        labels = torch.arange(10).repeat(per_class)
        images = torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8)
        for c in range(10):
            images[labels == c, :, 3 * c:3 * c + 3] = 255
        return Split(images, labels, 10, norm, name)

    return EvalData(split(per_class_train, "train"), split(per_class_test, "test"), "regions", None)


class RegionEncoder(MaskedAutoencoderViT):
    """Reads the class bands: ``sub`` -> one-hot of the WEAKER band present (the subordinate of a mixture, the
    class of a clean image); ``both`` -> two-hot of the bands present (which is which is lost)."""

    def __init__(self, mode: str):
        super().__init__(**REGION_ARCH)
        self.mode = mode

    def forward_features(self, x):
        r = torch.stack([x[:, :, 3 * c:3 * c + 3].mean(dim=(1, 2, 3)) for c in range(10)], dim=1)
        present = r > 0.02
        if self.mode == "sub":
            f = torch.nn.functional.one_hot(torch.where(present, r, torch.inf).argmin(dim=1), 10).float()
        else:
            f = present.float()
        f = torch.nn.functional.pad(f, (0, self.embed_dim - 10))
        return f[:, None].expand(-1, 1 + self.num_patches, -1).contiguous()


def _fake(mae, name: str) -> LoadedModel:
    from imae.config import RunConfig

    return LoadedModel(mae.eval().requires_grad_(False), None, RunConfig(), "mae", Path(name), name)


def test_an_encoder_of_the_subordinate_class_scores_on_sub_not_dom():
    """DS and LS of an encoder whose feature is the SUBORDINATE's class: sub ≈ 1, dom ≈ chance, so a sub/dom
    swap anywhere in the metric code is caught. With different-class pairs, the dominant's class is one of
    the 9 classes the subordinate is not: chance is 1/9, and the encoder scores about that on dom."""
    data = _region_data()
    sub = _fake(RegionEncoder("sub"), "sub-oracle")
    ds = degree_of_semantics(sub, data, alphas=[0.2], pools=("mean",))
    assert ds["chance"] == pytest.approx(1 / 9) and ds["set_chance"] == pytest.approx(1 / 45)
    assert ds["accuracy"]["mean"]["sub"][0] > 0.98 and ds["clean_accuracy"]["mean"] > 0.98
    assert ds["accuracy"]["mean"]["dom"][0] < 0.25
    items = ds["items"]
    assert items["mean/sub/correct"].shape == (1, 200) and items["mean/sub/correct"].dtype == bool
    assert items["mean/dom/correct"].mean() == pytest.approx(ds["accuracy"]["mean"]["dom"][0])
    assert np.array_equal(data.test.labels[items["pairs_a"]] != data.test.labels[items["pairs_b"]], np.ones(200, bool))
    ls = linear_separability(sub, sub, data, alphas=[0.2], pools=("mean",))
    assert ls["ridge"]["mean"]["sub"]["r2"][0] > 0.98 and ls["ridge"]["mean"]["dom"]["r2"][0] < 0.1
    assert ls["no_refit"]["sub"]["r2"][0] > 0.98 and ls["no_refit"]["dom"]["r2"][0] < 0.1
    assert ls["no_refit"]["sub"]["centred_cosine"][0] > 0.98


def test_set_valued_semantics_at_alpha_one_half():
    """An encoder that sees both classes but not which is which: per-role accuracy ≈ 1/2, the set {sub, dom}
    read from the summed sub + dom probabilities ≈ 1."""
    from imae.metrics.semantics import set_chance, set_correct

    data = _region_data()
    both = _fake(RegionEncoder("both"), "both")
    ds = degree_of_semantics(both, data, alphas=[0.5], pools=("mean",))
    assert ds["set_accuracy"]["mean"][0] > 0.95
    for t in ("sub", "dom"):
        assert 0.3 < ds["accuracy"]["mean"][t][0] < 0.7
    assert ds["items"]["mean/set_correct"].mean() == pytest.approx(ds["set_accuracy"]["mean"][0])
    # the rule itself: top-2 of the summed probabilities is the set; a one-class pair needs top-1
    p_sub = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    p_dom = np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.1, 0.2, 0.7]])
    assert set_correct(p_sub, p_dom, [0, 0, 2], [2, 1, 2]).tolist() == [True, False, True]
    assert set_chance(10, torch.tensor([0, 1]), torch.tensor([1, 1])) == pytest.approx((1 / 45 + 1 / 10) / 2)


def test_untrained_vit_is_the_null_not_noise(mae_run):
    """An UNTRAINED ViT of the same architecture reads the mixture's pixels: far above the noise null where
    pixels carry the answer (the dominant's class and feature), near chance / R² ≈ 0 for the subordinate at
    small alpha, with centred no-refit scores ≈ 0 (its heads know nothing of the reference's targets), and
    strictly below the oracle's clean ceiling."""
    ref = load_model(mae_run)
    data = load_eval_data(ref.config)
    torch.manual_seed(123)
    from imae.models import mae_from_config

    untrained = _fake(mae_from_config(ref.config.model), "untrained")
    ls = linear_separability(untrained, ref, data, alphas=[0.1, 0.5], pools=("mean",))
    r2 = ls["ridge"]["mean"]
    assert abs(r2["sub"]["r2"][0]) < 0.1 and r2["dom"]["r2"][0] > 0.5
    assert r2["sub"]["r2"][1] > r2["sub"]["r2"][0] + 0.2  # more of the subordinate at alpha = 0.5
    assert r2["sub"]["r2"][1] < ls["clean_r2"]["mean"] - 0.2  # below the clean ceiling
    for t in ("sub", "dom"):
        assert all(abs(c) < 0.1 for c in ls["no_refit"][t]["centred_cosine"])
        assert abs(ls["const_r2"]["mean"][t]) < 0.05
    ds = degree_of_semantics(untrained, data, alphas=[0.1], pools=("mean",))
    acc = ds["accuracy"]["mean"]
    assert acc["dom"][0] > ds["chance"] + 0.2 and acc["sub"][0] < acc["dom"][0] - 0.2
    assert acc["sub"][0] < ds["chance"] + 0.15  # 100 test pairs
    assert acc["dom"][0] <= ds["clean_accuracy"]["mean"] + 0.1  # the clean image is the easier task


def test_an_oracle_behind_an_invertible_linear_map(mae_run):
    """The reference's features through a fixed random invertible linear map: the refit recovers them
    (clean R² ≈ 1, mixture R² as the reference's own), the no-refit score (the unchanged head applied to the
    mapped tokens) does not."""
    ref = load_model(mae_run)
    data = load_eval_data(ref.config)
    q = torch.randn(ref.mae.embed_dim, ref.mae.embed_dim, generator=torch.Generator().manual_seed(0))

    class Mapped(MaskedAutoencoderViT):
        def forward_features(self, imgs):
            return super().forward_features(imgs) @ q

    mapped = Mapped(**_arch(ref.config.model))
    mapped.load_state_dict(ref.mae.state_dict())
    mapped = _fake(mapped, "mapped")
    ls = linear_separability(mapped, ref, data, alphas=[0.3], pools=("mean",))
    own = linear_separability(ref, ref, data, alphas=[0.3], pools=("mean",))
    assert ls["clean_r2"]["mean"] > 0.99
    for t in ("sub", "dom"):
        assert ls["ridge"]["mean"][t]["r2"][0] == pytest.approx(own["ridge"]["mean"][t]["r2"][0], abs=0.05)
        assert ls["no_refit"][t]["r2"][0] < 0 and own["no_refit"]["dom"]["r2"][0] > 0.3
    scores = _no_refit(mapped, ref.mae, data, torch.arange(8), torch.arange(8, 16))
    x_sub = data.test.normalized(torch.arange(8), "cpu")
    scores(0, slice(0, 8), x_sub, data.test.normalized(torch.arange(8, 16), "cpu"), encode(mapped.mae, x_sub))
    assert scores.result()["sub"]["r2"][0] < 0.5  # the clean subordinate itself: the identity oracle scores 1


def test_separability_items_reproduce_the_reported_numbers(mae_run):
    m = load_model(mae_run)
    data = load_eval_data(m.config)
    ls = linear_separability(m, m, data, alphas=[0.1, 0.4], pools=("cls", "mean"), n_pairs=80)
    it = ls["items"]
    assert it["pairs_a"].dtype == np.int64 and it["pairs_a"].shape == (80,)
    for p in ("cls", "mean"):
        for t in ("sub", "dom"):
            sse, sst = it[f"{p}/{t}/sse"], it[f"{p}/{t}/sst"]
            assert sse.shape == (2, 80) and sst.shape == (80,) and sse.dtype == np.float32
            r2 = 1 - sse.astype(np.float64).sum(axis=1) / sst.astype(np.float64).sum()
            assert r2 == pytest.approx(ls["ridge"][p][t]["r2"], abs=1e-5)
            assert 1 - it[f"{p}/{t}/sse_const"].sum() / sst.sum() == pytest.approx(ls["const_r2"][p][t], abs=1e-5)
            assert ls["ratio"][p][t] == pytest.approx([r / ls["clean_r2"][p] for r in ls["ridge"][p][t]["r2"]])
        clean = 1 - it[f"{p}/clean/sse"].sum() / it[f"{p}/clean/sst"].sum()
        assert clean == pytest.approx(ls["clean_r2"][p], abs=1e-5)
    for t in ("sub", "dom"):
        nr = 1 - it[f"no_refit/{t}/sse"].astype(np.float64).sum(axis=1) / it[f"no_refit/{t}/sst"].sum()
        assert nr == pytest.approx(ls["no_refit"][t]["r2"], abs=1e-5)
        assert it[f"no_refit/{t}/centred_cosine"].mean(axis=1) == pytest.approx(ls["no_refit"][t]["centred_cosine"],
                                                                              abs=1e-5)


def _duplicated_rows(n_images: int = 60, copies: int = 3, d: int = 100, seed: int = 0):
    """Rows that repeat images: features x and targets y are drawn per IMAGE, independently (nothing to
    learn), and every image appears ``copies`` times. Returns x, y (ridge target), labels, image ids."""
    g = torch.Generator().manual_seed(seed)
    x_img, y_img = torch.randn(n_images, d, generator=g), torch.randn(n_images, 5, generator=g)
    lab_img = torch.randint(0, 5, (n_images,), generator=g)
    ids = torch.arange(n_images).repeat(copies)
    return x_img[ids], y_img[ids], lab_img[ids], ids


def test_penalty_validation_grouped_by_image_does_not_leak():
    """With repeated images, a split by row validates on copies of fitting rows: memorising them looks
    perfect (validation R² ≈ 1, accuracy ≈ 1) though nothing generalises. Grouped by image, validation
    sees only unseen images and reports what there is: nothing."""
    from imae.metrics.ridge import group_split

    x, y, labels, ids = _duplicated_rows()
    leaky = fit_ridge(x, y, seed=0)
    grouped = fit_ridge(x, y, seed=0, groups=ids)
    assert max(leaky.val_r2) > 0.9 and max(grouped.val_r2) < 0.1
    assert leaky.lam_rel <= 1e-3 and grouped.lam_rel >= 10  # memorise vs nothing to fit: a strong penalty
    lin_leaky = linear_classifier(x, labels, x[:5], labels[:5], seed=0)
    lin_grouped = linear_classifier(x, labels, x[:5], labels[:5], seed=0, groups=ids)
    assert max(lin_leaky["val_accuracy"].values()) > 0.9 and max(lin_grouped["val_accuracy"].values()) < 0.6
    # pairs of images: no image on both sides, rows mixing the two kinds left out, ~val_fraction validate
    partners = torch.randint(0, 400, (400,), generator=torch.Generator().manual_seed(1))
    pairs = torch.stack([torch.arange(400), partners], dim=1)
    val, fit = group_split(400, 0.2, 0, pairs)
    assert not set(pairs[val].flatten().tolist()) & set(pairs[fit].flatten().tolist())
    assert 0.1 < len(val) / 400 < 0.3 and len(fit) > 80
    v1, f1 = group_split(50, 0.2, 3)  # without groups: the plain seeded permutation, as before
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(v1, perm[:10]) and torch.equal(f1, perm[10:])


def test_code_version_changes_when_metric_code_changes(tmp_path, monkeypatch):
    from imae.metrics import sourcehash

    assert sourcehash.code_version() == sourcehash.code_version() and len(sourcehash.code_version()) == 12
    names = {p.relative_to(sourcehash.PACKAGE).as_posix() for p in sourcehash.code_files()}
    assert {"metrics/separability.py", "data/pairs.py", "models/mae.py"} <= names
    copy = tmp_path / "separability.py"
    copy.write_text((sourcehash.PACKAGE / "metrics" / "separability.py").read_text())
    monkeypatch.setattr(sourcehash, "code_files", lambda: [copy])
    before = sourcehash.code_version()
    copy.write_text(copy.read_text().replace("sse_const", "sse_mean"))
    assert sourcehash.code_version() != before


def _copy_runs(mae_run, imae_run, tmp_path):
    """A private copy of the teacher and of its i-MAE, the i-MAE pointing at the copied teacher."""
    import shutil

    from imae.checkpoint import load_checkpoint, save_checkpoint

    teacher = tmp_path / "teacher"
    shutil.copytree(mae_run, teacher)
    student = tmp_path / "student"
    shutil.copytree(imae_run, student)
    ckpt = load_checkpoint(student)
    ckpt["teacher"]["path"] = str(teacher)
    ckpt["config"]["imae"]["teacher"] = str(teacher)
    save_checkpoint(ckpt, student / "checkpoint.pt")
    return teacher, student


def test_training_records_the_teacher_and_evaluation_verifies_it(mae_run, imae_run, tmp_path):
    from imae.checkpoint import load_checkpoint, save_checkpoint

    teacher_ckpt = load_checkpoint(mae_run)
    record = load_checkpoint(imae_run)["teacher"]
    assert record == {"path": str(mae_run), "fingerprint": teacher_ckpt["fingerprint"], "step": teacher_ckpt["step"]}
    teacher, student = _copy_runs(mae_run, imae_run, tmp_path)
    m = load_model(student)
    assert load_reference(m).path == teacher / "checkpoint.pt"
    assert load_reference(m, expect_fingerprint=teacher_ckpt["fingerprint"]).as_teacher == record["fingerprint"]
    with pytest.raises(ConfigError, match="expected"):
        load_reference(m, expect_fingerprint="someone-else")
    with pytest.raises(ConfigError, match="expected"):  # an MAE is its own reference; pinned, it must match
        load_reference(load_model(mae_run), expect_fingerprint="someone-else")
    # the teacher is trained further (another step, another encoder) after the i-MAE was trained
    changed = dict(teacher_ckpt, finished=False, step=teacher_ckpt["step"] + 5)
    save_checkpoint(changed, teacher / "checkpoint.pt")
    with pytest.raises(ConfigError, match="changed since") as err:
        load_reference(m)
    msg = str(err.value)
    assert record["fingerprint"] in msg and f"@step{changed['step']}" in msg and "Fix" in msg
    with pytest.raises(ConfigError, match="changed since"):
        evaluate(student, "separability", alphas=[0.3], n_pairs=40)
    # an old checkpoint without the recorded fingerprint: loaded, with a warning
    ckpt = load_checkpoint(student)
    ckpt["teacher"] = {"path": str(teacher)}
    save_checkpoint(ckpt, student / "checkpoint.pt")
    with pytest.warns(UserWarning, match="cannot be verified"):
        assert load_reference(load_model(student)).step == changed["step"]


def test_evaluation_items_are_written_and_read_back(mae_run, tmp_path):
    """items go to <what>_items.npz (not the JSON); experiments.cached_evaluation loads them back."""
    import shutil

    from imae.companion import experiments

    run = tmp_path / "run"
    shutil.copytree(mae_run, run)
    res = experiments.cached_evaluation(run, "knn")
    assert res["items_file"] == "knn_items.npz" and "correct" not in res["per_pool"]["mean"]
    n = res["per_pool"]["mean"]["n_test"]
    assert res["items"]["test_index"].tolist() == list(range(n)) and res["items"]["mean/correct"].dtype == bool
    assert res["items"]["mean/correct"].mean() == pytest.approx(res["accuracy"]["mean"])
    assert experiments.cached_evaluation(run, "knn")["items"].keys() == res["items"].keys()  # the cached copy
    rec = experiments.cached_evaluation(run, "reconstruction", alphas=[0.2, 0.5], n_pairs=12, n_examples=0)
    for name in ("mae", "input"):
        for t in ("sub", "dom"):
            arr = rec["items"][f"{name}/{t}/psnr_masked"]
            assert arr.shape == (2, 12) and arr.dtype == np.float32
            assert arr.mean(axis=1) == pytest.approx(rec[name][t]["psnr_masked"], rel=1e-5)
    assert "imae/sub/psnr" not in rec["items"] and rec["items"]["pairs_a"].shape == (12,)


# ----------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("run", ["mae_run", "imae_run"])
def test_evaluate_every_what_writes_json(run, request, tmp_path):
    ckpt = request.getfixturevalue(run)
    out = tmp_path / "eval"
    for what in WHATS:
        res = evaluate(ckpt, what, out=out, device="cpu", seed=1, **FAST[what])
        written = json.loads((out / f"{what}.json").read_text())
        meta = written["metadata"]
        assert written["what"] == what and meta["fingerprint"] == load_model(ckpt).fingerprint
        assert meta["dataset"] == "cifar10" and meta["seed"] == 1 and meta["wall_time_s"] > 0
        assert res["metadata"]["device"] == "cpu" and meta["code_version"] == code_version()
        assert "items" not in written and written["items_file"] == f"{what}_items.npz"
        with np.load(out / written["items_file"]) as z:
            assert set(z.files) == set(res["items"]) and {"pairs_a", "test_index"} & set(z.files)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert set(cfg["evaluations"]) == set(WHATS) and cfg["model"]["config"]["train"]["method"] == run[:-4]
    sep = json.loads((out / "separability.json").read_text())
    assert len(sep["ridge"]["cls"]["sub"]["r2"]) == 2 and sep["no_refit"]["head"] == (
        "splitter" if run == "imae_run" else "decoder_embed")
    assert len(sep["ratio"]["mean"]["dom"]) == 2 and set(sep["const_r2"]["cls"]) == {"sub", "dom"}
    assert set(sep["no_refit"]["sub"]) == {"r2", "centred_cosine", "const_r2"}
    sem = json.loads((out / "semantics.json").read_text())
    assert sem["chance"] == pytest.approx(1 / 9) and len(sem["set_accuracy"]["mean"]) == 1
    if run == "imae_run":  # verified against the teacher its training recorded
        assert sep["metadata"]["reference"]["as_teacher"] == load_model(ckpt).teacher_fingerprint
    rec = json.loads((out / "reconstruction.json").read_text())
    assert (rec["imae"] is None) == (run == "mae_run") and rec["mae"] is not None
    ex = np.load(out / rec["examples_file"])
    keys = {k.split("/")[1] for k in ex.files}
    assert {"x_sub", "x_dom", "x_mix", "mae", "mask"} <= keys
    assert ({"imae_sub", "imae_dom"} <= keys) == (run == "imae_run")
    assert ex["alpha0.1/x_mix"].shape == (2, 32, 32, 3) and 0 <= ex["alpha0.1/x_mix"].min() <= 1
    ft = json.loads((out / "finetune.json").read_text())
    # epoch 0 is the starting head (the probe's, LP-FT), then one row per fine-tuning epoch
    assert [c["epoch"] for c in ft["curve"]] == [0, 1] and 0 <= ft["accuracy"] <= 1


def test_finetune_leaves_the_loaded_model_untouched(mae_run):
    m = load_model(mae_run)
    before = {k: v.clone() for k, v in m.mae.state_dict().items()}
    from imae.metrics import finetune

    res = finetune(m.mae, load_eval_data(m.config), epochs=2, batch_size=64)
    assert [c["epoch"] for c in res["curve"]] == [0, 1, 2]
    assert res["curve"][0]["train_loss"] is None and all(c["train_loss"] is not None for c in res["curve"][1:])
    assert all(torch.equal(before[k], v) for k, v in m.mae.state_dict().items())


def test_evaluate_rejects_user_mistakes(mae_run, imae_run, tmp_path):
    with pytest.raises(ConfigError, match="'separabilty'.*separability"):
        evaluate(mae_run, "separabilty")
    with pytest.raises(ConfigError, match="alpha=0.7"):
        evaluate(mae_run, "separability", alphas=[0.3, 0.7])
    with pytest.raises(ConfigError, match="alpha=0.0"):
        evaluate(mae_run, "reconstruction", alphas=[0.0])
    with pytest.raises(ConfigError, match="'epochs'"):
        evaluate(mae_run, "knn", epochs=3)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evaluate(tmp_path / "missing", "knn")
    evaluate(mae_run, "knn", out=tmp_path / "e")
    with pytest.raises(RunDirError, match="another model"):
        evaluate(imae_run, "knn", out=tmp_path / "e")


def test_cli_evaluate(mae_run, tmp_path, capsys):
    from imae.cli import main

    out = tmp_path / "cli"
    assert main(["evaluate", "--checkpoint", str(mae_run), "--what", "knn,linear-probe", "--out", str(out),
                 "--device", "cpu", "--seed", "2"]) == 0
    assert json.loads((out / "knn.json").read_text())["metadata"]["seed"] == 2
    assert (out / "linear-probe.json").is_file()
    assert main(["evaluate", "--checkpoint", str(mae_run), "--what", "separability", "--out", str(out),
                 "--alphas", "0.25", "--n-pairs", "50"]) == 0
    sep = json.loads((out / "separability.json").read_text())
    assert sep["alphas"] == [0.25] and sep["n_test_pairs"] == 50
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(mae_run), "--what", "speed", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "what='speed'" in err and "separability" in err
    assert main(["evaluate", "--checkpoint", str(mae_run), "--what", "knn", "--out", str(out),
                 "--epochs", "2"]) == 2
    assert "--epochs" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_classifiers_run_on_cuda():
    x, y, _, _ = _blobs(400, 1, 8, 4, seed=0)
    assert linear_classifier(x, y, x, y, device="cuda")["accuracy"] > 0.99
    assert knn_classifier(x, y, x, y, device="cuda")["accuracy"] > 0.99
    from imae.metrics.probes import linear_classifiers

    problems = _fit_problems()  # CPU inputs for some fits, inputs already on the GPU for the others
    problems[1] = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in problems[1].items()}
    sequential = linear_classifiers(problems, parallel=1, device="cuda", return_probs=True)
    for a, b in zip(sequential, linear_classifiers(problems, device="cuda", return_probs=True)):  # threads, streams
        _same_fit(a, b)


def test_psnr_masked_scores_only_the_removed_pixels():
    from imae.metrics.reconstruction import PSNR_CAP, psnr_masked

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 8, 8, generator=g)
    mask = torch.zeros(2, 8, 8)
    mask[:, :4] = 1  # the top half was removed
    pred = truth.clone()
    pred[:, :, 4:] += 0.5  # errors only where the encoder saw the pixels
    assert torch.allclose(psnr_masked(pred, truth, mask), torch.full((2,), PSNR_CAP, dtype=torch.float64))
    pred = truth.clone()
    pred[:, :, :4] += 0.1  # a known error on the removed half: MSE 0.01 -> 20 dB
    assert torch.allclose(psnr_masked(pred, truth, mask), torch.full((2,), 20.0, dtype=torch.float64))


def test_a_moved_runs_folder_still_finds_the_teacher(imae_run, mae_run, tmp_path):
    """The runs folder moved as a whole (the i-MAE records its teacher's old absolute path): the default
    reference is the teacher of the same name beside the i-MAE (then checked by its fingerprint, as a teacher
    at its recorded path is); with no run of that name beside it, the error still names the fix."""
    import shutil

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(Path(imae_run), moved / "student")
    shutil.copytree(Path(mae_run), moved / Path(mae_run).name)
    m = load_model(moved / "student")
    m.teacher_path = str(tmp_path / "old-machine" / Path(mae_run).name)  # recorded, no longer there
    ref = load_reference(m)
    assert ref.path == moved / Path(mae_run).name / "checkpoint.pt"
    assert ref.as_teacher == load_model(mae_run).as_teacher
    m.teacher_path = str(tmp_path / "old-machine" / "elsewhere")  # no run of that name beside it
    with pytest.raises(ConfigError, match="--reference"):
        load_reference(m)
