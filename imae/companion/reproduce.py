"""Run the experiment notebooks with papermill, in dependency order, into the book; then build the book.

``python -m imae reproduce --preset tiny`` runs every notebook; ``--only separability`` reruns one figure.
Trained runs and evaluations are cached (see :mod:`imae.companion.experiments`), so a single figure reuses the
pretraining that ``pretrain.ipynb`` did. Parameters for a preset come from ``experiments/params/<preset>.yaml``
when it exists. The executed notebooks land in ``book/`` (the copies the book renders), their JSON records in
``book/results/``; ``book/status_table.md`` is regenerated from those records.

Nothing machine-specific is stored: ``results_dir`` is passed relative to the repository root (papermill runs
the kernel there), and :func:`scrub_notebook` rewrites every executed notebook before it replaces the stored
one: papermill's absolute ``input_path`` becomes repository-relative and its ``output_path`` goes, parameters
(in the metadata and in the injected-parameters cell) that are absolute paths inside the repository become
relative, and stderr streams (warnings naming files of the Python installation) are dropped, as the book
hides them anyway (``nb_output_stderr: remove``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..config import GPU_PRESETS
from ..errors import ImaeError
from ..paths import repo_root

NOTEBOOKS = ("pretrain", "reconstruction", "separability", "semantics", "classification", "ablations", "paper_scale",
             "findings")
CHAPTERS = NOTEBOOKS[:-1]  # the findings page summarises the others and trains nothing
CHAPTER_TITLES = {"pretrain": "Pretraining", "reconstruction": "Two-way reconstruction",
                  "separability": "Linear separability", "semantics": "Degree of semantics",
                  "classification": "Classification", "ablations": "Ablations",
                  "paper_scale": "Paper scale (GPU campaign)", "findings": "Findings"}


# Notebooks that only read stored results (nothing trains): they run on any machine, at any preset.
STORED_ONLY = ("paper_scale", "findings")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def notebook_parameters(preset: str, root: Path, extra: dict | None = None) -> dict:
    params = {"preset": preset}
    pfile = root / "experiments" / "params" / f"{preset}.yaml"
    if pfile.is_file():
        params.update(yaml.safe_load(pfile.read_text()) or {})
    elif preset != "tiny":  # the notebooks' defaults are the tiny preset's evaluation sizes
        raise ImaeError(f"no notebook parameters for preset {preset!r}: write {pfile} (see "
                        f"experiments/params/cifar.yaml) so the evaluations are sized for it")
    params.update(extra or {})
    return params


def check_notebook_parameters(params: dict) -> dict:
    """The parameters every notebook gets, checked as their setup cells check them (types, values, the preset,
    overrides), before a kernel starts: a wrong value is one line in a second, not a papermill traceback."""
    from ..parameters import check_parameters

    return check_parameters(**params)


def _relative_to_root(value, root: Path):
    """``value`` relative to ``root`` when it is an absolute path string inside it; otherwise unchanged."""
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return Path(value).resolve().relative_to(root.resolve()).as_posix() or "."
        except ValueError:
            return value
    return value


def scrub_notebook(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                   drop_stderr: bool = True) -> list[str]:
    """Remove this machine's paths from an executed notebook in place; returns what was changed.

    * ``metadata.papermill``: ``input_path`` made relative to ``root`` (the repository), ``output_path``
      (papermill's temporary file) removed, absolute ``parameters`` inside ``root`` made relative;
    * the ``injected-parameters`` cell: the same parameter values, as papermill wrote them;
    * outputs: stderr streams dropped (``drop_stderr``), and ``root/`` removed from the text of the others.

    Everything else (cells, outputs, glue data, timings) is kept as papermill wrote it.
    """
    import nbformat

    root = Path(root) if root is not None else repo_root()
    path = Path(path)
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    changed: list[str] = []
    pm_meta = nb.metadata.get("papermill", {})
    if "output_path" in pm_meta:
        del pm_meta["output_path"]
        changed.append("metadata.papermill.output_path")
    if os.path.isabs(str(pm_meta.get("input_path", ""))):
        rel = _relative_to_root(pm_meta["input_path"], root)
        if os.path.isabs(rel):  # a notebook from outside the repository: where it lay says nothing portable
            del pm_meta["input_path"]
        else:
            pm_meta["input_path"] = rel
        changed.append("metadata.papermill.input_path")
    renamed = {}
    for key, value in (pm_meta.get("parameters") or {}).items():
        rel = _relative_to_root(value, root)
        if rel != value:
            pm_meta["parameters"][key] = rel
            renamed[value] = rel
            changed.append(f"metadata.papermill.parameters.{key}")
    prefix = str(root.resolve()) + os.sep
    for i, cell in enumerate(nb.cells):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            if "hide-input" not in cell.metadata["tags"]:  # like the parameters cell: one click away
                cell.metadata["tags"].append("hide-input")
                changed.append(f"cells[{i}] hidden")
            source = cell.source
            for old, new in renamed.items():  # papermill writes strings as "..." with inner quotes escaped
                quoted = ['"{}"'.format(v.replace('"', r'\"')) for v in (old, new)]
                source = source.replace(*quoted)
            if source != cell.source:
                cell.source = source
                changed.append(f"cells[{i}] (injected parameters)")
        if cell.cell_type != "code":
            continue
        outputs, dropped = [], 0
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and drop_stderr:
                dropped += 1
                continue
            if out.get("output_type") == "stream" and prefix in out.get("text", ""):
                out["text"] = out["text"].replace(prefix, "")
                changed.append(f"cells[{i}] {out.get('name')} output")
            for mime, data in (out.get("data") or {}).items():
                if mime.startswith("text/") and isinstance(data, str) and prefix in data:
                    out["data"][mime] = data.replace(prefix, "")
                    changed.append(f"cells[{i}] {mime} output")
            outputs.append(out)
        if dropped:
            cell.outputs = outputs
            changed.append(f"cells[{i}] {dropped} stderr output(s) dropped")
    if changed:
        nbformat.write(nb, path)
    return changed


def run_notebook(name: str, parameters: dict, *, root: Path, out_dir: Path, log=print) -> Path:
    """Execute ``experiments/<name>.ipynb`` into ``out_dir/<name>.ipynb`` (kernel python3, cwd = repo root)."""
    import papermill as pm

    src = root / "experiments" / f"{name}.ipynb"
    if not src.is_file():
        raise ImaeError(f"no notebook {src}; choose one of {list(NOTEBOOKS)}")
    out = out_dir / f"{name}.ipynb"
    tmp = out_dir / f".{name}.running.ipynb"
    t0 = time.time()
    log(f"[reproduce] {name}: running with {json.dumps(parameters, default=str)}")
    try:
        pm.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3", cwd=str(root),
                            progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        # The error line first; the traceback stays in the executed copy (the stored notebook is untouched).
        raise ImaeError(f"{name}.ipynb stopped in cell {e.cell_index + 1}: {e.ename}: {_first_line(e.evalue)} "
                        f"(the traceback is in {tmp}; the stored {out} is unchanged)") from None
    scrub_notebook(tmp, root=root)  # no absolute paths of this machine in the stored notebook
    stamp_notebook(tmp, name=name, preset=parameters.get("preset"), seconds=time.time() - t0, root=root)
    os.replace(tmp, out)  # only a fully executed notebook replaces the stored one
    log(f"[reproduce] {name}: done in {time.time() - t0:.0f} s -> {out}")
    return out


STAMP_TAG = "execution-stamp"


def _commit(root: Path) -> str:
    """The checkout's commit (short), marked when the code, notebooks or parameters differ from it (files under
    ``book/`` are what a rerun writes, so they do not count); "unknown" without git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)book"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if dirty else head


