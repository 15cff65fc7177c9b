"""Every experiment notebook, executed end to end with papermill on a tiny model and the toy dataset, then the
book built from those executed copies with -W; each chapter's HTML must hold its figures and every glued
number must have resolved. Also: source notebooks are thin and output-free, and bad parameters fail clearly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from imae.companion.reproduce import CHAPTERS, NOTEBOOKS, build_book, run_notebook, write_performance, write_status

REPO = Path(__file__).resolve().parents[1]
MICRO_OVERRIDES = {"data.download": False, "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2,
                   "model.decoder_embed_dim": 32, "model.decoder_depth": 1, "model.decoder_num_heads": 2,
                   "train.batch_size": 32}


def _figures(nb_path: Path) -> int:
    nb = nbformat.read(nb_path, as_version=4)
    return sum(c.source.count("```{glue:figure}") for c in nb.cells if c.cell_type == "markdown")


@pytest.fixture(scope="module")
def executed_book(toy_root, tmp_path_factory):
    """A copy of the book whose notebooks are freshly executed on the toy data, built with -W."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    book = root / "book"
    shutil.copytree(REPO / "book", book, ignore=shutil.ignore_patterns("*.ipynb", "results", "_build"))
    params = {"preset": "tiny", "data_root": str(toy_root), "mae_epochs": 2, "imae_epochs": 2, "device": "cpu",
              "overrides": MICRO_OVERRIDES, "runs_dir": str(root / "runs"), "results_dir": str(book / "results"),
              "max_images": 100, "n_pairs": None, "finetune_epochs": 1, "same_probs": [0.0, 1.0], "ablation_epochs": 1,
              "seeds": [0, 1]}
    for name in NOTEBOOKS:
        run_notebook(name, params, root=REPO, out_dir=book, log=lambda *a: None)
    write_status(book)
    write_performance(book)
    build_book(root, book, strict=True)  # -W -n --keep-going: any warning (e.g. an unknown glue key) fails
    return root


