"""The campaign on a CPU: tiny models, toy data, budgets of seconds.

One window runs end to end (module fixture) and is reused: its output folder is collected into a fake
repository, from which later windows resume (a half-written manifest, a partly evaluated stage). A budget too
small for stage 2 ends cleanly with stage 1 complete. The watchdog, the output folder, the stored weights
(round trip, checksum errors, size limit) and the planner's arithmetic are tested on their own. The transfer
limits of a remote machine are tools/'s (tools/tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from imae.campaign.collect import collect
from imae.campaign.manifest import CampaignError, Manifest, merge
from imae.campaign.packing import PackingError, clear_previous_output, output_files, safe_extract
from imae.campaign.planner import (Measured, decide_compile, eval_fits, eval_seconds, plan_epochs, share_of,
                                   warmup_for)
from imae.campaign.runner import CampaignConfig, run_campaign
from imae.campaign.steps import throughput_args
from imae.campaign.watchdog import Clock, DeadlineReached, Watchdog
from imae.config import build_config
from imae.models import IMAE, MaskedAutoencoderViT, mae_from_config
from imae.pretrained import WeightsError, load_pretrained, materialize_run, save_weights

REPO = Path(__file__).resolve().parents[1]
MICRO = {"model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "model.decoder_embed_dim": 32,
         "model.decoder_depth": 1, "model.decoder_num_heads": 2, "train.batch_size": 32, "train.epochs": 2,
         "train.warmup_epochs": 1.0}
EVAL = {"*": {"max_images": 50, "n_pairs": 20, "alphas": [0.3], "weight_decays": [1e-3], "max_iter": 10,
              "n_examples": 1, "batch_size": 64}}


def campaign_config(tmp: Path, data_root: Path, **kw) -> CampaignConfig:
    base = dict(out=tmp / "out", preset="tiny", budget_s=400.0, work=tmp / "work", manifest=tmp / "manifest.json",
                data_root=data_root, device="cpu", overrides=dict(MICRO), eval_extra=EVAL, smoke_steps=2,
                smoke_epochs=2, reserve_s=2.0, stages=["mae", "imae", "eval"])
    base.update(kw)
    return CampaignConfig(**base)


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def log_evaluations(out: Path) -> set[str]:
    return {line.split("eval ", 1)[1].split(":")[0] for line in (out / "campaign.log").read_text().splitlines()
            if "  eval " in line}


# ------------------------------------------------------------------------------------------- one window
@pytest.fixture(scope="module")
def window1(toy_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    t0 = time.monotonic()
    summary = run_campaign(campaign_config(tmp, toy_root))
    return {"tmp": tmp, "summary": summary, "wall": time.monotonic() - t0, "out": tmp / "out", "work": tmp / "work",
            "manifest": json.loads((tmp / "manifest.json").read_text())}


@pytest.fixture(scope="module")
def repo(window1, tmp_path_factory):
    """The fake repository after collecting window 1's returned files."""
    dest = tmp_path_factory.mktemp("repo") / "campaign" / "tiny"
    result = collect(window1["out"], dest, log=lambda *a: None)
    assert result["stages"] == ["eval", "imae", "mae"] and not result["missing"]
    return dest


