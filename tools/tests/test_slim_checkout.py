"""``python tools/slim_checkout.py slim|restore|show|collect``: what an upload leaves behind, on a scratch git repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imae.campaign.stages import default_stages
from imae.errors import ConfigError, ImaeError
from tools import slim_checkout as slim

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def write(path: Path, n: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout shaped like ours: code, the book, a campaign with two stored models and some results."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@example.com")
    git(r, "config", "user.name", "t")
    write(r / "imae" / "__init__.py", 10)
    write(r / "book" / "intro.md", 5000)
    write(r / "book" / "_static" / "mathjax.js", 7000)
    write(r / "experiments" / "a.ipynb", 300)
    base = r / "campaign" / "cifar"
    write(base / "weights" / "cifar-mae.safetensors", 20000)
    write(base / "weights" / "cifar-mae.json", 50)
    write(base / "weights" / "cifar-imae.safetensors", 30000)
    write(base / "weights" / "cifar-imae.json", 50)
    write(base / "results" / "mae" / "metrics.jsonl", 400)
    write(base / "results" / "eval" / "evals" / "mae" / "knn.json", 600)
    write(base / "logs" / "window-1.log", 80)
    done = {"status": "done", "result": {}}
    (base / "manifest.json").write_text(json.dumps(
        {"format": "imae-campaign-v1", "preset": "cifar", "fixed": {}, "windows": [],
         "stages": {"mae": done, "imae": done, "throughput": done, "eval": {"status": "started", "items": {}}}}))
    (r / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (r / ".git" / "info" / "exclude").write_text("/.scratch/\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "init")
    return r


def tracked(repo: Path) -> set[str]:
    return set(git(repo, "ls-files").split())


def test_model_refs_follow_the_stages():
    by = {s.name: s for s in default_stages("cifar")}
    assert slim.model_refs(by["eval"]) == {"mae", "imae"}
    assert slim.model_refs(by["finetune"]) == {"mae", "imae"}
    assert slim.model_refs(by["mae-continued"]) == {"mae"}  # init_from
    assert slim.model_refs(by["imae-sp0"]) == {"mae"}  # teacher
    assert slim.model_refs(by["seed1"]) == set()  # trains its own teacher


def test_slim_leaves_behind_what_the_window_does_not_read_and_restore_undoes_it(repo: Path):
    head = tracked(repo)
    before = slim.show(repo, "cifar", ["mae-continued"], log=lambda m: None)
    assert not before["slim"] and before["weights_kept"] == ["cifar-mae"]
    out = slim.slim(repo, "cifar", ["mae-continued"], log=lambda m: None)
    now = tracked(repo)
    assert "imae/__init__.py" in now and "campaign/cifar/manifest.json" in now
    assert "campaign/cifar/weights/cifar-mae.safetensors" in now and "campaign/cifar/weights/cifar-mae.json" in now
    gone = head - now
    assert gone == {"book/intro.md", "book/_static/mathjax.js", "experiments/a.ipynb",
                    "campaign/cifar/weights/cifar-imae.safetensors", "campaign/cifar/weights/cifar-imae.json",
                    "campaign/cifar/results/mae/metrics.jsonl", "campaign/cifar/results/eval/evals/mae/knn.json",
                    "campaign/cifar/logs/window-1.log"}
    assert out["after_bytes"] == out["before_bytes"] - out["left_bytes"]
    assert out["total_bytes"] == before["projected"]["total_bytes"]  # show predicted what slim does
    assert out["left_bytes"] == sum((repo / p).stat().st_size for p in gone)
    # Left behind means neither tracked nor untracked-not-ignored (what an upload sends), but still on disk.
    sent = set(git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split())
    assert not (gone & sent) and all((repo / p).is_file() for p in gone)
    assert slim.state(repo)["stages"] == ["mae-continued"]
    assert slim.show(repo, log=lambda m: None)["slim"]
    # What collecting a window writes meanwhile shows up as an ordinary change after the restore.
    write(repo / "campaign" / "cifar" / "results" / "mae-continued" / "knn.json", 10)
    (repo / "campaign" / "cifar" / "results" / "mae" / "metrics.jsonl").write_text("changed\n")
    assert slim.restore(repo, log=lambda m: None)
    assert tracked(repo) == head and slim.state(repo) is None
    assert git(repo, "diff", "--cached", "--name-only") == ""
    status = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(status) == [" M campaign/cifar/results/mae/metrics.jsonl",
                              "?? campaign/cifar/results/mae-continued/knn.json"]
    assert (repo / ".git" / "info" / "exclude").read_text() == "/.scratch/\n"  # the user's own lines stay
    assert not slim.restore(repo, log=lambda m: None)  # nothing left to undo


def test_itemized_stages_keep_their_results_and_the_models_they_load(repo: Path):
    p = slim.plan(repo, "cifar", ["eval"])
    assert p["weights_kept"] == ["cifar-imae", "cifar-mae"]
    assert "campaign/cifar/results/eval" not in p["leave"] and "campaign/cifar/results/mae" in p["leave"]
    # No stages named: every stage not done, eval and finetune among them.
    p = slim.plan(repo, "cifar")
    assert "mae" not in p["stages"] and p["stages"][0] == "eval" and "seed2" in p["stages"]
    assert p["weights_kept"] == ["cifar-imae", "cifar-mae"]
    # Training seeds only: no stored model is read.
    assert slim.plan(repo, "cifar", ["seed1", "seed2"])["weights_kept"] == []


def test_slim_twice_restores_first_and_refuses_staged_changes(repo: Path):
    slim.slim(repo, "cifar", ["seed1"], log=lambda m: None)
    slim.slim(repo, "cifar", ["eval"], log=lambda m: None)
    assert "campaign/cifar/results/eval/evals/mae/knn.json" in tracked(repo)
    assert (repo / ".git" / "info" / "exclude").read_text().count(slim.BEGIN) == 1
    slim.restore(repo, log=lambda m: None)
    (repo / "book" / "intro.md").write_text("edited")
    git(repo, "add", "book/intro.md")
    with pytest.raises(ConfigError, match="staged change"):
        slim.slim(repo, "cifar", ["seed1"], log=lambda m: None)
    assert slim.state(repo) is None and "book/intro.md" in tracked(repo)


def test_unknown_stage_is_named(repo: Path):
    with pytest.raises(ConfigError, match="unknown campaign stage"):
        slim.plan(repo, "cifar", ["nope"])


def test_collect_restores_a_slim_checkout_first(repo: Path):
    """collect restores first: files landing under left-behind paths must be seen by git; a broken manifest is
    refused before anything changes."""
    slim.slim(repo, "cifar", ["seed1"], log=lambda m: None)
    src = repo.parent / "back"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"format": "bad"}))
    with pytest.raises(ImaeError, match="not a campaign manifest"):
        slim.collect(repo, src, log=lambda m: None)
    assert slim.state(repo) is not None  # still slim: nothing changed
    (src / "manifest.json").write_text(json.dumps(
        {"format": "imae-campaign-v1", "preset": "cifar", "fixed": {}, "windows": [], "stages": {}}))
    out = slim.collect(repo, src, log=lambda m: None)
    assert slim.state(repo) is None and out["stages"] == [] and out["upload"]["checkout_bytes"] > 0
    assert "book/intro.md" in tracked(repo)