def stamp_notebook(path: str | os.PathLike, *, name: str, preset: str | None, seconds: float,
                   root: Path) -> None:
    """Put the execution stamp under the chapter's title: when, at which preset, how long, from which commit,
    and the command that reruns it (replacing an earlier stamp)."""
    import nbformat
    from datetime import datetime, timezone

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if STAMP_TAG not in c.get("metadata", {}).get("tags", [])]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rerun = f"make figure NB={name}" + (f" PRESET={preset}" if preset else "")
    text = (f"*Executed {when} with papermill"
            + (f", preset `{preset}`" if preset else "") + f", in {seconds / 60:.1f} min at commit {_commit(root)}; "
            f"rerun: `{rerun}`.*")
    cell = nbformat.v4.new_markdown_cell(text)
    cell.metadata["tags"] = [STAMP_TAG]
    at = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(at, cell)
    nbformat.write(nb, path)


def _first_line(text: str) -> str:
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def write_status(book_dir: Path) -> Path:
    """``book/status_table.md`` (included by the introduction): for every chapter, the preset, data,
    hardware, epochs and time it came from."""
    rows = []
    for name in CHAPTERS:
        rec_file = book_dir / "results" / f"{name}.json"
        if not rec_file.is_file():
            rows.append(f"| [{CHAPTER_TITLES[name]}]({name}.ipynb) | not run yet | | | | | | |")
            continue
        rec = json.loads(rec_file.read_text())
        runs = rec.get("runs", {})
        first = next(iter(runs.values()), {})
        seeds = {v.get("seed") for v in runs.values() if v.get("method") in ("mae", "imae")}
        per_method = dict.fromkeys(f"{v.get('method')} {v['epochs']}" for v in runs.values()
                                   if v.get("method") in ("mae", "imae"))
        epochs = ", ".join(per_method) + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else "")
        wall = sum(v.get("wall_time_s", 0) for v in runs.values())
        data = f"{first.get('dataset', '?')} ({first.get('train_images', '?')} train images)"
        trained_on = ", ".join(sorted({v.get("hardware", "unknown") for v in runs.values()}))
        rows.append(f"| [{CHAPTER_TITLES[name]}]({name}.ipynb) | {first.get('preset', '?')} | {data} | "
                    f"{trained_on} | {rec.get('hardware', '?')} | {epochs} | {wall:.0f} s | "
                    f"{rec.get('date', '?')} |")
    text = "\n".join([
        "| chapter | preset | dataset | trained on | evaluated on | epochs per run | training time | date |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    path = book_dir / "status_table.md"
    path.write_text(text)
    return path


def _fmt(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def write_performance(book_dir: Path) -> Path:
    """``book/performance_tables.md`` from the benchmark JSON files in ``book/results/``
    (``throughput_*.json`` from benchmarks/throughput.py, ``cpu_pipeline*.json`` from benchmarks/cpu_pipeline.py,
    ``cpu_edition_*.json`` from benchmarks/cpu_edition.py, ``reproduce_*.json`` from ``make reproduce``; a
    ``from_scratch`` entry in the latter records a run that started from an empty cache)."""
    parts = []
    # The GPU campaign's throughput stage writes the same benchmark's JSON (campaign/<preset>/results/throughput).
    campaign = sorted(book_dir.resolve().parent.glob("campaign/*/results/throughput/throughput.json"))
    for f in [*sorted((book_dir / "results").glob("throughput_*.json")), *campaign]:
        r = json.loads(f.read_text())
        source = (f"results/{f.name}" if f.parent == book_dir / "results"
                  else f.resolve().relative_to(book_dir.resolve().parent).as_posix() + ", measured in a GPU campaign window")
        parts += [f"**{r['preset']} preset on {r['device']}** ({r['device_type']}, torch {r['torch']}, "
                  f"{r.get('threads', '?')} CPU threads, {r.get('data', 'synthetic')} data; MFU against "
                  f"{r['peak_tflops']:.3g} TFLOP/s, {r['peak_source']}; source `{source}`)", "",
                  "| method | path | batch | images/s | × faithful | GFLOP / image-step | MFU | peak memory (MB) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in r["rows"]:
            mfu = "" if row.get("mfu") is None else f"{100 * row['mfu']:.1f} %"
            parts.append(f"| {'i-MAE' if row['method'] == 'imae' else 'MAE'} | {row['path']} | {row['batch']} | "
                         f"{row['img_per_s']:,.0f} | {_fmt(row.get('ratio'), '.2f')} | "
                         f"{row['gflop_per_img']:.2f} | {mfu} | {row['peak_mem_mb']:,.0f} |")
        proj = r.get("projection")
        if proj:
            parts += ["", f"Projected full CIFAR-10 reproduction at these rates (MAE 100 + i-MAE 100 epochs + "
                          f"evaluation allowance): {proj['total_min']:.1f} min."]
        parts.append("")
    for f in sorted((book_dir / "results").glob("cpu_pipeline*.json")):
        r = json.loads(f.read_text())
        rows = []
        for st in r.get("stages", []):
            rows.append(f"| {st['stage']} | {st['seconds']:.1f} | {st['peak_rss_mb']:,.0f} |")
            for ev in st.get("evaluations", []):
                rows.append(f"| &nbsp;&nbsp;{ev['what']} ({ev['model']}) | {ev['seconds']:.1f} | |")
        parts += [f"**Tiny preset end to end on the CPU** ({r.get('cpu', 'CPU')}, {r.get('threads', '?')} torch "
                  f"threads, dataset {r.get('dataset', '?')}, torch {r.get('torch', '?')}; source "
                  f"`results/{f.name}`): total {r['total_s']:.0f} s, peak resident memory "
                  f"{r['peak_rss_mb']:,.0f} MB.", "", "| stage | seconds | peak RSS so far (MB) |",
                  "| --- | ---: | ---: |", *rows, ""]
    for f in sorted((book_dir / "results").glob("cpu_edition_*.json")):
        r = json.loads(f.read_text())
        parts += [f"**The CPU edition's speed, before and after** (`benchmarks/cpu_edition.py`, {r['preset']} preset, "
                  f"{r.get('cpu', '?')}, {r.get('threads', '?')} torch threads, torch {r.get('torch', '?')}; "
                  f"source `results/{f.name}`; peak RSS {r.get('peak_rss_mb', 0):,} MB)", ""]
        tr = r.get("training", {}).get("per_method", {})
        if tr:
            parts += ["| training step | eager (images/s) | torch.compile (images/s) | compile (s) |",
                      "| --- | ---: | ---: | ---: |"]
            parts += [f"| {'i-MAE' if m == 'imae' else 'MAE'} | {v['before_img_per_s']:,.0f} | "
                      f"{v['compiled_img_per_s']:,.0f} | {_fmt(v.get('compile_s'), '.0f')} |" for m, v in tr.items()]
            parts.append("")
        ev = r.get("evaluation")
        if ev:
            b, a = ev["passes"]["before"], ev["passes"]["after"]
            parts += ["| evaluation of one model | features per metric (s) | features shared (s) |",
                      "| --- | ---: | ---: |"]
            parts += [f"| {w} | {b['seconds'][w]:.1f} | {a['seconds'][w]:.1f} |" for w in b["seconds"]]
            parts += [f"| **total** | **{b['total_s']:.1f}** | **{a['total_s']:.1f}** |", "",
                      f"Sharing features makes one model's evaluation {ev['speedup']:.2f}x faster with "
                      f"{'identical' if ev.get('identical_results') else 'DIFFERENT'} results; the frozen encoder "
                      f"encodes {ev['encoder_forward_img_per_s']:,.0f} images/s.", ""]
    for f in sorted((book_dir / "results").glob("config_search_*.json")):
        r = json.loads(f.read_text())

        def pts(t) -> str:
            return f"{100 * t[0]:.1f}" if len(t) == 1 else f"{100 * t[0]:+.1f} [{100 * t[1]:+.1f}, {100 * t[2]:+.1f}]"

        seeds = r.get("seeds")
        first = next(iter(r["configs"]), "")

        def vs(c) -> str:
            if not seeds:
                return ""
            v = c.get("vs_first")
            return (f" {pts(v['knn'])} | {pts(v['linear-probe'])} |" if v else " — | — |")

        rows = [f"| {name} | {c['epochs']} | {c['train_s']:,.0f} | {100 * c['knn']['trained'][0]:.1f} / "
                f"{100 * c['knn']['untrained'][0]:.1f} | {pts(c['knn']['gain'])} | "
                f"{100 * c['linear-probe']['trained'][0]:.1f} / {100 * c['linear-probe']['untrained'][0]:.1f} | "
                f"{pts(c['linear-probe']['gain'])} |{vs(c)}" for name, c in r["configs"].items()]
        if seeds:
            head = (f"**The CPU edition's recipe over training seeds** (`benchmarks/config_search.py --seeds`, "
                    f"{r['preset']} preset, MAE only, training seeds {', '.join(map(str, seeds))}, every model "
                    f"evaluated on the same {r['max_images']:,} images per split; source `results/{f.name}`): means "
                    f"over the seeds, intervals adding the seeds' spread to the items' (points); the last two "
                    f"columns compare each variant with `{first}`, paired by seed and image; training (s) is the "
                    f"mean per seed.")
            extra_h, extra_a = " kNN vs first | probe vs first |", " ---: | ---: |"
        else:
            head = (f"**Choosing the CPU edition's recipe** (`benchmarks/config_search.py`, {r['preset']} preset "
                    f"overridden one field at a time, MAE only, training seed {r['seed']}, evaluated on "
                    f"{r['max_images']:,} images per split; source `results/{f.name}`): each variant against the "
                    f"untrained encoder of its own architecture, gains with paired 95 % intervals (points).")
            extra_h = extra_a = ""
        parts += [head, "", "| variant | epochs | training (s) | kNN % trained / untrained | kNN gain | probe % "
                  "trained / untrained | probe gain |" + extra_h,
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + extra_a, *rows, ""]
    for f in sorted((book_dir / "results").glob("reproduce_*.json")):
        r = json.loads(f.read_text())
        if not r.get("notebooks_s"):  # only single chapters were rerun with this preset
            if r.get("figure_s"):
                parts += [f"Single chapters rerun with `make figure NB=<chapter> PRESET={r['preset']}` (no full "
                          f"`make reproduce PRESET={r['preset']}` recorded; source `results/{f.name}`): " + ", ".join(
                              f"{name} {sec:,.0f} s" for name, sec in r["figure_s"].items()) + ".", ""]
            continue
        rows = [f"| {name} | {sec:,.0f} |" for name, sec in r.get("notebooks_s", {}).items()]
        scratch, restored = r.get("from_scratch"), r.get("from_shipped")
        if scratch:
            how = (f"measured in one sitting from an EMPTY runs cache (every model trained, every evaluation run): "
                   f"{scratch['wall_s'] / 60:.1f} min wall time for the whole command, book build included")
        elif restored:
            what = f"its {restored['runs']} trained runs" + (
                f" and {restored['finetunes']} fine-tuned classifiers" if restored.get("finetunes") else "")
            retrain = f"the {restored['training_s'] / 60:.0f} min those runs took to train (their cards' training times)"
            if restored.get("finetune_s"):
                retrain += f" and the {restored['finetune_s'] / 60:.0f} min of the fine-tunes (their records)"
            how = (f"measured in one sitting from an EMPTY runs cache, {what} restored from the repository's "
                   f"`weights/` instead of trained, every other evaluation run: {restored['wall_s'] / 60:.1f} min "
                   f"wall time for the whole command, book build included; `RETRAIN=1` adds {retrain}"
                   + (f"; {restored['note']}" if restored.get("note") else ""))
        else:
            how = ("trained runs and evaluations already in the cache are reused, so a first run adds the training "
                   "times of the [status table](intro.md)")
        parts += [f"**`make reproduce PRESET={r['preset']}`** ({r.get('cpu', '?')}, {r.get('torch_threads', '?')} "
                  f"torch threads; {how}); source `results/{f.name}`: notebooks {r['total_s'] / 60:.1f} min, peak "
                  f"notebook-kernel memory {r.get('peak_kernel_rss_mb', 0):,} MB.",
                  "", "| notebook | seconds |", "| --- | ---: |", *rows, ""]
        if r.get("figure_s"):
            parts += ["Single chapters rerun afterwards with `make figure NB=<chapter>` (models cached, evaluations "
                      "recomputed where their cache key changed): " + ", ".join(
                          f"{name} {sec:,.0f} s" for name, sec in r["figure_s"].items()) + ".", ""]
        if r.get("fresh_clone_s"):
            parts += ["One chapter alone from a fresh clone (`make figure NB=<chapter>` with an EMPTY runs cache: its "
                      "runs and fine-tunes restored from `weights/`, every evaluation computed, nothing shared with "
                      "another chapter): " + ", ".join(
                          f"{name} {sec:,.0f} s" for name, sec in r["fresh_clone_s"].items()) + ".", ""]
    if not parts:
        parts = ["No benchmark results are stored yet; run the commands above."]
    path = book_dir / "performance_tables.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def rerun_costs(rec: dict) -> dict[str, str]:
    """What ``book/rerun.md`` quotes from a ``reproduce_<preset>.json`` record (a test keeps the page in step):
    ``chapters`` (each chapter's time, alone from a fresh clone where measured, else in the full run),
    ``reproduce`` (the full run's wall time) and ``retrain`` (what ``RETRAIN=1`` adds)."""
    alone = rec.get("fresh_clone_s", {})
    chapters = ", ".join(f"{name} {_duration(alone.get(name, sec))}" + (" alone" if name in alone else "")
                         for name, sec in rec.get("notebooks_s", {}).items())
    shipped = rec.get("from_shipped", {})
    retrain = f"{shipped.get('training_s', 0) / 60:.0f} min of training for the {shipped.get('runs', 0)} runs"
    if shipped.get("finetune_s"):
        retrain += f" and {shipped['finetune_s'] / 60:.0f} min for the {shipped.get('finetunes', 0)} fine-tunes"
    return {"chapters": chapters, "reproduce": f"{shipped.get('wall_s', rec.get('total_s', 0)) / 60:.1f} min",
            "retrain": retrain}


def build_book(root: Path, book_dir: Path | None = None, *, strict: bool = True) -> None:
    """``jupyter-book build <book> --all [-W -n --keep-going]``; raises on failure."""
    book_dir = book_dir or root / "book"
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(book_dir), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImaeError(f"book build failed ({' '.join(cmd)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def timing_is_partial(only) -> bool:
    """Whether a ``reproduce`` records its timings as a rerun (``figure_s``): any ``--only``, even one naming
    every notebook (a rerun over cached models is not the full run's measurement); only a plain
    ``make reproduce`` replaces the full run's record."""
    return bool(only)


def write_timings(path: Path, preset: str, timings: dict, *, partial: bool = False) -> Path:
    """Record how long the notebooks of a ``reproduce`` took and the peak memory of their kernels.

    A full run (every notebook) replaces the record. A partial one (``--only``, i.e. ``make figure``) keeps
    the full run's record, its ``from_scratch`` measurement included, and stores its own timings under
    ``figure_s``: a figure rerun with cached models is not a row of the full run.
    """
    import platform
    import resource

    import torch

    old = json.loads(path.read_text()) if path.is_file() else {}
    peak = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)  # kernels' ru_maxrss, KiB
    if partial and old.get("notebooks_s"):
        rec = {**old, "figure_s": {**old.get("figure_s", {}), **timings}}
    elif partial:  # chapters rerun with no full run of this preset recorded: a rerun, never a full run's row
        rec = {"preset": preset, "cpu": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "figure_s": {**old.get("figure_s", {}), **timings}}
    else:
        rec = {"preset": preset, "cpu": platform.processor() or platform.machine(),
               "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "notebooks_s": {**(old.get("notebooks_s", {}) if partial else {}), **timings},
               "peak_kernel_rss_mb": peak}
        rec["total_s"] = round(sum(rec["notebooks_s"].values()), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def book_presets(book: Path, names) -> dict[str, str]:
    """{chapter: the preset its stored page was rendered with} for the chapters of ``names`` that train
    (the stored-results pages render the same at any preset) and have a record in ``book/results``."""
    out = {}
    for name in names:
        rec = book / "results" / f"{name}.json"
        if name in STORED_ONLY or not rec.is_file():
            continue
        try:
            preset = json.loads(rec.read_text()).get("preset")
        except (OSError, ValueError):
            continue
        if preset:
            out[name] = str(preset)
    return out


def scratch_dir(root: Path, preset: str) -> Path:
    """Where a rerun of chapters at a preset other than the book's goes: ``_build/figures/<preset>``."""
    return root / "_build" / "figures" / preset


def reproduce(preset: str = "tiny", *, only: list[str] | None = None, extra: dict | None = None,
              book_dir: str | os.PathLike | None = None, build: bool = True, log=print) -> Path:
    """Run the notebooks (all, or ``only``) for ``preset`` into the book, then build it; returns the folder the
    executed notebooks went to.

    ``only`` at a preset other than the one the stored chapters were rendered with (a CPU-edition book rerun
    with ``PRESET=tiny``) does not replace them: the notebooks, their records and timings go to
    :func:`scratch_dir` and the book is neither touched nor rebuilt (pass ``book_dir`` to choose the folder).
    """
    root = repo_root()
    names = list(only) if only else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ImaeError(f"unknown notebook(s) {unknown}; choose from {list(NOTEBOOKS)}")
    book = Path(book_dir) if book_dir else root / "book"
    others = {n: p for n, p in book_presets(book, names).items() if p != preset} if only and not book_dir else {}
    scratch = bool(others)
    if scratch:
        book, build = scratch_dir(root, preset), False
    # Relative to the repository root, where papermill runs the kernel, so no machine's path is stored.
    results_dir = _relative_to_root(str((book / "results").resolve()), root)
    params = check_notebook_parameters(notebook_parameters(preset, root, {"results_dir": results_dir, **(extra or {})}))
    if scratch:
        log(f"[reproduce] the book's {', '.join(others)} chapter(s) were rendered with preset "
            f"{sorted(set(others.values()))[0]}: this {preset} rerun goes to {book} (the book is unchanged; "
            f"pass --out book to replace its chapters)")
        book.mkdir(parents=True, exist_ok=True)
    trains = [n for n in names if n not in STORED_ONLY]
    if trains and preset in GPU_PRESETS and str(params.get("device", "auto")) == "auto" \
            and not _has_gpu():
        raise ImaeError(
            f"the {preset} preset trains ViT-Tiny/2 on all of CIFAR-10, which needs a GPU, and this machine has "
            f"none (notebooks {trains} would train). Its stored GPU results render on a CPU without training: "
            f"`make figure NB=paper_scale` (the paper-scale chapter), or `make reproduce PRESET=small` (the CPU "
            f"edition, every chapter opening with its paper-scale results). To train it anyway on a CPU, pass "
            f"-p device=cpu")
    timings = {}
    for name in NOTEBOOKS:  # dependency order, whatever order was asked
        if name in names:
            t0 = time.perf_counter()
            run_notebook(name, params, root=root, out_dir=book)
            timings[name] = round(time.perf_counter() - t0, 1)
    write_timings(book / "results" / f"reproduce_{preset}.json", preset, timings, partial=timing_is_partial(only))
    if scratch:
        return book
    write_status(book)
    write_performance(book)
    if build:
        build_book(root, book)
    return book