def test_end_to_end_window(window1):
    s, m, out, work = window1["summary"], window1["manifest"], window1["out"], window1["work"]
    assert s["outcome"] == "ok" and s["exit_code"] == 0
    assert window1["wall"] < 400
    for name in ("mae", "imae", "eval"):
        assert m["stages"][name]["status"] == "done", m["stages"][name]
    # The planner's choice is recorded, and the schedule later stages reuse is fixed from it.
    plan = m["stages"]["mae"]["plan"]["train"]["mae"]
    assert plan["epochs"] == 2 and plan["warmup_epochs"] == 1.0 and plan["rate_img_s"] > 0
    assert m["fixed"]["mae"]["epochs"] == plan["epochs"] and m["fixed"]["imae"]["epochs"] >= 1
    res = m["stages"]["mae"]["result"]
    assert res["epochs"] == 2 and res["img_per_s"] > 0 and res["device"].startswith("CPU")
    window = m["windows"][-1]
    assert window["measured"]["img_per_s"]["mae"] > 0 and window["measured"]["img_per_s"]["imae"] > 0
    assert window["versions"]["torch"] == torch.__version__ and window["stages"] == {
        "mae": "done", "imae": "done", "eval": "done"}
    # The output folder: the manifest, the log and one archive per stage.
    names = dict(output_files(out))
    assert set(names) == {"manifest.json", "campaign.log", "mae.tar.gz", "imae.tar.gz", "eval.tar.gz"}
    assert json.loads((out / "manifest.json").read_text()) == m
    for a, info in window["files"].items():
        from imae.pretrained import sha256_file
        assert sha256_file(out / a) == info["sha256"]
    assert members(out / "mae.tar.gz") == ["mae/config.yaml", "mae/metrics.jsonl", "mae/stage.json",
                                           "mae/weights/tiny-mae.json", "mae/weights/tiny-mae.safetensors"]
    # Weights: fp16, no optimizer state, checksummed in the manifest.
    from safetensors.torch import load_file

    sd = load_file(str(work / "stages" / "mae" / "weights" / "tiny-mae.safetensors"))
    assert all(v.dtype == torch.float16 for v in sd.values()) and not any("optim" in k for k in sd)
    f = m["stages"]["mae"]["files"]["weights/tiny-mae.safetensors"]
    assert f["bytes"] == (work / "stages" / "mae" / "weights" / "tiny-mae.safetensors").stat().st_size
    assert m["stages"]["mae"]["result"]["weights_sha256"] == f["sha256"]
    # The teacher recipe (SPEC): norm-pix MAE, pixel i-MAE; the i-MAE distils from the STORED fp16 teacher.
    card = json.loads((work / "stages" / "imae" / "weights" / "tiny-imae.json").read_text())
    assert card["config"]["model"]["norm_pix_loss"] is False and card["teacher"] == "tiny-mae"
    assert json.loads((work / "stages" / "mae" / "weights" / "tiny-mae.json").read_text())[
        "config"]["model"]["norm_pix_loss"] is True
    assert card["config"]["imae"]["teacher"] == str(work / "models" / "tiny-mae")
    assert card["teacher_record"]["fingerprint"] == json.loads(
        (work / "stages" / "mae" / "weights" / "tiny-mae.json").read_text())["fingerprint"]
    from imae.metrics.loading import load_model, load_reference

    import warnings

    student = load_model(work / "models" / "tiny-imae")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unverifiable teacher would only warn
        assert load_reference(student).path == work / "models" / "tiny-mae" / "checkpoint.pt"
    assert m["stages"]["imae"]["inputs"] == {"mae": f["sha256"]}
    # Evaluations: every model x every evaluation, separability against the ONE teacher reference.
    items = m["stages"]["eval"]["items"]
    assert len(items) == 15 and {k.split("/")[0] for k in items} == {"mae", "imae", "untrained"}
    teacher_fp = json.loads((work / "stages" / "mae" / "weights" / "tiny-mae.json").read_text())["fingerprint"]
    for model in ("mae", "imae", "untrained"):
        sep = json.loads((work / "stages" / "eval" / "evals" / model / "separability.json").read_text())
        assert sep["metadata"]["reference"]["path"] == str(work / "models" / "tiny-mae" / "checkpoint.pt")
        assert sep["metadata"]["reference"]["fingerprint"] == teacher_fp
        assert items[f"{model}/knn"]["summary"]["cls"] >= 0
    assert log_evaluations(out) == set(items)
    # Where the window's time went: every activity, adding up to the window's wall time.
    spent = window["breakdown_s"]
    assert set(spent) == {"measure", "training", "startup", "evaluation", "benchmark", "pack", "idle"}
    assert spent["training"] > 0 and spent["evaluation"] > 0 and spent["pack"] > 0 and spent["measure"] > 0
    assert abs(sum(spent.values()) - window["wall_s"]) <= 0.1 * window["wall_s"] + 1
    # Nothing compiled on the CPU and nothing was carried: the window says so and writes no compile archive.
    assert window["compile_cache"]["loaded"] == [] and "compiling afresh" in window["compile_cache"]["note"]
    assert window["compile_cache"]["saved"] is None


def test_collect_and_load_pretrained(window1, repo):
    m = json.loads((repo / "manifest.json").read_text())
    assert m["stages"] == window1["manifest"]["stages"]
    assert (repo / "results" / "eval" / "evals" / "imae" / "semantics.json").is_file()
    assert (repo / "results" / "mae" / "metrics.jsonl").is_file() and (repo / "logs" / "window-1.log").is_file()
    mae = load_pretrained("tiny-mae", root=repo.parent)
    student = load_pretrained("tiny-imae", root=repo.parent)
    assert type(mae) is MaskedAutoencoderViT and not mae.training
    assert type(student) is IMAE and not student.training
    # The stored weights are the trained run's, rounded to fp16.
    from imae.checkpoint import load_checkpoint

    ckpt = load_checkpoint(window1["work"] / "runs" / "imae-imae")
    for k, v in student.state_dict().items():
        assert torch.equal(v, ckpt["model"][k].half().float()), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert student.mae.forward_features(x).shape == (2, 1 + 64, 32)


def test_resume_from_half_written_manifest(window1, repo, toy_root, tmp_path):
    """imae was started (not finished) when the window ended: the next window on a fresh machine keeps the
    stored teacher and retrains only the i-MAE, from the repository's weights."""
    dest = tmp_path / "campaign" / "tiny"
    shutil.copytree(repo, dest)
    m = json.loads((dest / "manifest.json").read_text())
    rec = m["stages"]["imae"]
    m["stages"]["imae"] = {"status": "started", "window": 1, "attempts": 1, "plan": rec["plan"],
                           "inputs": rec["inputs"]}
    del m["stages"]["eval"]
    (dest / "manifest.json").write_text(json.dumps(m))
    cfg = campaign_config(tmp_path, toy_root, manifest=dest / "manifest.json", stages=["mae", "imae"])
    summary = run_campaign(cfg)
    after = json.loads((dest / "manifest.json").read_text())
    assert summary["outcome"] == "ok" and summary["window"]["stages"] == {"imae": "done"}
    assert after["stages"]["mae"] == m["stages"]["mae"]  # untouched: not retrained
    assert after["stages"]["imae"]["status"] == "done" and after["stages"]["imae"]["attempts"] == 2
    assert not (tmp_path / "work" / "runs" / "mae-mae").exists()
    teacher = torch.load(tmp_path / "work" / "models" / "tiny-mae" / "checkpoint.pt", weights_only=True)
    assert teacher["stored_weights"] == str((dest / "weights" / "tiny-mae.json").resolve())
    assert [w["id"] for w in after["windows"]] == [1, 2]
    assert set(dict(output_files(tmp_path / "out"))) == {"manifest.json", "campaign.log", "imae.tar.gz"}


