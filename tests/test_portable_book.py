"""Nothing machine-specific is stored in the book: no absolute path of the machine that ran the notebooks, no
file of its Python installation. :func:`imae.companion.reproduce.scrub_notebook` (run after every notebook) makes the
executed notebooks so; the scan below checks every stored file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from imae.companion import reproduce
from imae.companion.reproduce import run_notebook, scrub_notebook

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATHS = re.compile(
    r"/work/|/root/|/home/|/Users/|/tmp/|/private/var/|[A-Za-z]:\\\\Users|site-packages|dist-packages|\.venv/"
    + "|" + re.escape(str(REPO)))
SKIP = ("_static/mathjax/", "_build/")


def machine_paths(folder: Path) -> list[str]:
    """``file:line: match`` for every machine-specific path in the files under ``folder``."""
    found = []
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if not f.is_file() or rel.startswith(SKIP) or f.name.endswith(".running.ipynb"):  # papermill's temp
            continue
        text = f.read_bytes().decode("utf-8", errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            for m in MACHINE_PATHS.finditer(line):
                found.append(f"{folder.name}/{rel}:{n}: ...{line[max(0, m.start() - 40):m.end() + 40].strip()}...")
    return found


def test_the_book_stores_no_machine_paths():
    offenders = machine_paths(REPO / "book")
    assert not offenders, (f"{len(offenders)} machine-specific path(s) in book/ (rerun the chapter with `make "
                           f"figure`, or imae.companion.reproduce.scrub_notebook it):\n" + "\n".join(offenders[:40]))


def test_the_scan_finds_what_it_looks_for(tmp_path):
    (tmp_path / "a.ipynb").write_text('{"x": "/work/main/book/results"}\n')
    (tmp_path / "b.md").write_text("fine\nsee .venv/lib/python3.11/site-packages/tqdm/auto.py\n")
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "m.js").write_text("/home/x/")
    (tmp_path / "c.json").write_text('{"results_dir": "book/results"}')
    found = machine_paths(tmp_path)
    assert [f.split(":")[0] for f in found] == [f"{tmp_path.name}/a.ipynb", f"{tmp_path.name}/b.md",
                                                f"{tmp_path.name}/b.md"]


def _executed_notebook(root: Path, path: Path) -> None:
    """What papermill leaves behind when run from ``root``: absolute paths in metadata, parameters, outputs."""
    nb = new_notebook()
    nb.metadata["papermill"] = {
        "input_path": str(root / "experiments" / "demo.ipynb"),
        "output_path": str(root / "book" / ".demo.running.ipynb"),
        "parameters": {"results_dir": str(root / "book" / "results"), "data_root": "/srv/data", "epochs": 2},
        "duration": 1.5}
    nb.cells = [
        new_code_cell("results_dir = 'results'  # where the record goes", metadata={"tags": ["parameters"]}),
        new_code_cell(f'# Parameters\nresults_dir = "{root}/book/results"\ndata_root = "/srv/data"\nepochs = 2\n',
                      metadata={"tags": ["injected-parameters"]}),
        new_code_cell("print(...)", outputs=[
            new_output("stream", name="stderr", text=f"{root}/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: "
                                                     "TqdmWarning\n"),
            new_output("stream", name="stdout", text=f"saved {root}/book/results/demo.json\n"),
            new_output("display_data", data={"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}),
        ]),
    ]
    nbformat.write(nb, path)


def test_scrub_notebook_removes_the_machine_paths_and_keeps_the_rest(tmp_path):
    root = tmp_path / "repo"
    path = tmp_path / "demo.ipynb"
    _executed_notebook(root, path)
    changed = scrub_notebook(path, root=root)
    assert "metadata.papermill.output_path" in changed and any("stderr" in c for c in changed)
    text = path.read_text()
    assert str(root) not in text and "site-packages" not in text
    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata["papermill"]
    assert "output_path" not in pm and pm["input_path"] == "experiments/demo.ipynb" and pm["duration"] == 1.5
    assert pm["parameters"] == {"results_dir": "book/results", "data_root": "/srv/data", "epochs": 2}
    assert nb.cells[1].source == '# Parameters\nresults_dir = "book/results"\ndata_root = "/srv/data"\nepochs = 2\n'
    assert nb.cells[0].source.startswith("results_dir = 'results'")  # the notebook's own defaults untouched
    outs = nb.cells[2].outputs
    assert [o.output_type for o in outs] == ["stream", "display_data"]
    assert outs[0].text == "saved book/results/demo.json\n" and outs[1].data["image/png"] == "iVBORw0KGgo="
    assert scrub_notebook(path, root=root) == []  # nothing left to do


def test_reproduce_passes_results_dir_relative_to_the_repository(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(reproduce, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, params, **kw: seen.setdefault(name, params))
    (tmp_path / "book").mkdir()
    reproduce.reproduce("tiny", only=["separability"], build=False)
    assert seen["separability"]["results_dir"] == "book/results"


def test_run_notebook_stores_a_scrubbed_notebook(tmp_path):
    pytest.importorskip("papermill")
    root = tmp_path / "repo"
    (root / "experiments").mkdir(parents=True)
    src = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                "language": "python"}})
    src.cells = [new_code_cell("results_dir = 'x'  # folder", metadata={"tags": ["parameters"]}),
                 new_code_cell("import os, sys\nprint(os.path.abspath(results_dir), file=sys.stderr)\n"
                               "print(os.path.relpath(os.path.abspath(results_dir)))")]
    nbformat.write(src, root / "experiments" / "demo.ipynb")
    out = run_notebook("demo", {"results_dir": "book/results"}, root=root, out_dir=root, log=lambda *a: None)
    text = out.read_text()
    assert str(root) not in text and str(tmp_path) not in text
    nb = json.loads(text)
    assert nb["metadata"]["papermill"]["input_path"] == "experiments/demo.ipynb"
    assert [o.get("name") for o in nb["cells"][-1]["outputs"]] == ["stdout"]
    assert "".join(nb["cells"][-1]["outputs"][0]["text"]).strip() == "book/results"  # ran with cwd = root


def test_a_gpu_preset_on_a_cpu_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """`make reproduce PRESET=cifar` on a machine without a GPU says where the stored GPU results render
    instead of starting days of CPU training; the notebooks that only read stored results still run, and an
    explicit device=cpu is honoured."""
    seen = []
    monkeypatch.setattr(reproduce, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, params, **kw: seen.append(name))
    monkeypatch.setattr(reproduce, "_has_gpu", lambda: False)
    monkeypatch.setattr(reproduce, "write_timings", lambda *a, **k: None)
    (tmp_path / "book").mkdir()
    (tmp_path / "experiments" / "params").mkdir(parents=True)
    (tmp_path / "experiments" / "params" / "cifar.yaml").write_text("max_images: null\n")
    with pytest.raises(reproduce.ImaeError, match="make figure NB=paper_scale"):
        reproduce.reproduce("cifar", build=False)
    assert seen == []
    reproduce.reproduce("cifar", only=["paper_scale", "findings"], build=False)
    assert seen == ["paper_scale", "findings"]
    reproduce.reproduce("cifar", only=["separability"], extra={"device": "cpu"}, build=False)
    assert seen[-1] == "separability"
