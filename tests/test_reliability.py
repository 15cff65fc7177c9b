"""Reliability: signals, SIGKILL fault injection, non-finite losses, bad input, untrusted checkpoints."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imae import cli
from imae.checkpoint import load_checkpoint, save_checkpoint
from imae.errors import CheckpointError, NonFiniteLossError
from imae.runs import read_metrics
from imae.train import pretrain

from .conftest import micro, micro_cli_args
from .test_models import official_mae_vit_base_keys

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "imae", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        recs = read_metrics(run) if (run / "metrics.jsonl").exists() else []
        if recs and recs[-1].get("step", 0) >= step:
            return
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_exits_nonzero(signum, toy_root, tmp_path, mae_run):
    run = tmp_path / "run"
    proc = spawn(["pretrain", "--method", "mae", "--out", str(run), "--quiet",
                  *micro_cli_args(toy_root, **{"train.epochs": 40})])
    wait_for_step(run, 3, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"{signal.Signals(signum).name} received: stopped at step" in err and "Resume by running" in err
    assert "Traceback" not in err
    ckpt = load_checkpoint(run)
    assert 3 <= ckpt["step"] < 240 and not ckpt["finished"]
    assert read_metrics(run)[-1]["step"] == ckpt["step"]


def test_sigkill_at_random_steps_never_loses_the_last_checkpoint(toy_root, tmp_path):
    """20 seeded trials: SIGKILL the CLI at a random step (+ a random delay, to land inside checkpoint writes
    too); the checkpoint left behind must load, and resuming must end on the uninterrupted run's loss."""
    overrides = {"train.epochs": 4, "train.ckpt_every": 1}
    reference = pretrain(micro(toy_root, **overrides), tmp_path / "reference", progress=False)
    ref_final = read_metrics(reference)[-1]
    ref_weights = load_checkpoint(reference)["model"]
    rng = random.Random(20261126)
    outcomes = []
    for trial in range(20):
        run = tmp_path / f"trial{trial}"
        kill_step, delay = rng.randint(1, 22), rng.uniform(0.0, 0.05)
        proc = spawn(["pretrain", "--method", "mae", "--out", str(run), "--quiet",
                      *micro_cli_args(toy_root, **overrides)])
        wait_for_step(run, kill_step, proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        ckpt_file = run / "checkpoint.pt"
        step = load_checkpoint(ckpt_file)["step"] if ckpt_file.exists() else None  # must never raise
        pretrain(micro(toy_root, **overrides), run, progress=False)
        final = read_metrics(run)[-1]
        assert final["step"] == ref_final["step"] == 24
        assert final["loss"] == pytest.approx(ref_final["loss"], rel=1e-6), f"trial {trial}"
        weights = load_checkpoint(run)["model"]
        assert all(torch.allclose(weights[k], ref_weights[k], atol=1e-6) for k in ref_weights)
        outcomes.append((kill_step, step))
    assert len(outcomes) == 20
    assert sum(s is not None for _, s in outcomes) >= 15  # most kills landed after the first checkpoint
    print("sigkill trials (kill at step, checkpoint step found):", outcomes)


# ------------------------------------------------------------------------------------ numerical faults
def test_nonfinite_loss_names_step_terms_and_last_good_checkpoint(toy_root, tmp_path, nan_loss):
    nan_loss(5)
    with pytest.raises(NonFiniteLossError) as e:
        pretrain(micro(toy_root, **{"train.ckpt_every": 2}), tmp_path / "run", progress=False)
    msg = str(e.value)
    assert e.value.step == 5 and "non-finite loss at step 5: loss=nan, loss_rec=nan" in msg
    assert f"{tmp_path / 'run' / 'checkpoint.pt'} (step 4)" in msg and "--nonfinite restart-fp32" in msg
    assert load_checkpoint(tmp_path / "run")["step"] == 4  # the bad steps were never saved


def test_nonfinite_loss_cli_exit_status(toy_root, tmp_path, nan_loss, capsys):
    nan_loss(1)
    code, err = run_cli(["pretrain", "--method", "mae", "--out", str(tmp_path / "r"), "--quiet",
                         *micro_cli_args(toy_root)], capsys)
    assert code == 3 and "non-finite loss at step 1" in err and "no checkpoint was written yet" in err


def test_restart_fp32_recovers_from_a_bf16_only_fault(toy_root, tmp_path, nan_loss):
    nan_loss(4, only_under_autocast=True)
    cfg = micro(toy_root, **{"train.amp": "bf16", "train.nonfinite": "restart-fp32", "train.ckpt_every": 1})
    run = pretrain(cfg, tmp_path / "run", progress=False)
    recs = read_metrics(run)
    events = [r for r in recs if r.get("event") == "restart-fp32"]
    assert events and events[0]["bad_step"] == 4 and events[0]["step"] == 3
    assert load_checkpoint(run)["finished"] and recs[-1]["step"] == 12


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (["--preset", "huge"], "unknown preset 'huge'; choose one of"),
    (["--dataset", "mnist"], "data.dataset='mnist' is unknown; choose one of"),
    (["--set", "model.patch_size=5"], "model.img_size=32 is not divisible by model.patch_size=5"),
    (["--mask-ratio", "1.0"], "mask_ratio=1.0 must lie strictly between 0 and 1"),
    (["--mask-ratio", "0"], "mask_ratio=0.0 must lie strictly between 0 and 1"),
    (["--same-prob", "1.5"], "same_prob=1.5 must lie in [0, 1]"),
    (["--set", "imae.alpha=0.7"], "alpha=0.7 must lie in (0, 0.5]"),
    (["--set", "imae.alpha=0"], "alpha=0.0 must lie in (0, 0.5]"),
    (["--set", "train.batch_size=4096"], "batch_size=4096 is larger than the dataset (200 images"),
    (["--set", "train.epochs=ten"], "train.epochs must be a whole number, got 'ten' (str)"),
    (["--set", "train.bogus=1"], "unknown config parameter 'train.bogus'"),
]