def test_resume_partly_evaluated_stage(repo, toy_root, tmp_path):
    """Only the evaluations the manifest lacks run; the repository's results of the others are kept and
    return in the stage's archive."""
    dest = tmp_path / "campaign" / "tiny"
    shutil.copytree(repo, dest)
    m = json.loads((dest / "manifest.json").read_text())
    dropped = {"untrained/semantics", "imae/reconstruction", "mae/knn"}
    for k in dropped:
        del m["stages"]["eval"]["items"][k]
    m["stages"]["eval"]["status"] = "started"
    (dest / "manifest.json").write_text(json.dumps(m))
    summary = run_campaign(campaign_config(tmp_path, toy_root, manifest=dest / "manifest.json", stages=["eval"]))
    after = json.loads((dest / "manifest.json").read_text())
    assert summary["outcome"] == "ok" and after["stages"]["eval"]["status"] == "done"
    assert log_evaluations(tmp_path / "out") == dropped
    assert len(after["stages"]["eval"]["items"]) == 15
    assert sum(n.endswith(".json") and "/evals/" in n for n in members(tmp_path / "out" / "eval.tar.gz")) == 15


LATER = ["mae-continued", "imae-sp0", "finetune", "ablation-no-distillation", "seed1"]


@pytest.fixture(scope="module")
def later(repo, toy_root, tmp_path_factory):
    """A later window on a fresh machine (only the repository's manifest and weights), collected into a copy of
    the repository: the equal-compute MAE, a same_prob run, fine-tuning, an ablation and a training seed."""
    tmp = tmp_path_factory.mktemp("later")
    dest = tmp / "campaign" / "tiny"
    shutil.copytree(repo, dest)
    summary = run_campaign(campaign_config(tmp, toy_root, manifest=dest / "manifest.json", stages=LATER,
                                           eval_extra={**EVAL, "finetune": {"epochs": 1}}))
    back = tmp / "repo2" / "campaign" / "tiny"
    shutil.copytree(repo, back)
    collected = collect(tmp / "out", back, log=lambda *a: None)
    return {"summary": summary, "manifest": json.loads((dest / "manifest.json").read_text()), "out": tmp / "out",
            "collected": collected, "root": tmp / "repo2"}


def test_later_stages_run_from_the_stored_weights(later):
    """Each later stage trains on the fixed schedules, evaluates, and comes back collectable; the fitting
    evaluations record their optimiser (the planner times them by it)."""
    from imae.metrics.probes import OPTIMIZER

    m = later["manifest"]
    assert later["summary"]["outcome"] == "ok" and later["summary"]["window"]["stages"] == {s: "done" for s in LATER}
    fixed = m["fixed"]
    assert m["stages"]["mae-continued"]["plan"]["train"]["mae-continued"]["epochs"] == fixed["imae"]["epochs"]
    assert m["stages"]["ablation-no-distillation"]["plan"]["train"]["ablation-no-distillation"]["epochs"] == \
        fixed["imae"]["epochs"]
    seed = m["stages"]["seed1"]["plan"]["train"]
    assert seed["mae"]["epochs"] == fixed["mae"]["epochs"] and seed["imae"]["epochs"] == fixed["imae"]["epochs"]
    assert seed["mae-continued"]["epochs"] == fixed["imae"]["epochs"]  # each seed has its equal-compute MAE
    assert set(m["stages"]["seed1"]["items"]) == {f"{m}/{w}" for m in ("mae", "imae", "mae-continued", "untrained-1")
                                                  for w in ("knn", "linear-probe", "separability", "semantics")}
    for name in LATER:
        items = m["stages"][name]["items"]
        # the evaluations that fit classifiers (fine-tuning fits its linear probe first: LP-FT)
        assert items and all(("optimizer" in it) == (k.endswith(("/linear-probe", "/semantics", "/finetune")))
                             for k, it in items.items())
        assert all(it["optimizer"] == OPTIMIZER for it in items.values() if "optimizer" in it)
    # No stored weights for the variants: they come back as results only.
    assert not any(later["out"].glob("*.safetensors"))
    # Fine-tuned classifiers stay on the machine (ViT-T: 22 MB each in float32): the result comes back, not them.
    assert (back_ft := members(later["out"] / "finetune.tar.gz")) and any(n.endswith("finetune.json") for n in back_ft)
    assert not any(n.endswith(".safetensors") for n in back_ft)
    assert later["collected"]["stages"] == sorted(LATER) and not later["collected"]["missing"]
    back = later["root"] / "campaign" / "tiny"
    assert (back / "results" / "seed1" / "evals" / "untrained-1" / "separability.json").is_file()
    assert sorted(p.name for p in (back / "weights").glob("*.safetensors")) == ["tiny-imae.safetensors",
                                                                               "tiny-mae.safetensors"]


