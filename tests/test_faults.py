"""Fault injection: what a second process, a damaged file, a full or read-only disk, or a wrong notebook value
does to a run. Each case asserts the one-line message (what, where, the fix) and that nothing finished was lost
or written twice: the checkpoint of the last good step loads, metrics hold every step once, the same command
then resumes or the corrected one runs."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imae import cli
from imae.checkpoint import load_checkpoint, save_checkpoint
from imae.config import build_config
from imae.data.datasets import load_arrays
from imae.errors import (CheckpointError, ConfigError, DataFileError, RunDirError, RunFileError, RunLockedError,
                         StorageError)
from imae.parameters import check_parameters
from imae.runs import LOCK_NAME, FolderLock, read_metrics, read_run_config
from imae.train import pretrain

from .conftest import micro, micro_cli_args

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error a user sees: exactly one ``error:`` line, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "imae", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and (proc is None or proc.poll() is None):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out (process: {proc and proc.poll()}, stderr: {proc and proc.stderr.read()})")


def steps_once(run: Path, total: int) -> None:
    """Every optimizer step 1..total logged exactly once (nothing lost, nothing written twice)."""
    steps = [r["step"] for r in read_metrics(run) if "event" not in r]
    assert steps == list(range(1, total + 1)), steps


MICRO_STEPS = 12  # micro(): 200 toy images, batch 32 -> 6 steps per epoch, 2 epochs


# ============================================================================================ locks
def test_a_second_process_on_the_same_run_folder_is_refused_and_writes_nothing(toy_root, tmp_path, capsys):
    """Two identical commands on one --out: the second gets one line naming the first (pid and host) and
    exits 2 before writing; the first trains every step once."""
    run = tmp_path / "run"
    args = ["pretrain", "--method", "mae", "--out", run, "--quiet", *micro_cli_args(toy_root, **{"train.epochs": 10})]
    first = spawn(args)
    wait_for(lambda: len(read_metrics(run)) >= 2, first)
    code, err = run_cli(args, capsys)
    line = one_line(err)
    assert code == 2 and f"another process (pid {first.pid} on {HOST}" in line and f"is training {run}" in line
    assert "Nothing was written" in line and f"kill {first.pid}" in line
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    steps_once(run, 10 * 6)
    assert load_checkpoint(run)["finished"] and not (run / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(toy_root, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": HOST, "since": "earlier"}))
    pretrain(micro(toy_root), run, progress=False)
    steps_once(run, MICRO_STEPS)
    assert not (run / LOCK_NAME).exists()  # released (removed) at the end


def test_a_lock_held_on_another_host_is_refused_with_the_file_to_delete(toy_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7"}))
    with pytest.raises(RunLockedError, match=r"another process \(pid 4242 on gpu-node-7\) is training") as e:
        pretrain(micro(toy_root), run, progress=False)
    assert f"delete {run / LOCK_NAME}" in str(e.value)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing claimed, the record left as it was


def test_the_lock_is_released_when_a_run_fails(toy_root, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="larger than the dataset"):
        pretrain(micro(toy_root, **{"train.batch_size": 10**6}), run, progress=False)
    assert not (run / LOCK_NAME).exists()
    with FolderLock.for_run(run):  # free again
        assert (run / LOCK_NAME).is_file()
    assert not (run / LOCK_NAME).exists()


def test_the_lock_holds_against_the_same_process_too(tmp_path):
    with FolderLock.for_run(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {HOST}"):
            FolderLock.for_run(tmp_path).acquire()


def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch):
    """Where the file system has no flock, the record alone decides: a live pid of this host holds the lock, a
    dead one is stale."""
    import imae.runs as runs

    monkeypatch.setattr(runs, "fcntl", None)
    with FolderLock.for_run(tmp_path):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {HOST}"):
            FolderLock.for_run(tmp_path).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": HOST}))
    with FolderLock.for_run(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


_HOLD = """
import sys, time
from pathlib import Path
from imae.campaign.manifest import manifest_lock
with manifest_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_campaign_window_on_one_manifest_is_refused_before_it_reads_it(tmp_path, capsys):
    """Windows on one manifest used to overwrite each other's records: the second is refused at once, and the
    manifest, its folder and the output folder are as they were."""
    manifest = tmp_path / "campaign" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"format": "imae-campaign-v1", "preset": "tiny", "windows": [], "stages": {}}))
    before = manifest.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(manifest), "60"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(["campaign", "--preset", "tiny", "--manifest", manifest, "--out", tmp_path / "out",
                             "--work", tmp_path / "work", "--budget-s", "60", "--device", "cpu"], capsys)
        line = one_line(err)
        assert code == 2 and f"another process (pid {holder.pid} on {HOST}" in line
        assert f"is running a campaign window on {manifest}" in line
        assert manifest.read_bytes() == before and not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    finally:
        holder.kill()
        holder.wait()
    from imae.campaign.manifest import manifest_lock

    with manifest_lock(manifest):  # the holder was killed: its lock is stale and taken over
        pass


