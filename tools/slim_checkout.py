"""A slim checkout for a size-limited upload: leave behind what the next window does not read.

The remote machine takes the checkout's tracked and untracked-not-ignored files plus the dataset archives,
within :data:`tools.limits.UPLOAD_LIMIT`. The campaign's committed results grow with every window, and the
book's rendered pages and static files are uploaded too, though the window reads neither: a window reads the
code, the manifest, the stored weights its stages load, and the finished items of the itemized stages it
resumes. So, before the call::

    python tools/slim_checkout.py slim --stages eval mae-continued   # or no --stages: every pending one
    # ... the window runs remotely; its output folder comes back ...
    python tools/slim_checkout.py collect FOLDER                     # restores first, then collects

``slim`` takes the paths the window does not read out of git's index (``git rm --cached``: the files stay
on disk, untouched) and lists them in ``.git/info/exclude``, so they are neither tracked nor untracked-not-
ignored and stay behind. ``restore`` (also run by ``collect`` and by a second ``slim``) puts the index
entries back as HEAD has them (``git reset``) and removes the exclude block, so nothing is lost and whatever
changed on disk meanwhile shows up as an ordinary change. While the checkout is slim, a commit would record
those paths as deleted: restore before committing (``show`` says which state the checkout is in).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imae.campaign.manifest import Manifest  # noqa: E402
from imae.campaign.stages import Stage, default_stages  # noqa: E402
from imae.errors import ConfigError  # noqa: E402
from tools.limits import DATA_ARCHIVE_BYTES, UPLOAD_LIMIT  # noqa: E402


def checkout_bytes(repo: str | os.PathLike) -> int | None:
    """Bytes of the files an upload sends from the checkout (git's tracked and untracked-not-ignored files);
    None where git cannot tell."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    repo = Path(repo)
    return sum((repo / f).stat().st_size for f in out.stdout.decode().split("\0") if f and (repo / f).is_file())


def upload_report(repo: str | os.PathLike, data_bytes: int = DATA_ARCHIVE_BYTES) -> dict | None:
    """How much of the upload limit a call from the whole checkout would use (the checkout + the dataset
    archives); None where git cannot tell."""
    n = checkout_bytes(repo)
    if n is None:
        return None
    r = _report(n, data_bytes)
    if not r["ok"]:
        r["message"] += (": an upload of the whole checkout would be refused. Fix: python tools/slim_checkout.py "
                         "slim [--stages ...] first (tools/README.md)")
    return {"checkout_bytes": n, "data_bytes": data_bytes, **r}


BEGIN = "# tools/slim_checkout.py: begin (python tools/slim_checkout.py restore removes this block)"
END = "# tools/slim_checkout.py: end"
STATE_NAME = "imae-slim-checkout.json"
# Never read by a window: the book (rendered notebooks, MathJax, its result tables), the notebooks and the CPU
# edition's shipped runs (imae.shipped; the campaign trains and stores its own).
ALWAYS_LEFT = ("book", "experiments", "weights")


def _git(repo: Path, *args: str, check: bool = True) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"git {' '.join(args)} failed in {repo}: {e}") from e
    if check and out.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _git_path(repo: Path, name: str) -> Path:
    p = Path(_git(repo, "rev-parse", "--git-path", name).strip())
    return p if p.is_absolute() else repo / p


def _tracked(repo: Path, paths) -> list[str]:
    out = _git(repo, "ls-files", "-z", "--", *paths) if paths else ""
    return [p for p in out.split("\0") if p]


def model_refs(stage: Stage) -> set[str]:
    """The committed models (``mae`` / ``imae``) a stage loads: its evaluations' and trainings' references."""
    refs = {m for m, _ in stage.evals}
    for t in stage.train:
        refs.update(r for r in (t.teacher, t.init_from) if r)
    return {r for r in refs if not r.startswith("@") and not r.startswith("untrained")}