def test_the_book_reads_the_later_stages(later):
    """Every chapter's paper-scale box uses what the later stages brought: intervals over both training seeds,
    the equal-compute control, same_prob, fine-tuning, the ablation and the reconstructions."""
    from imae.companion.summaries import chapter_summary, load_campaign

    root = later["root"]
    camp = load_campaign("tiny", root=root)
    assert camp.seeds() == [0, 1]
    knn = camp.evaluations("knn", seeds=True)
    assert set(knn) == {"MAE", "i-MAE", "untrained", "MAE continued"} and all(len(v) == 2 for v in knn.values())
    assert set(camp.evaluations("knn")) == {"MAE", "i-MAE", "untrained", "MAE continued"}
    assert all(len(v) == 2 for v in camp.evaluations("semantics", seeds=True).values())
    # separability: seed stages score against the seed-0 teacher (independent), never mixed with seed 0's own
    assert all(len(v) == 1 for v in camp.evaluations("separability", seeds=True).values())
    ind = camp.independent("separability")
    assert set(ind) == {"MAE", "i-MAE", "untrained", "MAE continued"} and all(len(v) == 1 for v in ind.values())
    assert ind["i-MAE"][0]["metadata"]["reference"]["fingerprint"] == \
        camp.evaluations("separability")["MAE"][0]["metadata"]["fingerprint"]
    assert set(camp.ablations("separability")) == {"standard", "no distillation"}

    text, table = chapter_summary("classification", preset="tiny", root=root)
    assert "2 training seeds" in text and "equal-compute control" in text and "fine-tuned" in text
    # every seed stage trains its own MAE continued: it is compared over both seeds, as the others
    assert list(table.index) == ["MAE", "i-MAE", "MAE continued", "untrained"]
    assert table.loc["MAE continued", "fine-tuned top-1 % (seed 0)"] == "—"
    text, table = chapter_summary("separability", preset="tiny", root=root)
    assert "the untrained encoder" in text and "equal-compute" in text
    assert set(table.columns) == {"MAE", "i-MAE", "untrained", "MAE continued"}  # seed 0's own reference
    text, table = chapter_summary("semantics", preset="tiny", root=root)
    assert "same_prob 0" in text and "i-MAE, same_prob 0" in table.columns
    text, table = chapter_summary("ablations", preset="tiny", root=root)
    assert "1 of the 6 ablations back" in text and list(table.index) == ["standard", "no distillation"]
    text, table = chapter_summary("reconstruction", preset="tiny", root=root)
    assert "dB" in text and "mixture itself" in text and list(table.index) == ["i-MAE", "mixture itself"]


def test_budget_too_small_for_stage_two(toy_root, tmp_path):
    """The planner finds stage 2 does not fit what is left: it is not started, the window ends cleanly and
    stage 1's outputs are complete."""
    cfg = campaign_config(tmp_path, toy_root, stages=["mae", "imae", "eval"], epochs={"mae": 1},
                          min_epochs=10**6, smoke_steps=1, smoke_epochs=1)
    summary = run_campaign(cfg)
    m = json.loads(cfg.manifest.read_text())
    assert summary["outcome"] == "ok" and summary["exit_code"] == 0
    assert m["stages"]["mae"]["status"] == "done" and "imae" not in m["stages"] and "eval" not in m["stages"]
    assert summary["window"]["stages"]["imae"].startswith("not started: imae: fewer than 1000000 epoch(s) fit")
    assert summary["window"]["stages"]["eval"] == "not started: needs ['imae'] done first"
    assert members(cfg.out / "mae.tar.gz") == ["mae/config.yaml", "mae/metrics.jsonl", "mae/stage.json",
                                               "mae/weights/tiny-mae.json", "mae/weights/tiny-mae.safetensors"]
    assert set(dict(output_files(cfg.out))) == {"manifest.json", "campaign.log", "mae.tar.gz"}


def test_watchdog_stops_an_overrunning_stage(toy_root, tmp_path):
    """Stage 2 cannot finish in the budget (its epochs forced): the watchdog stops it cleanly at a step
    boundary with its checkpoint written, stage 1's outputs are complete, and the command ends before its
    deadline."""
    budget = 20.0
    cfg = campaign_config(tmp_path, toy_root, budget_s=budget, reserve_s=3.0, stages=["mae", "imae", "eval"],
                          epochs={"mae": 1, "imae": 100000}, smoke_steps=1, smoke_epochs=1)
    t0 = time.monotonic()
    summary = run_campaign(cfg)
    wall = time.monotonic() - t0
    m = json.loads(cfg.manifest.read_text())
    assert summary["outcome"] == "deadline" and wall < budget
    assert m["stages"]["mae"]["status"] == "done" and m["stages"]["mae"]["result"]["epochs"] == 1
    assert m["stages"]["imae"]["status"] == "started" and "interrupted" in m["stages"]["imae"]
    assert "eval" not in m["stages"]
    from imae.checkpoint import load_checkpoint

    ckpt = load_checkpoint(cfg.work / "runs" / "imae-imae")
    assert not ckpt["finished"] and ckpt["step"] >= 1  # stopped at a step boundary, checkpoint written
    files = dict(output_files(cfg.out))
    assert set(files) == {"manifest.json", "campaign.log", "mae.tar.gz"}
    assert "mae/weights/tiny-mae.safetensors" in members(cfg.out / "mae.tar.gz")
    assert json.loads((cfg.out / "manifest.json").read_text()) == m


def test_torn_or_foreign_manifest_is_refused(tmp_path):
    p = tmp_path / "manifest.json"
    p.write_text('{"format": "imae-campaign-v1", "pres')
    with pytest.raises(CampaignError, match="unreadable.*git checkout"):
        Manifest.load(p, "cifar")
    Manifest.new("tiny", p).save()
    with pytest.raises(CampaignError, match="preset 'tiny', not 'cifar'"):
        Manifest.load(p, "cifar")
    data = json.loads(p.read_text())
    data["stages"]["mae"] = {"status": "half"}
    p.write_text(json.dumps(data))
    with pytest.raises(CampaignError, match="status 'half'"):
        Manifest.load(p, "tiny")


def test_manifest_merge_keeps_done_stages():
    local = Manifest.new("cifar").data
    local["stages"] = {"mae": {"status": "done", "result": {"x": 1}}, "imae": {"status": "started"}}
    local["windows"] = [{"id": 1, "started_at": "a"}]
    returned = json.loads(json.dumps(local))
    returned["stages"]["mae"] = {"status": "started"}  # an older view of mae must not undo it
    returned["stages"]["imae"] = {"status": "done", "result": {"y": 2}}
    returned["windows"].append({"id": 2, "started_at": "b"})
    merged = merge(local, returned)
    assert merged["stages"]["mae"]["status"] == "done" and merged["stages"]["imae"]["result"] == {"y": 2}
    assert [w["id"] for w in merged["windows"]] == [1, 2]