@pytest.mark.parametrize("extra,words", BAD_INPUT, ids=[w.split()[0] for _, w in BAD_INPUT])
def test_bad_input_is_a_clear_error(extra, words, toy_root, tmp_path, capsys):
    code, err = run_cli(["pretrain", "--method", "mae", "--out", str(tmp_path / "r"), "--quiet",
                         *micro_cli_args(toy_root), *extra], capsys)
    assert code == 2 and words in err and "Traceback" not in err, err


def test_unknown_method_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--method", "vae", "--out", "x"])
    assert e.value.code == 2 and "invalid choice: 'vae'" in capsys.readouterr().err


def test_offline_data_root_without_the_dataset(tmp_path, capsys):
    code, err = run_cli(["pretrain", "--method", "mae", "--out", str(tmp_path / "r"), "--data-root",
                         str(tmp_path / "nodata"), "--set", "data.download=false"], capsys)
    assert code == 2 and "cifar10 was not found" in err and "IMAE_DATA" in err


def test_teacher_of_another_architecture(toy_root, mae_run, tmp_path, capsys):
    code, err = run_cli(["pretrain", "--method", "imae", "--teacher", str(mae_run), "--out", str(tmp_path / "r"),
                         *micro_cli_args(toy_root, **{"model.embed_dim": 64})], capsys)
    assert code == 2 and "does not match the student's architecture: embed_dim=32 (teacher) vs 64" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint(damage, mae_run, toy_root, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    data = (mae_run / "checkpoint.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(bad)
    code, err = run_cli(["pretrain", "--method", "imae", "--teacher", str(bad), "--out", str(tmp_path / "r"),
                         *micro_cli_args(toy_root)], capsys)
    assert code == 2 and str(bad) in err and "truncated or corrupted" in err


def test_official_checkpoint_missing_keys_as_teacher(tmp_path, capsys):
    sd = {k: torch.zeros(s) for k, s in official_mae_vit_base_keys().items() if not k.startswith("decoder")}
    path = tmp_path / "mae_pretrain_vit_base.pth"
    save_checkpoint({"model": sd, "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    code, err = run_cli(["pretrain", "--method", "imae", "--preset", "imagenet", "--teacher", str(path),
                         "--out", str(tmp_path / "r"), "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "is missing 103 key(s)" in err and "encoder-only checkpoint" in err


def test_results_folder_of_another_config(mae_run, toy_root, tmp_path, capsys):
    import shutil

    shutil.copytree(mae_run, tmp_path / "r")
    code, err = run_cli(["pretrain", "--method", "mae", "--out", str(tmp_path / "r"),
                         *micro_cli_args(toy_root, **{"train.mask_ratio": 0.5})], capsys)
    assert code == 2 and "holds results of a different configuration" in err and "train.mask_ratio: 0.75 -> 0.5" in err


# ------------------------------------------------------------------------------------ untrusted files
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_never_executes_code_from_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="never executes code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_official_checkpoint_namespace_is_allowed(tmp_path):
    path = tmp_path / "official.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4, model="mae")}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["args"].lr == 1e-4 and torch.equal(ckpt["model"]["w"], torch.ones(2))


def test_restart_fp32_before_any_checkpoint_starts_over_and_keeps_the_event(toy_root, tmp_path, nan_loss):
    nan_loss(1, only_under_autocast=True)
    cfg = micro(toy_root, **{"train.amp": "bf16", "train.nonfinite": "restart-fp32"})
    run = pretrain(cfg, tmp_path / "run", progress=False)
    recs = read_metrics(run)
    assert recs[0] == {"step": 0, "event": "restart-fp32", "bad_step": 1}
    assert [r["step"] for r in recs[1:]] == list(range(1, 13)) and load_checkpoint(run)["finished"]


def test_resume_flag_requires_a_checkpoint_and_continues_an_interrupted_run(toy_root, tmp_path, mae_run, capsys):
    args = ["pretrain", "--method", "mae", "--quiet", *micro_cli_args(toy_root)]
    code, err = run_cli([*args, "--out", str(tmp_path / "new"), "--resume"], capsys)
    assert code == 2 and "holds no checkpoint to resume from" in err and not (tmp_path / "new").exists()
    code, err = run_cli([*args, "--out", str(tmp_path / "new"), "--resume", "--no-resume"], capsys)
    assert code == 2 and "contradict" in err
    import shutil

    shutil.copytree(mae_run, tmp_path / "done")  # a finished run of this configuration: --resume returns it
    code, _ = run_cli([*args, "--out", str(tmp_path / "done"), "--resume"], capsys)
    assert code == 0
