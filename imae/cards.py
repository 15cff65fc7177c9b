"""Model cards: the ``README.md`` beside a published or exported model, generated from stored results.

A card says what the model is, what it was trained on (including that this project's CIFAR-10 training
images are a JPEG q75 copy), the recipe, the training run (epochs, device, wall time), what was measured
with 95 % intervals, the intended use, the licences (code, weights, data) and how to cite. Every number
comes from a stored file — the weights' card ``campaign/<preset>/weights/<name>.json``, the book's stored
records ``book/results/<preset>/*.json``, the campaign's stored evaluations, a run's checkpoint and its stored
evaluations — never from a number typed here; a model no stored record measured gets a card that says so
and how to measure it. Cards name files relative to the repository, never a machine path.

    python -m imae.cards            # rewrite campaign/*/weights/README.md (and make the weights' cards portable)
    from imae.cards import published_readme, export_card   # the text, for a folder or an export

:func:`export_card` is what ``python -m imae export --to timm`` writes into its folder (with the front matter a
model hub reads); :func:`published_readme` is the card of a folder of published models.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .evaluations import headline_index
from .pretrained import repo_root

PUBLISHED_README = "README.md"
WEIGHTS_LICENSE = "mit"  # the weights' licence (as the code's: LICENSE), in a model hub's spelling
PAPER = "i-MAE: Are Latent Representations in Masked Autoencoders Linearly Separable?"
CIFAR_REPORT = "Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, University of Toronto, 2009"
KIND_NAMES = {"mae": "MAE", "imae": "i-MAE"}
# A published model's stage -> its label in the book's records (as imae.campaign.results.LABELS).
STAGE_LABELS = {"mae": "MAE", "imae": "i-MAE"}
CONTROL = "untrained"


@dataclass
class Source:
    """A model a card (or an export) is about, and what is known of it.

    ``name`` is portable (a published name, or a run's folder name), never a machine path. ``mae`` is the
    model's MAE (float32, eval mode) where its weights were loaded (an export), else None."""

    mae: object  # torch.nn.Module | None
    config: object  # RunConfig
    kind: str  # mae | imae
    fingerprint: str
    name: str
    origin: str  # "published" | "run"
    stored_dtype: object = None  # torch.dtype of the stored weights (None: float32)
    card: Optional[dict] = None  # a published model's stored card
    run: Optional[Path] = None  # a run's directory or checkpoint (read for its training record, never written out)
    extra: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- helpers
def _rel(path: Path, repo: Path) -> str:
    try:
        return Path(path).resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _pct(e: dict, k: Optional[int] = None) -> str:
    m, lo, hi = (_at(e[f], k) * 100 for f in ("mean", "lo", "hi"))
    return f"{m:.1f} % [{lo:.1f}, {hi:.1f}]"


def _r2(e: dict, k: Optional[int] = None) -> str:
    m, lo, hi = (_at(e[f], k) for f in ("mean", "lo", "hi"))
    return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _at(x, k: Optional[int]) -> float:
    return float(np.asarray(x).reshape(-1)[k]) if k is not None else float(np.asarray(x))


def _sentence(name_a: str, name_b: str, d: dict, *, k: Optional[int] = None, points: bool) -> str:
    """``a − b`` from a stored difference {mean, lo, hi, n_seeds, n_items}: higher / lower when its 95 %
    interval excludes 0, else within noise."""
    m, lo, hi = (_at(d[f], k) * (100 if points else 1) for f in ("mean", "lo", "hi"))
    fmt, unit = (".1f", " points") if points else (".3f", "")
    seeds = (f"{d['n_seeds']} training seeds" if int(d["n_seeds"]) > 1
             else "one training seed: test-item resampling only")
    ci = f"95 % CI {lo:{fmt}} to {hi:{fmt}}{unit}, {seeds}"
    if lo > 0 or hi < 0:
        return f"{name_a} is {'higher' if lo > 0 else 'lower'} than {name_b} by {abs(m):{fmt}}{unit} ({ci})"
    return f"{name_a} and {name_b} are within noise of each other (difference {m:+{fmt}}{unit}; {ci})"


def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _seconds(s) -> str:
    s = float(s)
    return f"{s:.0f} s ({s / 60:.1f} min)" if s >= 60 else f"{s:.1f} s"


def citation(repo: Optional[Path] = None) -> str:
    """BibTeX for this reproduction and the paper, from ``CITATION.cff``."""
    import yaml

    repo = repo or repo_root()
    cff = yaml.safe_load((repo / "CITATION.cff").read_text())
    authors = " and ".join("{" + a["name"] + "}" if "name" in a else f"{a['family-names']}, {a['given-names']}"
                           for a in cff.get("authors", []))
    out = ["@software{imae,", f"  title = {{{cff['title']}}},", f"  author = {{{authors}}},",
           f"  version = {{{cff.get('version', '')}}},", f"  license = {{{cff.get('license', '')}}},", "}"]
    for ref in cff.get("references", []):
        names = " and ".join(f"{a['family-names']}, {a['given-names']}" for a in ref.get("authors", []))
        ids = {i.get("type"): i.get("value") for i in ref.get("identifiers", [])}
        arxiv = (ids.get("other") or "").replace("arXiv:", "")
        key = (ref["authors"][0]["family-names"].lower() + str(ref.get("year", ""))) if ref.get("authors") else "ref"
        out += [f"@article{{{key},", f"  title = {{{ref['title']}}},", f"  author = {{{names}}},",
                f"  journal = {{{ref.get('journal', '')}{' ' + 'arXiv:' + arxiv if arxiv else ''}}},",
                f"  year = {{{ref.get('year', '')}}},"]
        if ids.get("doi"):
            out.append(f"  doi = {{{ids['doi']}}},")
        out.append("}")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- facts
def _trained_published(card: dict) -> dict:
    t = card.get("trained") or {}
    return {"epochs": t.get("epochs"), "steps": t.get("steps"), "wall_s": t.get("wall_s"),
            "train_s": t.get("train_s"), "img_per_s": t.get("img_per_s"), "final_loss": t.get("final_loss"),
            "device": t.get("device"), "compile": t.get("compile"), "torch": card.get("torch"),
            "date": (card.get("created") or "")[:10] or None, "finished": True}


def _trained_run(run: Path) -> dict:
    from .checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(run)
    except Exception:  # an external checkpoint may carry none of this
        return {}
    if not isinstance(ckpt, dict):
        return {}
    return {"epochs": ckpt.get("epoch"), "steps": ckpt.get("step"), "train_s": ckpt.get("elapsed_s"),
            "device": ckpt.get("hardware"), "finished": ckpt.get("finished")}


# ----------------------------------------------------------------------------------------- measurements
def _paper_scale(card: dict, repo: Path) -> Optional[dict]:
    """What the book's paper-scale chapter measured of a published model (its stored record), checked
    against the campaign's stored evaluations: they must be of this model (fingerprint) and this training."""
    preset = card["config"].get("preset")
    label = STAGE_LABELS.get(card.get("stage") or "")
    path = repo / "book" / "results" / str(preset) / "paper_scale.json"
    rec = _load(path)
    if rec is None or label is None:
        return None
    run = (rec.get("runs") or {}).get(card.get("stage"), {})
    trained = card.get("trained") or {}
    if run.get("epochs") != trained.get("epochs") or run.get("wall_time_s") != trained.get("wall_s"):
        return None  # the record is of another training of this stage
    evals = repo / "campaign" / str(preset) / "results" / "eval" / "evals"
    stored = {w: _load(evals / card["stage"] / f"{w}.json") for w in ("knn", "linear-probe", "separability")}
    if any(r is None or r["metadata"].get("fingerprint") != card["fingerprint"] for r in stored.values()):
        return None
    pool = rec.get("pool", "mean")
    alphas = rec.get("alphas") or []
    k = headline_index(alphas) if alphas else None
    acc = rec.get("accuracy", {})
    knn_pp = stored["knn"]["per_pool"].get(pool, {})
    ref = (stored["separability"]["metadata"].get("reference") or {}).get("fingerprint")
    ref_name = next((c.stem for c in (repo / "campaign" / str(preset) / "weights").glob("*.json")
                     if (_load(c) or {}).get("fingerprint") == ref), ref)
    rows = []
    for what, title in (("knn", f"kNN top-1 (k = {knn_pp.get('k')}, T = {knn_pp.get('temperature')})"),
                        ("linear-probe", "linear probe top-1")):
        block = acc.get(what, {})
        est = block.get("estimates", {})
        if label in est:
            rows.append({"measure": title, "value": _pct(est[label]), "control": _pct(est[CONTROL])
                         if CONTROL in est else "—", "n": est[label]["n_items"], "seeds": est[label]["n_seeds"],
                         "differences": block.get("differences", {}), "points": True})
    for part, name in (("sub", "subordinate"), ("dom", "dominant")):
        ls = rec.get("ls", {}).get(part, {})
        if label in ls and k is not None:
            rows.append({"measure": f"LS: {name} image's R² at α = {alphas[k]}", "value": _r2(ls[label], k),
                         "control": _r2(ls[CONTROL], k) if CONTROL in ls else "—", "n": ls[label]["n_items"],
                         "seeds": ls[label]["n_seeds"], "k": k, "points": False,
                         "differences": rec.get("ls_differences", {}) if part == "sub" else {}})
    sweep = [(a, _r2(rec["ls"]["sub"][label], i), _r2(rec["ls"]["dom"][label], i)) for i, a in enumerate(alphas)
             if label in rec.get("ls", {}).get("sub", {}) and label in rec.get("ls", {}).get("dom", {})]
    n_train = stored["linear-probe"]["per_pool"].get(pool, {}).get("n_train")
    return {"label": label, "source": _rel(path, repo), "evaluations": _rel(evals / card["stage"], repo),
            "pool": pool, "rows": rows, "sweep": sweep, "reference": ref_name, "n_train": n_train,
            "scope": "this model", "date": rec.get("date"), "hardware": rec.get("hardware")}


def _book_records(fingerprint: str, preset: Optional[str], repo: Path) -> Optional[dict]:
    """What the book's stored records (``book/results/<preset>/classification.json``, ``separability.json``)
    measured of the arm this run belongs to (its fingerprint is one of the record's runs)."""
    folder = repo / "book" / "results" / str(preset)
    found = {}
    for name in ("classification", "separability"):
        rec = _load(folder / f"{name}.json")
        if not rec:
            continue
        for label, run in (rec.get("runs") or {}).items():
            if isinstance(run, dict) and run.get("fingerprint") == fingerprint:
                found[name] = (rec, label.split(" (seed ")[0], run)
    if not found:
        return None
    rows, sweep, arm, run, sources, seeds = [], [], None, None, [], None
    if "classification" in found:
        rec, arm, run = found["classification"]
        sources.append(_rel(folder / "classification.json", repo))
        seeds = rec.get("seeds")
        for key, title, dkey in (("kNN (k=20)", "kNN top-1 (k = 20)", "kNN"), ("linear probe", "linear probe top-1",
                                                                              "linear probe")):
            est = rec.get("accuracy", {}).get(key, {})
            if arm in est:
                rows.append({"measure": title, "value": _pct(est[arm]), "control": _pct(est[CONTROL])
                             if CONTROL in est else "—", "n": est[arm]["n_items"], "seeds": est[arm]["n_seeds"],
                             "differences": rec.get("differences", {}).get(dkey, {}), "points": True})
    if "separability" in found:
        rec, arm, run = found["separability"]
        sources.append(_rel(folder / "separability.json", repo))
        seeds = seeds or rec.get("seeds")
        alphas = rec.get("alphas") or []
        k = headline_index(alphas) if alphas else None
        for part, name in (("sub", "subordinate"), ("dom", "dominant")):
            ls = rec.get("ls", {}).get(part, {})
            if arm in ls and k is not None:
                rows.append({"measure": f"LS: {name} image's R² at α = {alphas[k]}", "value": _r2(ls[arm], k),
                             "control": _r2(ls[CONTROL], k) if CONTROL in ls else "—", "n": ls[arm]["n_items"],
                             "seeds": ls[arm]["n_seeds"], "k": k, "points": False,
                             "differences": rec.get("differences", {}).get(part, {})})
        if all(arm in rec.get("ls", {}).get(p, {}) for p in ("sub", "dom")):
            sweep = [(a, _r2(rec["ls"]["sub"][arm], i), _r2(rec["ls"]["dom"][arm], i)) for i, a in enumerate(alphas)]
    return {"label": arm, "source": ", ".join(sources), "evaluations": None, "pool": rec.get("pool", "mean"),
            "rows": rows, "sweep": sweep, "reference": None, "n_train": None, "date": rec.get("date"),
            "hardware": rec.get("hardware"), "scope": "arm", "seed": (run or {}).get("seed"), "seeds": seeds}


def _run_evaluations(run: Path, repo: Path) -> Optional[dict]:
    """The evaluations stored inside a run (``<run>/eval/<what>-*/<what>.json``), with intervals computed
    from their per-item arrays (one training seed: test-item resampling)."""
    from .companion import comparison as cmp
    from .runs import load_result

    folder = (run.parent if run.is_file() else run) / "eval"
    rows = []
    for f in sorted(folder.glob("*/*.json")):
        what = f.stem
        if what not in ("knn", "linear-probe", "separability") or not f.parent.name.startswith(what + "-"):
            continue
        try:
            r = load_result(f)
            if what == "separability":
                alphas = r["alphas"]
                k = headline_index(alphas)
                for part, name in (("sub", "subordinate"), ("dom", "dominant")):
                    e = cmp.estimates({"m": [r]}, cmp.at_alpha(cmp.ls(part, "mean"), k))["m"].as_dict()
                    rows.append({"measure": f"LS: {name} image's R² at α = {alphas[k]}", "value": _r2(e),
                                 "control": "—", "n": e["n_items"], "seeds": 1, "differences": {}, "points": False})
            else:
                e = cmp.estimates({"m": [r]}, cmp.accuracy("mean"))["m"].as_dict()
                title = "kNN top-1" if what == "knn" else "linear probe top-1"
                rows.append({"measure": title, "value": _pct(e), "control": "—", "n": e["n_items"], "seeds": 1,
                             "differences": {}, "points": True})
        except (KeyError, ValueError, OSError):
            continue  # an evaluation without per-item arrays (older) gives no interval: left out
    if not rows:
        return None
    return {"label": None, "source": _rel(folder, repo) if folder.resolve().is_relative_to(repo.resolve())
            else "the run's own `eval/` folder", "evaluations": None, "pool": "mean", "rows": rows, "sweep": [],
            "reference": None, "n_train": None, "date": None, "hardware": None, "scope": "this model"}


def measurements(src, repo: Optional[Path] = None) -> Optional[dict]:
    """What stored results say of the model of ``src``, or None."""
    repo = repo or repo_root()
    if src.card is not None:
        return _paper_scale(src.card, repo)
    found = _book_records(src.fingerprint, getattr(src.config, "preset", None), repo)
    if found is None and src.run is not None:
        found = _run_evaluations(Path(src.run), repo)
    return found


# ----------------------------------------------------------------------------------------------- text
def _what_it_is(src, n_params: Optional[int]) -> list[str]:
    m = src.config.model
    kind = KIND_NAMES.get(src.kind, src.kind)
    grid = m.img_size // m.patch_size
    lines = [f"The encoder of an **{kind}** "
             f"(masked autoencoder{'; the i-MAE student, distilled from an MAE teacher' if src.kind == 'imae' else ''})"
             f" trained with `imae`, a reproduction of *{PAPER}* (Zhang and Shen, arXiv 2210.11470).", "",
             "| | |", "| --- | --- |",
             f"| architecture | ViT, {m.img_size}×{m.img_size}×{m.in_chans} input, patch {m.patch_size} "
             f"({grid}×{grid} = {grid * grid} patches), width {m.embed_dim}, depth {m.depth}, {m.num_heads} heads, "
             f"MLP ratio {m.mlp_ratio:g} |"]
    if n_params:
        lines.append(f"| encoder parameters | {n_params:,} |")
    lines += [f"| decoder (not in a timm export) | width {m.decoder_embed_dim}, depth {m.decoder_depth}, "
              f"{m.decoder_num_heads} heads |",
              "| features | `forward_features(x)`: (N, 1 + L, D) final-LayerNorm tokens, token 0 the class token |",
              "| position embedding | fixed 2-D sin-cos table (zero for the class token) |",
              f"| fingerprint | `{src.fingerprint}` (the hash of the run's configuration that names it) |"]
    if src.card is not None:
        lines.append(f"| stored weights | `{src.card['file']}`, {src.card.get('dtype', '')}, "
                     f"{src.card['bytes'] / 1e6:.1f} MB, sha256 `{src.card['sha256'][:16]}…` |")
    return lines


def _data_text(src) -> list[str]:
    d = src.config.data
    subset = (f"the first {d.subset_per_class} training images of each class" if d.subset_per_class
              else "all of its training images")
    lines = [f"Dataset `{d.dataset}`, {subset} (labels unused: self-supervised)."]
    if d.dataset == "cifar10":
        certain = src.card is not None
        lines += ["",
                  ("**The CIFAR-10 training images were a JPEG copy**, quality 75 with 4:2:0 chroma subsampling (the "
                   "only complete copy of the 50,000 training images available to this project; original order "
                   "and labels), while the 10,000 test images it is scored on are the exact originals. "
                   if certain else
                   "**This project's copy of the CIFAR-10 training images is a JPEG copy** (quality 75, 4:2:0 "
                   "chroma subsampling; original order and labels; the test images are the exact originals), and "
                   "every CIFAR-10 number of the book carries that handicap; a run trained on a copy downloaded "
                   "from the CIFAR site saw the original images instead. ") +
                  "Training on JPEG-smoothed images costs a few points against numbers measured on the originals "
                  "(see `book/paper_vs_reproduction.md`)."]
    return lines


def _recipe(src) -> list[str]:
    from .config import derived

    t, d, i, m = src.config.train, src.config.data, src.config.imae, src.config.model
    eff = derived(src.config)
    rows = [("method", f"{KIND_NAMES.get(t.method, t.method)} (preset `{src.config.preset}`, training seed {t.seed})"),
            ("epochs", t.epochs),
            ("batch", f"{t.batch_size} × {t.accum_iter} accumulation = {eff['eff_batch_size']}"),
            ("optimiser", f"AdamW, betas {tuple(t.betas)}, weight decay {t.weight_decay}"),
            ("learning rate", f"base {t.blr:g} × batch / 256 = {eff['lr']:.3g}, {t.warmup_epochs:g} warm-up epochs, "
                              f"cosine to {t.min_lr:g}"),
            ("masking", f"{t.mask_ratio:.0%} of patches; loss on {'per-patch normalised' if m.norm_pix_loss else 'raw'}"
                        " pixels"),
            ("augmentation", f"random resized crop, scale {tuple(d.crop_scale)}; "
                             f"{'horizontal flip' if d.hflip else 'no flip'}")]
    if t.method == "imae":
        alpha = (f"random in {tuple(i.alpha_range)}" if i.alpha_mode == "random" else f"fixed {i.alpha}")
        teacher = (src.card or {}).get("teacher") or (Path(str(i.teacher)).name if i.teacher else "—")
        rows += [("teacher", f"the MAE `{teacher}` (frozen; {i.teacher_input} inputs), the student starting from "
                             f"{'its weights' if i.init == 'teacher' else 'random weights'}"),
                 ("mixing", f"x = α·x_sub + (1 − α)·x_dom, α {alpha}; partner from the same class with "
                            f"probability {d.same_prob:g}"),
                 ("loss weights", f"reconstruction sub {i.w_rec_sub:g}, dom {i.w_rec_dom:g}; distillation sub "
                                  f"{i.w_distill_sub:g}, dom {i.w_distill_dom:g}")]
    return ["| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows]]


def _training(trained: dict) -> list[str]:
    if not trained:
        return ["The checkpoint records no training run (an external checkpoint)."]
    rows = []
    if trained.get("epochs") is not None:
        rows.append(("epochs trained", trained["epochs"]))
    if trained.get("steps") is not None:
        rows.append(("optimiser steps", f"{int(trained['steps']):,}"))
    if trained.get("device"):
        rows.append(("device", trained["device"] + (" (torch.compile)" if trained.get("compile") else "")))
    if trained.get("wall_s") is not None:
        rows.append(("wall time", _seconds(trained["wall_s"])))
    if trained.get("train_s") is not None:
        rows.append(("training time", _seconds(trained["train_s"])))
    if trained.get("img_per_s"):
        rows.append(("throughput", f"{float(trained['img_per_s']):,.0f} images/s"))
    if trained.get("final_loss") is not None:
        rows.append(("final training loss", f"{float(trained['final_loss']):.4f}"))
    if trained.get("torch"):
        rows.append(("torch", trained["torch"]))
    if trained.get("date"):
        rows.append(("date", trained["date"]))
    if trained.get("finished") is False:
        rows.append(("status", "unfinished (the checkpoint of a run still training or stopped)"))
    return ["| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows]]


def _measured(src, meas: Optional[dict], *, export_hint: str) -> list[str]:
    if meas is None or not meas["rows"]:
        return ["No stored result measures this model. Score it as the book does with "
                f"`python -m imae evaluate --what linear-probe --checkpoint {export_hint} --out DIR` "
                "(the recipe is printed; the result is written as JSON)."]
    label = meas["label"] or KIND_NAMES.get(src.kind, src.kind)
    if meas["scope"] == "arm":
        seeds = meas.get("seeds") or []
        scope = (f"The book's CPU edition measured the **{label}** arm over {len(seeds)} training seed"
                 f"{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}); this model is its seed "
                 f"{meas.get('seed')}. The numbers are the arm's mean, their intervals add the seeds' spread to "
                 "the test items' resampling.")
    else:
        scope = ("Measured on this model (one training seed): the 95 % intervals resample the test items, so they "
                 "cover evaluation noise, not the spread between training runs.")
    src_line = f"Source: `{meas['source']}`"
    if meas.get("evaluations"):
        src_line += (f", computed from the stored evaluations in `{meas['evaluations']}` (their fingerprint is this "
                     "model's)")
    if meas.get("hardware"):
        src_line += f"; {meas['hardware']}"
    if meas.get("date"):
        src_line += f", {meas['date']}"
    lines = [src_line + ".", "",
             f"Features: the frozen encoder's tokens of clean, un-augmented images, pooled by `{meas['pool']}` "
             "(mean of the patch tokens). The linear probe is a multinomial logistic regression on standardised "
             "features (L-BFGS, L2 penalty chosen on a validation split of the training features)"
             + (f", fitted on {meas['n_train']:,} training images" if meas.get("n_train") else "")
             + "; kNN is the DINO weighted vote over cosine neighbours. LS (linear separability) is the held-out "
             "ridge R² with which the features of a mixture α·x_sub + (1 − α)·x_dom of two test images of "
             "different classes predict the reference encoder's features of each clean component"
             + (f" (reference: `{meas['reference']}`)" if meas.get("reference") else "") + ". "
             + scope, "",
             f"| measure | this model ({label}) | untrained encoder (control) | test items | training seeds |",
             "| --- | --- | --- | --- | --- |"]
    for r in meas["rows"]:
        lines.append(f"| {r['measure']} | {r['value']} | {r['control']} | {int(r['n']):,} | {r['seeds']} |")
    sentences = []
    for r in meas["rows"]:
        for name, d in r["differences"].items():
            a, _, b = name.partition(" − ")
            if a == label:
                what = r["measure"].split(" (")[0]
                sentences.append(f"- {what}: " + _sentence(a, b if b != CONTROL else "the untrained encoder", d,
                                                            k=r.get("k"), points=r["points"]))
    if sentences:
        lines += ["", *sentences]
    if meas["sweep"]:
        lines += ["", f"LS of this model ({label}) at every α:", "", "| α | subordinate R² | dominant R² |",
                  "| --- | --- | --- |", *[f"| {a} | {s} | {d} |" for a, s, d in meas["sweep"]]]
    return lines


def _use(src, *, timm_folder: bool) -> list[str]:
    lines = []
    if timm_folder:
        lines += ["```python", "import timm, torch", "",
                  'vit = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()  # offline',
                  "cfg = timm.data.resolve_data_config({}, model=vit)   # input size, mean, std",
                  "with torch.no_grad():",
                  "    tokens = vit.forward_features(images)   # (N, 1 + L, D): as imae's forward_features",
                  "    cls = vit(images)                       # (N, D): the normalised class token (no head)",
                  "```", "",
                  "Uploaded to a model hub, the same folder loads with `hf-hub:OWNER/NAME`."]
    if src.card is not None:
        lines += ([""] if lines else []) + [
            "The full model (encoder + decoder" + (" + splitter heads" if src.kind == "imae" else "")
            + ", for reconstructions) loads with `imae`:", "", "```python", "import imae", "",
            f'model = imae.load_pretrained("{src.card["name"]}")   # checksum-verified, eval mode', "```"]
        if not timm_folder:
            lines += ["", f"A timm folder of its encoder: `python -m imae export --to timm {src.card['name']} OUT`."]
    lines += ["", "Score it (or any timm encoder) as the book does: `python -m imae evaluate --what linear-probe "
                  "--checkpoint FOLDER --out DIR` (prints the recipe, writes `DIR/linear-probe.json`)."]
    return lines


def _intended_use(src) -> list[str]:
    m = src.config.model
    return [f"Research and teaching: frozen features of {m.img_size}×{m.img_size} images for linear probes and kNN, "
            "the i-MAE paper's separability and semantics measurements, reconstructions of mixtures, and a "
            "starting point for fine-tuning on small images. It is a small model trained briefly on one small "
            "dataset (see the recipe), from one training seed: not a general-purpose image encoder, and not "
            "meant for any decision about people. Its features reflect CIFAR-10's ten classes and its JPEG-"
            "smoothed training images; inputs of another size are not what it was trained on."]


def _licence() -> list[str]:
    return ["- **Code**: MIT (`LICENSE` at the repository root).",
            "- **Weights**: released by the imae contributors under the same MIT licence.",
            "- **Training data**: CIFAR-10 comes with no licence of its own; its authors ask that their "
            f"technical report be cited ({CIFAR_REPORT}). Its images were collected from the web as part of the "
            "80 Million Tiny Images collection (which its creators withdrew in 2020; CIFAR-10 itself, a hand-"
            "labelled subset, is still distributed), and the rights in each image stay with its owner. The MIT "
            "licence of the weights grants no rights in those images; whether a use of a model trained on them "
            "suits you is yours to judge."]


def _render(src, record: Optional[dict], *, timm_folder: bool, level: int, repo: Path,
            export_hint: str) -> list[str]:
    h = "#" * level
    n_params = (record or {}).get("n_params") or encoder_parameters(src.config.model)
    trained = _trained_published(src.card) if src.card is not None else (
        _trained_run(Path(src.run)) if src.run is not None else {})
    m = src.config.model
    title = (f"{src.name}: {KIND_NAMES.get(src.kind, src.kind)} ViT encoder (patch {m.patch_size}, width "
             f"{m.embed_dim}, depth {m.depth}), {src.config.data.dataset}, "
             f"{trained.get('epochs', src.config.train.epochs)} epochs")
    return [f"{h} {title}", "", *_what_it_is(src, n_params), "",
            f"{h}# How to use", "", *_use(src, timm_folder=timm_folder), "",
            f"{h}# Training data", "", *_data_text(src), "",
            f"{h}# Recipe", "", *_recipe(src), "",
            f"{h}# Training run", "", *_training(trained), "",
            f"{h}# Measured", "", *_measured(src, measurements(src, repo), export_hint=export_hint), "",
            f"{h}# Intended use and limitations", "", *_intended_use(src), "",
            f"{h}# Licence", "", *_licence(), ""]


def _front_matter(src) -> list[str]:
    tags = ["timm", "image-feature-extraction", "masked-autoencoder", "vision-transformer"]
    if src.kind == "imae":
        tags.append("i-mae")
    return ["---", f"license: {WEIGHTS_LICENSE}", "library_name: timm", "pipeline_tag: image-feature-extraction",
            "tags:", *[f"- {t}" for t in tags], "datasets:", f"- {src.config.data.dataset}", "---", ""]


def export_card(src, record: Optional[dict] = None, *, repo: Optional[Path] = None) -> str:
    """The ``README.md`` of a timm folder exported from ``src``."""
    repo = repo or repo_root()
    lines = [*_front_matter(src), *_render(src, record, timm_folder=True, level=1, repo=repo,
                                           export_hint="THIS/FOLDER"),
             "## Citation", "", "```bibtex", citation(repo), "```", ""]
    return "\n".join(lines)


def encoder_parameters(model_cfg) -> int:
    """The number of parameters of the encoder (what a timm export holds) of ``model_cfg``'s MAE."""
    from .models import mae_from_config

    mae = mae_from_config(model_cfg)
    parts = [mae.patch_embed, mae.blocks, mae.norm]
    return int(sum(p.numel() for m in parts for p in m.parameters()) + mae.cls_token.numel()
               + mae.pos_embed.numel())


def published_source(card_path: Path) -> Source:
    """A published model's card (``campaign/<preset>/weights/<name>.json``, checksum-verified) as a Source."""
    import torch

    from .config import RunConfig
    from .pretrained import verify

    card, _ = verify(card_path)
    return Source(None, RunConfig.from_dict(card["config"]), card["kind"], card["fingerprint"], card["name"],
                  "published", getattr(torch, card.get("dtype", "float32")), card=card)


def published_sources(preset: str = "cifar", root: Optional[Path] = None) -> list[Source]:
    """Every published model of ``preset``, the teacher (MAE) first."""
    base = Path(root) if root is not None else repo_root() / "campaign"
    sources = [published_source(c) for c in sorted((base / preset / "weights").glob("*.json"))]
    return sorted(sources, key=lambda s: (s.kind != "mae", s.name))


def published_readme(preset: str = "cifar", *, root: Optional[Path] = None, repo: Optional[Path] = None) -> str:
    """The card of the folder ``campaign/<preset>/weights``: one section per published model."""
    repo = repo or repo_root()
    sources = published_sources(preset, root)
    names = ", ".join(f"`{s.name}`" for s in sources)
    lines = [f"# Published models: {preset}", "",
             f"The models stored here ({names}), each as float16 safetensors and its card `<name>.json` (config, "
             "fingerprint, sha256, training record). This page is generated by `python -m imae.cards` from those "
             "cards and the stored results it names; do not edit it by hand.", ""]
    for src in sources:
        lines += _render(src, None, timm_folder=False, level=2, repo=repo, export_hint="EXPORTED_FOLDER")
    lines += ["## Citation", "", "```bibtex", citation(repo), "```", ""]
    return "\n".join(lines)


def write_published(preset: str = "cifar", *, root: Optional[Path] = None) -> Path:
    """Make the weights' cards portable (:func:`imae.pretrained.make_portable`) and write the folder's
    ``README.md``; returns its path."""
    from .pretrained import make_portable

    base = Path(root) if root is not None else repo_root() / "campaign"
    for card in sorted((base / preset / "weights").glob("*.json")):
        make_portable(card)
    path = base / preset / "weights" / PUBLISHED_README
    path.write_text(published_readme(preset, root=root))
    return path


def main(argv: Optional[list[str]] = None) -> int:
    base = repo_root() / "campaign"
    presets = argv or sorted(p.parent.name for p in base.glob("*/weights") if any(p.glob("*.json")))
    for preset in presets:
        print(write_published(preset))
    return 0


__all__ = ["Source", "WEIGHTS_LICENSE", "export_card", "published_readme", "published_source", "published_sources",
           "write_published", "measurements", "citation", "encoder_parameters"]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