# ---------------------------------------------------------------------------------------------- watchdog
def test_watchdog_fires_before_the_deadline():
    clock = Clock(3.0)
    t0 = time.monotonic()
    with pytest.raises(DeadlineReached):
        with Watchdog(clock.deadline - 2.5) as wd:
            while time.monotonic() - t0 < 5.0:
                time.sleep(0.01)
    assert wd.fired and 0.4 < time.monotonic() - t0 < clock.budget_s
    assert signal.getsignal(signal.SIGTERM) != wd._handle  # handler restored


def test_watchdog_hold_defers_to_the_end_of_the_block():
    t0 = time.monotonic()
    done = False
    with pytest.raises(DeadlineReached):
        with Watchdog(time.monotonic() + 0.2) as wd:
            with wd.hold():
                time.sleep(0.6)  # the signal arrives here and waits
                done = True
            pytest.fail("the deferred deadline should have been raised at the end of hold()")
    assert done and wd.received == 1 and time.monotonic() - t0 >= 0.6


# ------------------------------------------------------------------------------------------ output folder
def test_output_folder_and_safe_extract(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PackingError, match="not a previous campaign's output"):
        clear_previous_output(out)
    (out / "notes.txt").unlink()
    for name in ("campaign.log", "manifest.json", "mae.tar.gz"):
        (out / name).write_text("old")
    assert clear_previous_output(out) == ["campaign.log", "mae.tar.gz", "manifest.json"] and not any(out.iterdir())
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        (tmp_path / "f").write_text("x")
        tar.add(tmp_path / "f", arcname="../escape")
    with pytest.raises(PackingError, match="refusing member"):
        safe_extract(bad, tmp_path / "dest")
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------------------ stored weights
def _micro_model(method: str):
    cfg = build_config("tiny", method, **{k: v for k, v in MICRO.items() if k.startswith("model.")},
                       **({"imae.teacher": "t"} if method == "imae" else {}))
    torch.manual_seed(1)
    mae = mae_from_config(cfg.model)
    model = mae if method == "mae" else IMAE(mae)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(0.01 * torch.randn(t.shape))
    return model, cfg


