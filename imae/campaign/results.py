"""The stored results of a campaign, read on any machine (the book reads them through :mod:`imae.companion.summaries`).

Everything here reads ``campaign/<preset>/`` (the manifest, ``results/<stage>/...``, ``weights/``) as
:func:`imae.campaign.collect.collect` left it; nothing trains or evaluates. ::

    from imae.campaign.results import CampaignResults, campaign_folder
    c = CampaignResults(campaign_folder("cifar"))
    c.evaluations("knn")       # {"MAE": [result], "i-MAE": [result], "untrained": [result]}, for
                               # imae.companion.comparison
    c.stage_table()            # one row per stage: status, epochs, wall time, device
    c.throughput()             # the throughput benchmark's rows, or None

A missing campaign folder is an error naming the fix; a stage or evaluation not yet run is simply absent
(the chapter says what is pending).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import ImaeError
from ..paths import repo_root

# Model names in the campaign's evaluation stage -> the labels imae.companion.comparison pairs (DIFFERENCES).
LABELS = {"mae": "MAE", "imae": "i-MAE", "mae-continued": "MAE continued", "untrained": "untrained"}


class CampaignResults:
    """One campaign folder (``campaign/<preset>``) opened read-only."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        mpath = self.folder / "manifest.json"
        if not mpath.is_file():
            raise ImaeError(f"{self.folder} holds no manifest.json: no campaign results are stored there. Fix: "
                            "run a window (campaign/README.md) and `python -m imae campaign --collect FOLDER`, or "
                            "point to the folder that holds them")
        self.manifest = json.loads(mpath.read_text())
        self.preset = self.manifest.get("preset")

    # ------------------------------------------------------------------------------------------ stages
    def stage(self, name: str) -> dict:
        return self.manifest.get("stages", {}).get(name, {})

    def done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def epochs(self, stage: str) -> dict[str, int]:
        """{method: epochs} the planner chose for a training stage (empty when it has not run)."""
        return {m: p["epochs"] for m, p in self.stage(stage).get("plan", {}).get("train", {}).items()}

    def devices(self) -> list[str]:
        """The devices the windows ran on, in order, each once."""
        return list(dict.fromkeys(w.get("device", "?") for w in self.manifest.get("windows", [])))

    def stage_table(self) -> pd.DataFrame:
        """One row per stage that ran (done, started or partial): status, epochs, wall time, img/s, device."""
        rows = []
        for name, rec in self.manifest.get("stages", {}).items():
            status = rec.get("status", "pending")
            if status == "pending":
                continue
            res = rec.get("result", {})
            items = rec.get("items", {})
            epochs = ", ".join(f"{m} {e}" for m, e in self.epochs(name).items())
            wall = res.get("wall_s") or (sum(i.get("wall_s", 0) for i in items.values()) if items else None)
            rows.append({"stage": name, "status": status + (f" ({len(items)} evaluations)" if items else ""),
                         "epochs": epochs, "wall s": None if wall is None else round(float(wall), 1),
                         "img/s (incl. compile)": res.get("img_per_s"), "device": rec.get("device") or
                         next((i.get("device") for i in items.values() if i.get("device")), "")})
        return pd.DataFrame(rows, columns=["stage", "status", "epochs", "wall s", "img/s (incl. compile)", "device"])

    def pending(self) -> list[tuple[str, str]]:
        """[(stage, what it is)] for every stage of the campaign not done yet, in the campaign's order."""
        from .stages import default_stages

        return [(s.name, s.why) for s in default_stages(self.preset or "cifar") if not self.done(s.name)]

    # ----------------------------------------------------------------------------------------- results
    def run_dir(self, stage: str) -> Path:
        """``results/<stage>``: the stage's config.yaml and metrics.jsonl (a run folder for imae.companion.plots)."""
        path = self.folder / "results" / stage
        if not (path / "metrics.jsonl").is_file():
            raise ImaeError(f"{path} holds no metrics.jsonl: stage {stage!r} has no results yet (no window finished it)")
        return path

    def seeds(self) -> list[int]:
        """Training seeds with results: 0 (stages ``mae``/``imae``/``eval``) and each ``seed<k>`` stage done."""
        from .stages import default_stages

        extra = [int(st.name[4:]) for st in default_stages(self.preset or "cifar")
                 if st.name.startswith("seed") and st.name[4:].isdigit() and self.done(st.name)]
        return [0, *extra]

    def variant(self, stage: str, what: str) -> dict | None:
        """The ``what`` result of the one model a variant stage trains (``imae-sp0``, ``ablation-*``,
        ``mae-continued``), or None before it is collected."""
        return self._load(stage, stage, what) if self.done(stage) else None

    def _load(self, stage: str, model: str, what: str) -> dict | None:
        from ..runs import load_result

        f = self.folder / "results" / stage / "evals" / model / f"{what}.json"
        return load_result(f) if f.is_file() else None

    def evaluations(self, what: str, *, stage: str = "eval", seeds: bool = False) -> dict[str, list[dict]]:
        """{label: [result per training seed]} shaped for :mod:`imae.companion.comparison`.

        ``seeds=False`` (default): training seed 0, every model that has ``what``: the MAE, the i-MAE and the
        untrained encoder (stage ``stage``) and the equal-compute MAE (stage ``mae-continued``), one result each.
        ``seeds=True``: every training seed with results (:meth:`seeds`; seed k from stage ``seed<k>``, where
        the MAE, the i-MAE and that seed's untrained encoder were trained and scored again), keeping only the
        models that have ``what`` at every seed, so that seeds pair one to one.
        """
        from .. import evaluations as registry

        out: dict[str, list[dict]] = {}
        for model, label in LABELS.items():
            src = "mae-continued" if model == "mae-continued" else stage
            r = self._load(src, model, what)
            if r is not None:
                out[label] = [r]
        # seed stages score against the seed-0 teacher (an independent reference, see independent()), so a
        # metric with a reference keeps seed 0 only here: references are never mixed across seeds
        if not seeds or registry.get(what).reference != "never":
            return out
        trained = self.seeds()
        for s in trained[1:]:
            for model, label in (("mae", "MAE"), ("imae", "i-MAE"), ("mae-continued", "MAE continued"),
                                 (f"untrained-{s}", "untrained")):
                if label in out:
                    r = self._load(f"seed{s}", model, what)
                    if r is None:
                        del out[label]
                    else:
                        out[label].append(r)
        return {k: v for k, v in out.items() if len(v) == len(trained)}

    def independent(self, what: str = "separability") -> dict[str, list[dict]]:
        """{label: [result per training seed >= 1]}: the seed stages' models scored against the seed-0 teacher,
        a reference none of them was trained against (LS's headline; empty until a seed stage ran). Models
        present at every such seed only, so seeds pair one to one."""
        trained = [s for s in self.seeds() if s > 0]
        out: dict[str, list[dict]] = {}
        for s in trained:
            for model, label in (("mae", "MAE"), ("imae", "i-MAE"), ("mae-continued", "MAE continued"),
                                 (f"untrained-{s}", "untrained")):
                r = self._load(f"seed{s}", model, what)
                if r is not None:
                    out.setdefault(label, []).append(r)
        return {k: v for k, v in out.items() if len(v) == len(trained)}

    def ablations(self, what: str) -> dict[str, list[dict]]:
        """{"standard": [the i-MAE's result], variant: [its result]} for every ablation stage with ``what``
        (training seed 0; every variant is an i-MAE from the same teacher, scored on the same items)."""
        from .stages import default_stages

        out = {}
        std = self._load("eval", "imae", what)
        if std is not None:
            out["standard"] = [std]
        for st in default_stages(self.preset or "cifar"):
            r = self.variant(st.name, what) if st.name.startswith("ablation-") else None
            if r is not None:
                out[st.why.split(": ", 1)[-1]] = [r]
        return out

    def throughput(self) -> dict | None:
        """The throughput benchmark's JSON (benchmarks/throughput.py), or None before that stage ran."""
        f = self.folder / "results" / "throughput" / "throughput.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def throughput_table(self) -> pd.DataFrame | None:
        t = self.throughput()
        if t is None:
            return None
        df = pd.DataFrame(t["rows"])
        base = df[df["path"] == "faithful"].set_index("method")["img_per_s"]
        df["× faithful"] = [r.img_per_s / base.get(r.method, float("nan")) for r in df.itertuples()]
        df["compile s"] = df["compile_s"]
        return df[["method", "path", "batch", "img_per_s", "× faithful", "step_ms", "peak_mem_mb", "compile s"]]

def campaign_folder(preset: str = "cifar", root: str | os.PathLike | None = None) -> Path:
    """``<root>/campaign/<preset>`` (root: the repository; a path to a campaign folder itself also works)."""
    base = Path(root) if root is not None else repo_root()
    return base if (base / "manifest.json").is_file() else base / "campaign" / preset


__all__ = ["CampaignResults", "LABELS", "campaign_folder"]
