# Gauntlet: `make serve` runs the service on this machine; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: a looser request pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: serve test lint openapi migrate worker api clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[worker,s3]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-serve
	$(BIN)/pip install -q -e ".[worker,s3,dev]"
	# An independent attack implementation to check ours against; --no-deps keeps its
	# requirements (torchvision, which pulls CUDA wheels) out.
	$(BIN)/pip install -q --no-deps "torchattacks==3.5.1"
	touch $@

serve: $(VENV)/.installed-serve
	$(BIN)/python -m service.serve

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy service worker adversarial client

openapi: $(VENV)/.installed-serve
	$(BIN)/gauntlet-admin openapi --output openapi.yaml

migrate: $(VENV)/.installed-serve
	$(BIN)/gauntlet-admin migrate

api: $(VENV)/.installed-serve
	$(BIN)/uvicorn service.main:app --host 0.0.0.0 --port $${GAUNTLET_PORT:-8000}

worker: $(VENV)/.installed-serve
	$(BIN)/celery -A worker.celery_app worker --concurrency 1 --loglevel INFO --without-heartbeat --without-gossip --without-mingle

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