def plan(repo: str | os.PathLike, preset: str = "cifar", stages=None, manifest: str | os.PathLike | None = None
         ) -> dict:
    """What a window running ``stages`` (default: every stage not done) may leave behind.

    Returns {"stages": [...], "leave": [paths, as given to git], "weights_kept": [names], "left_bytes": int}.
    Kept: the code, the manifest, the weights of the committed models those stages load (an i-MAE with its
    teacher), and the results of the itemized stages among them (their finished items are not redone).
    """
    repo = Path(repo)
    base = repo / "campaign" / preset
    m = Manifest.load(Path(manifest) if manifest else base / "manifest.json", preset)
    all_stages = default_stages(preset)
    by_name = {s.name: s for s in all_stages}
    if stages:
        unknown = [s for s in stages if s not in by_name]
        if unknown:
            raise ConfigError(f"unknown campaign stage(s) {unknown}; the stages are {list(by_name)}")
        chosen = [by_name[s] for s in stages]
    else:
        chosen = [s for s in all_stages if not m.is_done(s.name)]
    loads: set[str] = set()
    for s in chosen:
        loads |= model_refs(s)
    for ref in list(loads):  # a stored i-MAE is materialised with its teacher
        for t in by_name[ref].train if ref in by_name else ():
            if t.teacher and not t.teacher.startswith("@"):
                loads.add(t.teacher)
    kept_weights = sorted(t.weights_name for r in loads if r in by_name for t in by_name[r].train if t.weights_name)
    leave = [p for p in ALWAYS_LEFT if (repo / p).exists()]
    if (base / "logs").is_dir():
        leave.append(f"campaign/{preset}/logs")
    itemized = {s.name for s in chosen if s.itemized}
    results = base / "results"
    if results.is_dir():
        leave += [f"campaign/{preset}/results/{d.name}" for d in sorted(results.iterdir())
                  if d.is_dir() and d.name not in itemized]
    weights = base / "weights"
    if weights.is_dir():
        leave += [f"campaign/{preset}/weights/{f.name}" for f in sorted(weights.iterdir())
                  if f.is_file() and f.name.split(".")[0] not in kept_weights]
    tracked = _tracked(repo, leave)
    return {"stages": [s.name for s in chosen], "leave": leave, "weights_kept": kept_weights,
            "left_bytes": sum((repo / f).stat().st_size for f in tracked if (repo / f).is_file())}


def _is_git(repo: Path) -> bool:
    try:
        return bool(_git(repo, "rev-parse", "--git-dir", check=False).strip())
    except ConfigError:  # no git on this machine: nothing can have been made slim here
        return False


def state(repo: str | os.PathLike) -> dict | None:
    """The slim state's record (paths left behind, stages), or None when the checkout is whole (or no git)."""
    repo = Path(repo)
    if not _is_git(repo):
        return None
    p = _git_path(repo, STATE_NAME)
    return json.loads(p.read_text()) if p.is_file() else None


def _exclude_without_block(text: str) -> str:
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line == BEGIN:
            inside = True
        elif line == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def slim(repo: str | os.PathLike, preset: str = "cifar", stages=None, manifest=None, *, log=print) -> dict:
    """Leave behind what a window running ``stages`` does not read (see the module's docstring)."""
    repo = Path(repo)
    if state(repo):
        restore(repo, log=log)
    p = plan(repo, preset, stages, manifest)
    leave = p["leave"]
    staged = _git(repo, "diff", "--cached", "--name-only", "--", *leave).split() if leave else []
    if staged:
        raise ConfigError(f"slim: {len(staged)} staged change(s) under the paths it would untrack "
                          f"(first: {staged[0]}); commit or unstage them first (git restore --staged PATH)")
    before = checkout_bytes(repo)
    # The record first: should anything below fail, `restore` still knows what to put back.
    _git_path(repo, STATE_NAME).write_text(json.dumps({"preset": preset, **p}, indent=1) + "\n")
    if leave:
        _git(repo, "rm", "-r", "--cached", "-q", "--ignore-unmatch", "--", *leave)
    exclude = _git_path(repo, "info/exclude")
    exclude.parent.mkdir(parents=True, exist_ok=True)
    text = _exclude_without_block(exclude.read_text() if exclude.is_file() else "")
    block = [BEGIN] + [f"/{x}" for x in leave] + [END]
    exclude.write_text(text + "\n".join(block) + "\n")
    after = checkout_bytes(repo)
    report = _report(after)
    log(f"slim checkout for stages {p['stages']}: weights kept {p['weights_kept']}; left behind "
        f"{p['left_bytes'] / 1e6:.1f} MB ({', '.join(leave) or 'nothing'}); checkout "
        f"{(before or 0) / 1e6:.1f} -> {(after or 0) / 1e6:.1f} MB. {report['message']}. "
        "Do not commit until `python tools/slim_checkout.py restore` (collect restores first)")
    return {**p, "before_bytes": before, "after_bytes": after, **report}


