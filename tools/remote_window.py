"""One campaign window on a remote machine with transfer limits: the library's window, plus what such a machine needs.

    python tools/remote_window.py --preset cifar --budget-s 500 --out OUT --data-archives DIR --work SCRATCH

Takes every option of ``python -m imae campaign`` (see campaign/README.md) and adds:

* ``--data-archives DIR``: the dataset arrives compressed, with the script that unpacks it
  (:data:`ARCHIVE_FILES`); the window unpacks it into ``--data-root`` (default ``WORK/data``) during its
  preflight, with the script's ``--check`` (sha256 of the decoded arrays), inside the budget;
* the output folder is packed within the machine's return limits (:class:`tools.limits.LimitedPacker`:
  ``--max-files`` files of at most ``--max-file-mib``), and a stored model may have at most
  ``--max-model-mb`` (:data:`tools.limits.MAX_MODEL_BYTES`), since every stored model is uploaded with the
  checkout of every later call.

Before the call, ``python tools/slim_checkout.py slim`` keeps the upload within its limit; afterwards,
``python tools/slim_checkout.py collect FOLDER`` restores the checkout and collects the window's output.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.campaign.cli import add_window_arguments, config_from_args, run_window  # noqa: E402
from imae.campaign.manifest import CampaignError  # noqa: E402
from tools.limits import MAX_BYTES, MAX_FILES, MAX_MODEL_BYTES, LimitedPacker  # noqa: E402

ARCHIVE_FILES = ("train_jpeg.npz", "test_webp.npz", "batches.meta", "cifar_unpack.py")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def unpack_archives(archives: Path, w) -> Path:
    """The window's ``prepare_data``: unpack the CIFAR-10 archives in ``archives`` into the data root (once per
    machine: a root that holds the batches already is used as it is); returns the root."""
    root = Path(w.cfg.data_root) if w.cfg.data_root else w.work / "data"
    missing = [f for f in ARCHIVE_FILES if not (archives / f).is_file()]
    if missing:
        raise CampaignError(f"the dataset archive folder {archives} lacks {missing}: it must hold the compressed "
                            f"CIFAR-10 arrays and their unpacking script ({', '.join(ARCHIVE_FILES)})")
    folder = root / "cifar-10-batches-py"
    if all((folder / f).is_file() for f in CIFAR_FILES):
        w.log(f"data: {folder} already unpacked")
        return root
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    cmd = [sys.executable, str(archives / "cifar_unpack.py"), str(root), "--packs", str(archives), "--check"]
    w.log("unpacking CIFAR-10: " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=max(10.0, w.clock.remaining() - w.reserve_s))
    except subprocess.TimeoutExpired as e:
        raise CampaignError(f"unpacking the CIFAR-10 archives did not finish in {e.timeout:.0f} s") from e
    if proc.returncode != 0:
        raise CampaignError(f"unpacking the CIFAR-10 archives failed (exit {proc.returncode}): "
                            f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    w.record["unpack_s"] = round(time.monotonic() - t0, 1)
    w.log(f"data: {proc.stdout.strip()} in {w.record['unpack_s']} s")
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/remote_window.py", description=__doc__.split("\n\n")[0])
    add_window_arguments(p)
    p.add_argument("--data-archives", metavar="DIR", help="folder with the compressed dataset and its unpacking "
                                                          f"script ({', '.join(ARCHIVE_FILES)})")
    p.add_argument("--max-files", type=int, default=MAX_FILES, help=f"files the output may hold (default {MAX_FILES})")
    p.add_argument("--max-file-mib", type=float, default=MAX_BYTES / 2**20,
                   help=f"MiB one output file may have (default {MAX_BYTES / 2**20:g})")
    p.add_argument("--max-model-mb", type=float, default=MAX_MODEL_BYTES / 1e6,
                   help=f"MB one stored model may have (default {MAX_MODEL_BYTES / 1e6:g})")
    return p


def window_config(args):
    """The library's window configuration with this machine's packer, data preparation and weights cap."""
    cfg = config_from_args(args)
    cfg.packer = functools.partial(LimitedPacker, max_files=args.max_files, max_bytes=int(args.max_file_mib * 2**20))
    cfg.max_model_bytes = int(args.max_model_mb * 1e6)
    if args.data_archives:
        cfg.prepare_data = functools.partial(unpack_archives, Path(args.data_archives))
    return cfg


def main(argv=None) -> int:
    from imae.errors import ImaeError

    args = build_parser().parse_args(argv)
    try:
        return run_window(window_config(args))
    except ImaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