@pytest.mark.parametrize("method", ["mae", "imae"])
def test_load_pretrained_round_trip(tmp_path, method):
    model, cfg = _micro_model(method)
    folder = tmp_path / "tiny" / "weights"
    card = save_weights(model, cfg, folder, f"tiny-{method}", fingerprint="abc")
    assert card["dtype"] == "float16" and card["bytes"] == (folder / f"tiny-{method}.safetensors").stat().st_size
    loaded = load_pretrained(f"tiny-{method}", root=tmp_path)
    assert type(loaded) is type(model) and not loaded.training and loaded.card["sha256"] == card["sha256"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    # ... and as a run directory the engine and the metrics read.
    run = materialize_run(folder / f"tiny-{method}.json", tmp_path / "run", **{"data.root": "/somewhere"})
    from imae.metrics.loading import load_model

    lm = load_model(run)
    assert lm.kind == method and lm.fingerprint == "abc" and lm.config.data.root == "/somewhere"
    assert torch.equal(lm.mae.state_dict()["norm.weight"], loaded.state_dict()[
        "norm.weight" if method == "mae" else "mae.norm.weight"])


def test_load_pretrained_checksum_and_missing_errors(tmp_path, monkeypatch):
    model, cfg = _micro_model("mae")
    folder = tmp_path / "tiny" / "weights"
    save_weights(model, cfg, folder, "tiny-mae", fingerprint="abc")
    path = folder / "tiny-mae.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"tiny-mae\.safetensors is corrupt.*sha256.*git checkout"):
        load_pretrained("tiny-mae", root=tmp_path)
    path.unlink()
    with pytest.raises(WeightsError, match=r"tiny-mae\.safetensors is missing"):
        load_pretrained("tiny-mae", root=tmp_path)
    with pytest.raises(WeightsError, match=r"no stored weights named 'cifar-imae'.*tiny-mae.*campaign --collect"):
        load_pretrained("cifar-imae", root=tmp_path)
    monkeypatch.setenv("IMAE_WEIGHTS", str(tmp_path))
    import imae

    with pytest.raises(WeightsError, match="is missing"):
        imae.load_pretrained("tiny-mae")


def test_weights_size_limits(tmp_path):
    model, cfg = _micro_model("mae")
    with pytest.raises(WeightsError, match="over the 0.0 MB limit"):
        save_weights(model, cfg, tmp_path, "big", fingerprint="x", max_bytes=1000)
    assert not (tmp_path / "big.safetensors").exists()
    assert save_weights(model, cfg, tmp_path, "a", fingerprint="x")["bytes"] > 1000  # no limit unless given


# ----------------------------------------------------------------------------------------------- planner
def test_planner_arithmetic():
    # 100 s at 1,000 img/s (90 % of it) with 10 s of fixed cost, 10,000 images per epoch: 8 epochs.
    assert plan_epochs(100, 1000, 10_000, 10, cap=100) == 8
    assert plan_epochs(100, 1000, 10_000, 10, cap=5) == 5
    assert plan_epochs(15, 1000, 10_000, 10, cap=100) is None
    assert plan_epochs(100, 1000, 10_000, 10, cap=100, min_epochs=9) is None
    assert warmup_for(40, 100, 5.0) == 2.0 and warmup_for(1, 30, 2.0) == pytest.approx(0.067)
    assert warmup_for(2, 2, 2.0) < 2
    assert share_of(100, 0.6, [0.4]) == pytest.approx(60) and share_of(100, 0.4, []) == 100
    m = Measured(fwd_img_per_s=1000, eval_fixed_s=1.0)
    quick = eval_seconds("knn", {"max_images": 100}, m, 1000, 100)
    assert quick < eval_seconds("separability", {}, m, 1000, 100) and quick == pytest.approx(1 + 2 * 200 / 1000)
    assert eval_seconds("knn", {}, m, 1000, 100, observed=[5.0]) == pytest.approx(6.0)


def test_eval_estimate_counts_the_classifier_fits():
    """Semantics is 42 linear-classifier fits (2 pools x (2 targets x 10 alphas + the clean probe)): on an H200
    its forwards took ~5 s of 104 s, which a forwards-only estimate (8.6 s) missed."""
    assert eval_fits("semantics", {}) == 42 and eval_fits("linear-probe", {}) == 2
    assert eval_fits("semantics", {"alphas": [0.2], "pools": ["mean"]}) == 3
    assert eval_fits("knn", {}) == eval_fits("separability", {}) == eval_fits("reconstruction", {}) == 0
    h200 = Measured(fwd_img_per_s=32661, eval_fixed_s=1.3)  # campaign window 1's smoke measurements
    options = {"max_images": 10000, "n_pairs": 5000, "batch_size": 1024}
    semantics = eval_seconds("semantics", options, h200, 50000, 10000)
    assert 90 < semantics < 130  # measured: 104.5 s and 97.0 s
    assert semantics == pytest.approx(1.3 + 2 * 120_000 / 32661 + 42 * h200.fit_s)
    assert 6 < eval_seconds("linear-probe", {"max_images": 10000}, h200, 50000, 10000) < 12  # measured 7.6-8.1 s
    assert eval_seconds("semantics", options, h200, 50000, 10000, observed=[40.0]) == pytest.approx(48.0)


def test_fitting_evaluations_are_timed_by_their_optimiser():
    """A semantics timing taken with the old optimiser (torch's L-BFGS: 104 s on an H200) no longer predicts
    one; a kNN timing still does; a timing recorded with today's optimiser does."""
    from types import SimpleNamespace

    from imae.campaign.manifest import Manifest
    from imae.campaign.planner import eval_estimate
    from imae.metrics.probes import OPTIMIZER

    dev = "1x NVIDIA H200"
    items = {"mae/semantics": {"wall_s": 104.45, "device": dev}, "mae/knn": {"wall_s": 3.0, "device": dev}}
    m = Manifest(None, {"format": "imae-campaign-v1", "preset": "cifar", "fixed": {}, "windows": [],
                        "stages": {"eval": {"status": "started", "items": items}}})
    h200 = Measured(fwd_img_per_s=32661, eval_fixed_s=1.3)
    w = SimpleNamespace(manifest=m, preset="cifar", cfg=SimpleNamespace(eval_extra={}), measured=h200,
                        n_train=50000, n_test=10000, device_name=dev)  # the parts of a Window it reads
    from imae.campaign.stages import eval_options

    options = eval_options("cifar", "semantics")
    assert eval_estimate(w, "semantics") == pytest.approx(
        eval_seconds("semantics", options, h200, 50000, 10000))  # the prior, not 1.2 x 104.45
    assert eval_estimate(w, "knn") == pytest.approx(3.6)
    items["mae/semantics"]["optimizer"] = OPTIMIZER
    assert eval_estimate(w, "semantics") == pytest.approx(1.2 * 104.45)


def test_compile_decision():
    assert decide_compile("auto", "cpu", 1e6, eager_rate=1)[0] is False
    assert decide_compile("on", "cpu", 1, eager_rate=1)[0] is True
    assert decide_compile("off", "cuda", 1e6, eager_rate=1)[0] is False
    # measured: 1.5x faster, 60 s to compile -> pays over 300 s of training (saves 100 s), not over 150 s
    assert decide_compile("auto", "cuda", 300, eager_rate=100, compiled_rate=150, compile_s=60)[0] is True
    assert decide_compile("auto", "cuda", 150, eager_rate=100, compiled_rate=150, compile_s=60)[0] is False
    assert decide_compile("auto", "cuda", 100, eager_rate=100)[0] is False  # prior: 45 s to compile


# -------------------------------------------------------------------------------------------- throughput
def test_throughput_stage_runs_the_benchmark(toy_root, tmp_path):
    """The stage calls the benchmark script with arguments its parser accepts and packs its table (a stand-in
    script here: the real one takes a minute on a CPU; tests/test_benchmarks.py times it)."""
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.throughput import parse_args
    finally:
        sys.path.remove(str(REPO))
    args = parse_args(throughput_args("cifar", "cuda", tmp_path / "t.json", ["--steps", "5"]))
    assert args.compile and args.preset == "cifar" and args.steps == 5 and "fast+compile" in args.paths
    fake = tmp_path / "fake_throughput.py"
    fake.write_text(
        "import json, sys\n"
        "a = sys.argv[1:]\n"
        "rows = [{'method': m, 'path': p, 'img_per_s': 10.0 * (i + 1)} for i, (m, p) in enumerate(\n"
        "        [('mae', 'faithful'), ('mae', 'fast'), ('imae', 'faithful'), ('imae', 'fast')])]\n"
        "json.dump({'device': 'fake', 'args': a, 'rows': rows}, open(a[a.index('--out') + 1], 'w'))\n")
    cfg = campaign_config(tmp_path, toy_root, stages=["throughput"], throughput_script=fake,
                          throughput_estimate_s=5.0, throughput_args=["--steps", "3"])
    summary = run_campaign(cfg)
    m = json.loads(cfg.manifest.read_text())
    assert summary["outcome"] == "ok" and m["stages"]["throughput"]["status"] == "done"
    assert m["stages"]["throughput"]["result"]["throughput"]["img_per_s"]["imae/fast"] == 40.0
    table = json.loads((cfg.work / "stages" / "throughput" / "throughput.json").read_text())
    assert table["args"][:2] == ["--preset", "tiny"] and table["args"][-2:] == ["--steps", "3"]
    assert "throughput/throughput.json" in members(cfg.out / "throughput.tar.gz")


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_list_and_errors(window1, capsys):
    from imae.cli import main

    assert main(["campaign", "--preset", "tiny", "--list", "--manifest", str(window1["tmp"] / "manifest.json")]) == 0
    text = capsys.readouterr().out
    assert "mae" in text and "done" in text and "ablation-no-distillation" in text and "pending" in text
    assert main(["campaign", "--preset", "tiny"]) == 2  # --out is required
    assert "--out is required" in capsys.readouterr().err
    assert main(["campaign", "--preset", "tiny", "--out", "x", "--stages", "nope"]) == 2
    assert "unknown campaign stage" in capsys.readouterr().err


def test_campaign_imports_only_what_the_gpu_machine_has():
    """A GPU node may have no pip and no notebook tools (papermill, nbformat, jupyter): importing the campaign's
    modules pulls in none of them (checked in a fresh process)."""
    code = (
        "import sys, importlib\n"
        "before = set(sys.modules)\n"
        "for m in ['imae.campaign.runner', 'imae.campaign.collect', 'imae.campaign.cli', 'imae.pretrained']:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted({n.split('.')[0] for n in sys.modules} & {'papermill', 'nbformat', 'nbclient', 'jupyter',\n"
        "             'jupyter_client', 'jupyter_core', 'myst_nb', 'IPython', 'ipykernel', 'pip'})\n"
        "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_compact_items_keeps_the_metrics(tmp_path):
    """Per-item arrays are stored as float16 where every value fits, kept float32 where one does not, unread
    arrays are dropped, and R² from the compact arrays matches the float32 one to well under an interval."""
    import numpy as np

    from imae.campaign.collect import compact_items

    rng = np.random.default_rng(0)
    sst = rng.uniform(0.5, 90, 5000).astype(np.float32)
    sse = (sst * rng.uniform(0.2, 1.0, (10, 5000))).astype(np.float32)
    big = rng.uniform(1e4, 7e4, 5000).astype(np.float32)        # over float16's range: stays float32
    tiny = np.array([0.0, 1e-6, 0.5], dtype=np.float32)          # a subnormal would lose digits: stays float32
    pairs = rng.integers(0, 10_000, 5000)
    path = tmp_path / "separability_items.npz"
    np.savez_compressed(path, **{"mean/sub/sse": sse, "mean/sub/sst": sst, "no_refit/sub/sse": big,
                                 "mean/clean/sse": tiny, "pairs_a": pairs, "no_refit/sub/centred_cosine": sse,
                                 "cls/sub/sse": sse})
    report = compact_items(path)
    assert report["after"] < report["before"]
    assert sorted(report["kept_float32"]) == ["mean/clean/sse", "no_refit/sub/sse"]
    with np.load(path) as z:
        assert "no_refit/sub/centred_cosine" not in z.files and "cls/sub/sse" not in z.files
        assert z["mean/sub/sse"].dtype == np.float16 and z["no_refit/sub/sse"].dtype == np.float32
        np.testing.assert_array_equal(z["pairs_a"], pairs)
        np.testing.assert_array_equal(z["mean/clean/sse"], tiny)
        r2 = 1 - z["mean/sub/sse"].astype(np.float64).sum(-1) / z["mean/sub/sst"].astype(np.float64).sum()
    exact = 1 - sse.astype(np.float64).sum(-1) / sst.astype(np.float64).sum()
    assert np.abs(r2 - exact).max() < 1e-4
    assert np.abs(r2 - exact).max() > 0  # it did round: the test is not comparing a file with itself
    # Example images (display only): tiny values do not keep an image in float32.
    img = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    img[0, 0, 0, 0] = 3e-8
    ex = tmp_path / "reconstruction_examples.npz"
    np.savez_compressed(ex, **{"alpha0.3/x_sub": img})
    assert compact_items(ex, display=True)["kept_float32"] == []
    with np.load(ex) as z:
        assert z["alpha0.3/x_sub"].dtype == np.float16
        assert np.abs(z["alpha0.3/x_sub"].astype(np.float32) - img).max() < 5e-4


def test_stored_campaign_items_load_as_float32():
    """The committed campaign results: every per-item float array reads back as float32 through the
    notebooks' loader, and the compact storage holds."""
    import numpy as np

    from imae.runs import load_result

    folders = sorted((REPO / "campaign" / "cifar" / "results").glob("*/evals/*"))
    if not folders:
        pytest.skip("no campaign results committed yet")
    for folder in folders:
        for js in folder.glob("*.json"):
            result = load_result(js)
            for name, a in (result.get("items") or {}).items():
                assert a.dtype != np.float16, (js, name)
    for npz in (REPO / "campaign" / "cifar" / "results").rglob("*_items.npz"):
        with np.load(npz) as z:
            assert not any(k.endswith("/centred_cosine") for k in z.files), npz


def test_stored_results_read_back_for_the_book(repo):
    """A collected campaign reads back (imae.campaign.results, through imae.companion.summaries): stages,
    evaluations shaped for imae.companion.comparison, training curves, what is pending; a folder without a manifest
    is an error naming the fix."""
    from imae.companion import comparison as cmp
    from imae.companion.summaries import load_campaign
    from imae.errors import ImaeError

    camp = load_campaign("tiny", root=repo)
    table = camp.stage_table().set_index("stage")
    assert table.loc["mae", "status"] == "done" and table.loc["imae", "epochs"] == "imae 2"
    assert camp.epochs("mae") == {"mae": 2}
    knn = camp.evaluations("knn")
    assert set(knn) == {"MAE", "i-MAE", "untrained"}
    diff = cmp.differences(knn, cmp.accuracy("mean"))
    assert set(diff) == {"i-MAE − MAE", "MAE − untrained"} and diff["MAE − untrained"].n_seeds == 1
    assert camp.steady_img_per_s("mae") > 0 and camp.throughput_table() is None
    pending = [name for name, _ in camp.pending()]
    assert "mae" not in pending and "imae" not in pending and "throughput" in pending
    with pytest.raises(ImaeError, match="Fix: run a window"):
        load_campaign("tiny", root=repo.parent / "nowhere")


def test_paper_scale_chapter_renders_from_stored_results(repo, tmp_path):
    """The book's paper-scale chapter executes on a collected campaign alone (no training, no evaluation)."""
    from imae.companion.reproduce import run_notebook

    results = tmp_path / "results"
    out = run_notebook("paper_scale", {"campaign_dir": str(repo), "results_dir": str(results)}, root=REPO,
                       out_dir=tmp_path, log=lambda *a: None)
    assert out.is_file()
    record = json.loads((results / "paper_scale.json").read_text())
    assert record["preset"] == "tiny" and set(record["runs"]) == {"mae", "imae"}
    assert set(record["accuracy"]["knn"]["differences"]) == {"i-MAE − MAE", "MAE − untrained"}
    assert "throughput" in record["pending"] and (results / "paper_scale_pending.csv").is_file()


def test_paper_scale_chapter_records_the_later_stages_for_the_findings(later, tmp_path):
    """With the later stages collected, the chapter's record holds what the Findings page judges: the
    equal-compute differences, same-class against random pairs, and fine-tuning."""
    from imae.companion import findings
    from imae.companion.reproduce import run_notebook

    results = tmp_path / "results"
    run_notebook("paper_scale", {"campaign_dir": str(later["root"] / "campaign" / "tiny"),
                                 "results_dir": str(results)}, root=REPO, out_dir=tmp_path, log=lambda *a: None)
    record = json.loads((results / "paper_scale.json").read_text())
    claims = record["claims"]
    assert claims["probe"]["equal_compute"] is not None  # the equal-compute MAE is in
    assert claims["sampling"]["pending"] is None and claims["finetune"]["pending"] is None
    assert "same_prob = 1.0 − same_prob = 0.0" not in claims["sampling"]["what"] and "same_prob" in claims["sampling"]["what"]
    assert set(claims["finetune"]["gates"]) == {"fine-tuned MAE − same recipe from scratch",
                                               "fine-tuned MAE − its linear probe"}
    t = findings.findings(results, "paper").set_index("claim")
    for key in ("probe", "sampling", "finetune"):
        claim = next(c.claim for c in findings.CLAIMS if c.key == key)
        assert t.loc[claim, "verdict"] != "pending", key
    assert t.loc[findings.CLAIMS[4].claim, "equal compute"].startswith("i-MAE − MAE continued")


def test_chapter_summaries_for_the_cpu_chapters(repo, tmp_path):
    """Each CPU-edition chapter's paper-scale box: a sentence from the intervals and a table where the campaign
    has results, the pending stage named where it has none, and no campaign at all said plainly."""
    from imae.companion.summaries import chapter_summary

    text, table = chapter_summary("classification", preset="tiny", root=repo)
    assert "linear probe" in text and "95 % CI" in text and "untrained encoder" in text
    assert list(table.index) == ["MAE", "i-MAE", "untrained"] and "kNN top-1 %" in table.columns
    text, table = chapter_summary("separability", preset="tiny", root=repo)
    assert "clean ceiling" in text and list(table.columns) == ["MAE", "i-MAE", "untrained"]
    text, table = chapter_summary("pretrain", preset="tiny", root=repo)
    assert "fell" in text and list(table.index) == ["MAE", "i-MAE"]
    text, table = chapter_summary("ablations", preset="tiny", root=repo)
    assert text == "No paper-scale results yet: the campaign's ablation stages have not run yet"
    assert "ablation-mask-ratio-0.5" in table.index and set(table["status"]) == {"pending"}
    text, table = chapter_summary("separability", preset="tiny", root=tmp_path)
    assert text == "No GPU campaign results are stored yet" and len(table) == 1


def test_two_windows_begun_from_one_manifest_keep_both_logs(window1, tmp_path):
    """Two windows begun before the first one's output was collected both call themselves window 1: the
    merge renumbers the second, and its log is stored under the merged id, not over the first one's."""
    dest = tmp_path / "campaign" / "tiny"
    collect(window1["out"], dest, log=lambda *a: None)
    second = tmp_path / "second"
    shutil.copytree(window1["out"], second)
    m = json.loads((second / "manifest.json").read_text())
    m["windows"][-1]["started_at"] = "2099-01-01T00:00:00+00:00"  # another call, same id
    (second / "manifest.json").write_text(json.dumps(m))
    (second / "campaign.log").write_text("the second window's log\n")
    collect(second, dest, log=lambda *a: None)
    merged = json.loads((dest / "manifest.json").read_text())
    assert [w["id"] for w in merged["windows"]] == [1, 2]
    assert (dest / "logs" / "window-1.log").read_text() == (window1["out"] / "campaign.log").read_text()
    assert (dest / "logs" / "window-2.log").read_text() == "the second window's log\n"
