"""The transfer limits of a remote machine (tools/limits.py): packing within them, the stored weights' size,
and what one upload holds."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch

from imae.campaign.packing import PackingError
from imae.config import build_config
from imae.models import IMAE, mae_from_config
from imae.pretrained import WeightsError, save_weights
from tools import slim_checkout as slim
from tools.limits import (DATA_ARCHIVE_BYTES, MAX_BYTES, MAX_FILES, MAX_MODEL_BYTES, UPLOAD_LIMIT, LimitedPacker,
                          check_folder, check_weights_budget)

REPO = Path(__file__).resolve().parents[2]


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def _random_file(path: Path, n: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    path.write_bytes(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).numpy().tobytes())
    return path


def test_packing_limits(tmp_path):
    assert (MAX_FILES, MAX_BYTES) == (8, 16 * 2**20)
    out = tmp_path / "out"
    out.mkdir()
    kib = 1024
    # 3 archive slots beside the manifest, the log and the compile-cache archive's slot
    packer = LimitedPacker(out, max_files=6, max_bytes=64 * kib)
    _random_file(tmp_path / "a" / "w.bin", 30 * kib)
    assert packer.pack("a", tmp_path / "a") == ["a.tar.gz"]
    for k, n in enumerate((30, 30, 20)):  # 80 KiB of incompressible data: two parts, each under the limit
        _random_file(tmp_path / "b" / f"w{k}.bin", n * kib, seed=k + 1)
    parts = packer.pack("b", tmp_path / "b")
    assert parts == ["b.part1.tar.gz", "b.part2.tar.gz"]
    assert all((out / p).stat().st_size <= 64 * kib for p in parts)
    assert members(out / "b.part2.tar.gz") == ["b/w2.bin"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "r.json").write_text('{"x": 1}')
    assert packer.pack("c", tmp_path / "c") == ["b.part2.tar.gz"]  # no slot left: joins the one with most room
    assert members(out / "b.part2.tar.gz") == ["b/w2.bin", "c/r.json"]
    _random_file(tmp_path / "d" / "big.bin", 50 * kib, seed=9)
    with pytest.raises(PackingError, match="fits neither a new file"):
        packer.pack("d", tmp_path / "d")
    _random_file(tmp_path / "e" / "huge.bin", 70 * kib, seed=5)
    with pytest.raises(PackingError, match="alone exceed"):
        LimitedPacker(tmp_path / "o2", max_bytes=64 * kib).pack("e", tmp_path / "e")
    assert packer.catalog()["b.part2.tar.gz"]["stages"] == ["b", "c"]
    # The folder check the window ends with.
    for k in range(4):
        (out / f"x{k}.txt").write_text("x")
    with pytest.raises(PackingError, match="over the limit of 6"):
        check_folder(out, max_files=6, max_bytes=64 * kib)
    with pytest.raises(PackingError, match="over 0 MiB"):
        check_folder(tmp_path / "a", max_files=8, max_bytes=100)


def test_a_grown_stage_is_repacked(tmp_path):
    """An itemized stage packed again (it grew) replaces its archive; the other stages' stay."""
    out = tmp_path / "out"
    out.mkdir()
    packer = LimitedPacker(out, max_files=5, max_bytes=64 * 1024)  # 2 slots beside the reserved 3
    (tmp_path / "s" / "evals").mkdir(parents=True)
    (tmp_path / "s" / "evals" / "a.json").write_text("{}")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "r.json").write_text("{}")
    packer.pack("s", tmp_path / "s")
    packer.pack("t", tmp_path / "t")
    (tmp_path / "s" / "evals" / "b.json").write_text("{}")
    assert packer.pack("s", tmp_path / "s") == ["s.tar.gz"]
    assert members(out / "s.tar.gz") == ["s/evals/a.json", "s/evals/b.json"]
    assert sorted(packer.catalog()) == ["s.tar.gz", "t.tar.gz"] and packer.check()


def _micro_mae():
    cfg = build_config("tiny", "mae", **{"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
                                         "model.decoder_embed_dim": 32, "model.decoder_depth": 1,
                                         "model.decoder_num_heads": 2})
    return mae_from_config(cfg.model), cfg


def test_weights_budget(tmp_path):
    model, cfg = _micro_mae()
    save_weights(model, cfg, tmp_path, "a", fingerprint="x")
    save_weights(model, cfg, tmp_path, "b", fingerprint="x")
    one = (tmp_path / "a.safetensors").stat().st_size
    assert len(check_weights_budget([tmp_path], total=2 * one)) == 2
    with pytest.raises(WeightsError, match="budget"):
        check_weights_budget([tmp_path], total=2 * one - 1)
    with pytest.raises(WeightsError, match="per model"):
        check_weights_budget([tmp_path], per_model=one - 1, total=10 * one)


def test_committed_weights_fit_the_upload():
    """Every stored model is uploaded with the dataset archives, within the limit: the committed weights may
    take at most 2 x MAX_MODEL_BYTES (the teacher and the standard i-MAE)."""
    sizes = check_weights_budget(sorted(REPO.glob("campaign/*/weights")), total=2 * MAX_MODEL_BYTES)
    assert sum(sizes.values()) + DATA_ARCHIVE_BYTES < UPLOAD_LIMIT - 2_000_000  # with room for the code
    for p in sizes:  # every committed model carries a card with the right checksum
        from imae.pretrained import verify
        verify(Path(p).with_suffix(".json"))


def test_checkout_and_data_fit_one_upload():
    """What the next call uploads stays under the limit: the checkout, less what a slim checkout leaves behind
    for the pending stages (the book, finished stages' results, weights no pending stage loads), plus the
    dataset archives."""
    report = slim.upload_report(REPO)
    if report is None:
        pytest.skip("not a git checkout")
    assert not slim.upload_report(REPO, data_bytes=UPLOAD_LIMIT)["ok"]
    if slim.state(REPO):
        pytest.skip("the checkout is slim already (python tools/slim_checkout.py restore)")
    p = slim.plan(REPO, "cifar")
    left = slim.checkout_bytes(REPO) - p["left_bytes"]
    assert slim._report(left)["ok"], (p["stages"], slim._report(left)["message"])
    # and with room for the code to grow: 2 MB
    assert slim._report(left + 2_000_000)["ok"], slim._report(left)["message"]


def test_cifar_models_fit_the_per_model_limit():
    for method in ("mae", "imae"):
        cfg = build_config("cifar", method, **({"imae.teacher": "t"} if method == "imae" else {}))
        mae = mae_from_config(cfg.model)
        model = mae if method == "mae" else IMAE(mae)
        n = sum(v.numel() for v in model.state_dict().values())
        assert 2 * n < MAX_MODEL_BYTES - 100_000, (method, n)  # fp16 + the safetensors header
