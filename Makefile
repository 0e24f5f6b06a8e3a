# `make help` lists the targets. Everything runs from the project's own .venv.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC runs each stage's `fashion-mlp …` command through the shell: the venv must be on PATH.
export PATH := $(BIN):$(PATH)
DATASET_DIR := /usr/share/datasets/fashion-mnist
MLFLOW_PORT ?= 5000

.PHONY: help install data postgres repro results test bench lint format ui clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install the package with its dev tools (pip)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: ## install Debian's dataset-fashion-mnist if possible (else `download` uses the URLs)
	@if [ -f $(DATASET_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(DATASET_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "not root or no apt-get: the download stage will fetch from the URLs in params.yaml"; \
	fi

postgres: ## install Debian's PostgreSQL server if missing (for the team-server test)
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "PostgreSQL found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq postgresql; \
	else \
		echo "not root or no apt-get: the team-server test will be skipped (outside CI)"; \
	fi

repro: install data ## run the whole pipeline (dvc repro)
	dvc repro

results: repro ## dvc repro, then refresh README.md's results table from the metrics
	fashion-mlp compare --readme README.md

test: install data postgres ## run the test suite (what CI runs)
	pytest

bench: install ## benchmarks/run.py: trainer vs textbook loop vs floor; README Performance tables
	python benchmarks/run.py --readme README.md

lint: install ## ruff check and format check
	ruff check .
	ruff format --check .

format: install ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

ui: install ## MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) for the project's store
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

clean: ## remove the venv and caches (not data, models or the MLflow store)
	rm -rf $(VENV) .pytest_cache .ruff_cache