# ============================================================================================= data
def _toy_copy(toy_root: Path, tmp_path: Path, mutate, name: str = "data_batch_1") -> Path:
    root = tmp_path / "data"
    shutil.copytree(toy_root, root)
    f = root / "cifar-10-batches-py" / name
    with open(f, "rb") as fh:
        d = pickle.load(fh, encoding="latin1")
    with open(f, "wb") as fh:
        pickle.dump(mutate(d), fh, protocol=2)
    return root


BAD_BATCHES = [
    ("short-labels", lambda d: {**d, "labels": d["labels"][:5]}, "holds 40 images but 5 labels"),
    ("row-size", lambda d: {**d, "data": d["data"][:, :3000]}, "'data' has shape (40, 3000); a CIFAR batch holds one "
                                                               "row of 3072 bytes"),
    ("label-range", lambda d: {**d, "labels": [12] + d["labels"][1:]}, "label 12 of image 0 is outside 0..9"),
    ("no-data", lambda d: {k: v for k, v in d.items() if k != "data"}, "is not a CIFAR batch: it has no 'data'"),
    ("pixel-range", lambda d: {**d, "data": d["data"].astype(np.int64) * 2}, "holds int64 values from 0 to"),
    ("not-a-dict", lambda d: [d], "holds a list, not a CIFAR batch"),
]


