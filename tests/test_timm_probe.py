"""``python -m imae evaluate --what linear-probe`` on an exported encoder (a timm folder): the book's recipe,
printed and stored, and the same result as on the run it was exported from."""

from __future__ import annotations

import json

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from imae.checkpoint import FORMAT, save_checkpoint
from imae.cli import main
from imae.config import build_config
from imae.export import TimmTokens, is_timm_source
from imae.models import mae_from_config

SMALL = {"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "model.decoder_embed_dim": 16,
         "model.decoder_depth": 1, "model.decoder_num_heads": 2}


@pytest.fixture()
def exported(tmp_path, toy_root):
    """A tiny MAE run (random weights, perturbed) and its timm export; the data root is the toy set."""
    cfg = build_config("tiny", method="mae", **SMALL, **{"data.root": str(toy_root), "data.download": False})
    torch.manual_seed(0)
    mae = mae_from_config(cfg.model)
    with torch.no_grad():
        for t in mae.state_dict().values():
            t.add_(0.05 * torch.randn(t.shape))
    run = tmp_path / "run"
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "model": mae.state_dict(), "fingerprint": "fp-run"},
                    run / "checkpoint.pt")
    out = tmp_path / "timm"
    assert main(["export", str(run), str(out)]) == 0
    return run, out


def test_linear_probe_of_an_exported_encoder_is_the_runs(exported, tmp_path, toy_root, capsys):
    run, folder = exported
    assert is_timm_source(folder) and is_timm_source(f"local-dir:{folder}") and not is_timm_source(run)
    capsys.readouterr()
    common = ["--what", "linear-probe", "--data-root", str(toy_root), "--device", "cpu"]
    assert main(["evaluate", "--checkpoint", str(folder), "--out", str(tmp_path / "a"), *common]) == 0
    printed = capsys.readouterr().out
    assert "linear-probe recipe" in printed and "L-BFGS" in printed and "[0.1, 0.03, 0.01" in printed
    assert "20% of the training images (seed 0)" in printed and "linear-probe: cls" in printed
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "b"), *common]) == 0
    ours = json.loads((tmp_path / "b" / "linear-probe.json").read_text())
    theirs = json.loads((tmp_path / "a" / "linear-probe.json").read_text())
    assert theirs["recipe"] and ours["recipe"] and theirs["recipe"][0] == ours["recipe"][0]
    meta = theirs["metadata"]
    assert meta["kind"] == "timm" and meta["exported_from"]["fingerprint"] == "fp-run"
    assert meta["n_train_images"] == 200 and meta["n_test_images"] == 100 and not meta["input"]["resized"]
    # the same features, so the same classifier: the probe of the exported encoder IS the book's probe of the run
    assert theirs["pools"] == ours["pools"] == ["cls", "mean"]
    assert theirs["accuracy"] == ours["accuracy"]
    assert theirs["per_pool"]["mean"]["val_accuracy"] == ours["per_pool"]["mean"]["val_accuracy"]
    assert (tmp_path / "a" / "linear-probe_items.npz").is_file() and (tmp_path / "a" / "config.yaml").is_file()


def test_knn_through_a_local_dir_name_and_what_an_encoder_cannot_do(exported, tmp_path, toy_root, capsys):
    _, folder = exported
    args = ["--data-root", str(toy_root), "--device", "cpu", "--out", str(tmp_path / "k")]
    assert main(["evaluate", "--checkpoint", f"local-dir:{folder}", "--what", "knn", *args]) == 0
    out = capsys.readouterr().out
    assert "k = 20 nearest" in out
    assert json.loads((tmp_path / "k" / "knn.json").read_text())["metadata"]["source"] == f"local-dir:{folder}"
    assert main(["evaluate", "--checkpoint", str(folder), "--what", "separability", *args]) == 2
    assert "no decoder or splitter heads" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(folder), "--what", "linear-probe", "--alphas", "0.3", *args]) == 2
    assert "--alphas" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", f"local-dir:{tmp_path / 'nothing'}", "--what", "knn", *args]) == 2
    assert "no timm config.json" in capsys.readouterr().err


def test_an_encoder_trained_on_other_constants_and_sizes_sees_its_own_input():
    """The wrapper hands a model its own normalisation and size, and a model without a class token its mean."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0).eval()
    data_mean, data_std, model_mean, model_std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), (0.5, 0.5, 0.5), (0.5, 0.4, 0.3)
    wrapped = TimmTokens(vit, data_mean=data_mean, data_std=data_std, model_mean=model_mean, model_std=model_std,
                         size=64, data_size=32)
    raw = torch.rand(2, 3, 32, 32)
    as_data = (raw - torch.tensor(data_mean).view(1, 3, 1, 1)) / torch.tensor(data_std).view(1, 3, 1, 1)
    as_model = (raw - torch.tensor(model_mean).view(1, 3, 1, 1)) / torch.tensor(model_std).view(1, 3, 1, 1)
    big = torch.nn.functional.interpolate(as_model, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(wrapped.forward_features(as_data), vit.forward_features(big), atol=1e-5, rtol=1e-5)
        assert (wrapped.forward_features(as_data) - vit.forward_features(
            torch.nn.functional.interpolate(as_data, size=(64, 64), mode="bicubic", antialias=True))).abs().max() > 1e-3
    plain = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                              class_token=False, global_pool="avg").eval()
    w2 = TimmTokens(plain, data_mean=data_mean, data_std=data_std, model_mean=data_mean, model_std=data_std, size=32,
                    data_size=32)
    assert not w2.has_class_token and not w2.convert and not w2.resize
    with torch.no_grad():
        t = plain.forward_features(as_data)
        got = w2.forward_features(as_data)
    torch.testing.assert_close(got[:, 1:], t)
    torch.testing.assert_close(got[:, 0], t.mean(dim=1))