def restore(repo: str | os.PathLike, *, log=print) -> bool:
    """Undo :func:`slim`: the index as HEAD has those paths, the exclude block gone. False if not slim."""
    repo = Path(repo)
    if not _is_git(repo):
        return False
    rec = state(repo)
    exclude = _git_path(repo, "info/exclude")
    if exclude.is_file():
        exclude.write_text(_exclude_without_block(exclude.read_text()))
    if rec is None:
        return False
    leave = [x for x in rec.get("leave", []) if _tracked_in_head(repo, x)]
    if leave:
        _git(repo, "reset", "-q", "HEAD", "--", *leave)
    _git_path(repo, STATE_NAME).unlink()
    log(f"checkout restored: {len(leave)} path(s) back in git's index ({checkout_bytes(repo) / 1e6:.1f} MB)")
    return True


def _tracked_in_head(repo: Path, path: str) -> bool:
    return bool(_git(repo, "ls-tree", "-r", "--name-only", "HEAD", "--", path, check=False).strip())


def _report(n: int | None, data_bytes: int = DATA_ARCHIVE_BYTES) -> dict:
    """{"total_bytes", "ok", "message"} for a checkout of ``n`` bytes plus the dataset archives."""
    total = (n or 0) + data_bytes
    ok = total <= UPLOAD_LIMIT
    msg = (f"an upload is {total / 2**20:.1f} of {UPLOAD_LIMIT / 2**20:.0f} MiB "
           f"(checkout {(n or 0) / 1e6:.1f} MB + dataset archives {data_bytes / 1e6:.1f} MB)")
    return {"total_bytes": total, "ok": ok, "message": msg if ok else "WARNING: " + msg + ": over the limit"}


def show(repo: str | os.PathLike, preset: str = "cifar", stages=None, manifest=None, *, log=print) -> dict:
    """Print the state and what ``slim`` would leave behind, changing nothing."""
    repo = Path(repo)
    rec = state(repo)
    n = checkout_bytes(repo)
    if rec:
        log(f"the checkout is SLIM (stages {rec['stages']}): {_report(n)['message']}; "
            "restore before committing: python tools/slim_checkout.py restore")
        return {"slim": True, **rec}
    p = plan(repo, preset, stages, manifest)
    projected = (n or 0) - p["left_bytes"]
    log(f"the checkout is whole: {_report(n)['message']}. Slim for stages {p['stages']}: "
        f"{_report(projected)['message']}; weights kept {p['weights_kept']}")
    return {"slim": False, **p, "projected": _report(projected)}


def collect(repo: str | os.PathLike, folder: str | os.PathLike, *, log=print) -> dict:
    """Restore the checkout, then collect a window's output folder into the repository
    (:func:`imae.campaign.collect.collect`) and report the next upload's size."""
    from imae.campaign.collect import collect as collect_window
    from imae.campaign.manifest import check

    repo, folder = Path(repo), Path(folder)
    mpath = folder / "manifest.json"
    try:  # a broken manifest is refused before anything changes
        returned = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{mpath}: not a window's manifest ({e})") from e
    check(returned, mpath, returned.get("preset") if isinstance(returned, dict) else None)
    restore(repo, log=log)  # a slim checkout would hide what lands here from git
    result = collect_window(folder, repo / "campaign" / returned["preset"], log=log)
    report = upload_report(repo)
    if report is not None:
        log(report["message"])
    return {**result, "upload": report}


def main(argv=None) -> int:
    from imae.paths import repo_root

    p = argparse.ArgumentParser(prog="python tools/slim_checkout.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["slim", "restore", "show", "collect"])
    p.add_argument("folder", nargs="?", help="collect: the window's output folder")
    p.add_argument("--preset", default="cifar")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="the stages the next window runs (default: every "
                                                                "pending one)")
    p.add_argument("--manifest", help="campaign manifest (default campaign/PRESET/manifest.json)")
    args = p.parse_args(argv)
    repo = repo_root()
    try:
        if args.action == "restore":
            if not restore(repo):
                print("the checkout is whole already (nothing to restore)")
            return 0
        if args.action == "collect":
            if not args.folder:
                raise ConfigError("collect needs the window's output folder")
            return 0 if not collect(repo, args.folder)["missing"] else 1
        fn = slim if args.action == "slim" else show
        result = fn(repo, args.preset, args.stages, args.manifest)
    except Exception as e:  # an ImaeError, or git failing: one line
        from imae.errors import ImaeError

        if not isinstance(e, ImaeError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if result.get("ok", result.get("projected", {}).get("ok", True)) else 1


__all__ = ["checkout_bytes", "collect", "model_refs", "plan", "restore", "show", "slim", "state", "upload_report"]


if __name__ == "__main__":
    sys.exit(main())
