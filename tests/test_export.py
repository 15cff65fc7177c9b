"""``python -m imae export --to timm``: the exported encoder is timm's VisionTransformer, loaded strictly, computing
the same features as ours."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from imae.checkpoint import FORMAT, save_checkpoint
from imae.cli import main
from imae.config import build_config
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
