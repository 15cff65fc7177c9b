"""The controls: the untrained encoder, the pixel pseudo-encoder, the equal-compute MAE continuation, and the
CPU edition's preset."""

import torch

from imae.companion import experiments as ex
from imae.checkpoint import load_checkpoint
from imae.config import build_config, fingerprint
from imae.controls import PixelEncoder, pixel_run, untrained_run
from imae.metrics import load_model
from imae.checkpoint import load_teacher
from imae.train import build_model

from .conftest import micro

MODEL = {k: v for k, v in micro(".").to_dict()["model"].items()}


def _model_overrides():
    return {f"model.{k}": v for k, v in MODEL.items()}


def test_untrained_run_holds_the_init_weights_of_its_seed(tmp_path):
    ov = _model_overrides()
    for seed in (0, 3):
        run = untrained_run("tiny", seed=seed, runs_dir=tmp_path, **ov)
        loaded = load_model(run)
        expected = build_model(build_config("tiny", "mae", **ov, **{"train.seed": seed}), None).state_dict()
        got = loaded.mae.state_dict()
        assert all(torch.equal(expected[k], got[k]) for k in expected)
        assert ex.describe_run(run)["method"] == "untrained" and ex.describe_run(run)["epochs"] == 0
    assert untrained_run("tiny", seed=0, runs_dir=tmp_path, **ov) != untrained_run("tiny", seed=3, runs_dir=tmp_path, **ov)


def test_pixel_encoder_features_are_the_downsampled_input(tmp_path):
    run = pixel_run("tiny", runs_dir=tmp_path)
    m = load_model(run)
    assert m.kind == "pixels" and isinstance(m.mae, PixelEncoder)
    x = torch.randn(3, 3, 32, 32)
    tokens = m.mae.forward_features(x)
    assert tokens.shape == (3, 2, 3 * 16 * 16)
    assert torch.allclose(tokens[:, 0], torch.nn.functional.avg_pool2d(x, 2).flatten(1))
    assert torch.equal(tokens[:, 0], tokens[:, 1])


def test_mae_continued_starts_from_its_teacher_and_counts_it_in_the_fingerprint(mae_run, toy_root, tmp_path):
    cfg = micro(toy_root, epochs=1, **{"train.init_from": str(mae_run)})
    teacher = load_checkpoint(mae_run)
    model = build_model(cfg, load_teacher(cfg, torch.device("cpu"), cfg.train.init_from)[0])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in teacher["model"].items())
    scratch = micro(toy_root, epochs=1)
    assert fingerprint(cfg, "a") != fingerprint(cfg, "b")  # the start point counts by what it is
    assert fingerprint(scratch) == fingerprint(micro(toy_root, epochs=1))  # unset: fingerprints unchanged
    runs = ex.comparison_runs("tiny", (0,), data_root=str(toy_root), mae_epochs=1, imae_epochs=1,
                              runs_dir=tmp_path, overrides={k: v for k, v in _model_overrides().items()} | {
                                  "data.download": False, "train.batch_size": 32})
    cont = load_checkpoint(runs[0]["mae_continued"])
    imae = load_checkpoint(runs[0]["imae"])
    assert cont["config"]["train"]["epochs"] == imae["config"]["train"]["epochs"]
    assert cont["config"]["train"]["warmup_epochs"] == imae["config"]["train"]["warmup_epochs"]
    assert cont["config"]["train"]["init_from"] == str(runs[0]["mae"])


def test_small_preset_trains_the_teacher_on_norm_pix_and_the_student_on_pixels():
    mae, imae = build_config("small", "mae"), build_config("small", "imae", teacher="x")
    assert mae.model.norm_pix_loss and not imae.model.norm_pix_loss
    assert mae.data.subset_per_class is None and mae.model.embed_dim == 96 and mae.model.patch_size == 4
