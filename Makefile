# tformer — one entry point for readers, CI and authors.
#   make book       build the HTML book into _build/html (creates .venv on first use)
#   make test       package tests + nbval over every notebook
#   make lab        JupyterLab on the chapters
#   make notebooks  re-execute every notebook in place (committed outputs come from committed code)
#   make bench      run the benchmarks and render the performance page
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Deterministic hashing in every kernel nbval starts, so set/dict orders never change outputs.
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv book test test-package test-notebooks lab notebooks bench lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the constraints file keeps every later step from replacing it.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,dev,pretrained]'
	touch $@

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going

test: test-package test-notebooks

test-package: $(STAMP)
	$(BIN)/python -m pytest tests

test-notebooks: $(STAMP)
	$(BIN)/python -m pytest --nbval notebooks --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab]'
	$(BIN)/jupyter lab notebooks

notebooks: $(STAMP)
	$(BIN)/python scripts/execute_notebooks.py

bench: $(STAMP)
	$(BIN)/python -m tformer bench
	$(BIN)/python scripts/render_performance.py

lint: $(STAMP)
	$(BIN)/ruff check tformer tests scripts

clean:
	rm -rf _build
