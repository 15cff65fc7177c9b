"""The CPU edition's speed, before and after, in ONE run: training img/s and the evaluation of one model.

    python benchmarks/cpu_edition.py --data-root data --threads 2 --json book/results/cpu_edition_small.json

* **Training** (``throughput.py`` underneath, real CIFAR-10 images when ``--data-root`` holds them): the
  MAE and the i-MAE step of the preset, eager (``before``: how the preset trained until now) and under
  ``torch.compile`` (inductor C++), at the preset's batch.
* **Evaluation** of one model of the preset (its untrained encoder: the timing does not depend on the
  weights) with the CPU edition's evaluation sizes (``experiments/params/<preset>.yaml``): separability,
  semantics, linear probe, kNN and reconstruction, each as a notebook would call it (a fresh process's
  memory, so only the feature folder carries over). ``before``: every metric extracts its own features (the
  cache off); ``after``: features extracted once and reused (:class:`imae.metrics.features.FeatureCache`).
  Both compute the same numbers (checked here: the results of the two passes must be equal).
* **Projection** of ``make reproduce PRESET=<preset>``'s training time at the rates measured here (``after``:
  the path the preset is configured for, ``train.compile``), from the notebooks' parameters (seeds, epochs,
  variants); the measured one-sitting wall time is in
  ``book/results/reproduce_<preset>.json``.

Peak memory is the process's peak RSS (cumulative; about 0.9 GB of it is the CUDA build of torch itself).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import throughput  # noqa: E402
from benchmarks.cpu_pipeline import peak_rss_mb  # noqa: E402
from imae import evaluations  # noqa: E402
from imae.config import build_config  # noqa: E402
from imae.companion.reproduce import notebook_parameters  # noqa: E402

EVALS = evaluations.frozen()  # every registered evaluation of a frozen model (imae.evaluations)


def training(args) -> dict:
    argv = ["--preset", args.preset, "--device", "cpu", "--paths", "fast", "--compile", "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--no-project"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.dataset:
        argv += ["--dataset", args.dataset, "--data-root", str(args.data_root)]
    res = throughput.main(argv)
    rate = {(r["method"], r["path"]): r for r in res["rows"]}
    out = {}
    for m in ("mae", "imae"):
        before, comp = rate[(m, "fast")], rate[(m, "fast+compile")]
        out[m] = {"before_img_per_s": before["img_per_s"], "compiled_img_per_s": comp["img_per_s"],
                  "compile_s": comp["compile_s"], "peak_mem_mb": max(before["peak_mem_mb"], comp["peak_mem_mb"])}
    return {"rows": res["rows"], "device": res["device"], "data": res["data"], "per_method": out}


def evaluation(args, params: dict) -> dict:
    from imae import metrics
    from imae.controls import untrained_run
    from imae.metrics.features import FEATURES, clean_features, load_eval_data, use_feature_cache

    with tempfile.TemporaryDirectory() as tmp:
        run = untrained_run(args.preset, runs_dir=tmp, **({"data.root": str(args.data_root)} if args.data_root else {}))
        common = {"max_images": params.get("max_images"), "device": "cpu"}
        if args.data_root:
            common["data_root"] = str(args.data_root)
        mixture = {"alphas": params.get("alphas", [0.1, 0.3, 0.5]), "n_pairs": params.get("n_pairs")}
        options = {"separability": mixture, "semantics": mixture, "reconstruction": mixture}
        passes, results = {}, {}
        for name, folder in (("before", None), ("after", Path(tmp) / ".features")):
            FEATURES.clear()
            times = {}
            with use_feature_cache(folder, enabled=folder is not None):
                for what in EVALS:
                    FEATURES._memory.clear()  # each notebook is its own process: only the folder carries over
                    t0 = time.perf_counter()
                    r = metrics.evaluate(run, what, **common, **options.get(what, {}))
                    times[what] = round(time.perf_counter() - t0, 2)
                    results.setdefault(what, {})[name] = {k: r[k] for k in ("accuracy", "ridge", "clean_r2", "psnr")
                                                          if k in r}
            passes[name] = {"seconds": times, "total_s": round(sum(times.values()), 2), "hits": FEATURES.hits,
                            "misses": FEATURES.misses}
        same = all(v["before"] == v["after"] for v in results.values())
        # the encoder's forward throughput on clean images (what every extraction costs)
        from imae.metrics.loading import load_model

        model = load_model(run, device=torch.device("cpu"))
        data = load_eval_data(model.config, max_images=params.get("max_images"),
                              data_root=str(args.data_root) if args.data_root else None)
        t0 = time.perf_counter()
        clean_features(model.mae, data.test)
        fwd = len(data.test) / (time.perf_counter() - t0)
    return {"passes": passes, "identical_results": same, "speedup": passes["before"]["total_s"] / passes["after"]["total_s"],
            "encoder_forward_img_per_s": fwd, "options": {**common, **mixture}}


def projection(params: dict, rates: dict, preset: str) -> dict:
    """Training seconds of ``make reproduce`` at ``rates`` ({mae, imae}: img/s), from the notebooks' parameters."""
    from imae.design import ABLATIONS

    mae_cfg, imae_cfg = build_config(preset, "mae"), build_config(preset, "imae", **{"imae.teacher": "random-init"})
    images = 50_000 if mae_cfg.data.subset_per_class is None else 10 * mae_cfg.data.subset_per_class
    seeds = len(params.get("seeds", [0]))
    extra_same = len([p for p in params.get("same_probs", []) if p != imae_cfg.data.same_prob])
    epochs = {"mae": seeds * (mae_cfg.train.epochs + imae_cfg.train.epochs),  # the teacher + MAE continued
              "imae": (seeds + extra_same) * imae_cfg.train.epochs + len(ABLATIONS) * params.get("ablation_epochs", 1)}
    secs = {m: epochs[m] * images / rates[m] for m in epochs}
    return {"epochs": epochs, "images_per_epoch": images, "seconds": secs, "total_min": sum(secs.values()) / 60}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--dataset", default="cifar10", help="real images for the training timing ('' for synthetic)")
    p.add_argument("--data-root", default=None, help="data root (default $IMAE_DATA or ./data)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = notebook_parameters(args.preset, Path(__file__).resolve().parents[1])  # what reproduce passes
    out = {"preset": args.preset, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if not args.skip_train:
        out["training"] = training(args)
        pm = out["training"]["per_method"]
        before = {m: pm[m]["before_img_per_s"] for m in pm}
        compiled = {m: build_config(args.preset, m, **{"imae.teacher": "random-init"}).train.compile for m in pm}
        after = {m: pm[m]["compiled_img_per_s" if compiled[m] else "before_img_per_s"] for m in pm}  # as configured
        out["projection"] = {"before": projection(params, before, args.preset),
                             "after": projection(params, after, args.preset)}
    if not args.skip_eval:
        out["evaluation"] = evaluation(args, params)
    out["peak_rss_mb"] = round(peak_rss_mb())
    print(summary(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


def summary(out: dict) -> str:
    lines = [f"{out['preset']} preset, {out['cpu']}, {out['threads']} threads, torch {out['torch']}"]
    for m, r in out.get("training", {}).get("per_method", {}).items():
        lines.append(f"train {m:5s} eager {r['before_img_per_s']:6.0f} img/s   compiled {r['compiled_img_per_s']:6.0f} "
                     f"img/s ({r['compiled_img_per_s'] / r['before_img_per_s']:.2f}x; compile {r['compile_s']:.0f} s)")
    for k, v in out.get("projection", {}).items():
        lines.append(f"reproduce training {k}: {v['total_min']:.1f} min")
    ev = out.get("evaluation")
    if ev:
        for k, v in ev["passes"].items():
            lines.append(f"eval {k:6s} {v['total_s']:6.1f} s  {v['seconds']}")
        lines.append(f"eval speedup {ev['speedup']:.2f}x, identical results: {ev['identical_results']}; "
                     f"encoder forward {ev['encoder_forward_img_per_s']:.0f} img/s")
    lines.append(f"peak RSS {out['peak_rss_mb']} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
