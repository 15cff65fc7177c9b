# imae — every entry point a reader or CI needs. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= small
NB     ?= separability
OUT    ?= runs

JB     := $(VENV)/bin/jupyter-book
BOOKSTAMP := $(VENV)/.book-installed

.PHONY: help install test tiny book reproduce figure

help:
	@echo "make book                  render the stored results (offline, seconds)"
	@echo "make test                  run the test suite"
	@echo "make tiny                  train the tiny preset end to end (MAE, then i-MAE with it as teacher)"
	@echo "make reproduce PRESET=P    rerun every experiment notebook with preset P, then build the book"
	@echo "make figure NB=name        rerun one experiment notebook (experiments/NAME.ipynb) into book/"
	@echo "                           (a PRESET other than the book's chapters' goes to _build/figures/PRESET)"

# pyproject.toml has compatible ranges; constraints.txt pins the tested versions (one place). torch and
# torchvision are installed first, at exactly their pins read from that file, so pip never resolves another
# (multi-GB, CUDA) torch build; everything after is installed under the same constraints.
CONSTRAINTS := constraints.txt
TORCH_PINS = $(shell grep -E '^(torch|torchvision)==' $(CONSTRAINTS))

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	test -n "$(TORCH_PINS)" || { echo "no torch/torchvision pins in $(CONSTRAINTS)"; exit 1; }
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[book,test]"
	touch $(STAMP)

# Rendering the stored notebooks needs only Jupyter Book (no torch): seconds to install, offline to build. Where
# it is installed already (`make install` puts it in), nothing is fetched, so the build needs no network at all.
$(BOOKSTAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import jupyter_book, myst_nb" 2>/dev/null || $(PY) -m pip install -q "jupyter-book>=1.0.4,<2" "myst-nb>=1.1"
	touch $(BOOKSTAMP)

install: $(STAMP)

book: $(BOOKSTAMP)
	$(JB) build book --all -W -n --keep-going
	@echo "open _build/html/index.html"

# The CPU edition's trained runs ship in weights/ and are restored instead of trained; RETRAIN=1 trains them.
RETRAIN ?=

reproduce: $(STAMP)
	IMAE_RETRAIN="$(RETRAIN)" $(PY) -m imae reproduce --preset "$(PRESET)"

# A PRESET other than the one the book's chapter was rendered with writes to _build/figures/PRESET (never over a
# committed chapter); pass `python -m imae reproduce ... --out book` to replace it on purpose.
figure: $(STAMP)
	IMAE_RETRAIN="$(RETRAIN)" $(PY) -m imae reproduce --preset "$(PRESET)" --only $(NB)

test: $(STAMP)
	$(PY) -m pytest -q

tiny: $(STAMP)
	$(PY) -m imae pretrain --method mae --preset tiny --out "$(OUT)/tiny/mae"
	$(PY) -m imae pretrain --method imae --preset tiny --teacher "$(OUT)/tiny/mae" --out "$(OUT)/tiny/imae"
