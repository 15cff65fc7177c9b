# imae — every entry point a reader or CI needs. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= tiny
NB     ?= separability
OUT    ?= runs

.PHONY: help install test tiny book reproduce figure clean-book

help:
	@echo "make book                  render the stored results (offline, seconds)"
	@echo "make test                  run the test suite"
	@echo "make tiny                  train the tiny preset end to end (MAE, then i-MAE with it as teacher)"
	@echo "make reproduce PRESET=P    rerun every experiment notebook with preset P, then build the book"
	@echo "make figure NB=name        rerun one experiment notebook (experiments/NAME.ipynb) into book/"

# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[book,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

tiny: $(STAMP)
	$(PY) -m imae pretrain --method mae --preset tiny --out $(OUT)/tiny/mae
	$(PY) -m imae pretrain --method imae --preset tiny --teacher $(OUT)/tiny/mae --out $(OUT)/tiny/imae
