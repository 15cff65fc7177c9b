"""tools/remote_window.py: the library's window with a remote machine's packer, weights cap and data archives."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from imae.campaign.manifest import CampaignError
from imae.campaign.watchdog import Clock
from tools import remote_window
from tools.limits import MAX_BYTES, MAX_FILES, MAX_MODEL_BYTES, LimitedPacker


def test_the_window_gets_the_machines_packer_cap_and_data(tmp_path):
    args = remote_window.build_parser().parse_args(
        ["--preset", "tiny", "--budget-s", "60", "--out", str(tmp_path / "out"), "--stages", "mae", "imae",
         "--data-archives", str(tmp_path / "archives"), "--set", "train.batch_size=32"])
    cfg = remote_window.window_config(args)
    assert cfg.preset == "tiny" and cfg.stages == ["mae", "imae"] and cfg.overrides == {"train.batch_size": 32}
    packer = cfg.packer(tmp_path / "out")
    assert isinstance(packer, LimitedPacker) and (packer.max_files, packer.max_bytes) == (MAX_FILES, MAX_BYTES)
    assert cfg.max_model_bytes == MAX_MODEL_BYTES and cfg.prepare_data is not None
    plain = remote_window.window_config(remote_window.build_parser().parse_args(
        ["--out", "o", "--max-files", "5", "--max-file-mib", "1"]))
    assert plain.prepare_data is None and plain.packer("o").max_files == 5 and plain.packer("o").max_bytes == 2**20
    with pytest.raises(Exception, match="--out is required"):
        remote_window.window_config(remote_window.build_parser().parse_args([]))


def _window(tmp_path: Path):
    lines = []
    w = SimpleNamespace(cfg=SimpleNamespace(data_root=None), work=tmp_path / "work", log=lines.append,
                        clock=Clock(60.0), reserve_s=1.0, record={})
    return w, lines


def test_unpacking_the_archives(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    w, lines = _window(tmp_path)
    with pytest.raises(CampaignError, match=r"lacks \['train_jpeg.npz'"):
        remote_window.unpack_archives(archives, w)
    for f in remote_window.ARCHIVE_FILES[:-1]:
        (archives / f).write_bytes(b"x")
    (archives / "cifar_unpack.py").write_text(  # a stand-in: writes the batches it is asked for
        "import sys, pathlib\n"
        "root = pathlib.Path(sys.argv[1]) / 'cifar-10-batches-py'\n"
        "root.mkdir(parents=True)\n"
        f"for f in {remote_window.CIFAR_FILES!r}: (root / f).write_text('b')\n"
        "print('wrote', root)\n")
    root = remote_window.unpack_archives(archives, w)
    assert root == tmp_path / "work" / "data" and (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert "unpack_s" in w.record and any("--check" in line for line in lines)
    assert remote_window.unpack_archives(archives, w) == root and "already unpacked" in lines[-1]
    (archives / "cifar_unpack.py").write_text("import sys; sys.exit('bad archive')\n")
    w2, _ = _window(tmp_path / "other")
    with pytest.raises(CampaignError, match="failed .exit 1.: bad archive"):
        remote_window.unpack_archives(archives, w2)
