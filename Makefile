# `make help` lists the targets. Everything runs from the project's own .venv.
# Recipes name the venv by its relative path: the project's folder may have spaces in its path.
# bash: recipes use pipefail.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# DVC runs each stage's `fashion-mlp …` command through the shell: the venv must be on PATH
# (absolute: stages may run elsewhere, e.g. queued experiments; spaces are fine in PATH).
export PATH := $(CURDIR)/$(BIN):$(PATH)
DATASET_DIR := /usr/share/datasets/fashion-mnist
MLFLOW_PORT ?= 5000
# The versions every test and figure here came from; `make constraints` refreshes them.
CONSTRAINTS := constraints.txt
# Debian packages the tests use: PostgreSQL (team server), nginx and openssl (its TLS proxy and
# certificates), Chromium (browser test), iproute2 (the Ray cluster test's network namespace),
# QEMU user mode (the numerics tests emulate other vendors' CPUs), openssh-server (the DVC
# remote the sharing tests start).
TEST_PACKAGES := postgresql chromium iproute2 nginx openssl qemu-user openssh-server

.PHONY: help install constraints data test-deps repro quick push pull results exps sweep test test-fast check-numerics bench lint format ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install the package with its dev tools (pip, pinned)

# The package builds a C extension (the matrix products, compiled with the machine's gcc):
# editing its source reinstalls.
# pip's own lines are many; one per package collected shows the progress.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) src/fashion_mlp/_sequential_gemm.c
	@echo "installing into $(VENV) (the first time: about 3 minutes, torch is 1 GB)"
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@set -o pipefail; $(BIN)/pip install -c $(CONSTRAINTS) -e '.[dev]' \
		| grep --line-buffered -E '^(Collecting|Building|Installing|Successfully)' \
		| sed -u 's/^Collecting /  /'
	touch $@

constraints: ## re-resolve the newest allowed versions into constraints.txt (then run make test)
	rm -rf .venv-constraints && python3 -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet -e '.[dev]'
	.venv-constraints/bin/pip freeze --exclude-editable | grep -v '^fashion-mlp' > $(CONSTRAINTS)
	rm -rf .venv-constraints

data: ## install Debian's dataset-fashion-mnist if possible (else `download` uses the URLs)
	@if [ -f $(DATASET_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(DATASET_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "not root or no apt-get: the download stage will fetch from the URLs in params.yaml"; \
	fi

test-deps: ## install the Debian packages the tests start (TEST_PACKAGES)
	@missing=""; \
	for package in $(TEST_PACKAGES); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "test packages found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "not root or no apt-get: tests needing$$missing will be skipped (outside CI)"; \
	fi

# DVC ends every repro by suggesting `dvc push`, a remote or not: the line goes, and ours says
# where the results can go. Unbuffered, so each stage's lines show as they come.
repro: install data ## run the whole pipeline (dvc repro)
	@set -o pipefail; PYTHONUNBUFFERED=1 dvc repro | sed -u '/^Use `dvc push` to send your updates to remote storage.$$/d'
	@if dvc remote default >/dev/null 2>&1; then \
		echo "share the results with the team: make push (README \"Sharing results\")"; \
	else \
		echo "no DVC remote is configured: the results stay in this clone (README \"Sharing results\" adds one)"; \
	fi

push: install ## send the results to the team's DVC remote (dvc push --run-cache, and every run's outputs)
	fashion-mlp share push

pull: install ## get the team's results from its DVC remote (dvc pull --run-cache)
	fashion-mlp share pull

results: repro ## dvc repro, then refresh README.md's results table from the metrics
	fashion-mlp compare --readme README.md

exps: install ## the experiments: what each changed, the test accuracy of each model it retrained
	@fashion-mlp exps $(ARGS)

quick: install data ## a first result in about a minute: the two d2l models, trained and evaluated
	@set -o pipefail; PYTHONUNBUFFERED=1 dvc repro evaluate@mlp1 evaluate@mlp2 | sed -u '/^Use `dvc push` to send your updates to remote storage.$$/d'


sweep: install data ## the Ray Tune hyperparameter sweep (dvc repro sweeps/dvc.yaml:sweep)
	dvc repro sweeps/dvc.yaml:sweep

test: install data test-deps ## run the whole test suite (what CI runs)
	pytest

test-fast: install ## the edit loop: every test that starts no server, Ray, DVC or browser
	pytest -m "not (dvc or ray or server or browser or gpu or slow)" -q

check-numerics: install data test-deps ## does this machine train the committed weights? (natively and emulated)
	@lscpu | sed -n 's/^Model name: *//p' | sed 's/^/CPU: /'
	@grep -q avx512f /proc/cpuinfo && echo "AVX-512: yes" || echo "AVX-512: no"
	pytest tests/test_numerics.py tests/test_linalg.py -q

bench: install ## benchmarks/run.py: trainer, numerics, bookkeeping, parallel work (docs/performance.md)
	python benchmarks/run.py --doc docs/performance.md $(ARGS)

lint: install ## ruff check and format check
	ruff check .
	ruff format --check .

format: install ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

ui: install ## MLflow UI of the project's store: prints the link to its training runs (fashion-mlp ui)
	@fashion-mlp ui --port $(MLFLOW_PORT)

clean: ## remove the venv and caches (not data, models or the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache
