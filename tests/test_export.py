"""``python -m imae export --to timm``: the exported folder is a timm hub folder that
``timm.create_model("local-dir:...", pretrained=True)`` loads offline with our encoder's features (and timm's
VisionTransformer loads the weights strictly by hand); the published models export the same way; nothing in the
folder names a machine path."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from imae.checkpoint import FORMAT, save_checkpoint
from imae.cli import main
from imae.config import build_config
from imae.data.datasets import dataset_info
from imae.export import absolute_paths
from imae.models import IMAE, mae_from_config

SMALL = {"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "model.decoder_embed_dim": 16,
         "model.decoder_depth": 1, "model.decoder_num_heads": 2}


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Every tensor away from its initial value (LayerNorm scales, biases, cls token, pos_embed's cls row), so a
    tensor left behind or mis-mapped by the export changes the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            t.add_(0.05 * torch.randn(t.shape, generator=g))


def _write_run(tmp_path, method: str, seed: int = 0):
    over = dict(SMALL)
    if method == "imae":
        over["imae.teacher"] = str(tmp_path / "some-mae")  # recorded only; export never loads the teacher
    cfg = build_config("tiny", method=method, **over)
    torch.manual_seed(seed)
    mae = mae_from_config(cfg.model)
    model = mae if method == "mae" else IMAE(mae)
    _perturb(model, seed)
    run = tmp_path / f"run-{method}"
    save_checkpoint({"format": FORMAT, "config": cfg.to_dict(), "model": model.state_dict(),
                     "fingerprint": f"test-{method}"}, run / "checkpoint.pt")
    return run, mae.eval()


def _timm_from(out):
    kwargs = json.loads((out / "timm_kwargs.json").read_text())
    record = json.loads((out / "export.json").read_text())
    weights = out / record["weights"]
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(weights))
    else:
        sd = torch.load(weights, weights_only=True)
    vit = VisionTransformer(**kwargs)
    vit.load_state_dict(sd, strict=True)  # raises on any missing or unexpected key
    return vit.eval(), sd, record


@pytest.mark.parametrize("method", ["mae", "imae"])
def test_export_timm_matches_our_encoder(tmp_path, method, capsys):
    run, mae = _write_run(tmp_path, method)
    out = tmp_path / "export"
    assert main(["export", "--to", "timm", str(run), str(out)]) == 0
    assert "timm_kwargs.json" in capsys.readouterr().out
    vit, sd, record = _timm_from(out)
    assert record["weights"] == "model.safetensors" and record["kind"] == method
    assert not [k for k in sd if k.startswith(("decoder", "mask_token", "splitter"))]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = mae.forward_features(x)
        theirs = vit.forward_features(x)
        pooled = vit(x)
    assert theirs.shape == ours.shape == (3, 1 + 64, 32)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ours[:, 0], atol=1e-5, rtol=1e-5)  # global_pool=token, no head
    # a different encoder's weights give different features: the comparison above can fail
    _, other = _write_run(tmp_path / "other", method, seed=7)
    with torch.no_grad():
        assert (other.forward_features(x) - theirs).abs().max() > 1e-2


def test_export_without_safetensors_writes_a_torch_file(tmp_path, monkeypatch):
    run, mae = _write_run(tmp_path, "mae")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails as if not installed
    out = tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    monkeypatch.undo()
    vit, _, record = _timm_from(out)
    assert record["weights"] == "model.pt" and not (out / "model.safetensors").exists()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), mae.forward_features(x), atol=1e-5, rtol=1e-5)


def test_export_of_a_missing_run_is_a_user_error(tmp_path, capsys):
    assert main(["export", "--to", "timm", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mae", "imae"])
def test_timm_local_dir_loads_the_exported_encoder(tmp_path, method):
    """The issue's check: timm.create_model("local-dir:OUT", pretrained=True) gives our features (atol 1e-5)."""
    run, mae = _write_run(tmp_path, method)
    out = tmp_path / "export"
    assert main(["export", "--to", "timm", str(run), str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    args, pre = cfg["model_args"], cfg["pretrained_cfg"]
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["num_classes"] == 0
    assert (args["img_size"], args["patch_size"], args["embed_dim"], args["depth"], args["num_heads"]) == (32, 4, 32,
                                                                                                            2, 2)
    assert args["global_pool"] == "token" and args["fc_norm"] is False  # TOOLCHAIN 15: else a strict-load failure
    info = dataset_info("cifar10")
    assert pre["input_size"] == [3, 32, 32] and pre["mean"] == list(info.mean) and pre["std"] == list(info.std)
    assert pre["license"] == "mit" and pre["num_classes"] == 0
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(vit) is VisionTransformer and vit.num_classes == 0
    data_cfg = timm.data.resolve_data_config({}, model=vit)
    assert tuple(data_cfg["input_size"]) == (3, 32, 32) and tuple(data_cfg["mean"]) == tuple(info.mean)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs, pooled = mae.forward_features(x), vit.forward_features(x), vit(x)
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, ours[:, 0], atol=1e-5, rtol=0)
    # the fixed sin-cos position table came through (timm would otherwise start from its own random init)
    torch.testing.assert_close(vit.pos_embed.detach(), mae.pos_embed.detach())
    _, other = _write_run(tmp_path / "other", method, seed=7)  # the comparison can fail
    with torch.no_grad():
        assert (other.forward_features(x) - theirs).abs().max() > 1e-2


def test_export_writes_a_card_and_no_machine_path(tmp_path):
    run, _ = _write_run(tmp_path, "imae")  # an i-MAE records its teacher as an absolute path
    out = tmp_path / "export"
    assert main(["export", str(run.resolve()), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\nlibrary_name: timm\n")
    for section in ("## How to use", "## Training data", "## Recipe", "## Training run", "## Measured",
                    "## Intended use and limitations", "## Licence", "## Citation"):
        assert section in card, section
    assert "No stored result measures this model" in card and "evaluate --what linear-probe" in card
    assert "JPEG" in card and "MIT" in card and "2210.11470" in card
    record = json.loads((out / "export.json").read_text())
    assert record["source"] == run.name and record["card"] == "README.md"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = json.dumps(f.metadata())
    for f in sorted(out.iterdir()):
        text = meta if f.suffix == ".safetensors" else f.read_text()
        assert str(tmp_path) not in text and not absolute_paths(text), (f.name, absolute_paths(text))


def test_export_without_a_card_and_in_float16(tmp_path):
    run, mae = _write_run(tmp_path, "mae")
    out = tmp_path / "export"
    assert main(["export", "--no-card", "--dtype", "float16", str(run), str(out)]) == 0
    assert not (out / "README.md").exists()
    from safetensors.torch import load_file

    sd = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in sd.values()} == {torch.float16}
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # loads into float32 parameters
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (vit.forward_features(x) - mae.forward_features(x)).abs().max()
    assert 0 < diff < 0.05  # float16 rounding, not another model


@pytest.mark.parametrize("name", ["cifar-mae", "cifar-imae"])
def test_published_models_export_to_timm(tmp_path, name):
    """Each published paper-scale model becomes a timm folder in seconds, with the features of the stored model."""
    import imae

    out = tmp_path / name
    assert main(["export", "--to", "timm", name, str(out)]) == 0
    model = imae.load_pretrained(name)
    mae = model if name == "cifar-mae" else model.mae
    record = json.loads((out / "export.json").read_text())
    assert record["origin"] == "published" and record["dtype"] == "float16"
    assert record["published"]["sha256"] == model.card["sha256"] and record["fingerprint"] == model.card["fingerprint"]
    assert (out / "model.safetensors").stat().st_size < 11_500_000  # the encoder alone, float16
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), mae.forward_features(x), atol=1e-5, rtol=0)
    card = (out / "README.md").read_text()
    assert "linear probe top-1" in card and "book/results/cifar/paper_scale.json" in card
    assert not absolute_paths(card)


def test_export_of_an_unknown_name_is_a_user_error(tmp_path, capsys):
    assert main(["export", "cifar-nope", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "neither a run directory or checkpoint nor a published model" in err and "cifar-mae" in err
