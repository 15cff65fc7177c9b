"""Data parallelism: 2 gloo processes (torchrun) compute what 1 process computes with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import micro
from imae.checkpoint import load_checkpoint
from imae.runs import read_metrics
from imae.train import pretrain

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def two_process_runs(toy_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_worker.py"), str(toy_root), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def _assert_same_run(single: Path, multi: Path) -> None:
    m1, m2 = read_metrics(single), read_metrics(multi)
    assert len(m1) == len(m2) >= 10, (len(m1), len(m2))
    keys = [k for k in m1[0] if k.startswith("loss")]
    for r1, r2 in zip(m1, m2):
        assert r1["step"] == r2["step"]
        for k in keys:
            assert r2[k] == pytest.approx(r1[k], rel=1e-5, abs=1e-7), f"step {r1['step']} {k}"
    w1, w2 = load_checkpoint(single)["model"], load_checkpoint(multi)["model"]
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")
    assert load_checkpoint(multi)["finished"]


def test_two_processes_match_one_process_mae(mae_run, two_process_runs):
    _assert_same_run(mae_run, two_process_runs / "mae")


def test_two_processes_match_one_process_imae(toy_root, two_process_runs, tmp_path):
    # the 2-process i-MAE used the 2-process MAE as its teacher; train the 1-process reference on the same one
    cfg = micro(toy_root, method="imae", **{"imae.teacher": str(two_process_runs / "mae")})
    single = pretrain(cfg, tmp_path / "imae", progress=False)
    _assert_same_run(single, two_process_runs / "imae")


def test_teacher_is_frozen_and_not_wrapped(two_process_runs):
    reports = [json.loads((two_process_runs / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["world"] == 2 and rep["backend"] == "gloo"
        assert rep["model_wrapped"], "the student must be wrapped in DistributedDataParallel"
        assert not rep["teacher_wrapped"] and not rep["teacher_params_in_ddp"]
        assert not rep["teacher_requires_grad"]
        assert rep["local_batch"] == micro(".").train.batch_size // 2