@pytest.mark.parametrize("name,mutate,words", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
def test_a_damaged_cifar_batch_is_named_with_the_fix(name, mutate, words, toy_root, tmp_path):
    root = _toy_copy(toy_root, tmp_path, mutate)
    with pytest.raises(DataFileError) as e:
        load_arrays("cifar10", "train", root, download=False)
    msg = str(e.value)
    assert words in msg and str(root / "cifar-10-batches-py" / "data_batch_1") in msg, msg
    assert "Fix: delete" in msg and "make-toy-data" in msg and "\n" not in msg


def test_a_short_label_list_never_trains(toy_root, tmp_path, capsys):
    """It used to train, labels out of step with images; now the command stops before claiming the folder."""
    root = _toy_copy(toy_root, tmp_path, lambda d: {**d, "labels": d["labels"][:5]})
    run = tmp_path / "run"
    code, err = run_cli(["pretrain", "--method", "mae", "--out", run, "--quiet", *micro_cli_args(root)], capsys)
    assert code == 2 and "holds 40 images but 5 labels" in one_line(err)
    assert not (run / "config.yaml").exists() and not (run / "checkpoint.pt").exists()


def test_a_wrong_class_list_is_named(toy_root, tmp_path):
    root = _toy_copy(toy_root, tmp_path, lambda d: {**d, "label_names": d["label_names"][:3]}, name="batches.meta")
    with pytest.raises(DataFileError, match=r"batches.meta: 'label_names' should list the 10 class names of cifar10, "
                                            r"found 3 names"):
        load_arrays("cifar10", "train", root, download=False)


def test_a_batch_keyed_by_bytes_is_the_same_batch(toy_root, tmp_path):
    root = _toy_copy(toy_root, tmp_path, lambda d: {k.encode(): v for k, v in d.items()})
    a, b = load_arrays("cifar10", "train", root, download=False), load_arrays("cifar10", "train", toy_root,
                                                                              download=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def _image_folder(tmp_path: Path, bad: bytes | None) -> Path:
    from PIL import Image

    root = tmp_path / "folders"
    for c in ("a", "b"):
        d = root / "imagenet" / "train" / c
        d.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(d / f"{i}.JPEG")
    if bad is not None:
        (root / "imagenet" / "train" / "b" / "2.JPEG").write_bytes(bad)
    return root


@pytest.mark.parametrize("bad", [b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"not an image at all"])
def test_an_unreadable_image_of_an_image_folder_is_named(bad, tmp_path):
    from imae.data.datasets import image_folder
    from imae.data.sources import LoaderPairSource, pil_transform

    root = _image_folder(tmp_path, bad)
    ds = image_folder("imagenet", "train", root)
    bad_file = root / "imagenet" / "train" / "b" / "2.JPEG"
    with pytest.raises(DataFileError, match="is not a readable image") as e:
        [ds[i] for i in range(len(ds))]
    assert str(bad_file) in str(e.value)
    # in a DataLoader worker (whose errors come back wrapped in the worker's traceback): the same one line
    src = LoaderPairSource(ds, batch_size=8, same_prob=1.0, pairs=False, seed=0, device="cpu", num_workers=1,
                           transform=pil_transform(8, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(DataFileError) as e:
        list(src.batches(0))
    assert str(e.value).startswith(str(bad_file)) and "\n" not in str(e.value) and "Traceback" not in str(e.value)


# ================================================================================ notebook parameters
LATE = [  # values that used to train for minutes (or fail at the end) before failing
    (dict(alphas=[0.7]), "alpha=0.7 is outside (0, 0.5]"),
    (dict(max_images=-5), "max_images=-5 must be a whole number >= 1"),
    (dict(preset="tiny", max_images=5), "max_images=5 is below the number of classes (10)"),
    (dict(preset="tiny", same_prob=2.0), "same_prob=2.0 must lie in [0, 1]"),
    (dict(same_probs=[0.0, 1.5]), "same_prob=1.5 must lie in [0, 1]"),
    (dict(seeds=[]), "seeds is empty"),
    (dict(seeds=[0, 0]), "repeats a seed"),
    (dict(preset="huge"), "unknown preset 'huge'; choose one of"),
    (dict(preset="tiny", overrides={"train.batch_sise": 64}), "unknown config parameter 'train.batch_sise'. Did you "
                                                               "mean train.batch_size"),
    (dict(preset="tiny", mae_epochs=0), "mae_epochs=0 must be a whole number >= 1"),
    (dict(pool="max"), "pool='max' is unknown"),
    (dict(mask_ratio=1.0), "mask_ratio=1.0 must lie strictly between 0 and 1"),
]


@pytest.mark.parametrize("params,words", LATE, ids=[next(iter(p)) + "-" + w.split()[0] for p, w in LATE])
def test_notebook_values_are_checked_in_the_setup_cell(params, words):
    from imae.companion import notebook as nb

    with pytest.raises(ConfigError) as e:
        nb.setup({**params, "__name__": "__main__"})
    assert words in str(e.value)


def test_notebook_checks_give_the_command_lines_messages():
    from imae.metrics.features import check_alphas

    for alphas in ([0.7], [], ["x"]):
        with pytest.raises(ConfigError) as cli_error:
            check_alphas(alphas)
        with pytest.raises(ConfigError) as nb_error:
            check_parameters(alphas=alphas)
        assert str(nb_error.value) == str(cli_error.value)
    with pytest.raises(ConfigError) as cli_error:
        build_config("tiny", "mae", same_prob=2.0)
    with pytest.raises(ConfigError) as nb_error:
        check_parameters(preset="tiny", same_prob=2.0)
    assert str(nb_error.value) == str(cli_error.value)


def test_reproduce_checks_every_parameter_before_a_notebook_runs(tmp_path, monkeypatch, capsys):
    from imae.companion import reproduce

    ran = []
    monkeypatch.setattr(reproduce, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, params, **kw: ran.append(name))
    (tmp_path / "book").mkdir()
    code, err = run_cli(["reproduce", "--preset", "tiny", "--only", "separability", "-p", "alphas=[0.7]",
                         "--no-build"], capsys)
    assert code == 2 and "alpha=0.7 is outside (0, 0.5]" in one_line(err) and ran == []
    code, err = run_cli(["reproduce", "--preset", "huge", "--no-build"], capsys)
    assert code == 2 and "no notebook parameters for preset 'huge'" in one_line(err) and ran == []


def test_a_failing_notebook_is_one_line_and_leaves_the_stored_one(tmp_path):
    """papermill's error becomes the error line (where the traceback is kept), not an 85-line traceback."""
    pytest.importorskip("papermill")
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from imae.companion import reproduce

    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    src = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    src.cells = [new_code_cell("alphas = [0.1]", metadata={"tags": ["parameters"]}),
                 new_code_cell("from imae.parameters import check_parameters\ncheck_parameters(alphas=alphas)")]
    nbformat.write(src, root / "experiments" / "demo.ipynb")
    (root / "book").mkdir()
    stored = root / "book" / "demo.ipynb"
    stored.write_text("the stored chapter")
    with pytest.raises(reproduce.ImaeError) as e:
        reproduce.run_notebook("demo", {"alphas": [0.7]}, root=root, out_dir=root / "book", log=lambda *a: None)
    msg = str(e.value)
    assert msg.startswith("demo.ipynb stopped in cell 3: ConfigError: alpha=0.7 is outside (0, 0.5]"), msg
    assert "\n" not in msg and ".demo.running.ipynb" in msg and stored.read_text() == "the stored chapter"


# ================================================================================ the machine's failures
class _FailingWrites:
    """``torch.save`` inside imae.checkpoint that fails as a full disk does, from its ``after``-th call on."""

    def __init__(self, monkeypatch, after: int, error):
        import imae.checkpoint as ck

        self.calls, self.after, self.error, self.real = 0, after, error, torch.save
        monkeypatch.setattr(ck.torch, "save", self)

    def __call__(self, obj, f, *a, **k):
        self.calls += 1
        if self.calls >= self.after:
            f.write(b"PK\x03\x04 partial")  # what a full disk leaves: the start of a file
            raise self.error
        return self.real(obj, f, *a, **k)


def test_a_full_disk_mid_run_names_the_intact_checkpoint_and_the_same_command_resumes(toy_root, tmp_path,
                                                                                      monkeypatch, mae_run):
    run = tmp_path / "run"
    cfg = micro(toy_root)
    # the end-of-epoch-1 checkpoint is written, the final one hits a full disk
    inject = _FailingWrites(monkeypatch, after=2, error=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError) as e:
        pretrain(cfg, run, progress=False)
    msg = str(e.value)
    assert f"writing the checkpoint {run / 'checkpoint.pt'} failed: the disk is full (ENOSPC)" in msg
    assert f"the last complete checkpoint, {run / 'checkpoint.pt'} (step 6), is intact" in msg
    assert "Fix: free space" in msg and "\n" not in msg
    assert load_checkpoint(run)["step"] == 6 and not list(run.glob(".*.tmp")) and not (run / LOCK_NAME).exists()
    steps_once(run, MICRO_STEPS)  # the steps after the checkpoint are logged (and rewritten on resume)
    monkeypatch.setattr(torch, "save", inject.real)
    pretrain(cfg, run, progress=False)  # the same command, space freed
    steps_once(run, MICRO_STEPS)
    assert read_metrics(run)[-1]["loss"] == pytest.approx(read_metrics(mae_run)[-1]["loss"], rel=1e-6)


@pytest.mark.parametrize("code,words", [(errno.EDQUOT, "the disk quota is exhausted (EDQUOT)"),
                                        (errno.EROFS, "the file system is read-only (EROFS)"),
                                        (errno.EACCES, "permission denied (EACCES)")])
def test_every_refused_checkpoint_write_keeps_the_previous_one(code, words, tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    _FailingWrites(monkeypatch, after=1, error=OSError(code, os.strerror(code)))
    with pytest.raises(StorageError) as e:
        save_checkpoint({"step": 2}, path, intact="step 1 is safe")
    assert str(e.value).startswith(f"writing the checkpoint {path} failed: {words}; step 1 is safe. Fix: ")
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_torch_reporting_a_full_disk_as_a_zip_writer_error_is_a_full_disk(tmp_path, monkeypatch):
    """torch.save to a full disk can raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected
    pos ...'): it is told by the free space left, and the previous checkpoint is untouched."""
    import imae.checkpoint as ck

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    _FailingWrites(monkeypatch, after=1, error=RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(StorageError, match=r"writing the checkpoint .* failed: the disk is full \(ENOSPC\); the "
                                           r"previous checkpoint .* is unchanged\. Fix: free space"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: usage._replace(free=10**10))  # not full: another fault
    with pytest.raises(StorageError, match=r"failed \(torch: \[enforce fail at inline_container.cc:672\] \. "
                                           r"unexpected pos 64 vs 0\); the previous checkpoint"):
        save_checkpoint({"step": 2}, path)


def test_too_little_space_is_refused_before_training(toy_root, tmp_path, monkeypatch):
    import imae.runs as runs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: usage._replace(free=300 * 1024))
    run = tmp_path / "run"
    with pytest.raises(StorageError, match=r"not enough free space for .*run: 300 KB free on its disk, and training "
                                           r"\(room for two checkpoints, so one is always complete\) needs at least"):
        pretrain(micro(toy_root), run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == []  # not claimed: the corrected command starts clean


@pytest.mark.parametrize("code,words", [(errno.EROFS, "the file system is read-only (EROFS)"),
                                        (errno.EACCES, "permission denied (EACCES)")])
def test_an_unwritable_output_folder_is_one_line(code, words, toy_root, tmp_path, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name == "run":
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    run = tmp_path / "run"
    code_, err = run_cli(["pretrain", "--method", "mae", "--out", run, "--quiet", *micro_cli_args(toy_root)], capsys)
    line = one_line(err)
    assert code_ == 2 and f"training into {run} failed: {words}; nothing was trained yet" in line
    assert "Fix: choose" in line


def test_a_write_refused_mid_run_names_the_intact_checkpoint(toy_root, tmp_path, monkeypatch):
    from imae.runs import MetricsLog

    real = MetricsLog.write

    def write(self, record):
        if record.get("step") == 8:
            raise PermissionError(errno.EACCES, "Permission denied", str(self.path))
        return real(self, record)

    monkeypatch.setattr(MetricsLog, "write", write)
    run = tmp_path / "run"
    with pytest.raises(StorageError, match=r"permission denied \(EACCES\); the last complete checkpoint, "
                                           r".*checkpoint.pt \(step 6\), is intact: the same command resumes"):
        pretrain(micro(toy_root), run, progress=False)
    assert load_checkpoint(run)["step"] == 6 and not (run / LOCK_NAME).exists()


def test_a_finished_run_on_read_only_storage_is_returned_without_writing(mae_run, toy_root, monkeypatch):
    def no_lock(self):
        raise AssertionError("a finished run must be returned without locking (writing) its folder")

    monkeypatch.setattr(FolderLock, "acquire", no_lock)
    assert pretrain(micro(toy_root), mae_run, progress=False) == mae_run


def test_other_commands_report_the_machines_failures_in_one_line(tmp_path, monkeypatch, capsys):
    import imae.export
    import imae.metrics

    def fail(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out" / "knn.json"))

    monkeypatch.setattr(imae.metrics, "evaluate", fail)  # what the command calls, as a read-only --out makes it fail
    code, err = run_cli(["evaluate", "--checkpoint", tmp_path / "run", "--what", "knn", "--out", tmp_path / "out"],
                        capsys)
    line = one_line(err)
    assert code == 2 and f"evaluate: accessing {tmp_path / 'out' / 'knn.json'} failed: the file system is read-only " \
                         f"(EROFS). Fix: choose a writable folder" in line


def test_export_reports_an_unwritable_folder_in_one_line(mae_run, tmp_path, monkeypatch, capsys):
    import imae.export

    real = imae.export._write_json

    def write_json(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(imae.export, "_write_json", write_json)
    with pytest.raises(StorageError, match=r"exporting .*config.json failed: the file system is read-only \(EROFS\)"):
        imae.export.export(mae_run, tmp_path / "out")
    monkeypatch.setattr(imae.export, "_write_json", real)
    code, err = run_cli(["export", mae_run, tmp_path / "out2"], capsys)
    assert code == 0, err
    assert oct((tmp_path / "out2" / "model.safetensors").stat().st_mode & 0o777) == "0o644"  # as its siblings


# ============================================================================ damaged metrics and config
@pytest.mark.parametrize("line,words", [
    (b"this is not json\n", "not a JSON record (Expecting value at column 1: 'this is not json')"),
    (b"\xff\xfe\x00garbage\n", "not text (undecodable byte 0xff at column 1)"),
    (b"42\n", "holds '42', not a record"),
], ids=["text", "binary", "number"])
def test_a_damaged_metrics_line_is_named(line, words, mae_run, tmp_path, toy_root):
    run = tmp_path / "run"
    shutil.copytree(mae_run, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:2] + [line] + lines[2:]))
    with pytest.raises(RunFileError) as e:
        read_metrics(run)
    assert str(e.value).startswith(f"{run / 'metrics.jsonl'}, line 3: {words}") and "Fix: delete line 3" in str(e.value)


def test_a_line_cut_by_a_kill_is_the_one_skipped(mae_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mae_run, run)
    n = len(read_metrics(run))
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 13, "lo')
    assert len(read_metrics(run)) == n


def test_resuming_over_a_damaged_metrics_line_stops_and_names_it(mae_run, toy_root, tmp_path):
    """Resuming rewrites the metrics up to the checkpoint's step: a damaged line there is named, never dropped."""
    run = tmp_path / "run"
    shutil.copytree(mae_run, run)
    ckpt = load_checkpoint(run)
    save_checkpoint({**ckpt, "finished": False}, run / "checkpoint.pt")
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (run / "metrics.jsonl").write_bytes(b"".join(lines[:4] + [b"garbage\n"] + lines[4:]))
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(RunFileError, match=r"metrics.jsonl, line 5: not a JSON record"):
        pretrain(micro(toy_root), run, progress=False)
    assert (run / "metrics.jsonl").read_bytes() == before and load_checkpoint(run)["step"] == ckpt["step"]


@pytest.mark.parametrize("edit,words", [
    (lambda t: t + "config: [unclosed\n", ", line "),
    (lambda t: t.replace("  train:\n", "  train:\n    epocs: 3\n", 1), "unknown key 'config.train.epocs' (did you "
                                                                      "mean 'epochs'?)"),
    (lambda t: "fingerprnt" + t[len("fingerprint"):], "unknown key 'fingerprnt' (did you mean 'fingerprint'?)"),
    (lambda t: t.replace("config:\n", "config:\n  trian: {}\n", 1), "unknown key 'config.trian' (did you mean "
                                                                    "'train'?)"),
], ids=["syntax", "unknown-field", "unknown-top", "unknown-section"])
def test_a_damaged_config_yaml_is_named_with_its_line(edit, words, mae_run, tmp_path, toy_root, capsys):
    run = tmp_path / "run"
    shutil.copytree(mae_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "config.yaml"}
    (run / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
    with pytest.raises(RunFileError) as e:
        read_run_config(run)
    assert str(e.value).startswith(f"{run / 'config.yaml'}, line ") and words in str(e.value), str(e.value)
    code, err = run_cli(["pretrain", "--method", "mae", "--out", run, "--quiet", *micro_cli_args(toy_root)], capsys)
    assert code == 2 and words in one_line(err)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "config.yaml"}
    assert after == before  # nothing touched


def test_config_sections_say_did_you_mean():
    from imae.config import RunConfig

    d = build_config("tiny").to_dict()
    d["train"]["epocs"] = 3
    with pytest.raises(ConfigError, match=r"unknown field 'epocs' in config section 'train'\. Did you mean 'epochs'"):
        RunConfig.from_dict(d)


# ================================================================================== safe retries
def test_a_failed_start_claims_nothing_and_the_corrected_command_runs(toy_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["pretrain", "--method", "mae", "--out", run, "--quiet", *micro_cli_args(toy_root)]
    code, err = run_cli([*args, "--set", "train.batch_size=1000000"], capsys)
    assert code == 2 and "larger than the dataset" in one_line(err)
    assert not (run / "config.yaml").exists()
    code, err = run_cli(args, capsys)
    assert code == 0, err
    steps_once(run, MICRO_STEPS)


def test_a_folder_where_nothing_was_trained_is_taken_over_but_results_are_not(toy_root, tmp_path, mae_run):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mae_run / "config.yaml", run / "config.yaml")  # what an older failed start left: config only
    other = micro(toy_root, **{"train.mask_ratio": 0.5})
    pretrain(other, run, progress=False)
    assert load_checkpoint(run)["config"]["train"]["mask_ratio"] == 0.5
    with pytest.raises(RunDirError, match="holds results of a different configuration"):
        pretrain(micro(toy_root), run, progress=False)  # trained results are never replaced silently
    steps_once(run, MICRO_STEPS)


def test_a_figure_at_another_preset_never_replaces_a_chapter(tmp_path, monkeypatch):
    from imae.companion import reproduce

    seen = {}
    monkeypatch.setattr(reproduce, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, params, out_dir, **kw: seen.update(
        {name: (out_dir, params["results_dir"])}))
    monkeypatch.setattr(reproduce, "build_book", lambda *a, **k: pytest.fail("the book must not be rebuilt"))
    book = tmp_path / "book"
    (book / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "params").mkdir(parents=True)
    (tmp_path / "experiments" / "params" / "small.yaml").write_text("preset: small\n")
    (book / "results" / "separability.json").write_text(json.dumps({"preset": "small"}))
    (book / "results" / "reproduce_small.json").write_text(json.dumps({"preset": "small", "notebooks_s": {}}))
    stored = {p.relative_to(book): p.read_bytes() for p in book.rglob("*") if p.is_file()}
    out = reproduce.reproduce("tiny", only=["separability"], log=lambda *a: None)
    assert out == tmp_path / "_build" / "figures" / "tiny"
    assert seen == {"separability": (out, "_build/figures/tiny/results")}
    assert {p.relative_to(book): p.read_bytes() for p in book.rglob("*") if p.is_file()} == stored
    rec = json.loads((out / "results" / "reproduce_tiny.json").read_text())
    assert "figure_s" in rec and "notebooks_s" not in rec  # a rerun records itself as one
    reproduce.reproduce("small", only=["separability"], build=False, log=lambda *a: None)  # the book's preset
    assert seen["separability"] == (book, "book/results")


def test_a_one_chapter_rerun_with_no_full_run_records_itself_as_such(tmp_path):
    from imae.companion.reproduce import write_performance, write_timings

    (tmp_path / "results").mkdir()
    write_timings(tmp_path / "results" / "reproduce_tiny.json", "tiny", {"separability": 30.0}, partial=True)
    text = write_performance(tmp_path).read_text()
    assert "make reproduce PRESET=tiny`** (" not in text
    assert "Single chapters rerun with `make figure NB=<chapter> PRESET=tiny`" in text and "separability 30 s" in text


# ================================================================================ messages and details
def test_a_teacher_of_another_architecture_is_told_the_flags_not_the_preset(toy_root, mae_run, tmp_path):
    cfg = micro(toy_root, method="imae", **{"imae.teacher": str(mae_run), "model.embed_dim": 64})
    with pytest.raises(CheckpointError) as e:
        pretrain(cfg, tmp_path / "r", progress=False)
    msg = str(e.value)
    assert "embed_dim=32 (teacher) vs 64 (student)" in msg and "--set model.embed_dim=32" in msg
    assert "same preset" not in msg


def test_an_unfinished_teacher_is_an_error(toy_root, mae_run, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(mae_run, teacher)
    ckpt = load_checkpoint(teacher)
    save_checkpoint({**ckpt, "finished": False, "step": 5, "epoch": 0}, teacher / "checkpoint.pt")
    cfg = micro(toy_root, method="imae", **{"imae.teacher": str(teacher)})
    with pytest.raises(CheckpointError, match=r"never finished training \(stopped at step 5, epoch 0 of 2\).*Fix: "
                                              r"finish the teacher first"):
        pretrain(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_checkpoint_messages_say_what_the_file_is(mae_run, tmp_path):
    raw = tmp_path / "raw.pkl"
    with open(raw, "wb") as f:
        pickle.dump({"model": {"w": [0.0]}}, f)
    with pytest.raises(CheckpointError, match="is a plain Python pickle .* not a torch.save checkpoint"):
        load_checkpoint(raw)
    data = (mae_run / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cut)
    assert ("(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory). Fix: "
            in str(e.value))  # the quoted reason is a whole sentence
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(empty)


def test_a_bad_set_value_on_the_command_line_says_the_flag(toy_root, tmp_path, capsys):
    code, err = run_cli(["pretrain", "--method", "imae", "--out", tmp_path / "r", "--teacher", "t",
                         *micro_cli_args(toy_root), "--set", "imae.alpha=abc"], capsys)
    line = one_line(err)
    assert code == 2 and "imae.alpha must be a number, got 'abc' (str). Fix: pass e.g. --set imae.alpha=0.5" in line
    assert "papermill" not in line


ARGUMENT_ERRORS = [
    (["pretrain", "--method", "mae", "--out", "r", "--epochs", "0"], "epochs=0 must be >= 1"),
    (["pretrain", "--method", "mae", "--out", "r", "--same-prob", "2"], "same_prob=2.0 must lie in [0, 1]"),
    (["pretrain", "--method", "mae", "--out", "r", "--set", "train.epocs=3"], "unknown config parameter"),
    (["evaluate", "--checkpoint", "r", "--what", "separability", "--out", "o", "--alphas", "0.7"], "alpha=0.7 is "),
    (["evaluate", "--checkpoint", "r", "--what", "knn", "--out", "o", "--max-images", "-5"], "--max-images=-5 must"),
    (["evaluate", "--checkpoint", "r", "--what", "knnn", "--out", "o"], "Did you mean 'knn'?"),
    (["reproduce", "--preset", "tiny", "-p", "seeds=[]", "--no-build"], "seeds is empty"),
]


@pytest.mark.parametrize("argv,words", ARGUMENT_ERRORS, ids=[f"{a[0]}-{w.split()[0]}" for a, w in ARGUMENT_ERRORS])
def test_arguments_are_checked_before_torch_is_imported(argv, words, tmp_path):
    code = ("import sys\nfrom imae.cli import main\nrc = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'torch was imported before the arguments were checked'\n"
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert p.returncode == 2 and words in one_line(p.stderr), p.stderr


def test_the_evaluate_commands_own_lists_match_the_metrics():
    from imae import evaluate_cli
    from imae.metrics.features import PAIRINGS

    assert evaluate_cli.PAIRINGS == tuple(PAIRINGS)


def test_progress_bars_only_on_a_terminal(toy_root, tmp_path, capsys):
    run = pretrain(micro(toy_root, **{"train.epochs": 1}), tmp_path / "run", progress=True)
    assert "it/s" not in capsys.readouterr().err and load_checkpoint(run)["finished"]


def test_make_quotes_its_paths():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    p = subprocess.run(["make", "-n", "-o", ".venv/.installed", "tiny", "OUT=my runs"], cwd=REPO, capture_output=True,
                       text=True)
    assert p.returncode == 0 and '--out "my runs/tiny/mae"' in p.stdout and '--teacher "my runs/tiny/mae"' in p.stdout