def _labels(nb_path: Path, kind: str) -> list[str]:
    """The ``:name:`` labels of a notebook's glued figures (kind ``fig``) or numbered tables (``tbl``)."""
    nb = nbformat.read(nb_path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    opener = r"```\{glue:figure\} \S+" if kind == "fig" else r":::\{table\}[^\n]*"
    return re.findall(opener + r"\n:name: (\S+)", text)


def _without_sliders(html: str) -> tuple[str, list[int]]:
    """The page without its frame sliders' images, and the number of frames of each slider."""
    frames = []

    def cut(m):
        frames.append(m.group(0).count("<img"))
        return "<img>"  # a slider is one figure

    return re.sub(r'<div id="imae-slider-.*?</script>', cut, html, flags=re.S), frames


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_html_has_its_figures_and_numbers(name, executed_book):
    html = (executed_book / "_build" / "html" / f"{name}.html").read_text()
    expected = _figures(REPO / "experiments" / f"{name}.ipynb")
    assert expected >= 1
    plain, sliders = _without_sliders(html)
    assert plain.count("<img") == expected, f"{name}: {plain.count('<img')} images for {expected} figures (each once)"
    assert all(n >= 2 for n in sliders)
    assert "{glue" not in html and "glue:text" not in html
    assert "Rerun this chapter" in html and f"make figure NB={name}" in html
    assert "Executed " in html and "with papermill" in html and " at commit " in html  # the execution stamp
    record = json.loads((executed_book / "book" / "results" / f"{name}.json").read_text())
    assert record["notebook"] == name and record["runs"]
    if name != "pretrain":  # every chapter that compares models shows intervals
        assert "95 % CI" in html or "95 % interval" in html
    assert "untrained" in html  # ... and its controls


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_and_table_is_numbered_and_referenced_from_the_text(name, executed_book):
    html = (executed_book / "_build" / "html" / f"{name}.html").read_text()
    src = REPO / "experiments" / f"{name}.ipynb"
    figures, tables = _labels(src, "fig"), _labels(src, "tbl")
    assert html.count('<span class="caption-number">Table ') == len(tables)
    assert html.count('<span class="caption-number">Fig. ') == len(figures)
    for label in figures + tables:
        assert f'href="#{label}"' in html, f"{name}: {label} is never referenced from the text"
    for label in tables:  # every table can be downloaded from its page, as CSV
        csv = label[len("tbl-"):].replace("-", "_") + ".csv"
        assert re.search(rf'href="[^"]*{csv}"', html) and (executed_book / "book" / "results" / csv).is_file()


def test_the_alpha_sweep_is_an_offline_slider(executed_book):
    html = (executed_book / "_build" / "html" / "reconstruction.html").read_text()
    _, sliders = _without_sliders(html)
    assert sliders == [11]  # alpha = 0, 0.05, ..., 0.5
    assert 'id="imae-slider-alpha-sweep"' in html and 'type="range"' in html


def test_findings_page_has_a_verdict_for_every_claim(executed_book):
    import pandas as pd

    html = (executed_book / "_build" / "html" / "findings.html").read_text()
    from imae.companion import verdict

    table = pd.read_csv(executed_book / "book" / "results" / "findings.csv")
    assert len(table) == 6 and table["verdict"].notna().all()
    assert set(table["verdict"]) <= set(verdict.LABELS)
    assert "not measured" not in set(table["verdict"])  # every chapter ran, so every claim has a measurement
    text = html.replace("&#8217;", "'").replace("\u2019", "'").replace("\u2026", "...")  # smart quotes, ellipsis
    for claim in table["claim"]:
        assert claim.split("'")[0][:30] in text
    # the answer comes first: on the Findings page and on the introduction, one verdict per claim and scale
    answers = pd.read_csv(executed_book / "book" / "results" / "answers.csv")
    assert len(answers) == 6 and list(answers.columns) == ["claim", "CPU edition", "paper scale"]
    assert all(any(v.startswith(f"**{label}**") for label in verdict.LABELS) for v in answers["CPU edition"])
    # it fits a 400 px phone: three columns whose cells wrap at spaces (no word longer than a narrow column)
    words = [w for col in answers.columns for cell in answers[col].astype(str) for w in cell.replace("*", "").split()]
    assert max(len(w) for w in words) <= 20, max(words, key=len)
    assert html.index("tbl-answers") < html.index("tbl-findings")
    intro = (executed_book / "_build" / "html" / "intro.html").read_text()
    assert "findings.html" in intro
    for short in answers["claim"]:
        assert short.split(" (")[0] in intro


def test_status_table_and_intro(executed_book):
    status = (executed_book / "book" / "status_table.md").read_text()
    for name in CHAPTERS:
        assert f"({name}.ipynb)" in status
    assert "not run yet" not in status and "cifar10" in status
    intro = (executed_book / "_build" / "html" / "intro.html").read_text()
    assert "<table" in intro and "pretrain.html" in intro


def test_no_page_loads_anything_from_the_network(executed_book):
    for page in (executed_book / "_build" / "html").glob("*.html"):
        text = page.read_text()
        scripts = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not scripts, f"{page.name} loads {scripts[:3]}"
    assert (executed_book / "_build" / "html" / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_source_notebooks_are_thin_and_clean(name):
    nb = nbformat.read(REPO / "experiments" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for line in tagged[0].source.splitlines():
        assert "#" in line, f"parameter line without a comment: {line}"
    assert not any(re.search(r"^\s*(def|class)\s", c.source, re.M) for c in code), "no definitions in notebooks"


def test_wrong_parameter_type_stops_the_notebook_with_a_clear_message(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / "experiments" / "pretrain.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"mae_epochs": "ten"}, kernel_name="python3", cwd=str(REPO),
                            progress_bar=False)
    assert "mae_epochs must be a whole number, got 'ten' (str)" in str(e.value)
    assert "-p mae_epochs 10" in str(e.value)
