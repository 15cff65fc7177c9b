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


def score(run_dir, untrained_dir, *, max_images: int, seed: int, device: str) -> dict:
    """kNN and linear-probe accuracy of a run and its untrained control, with paired differences."""
    from imae import comparison as cmp
    from imae.experiments import cached_evaluation

    out = {}
    for what in ("knn", "linear-probe"):
        res = {label: [cached_evaluation(d, what, max_images=max_images, seed=seed, device=device)]
               for label, d in (("MAE", run_dir), ("untrained", untrained_dir))}
        est = cmp.estimates(res, cmp.accuracy("mean"))
        diff = cmp.differences(res, cmp.accuracy("mean"))["MAE − untrained"]
        out[what] = {"trained": cmp.at(est["MAE"]), "untrained": cmp.at(est["untrained"]), "gain": cmp.at(diff)}
    return out


def search(preset: str, names, *, data_root, runs_dir, max_images: int, seed: int, device: str, out: Path | None,
           extra: dict | None = None, log=print) -> dict:
    from imae.controls import untrained_run
    from imae.experiments import cached_run, describe_run

    result = {"preset": preset, "max_images": max_images, "seed": seed, "configs": {}}
    for name in names:
        over = {**CONFIGS[name], **(extra or {})}
        if data_root:
            over.setdefault("data.root", str(data_root))
        t0 = time.perf_counter()
        run = cached_run(preset, "mae", runs_dir=runs_dir, progress=False, **{"train.seed": seed, **over})
        untrained = untrained_run(preset, seed=seed, runs_dir=runs_dir, **over)
        scores = score(run, untrained, max_images=max_images, seed=seed, device=device)
        info = describe_run(run)
        result["configs"][name] = {"overrides": CONFIGS[name], "epochs": info["epochs"],
                                   "train_s": info["wall_time_s"], "wall_s": round(time.perf_counter() - t0, 1),
                                   **scores}
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
    p.add_argument("--seed", type=int, default=0)
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
                  out=Path(args.out) if args.out else None, extra=extra,
                  log=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    main()
