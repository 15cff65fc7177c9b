"""Which CPU configuration gives real signal: train MAE variants of a preset on the full training set and score
each against the untrained encoder of the same architecture (kNN and linear probe, paired 95 % intervals).

    python benchmarks/config_search.py --preset small --data-root data --out book/results/config_search_small.json

Each configuration is an override of the preset (``CONFIGS``); its training time is the run's own wall time
(2 idle cores make it comparable: run nothing else meanwhile). Runs and evaluations are cached under
``--runs-dir``, so an interrupted search resumes where it stopped, and the JSON is rewritten after every
configuration (a stopped search keeps what it finished).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Overrides of the preset, each one question about the CPU edition's recipe.
CONFIGS = {
    "preset as is": {},
    "half the epochs": {"train.epochs": 5},
    "twice the learning rate": {"train.blr": 3e-3},
    "pixel targets (no norm-pix)": {"model.norm_pix_loss": False},
    "6 blocks instead of 4": {"model.depth": 6},
    "128-d tokens instead of 96": {"model.embed_dim": 128, "model.num_heads": 4},
}


def score(run_dirs, untrained_dirs, *, max_images: int, seed: int, device: str) -> dict:
    """kNN and linear-probe accuracy of runs (one per training seed) and their untrained controls (same seeds),
    with paired differences; every model is scored on the same test items (evaluation seed ``seed``)."""
    from imae.companion import comparison as cmp
    from imae.companion.experiments import cached_evaluation

    out = {}
    for what in ("knn", "linear-probe"):
        res = {label: [cached_evaluation(d, what, max_images=max_images, seed=seed, device=device) for d in dirs]
               for label, dirs in (("MAE", run_dirs), ("untrained", untrained_dirs))}
        est = cmp.estimates(res, cmp.accuracy("mean"))
        diff = cmp.differences(res, cmp.accuracy("mean"))["MAE − untrained"]
        out[what] = {"trained": cmp.at(est["MAE"]), "untrained": cmp.at(est["untrained"]), "gain": cmp.at(diff)}
    return out


def versus(runs_a, runs_b, *, max_images: int, seed: int, device: str) -> dict:
    """Accuracy of configuration a minus configuration b, paired by training seed and test item."""
    from imae.companion import comparison as cmp
    from imae.companion.experiments import cached_evaluation

    out = {}
    for what in ("knn", "linear-probe"):
        res = {label: [cached_evaluation(d, what, max_images=max_images, seed=seed, device=device) for d in dirs]
               for label, dirs in (("a", runs_a), ("b", runs_b))}
        out[what] = cmp.at(cmp.differences(res, cmp.accuracy("mean"), pairs={"a − b": ("a", "b")})["a − b"])
    return out


def search(preset: str, names, *, data_root, runs_dir, max_images: int, seed: int, device: str, out: Path | None,
           extra: dict | None = None, seeds=None, log=print) -> dict:
    """Score every configuration of ``names``: trained with training seed ``seed`` (evaluated with evaluation
    seed ``seed``), or with every training seed of ``seeds`` (all evaluated on the items of evaluation seed
    ``seed``; means over seeds with intervals that add the seeds' spread)."""
    from imae.controls import untrained_run
    from imae.companion.experiments import cached_run, describe_run

    train_seeds = list(seeds) if seeds else [seed]
    result = {"preset": preset, "max_images": max_images, "seed": seed, "configs": {}}
    if seeds:
        result["seeds"] = train_seeds
    for name in names:
        over = {**CONFIGS[name], **(extra or {})}
        if data_root:
            over.setdefault("data.root", str(data_root))
        t0 = time.perf_counter()
        runs = [cached_run(preset, "mae", runs_dir=runs_dir, progress=False, **{"train.seed": s, **over})
                for s in train_seeds]
        untrained = [untrained_run(preset, seed=s, runs_dir=runs_dir, **over) for s in train_seeds]
        scores = score(runs, untrained, max_images=max_images, seed=seed, device=device)
        infos = [describe_run(r) for r in runs]
        info = {"epochs": infos[0]["epochs"], "wall_time_s": sum(i["wall_time_s"] for i in infos) / len(infos)}
        result["configs"][name] = {"overrides": CONFIGS[name], "epochs": info["epochs"],
                                   "train_s": round(info["wall_time_s"], 1), "wall_s": round(time.perf_counter() - t0, 1),
                                   **scores}
        if seeds:
            result["configs"][name]["train_s_per_seed"] = [i["wall_time_s"] for i in infos]
            first = next(iter(result["configs"]))
            if name != first:  # the configuration against the first one, on the same seeds and items
                result["configs"][name]["vs_first"] = versus(runs, first_runs, max_images=max_images, seed=seed,
                                                             device=device)
            else:
                first_runs = runs
        k, p = scores["knn"], scores["linear-probe"]
        log(f"{name}: {info['wall_time_s']:.0f} s training; kNN {100 * k['trained'][0]:.1f} vs "
            f"{100 * k['untrained'][0]:.1f} (gain {100 * k['gain'][0]:+.1f} [{100 * k['gain'][1]:+.1f}, "
            f"{100 * k['gain'][2]:+.1f}]); probe {100 * p['trained'][0]:.1f} vs {100 * p['untrained'][0]:.1f} "
            f"(gain {100 * p['gain'][0]:+.1f} [{100 * p['gain'][1]:+.1f}, {100 * p['gain'][2]:+.1f}])")
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--data-root", help="dataset root (default: $IMAE_DATA, else ./data)")
    p.add_argument("--runs-dir", default="runs/search", help="cache of the search's runs")
    p.add_argument("--max-images", type=int, default=5000, help="evaluation images per split (the book's)")
    p.add_argument("--seed", type=int, default=0, help="training seed, and the evaluation items' seed")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="train every configuration with each of these seeds (evaluated on the items of --seed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every configuration (e.g. for a quick test)")
    p.add_argument("--out", help="write the table as JSON here (rewritten after each configuration)")
    args = p.parse_args(argv)
    import yaml

    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    return search(args.preset, args.configs, data_root=args.data_root, runs_dir=args.runs_dir,
                  max_images=args.max_images, seed=args.seed, device=args.device,
                  out=Path(args.out) if args.out else None, extra=extra, seeds=args.seeds,
                  log=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    main()
