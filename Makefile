# ark-obs: the two commands a newcomer types are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Debian packages the real-server tests need (binary -> package).
SYSTEM_BINS := redis-server:redis-server redis-cli:redis-tools prometheus:prometheus promtool:prometheus \
               amtool:prometheus-alertmanager prometheus-alertmanager:prometheus-alertmanager \
               chromium:chromium

.PHONY: run start test lint types imports pytest bench system-deps venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ark-obs serve --synthetic

# the orchestrated start: check-config, serve, wait for /readyz, validate --synthetic, status summary, keep serving
# (arguments: make start ARGS="--port 9871 --watch 30s")
start: $(STAMP)
	$(VENV)/bin/ark-obs up $(ARGS)

system-deps:
	@scripts/system-deps.sh $(SYSTEM_BINS)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

types: $(STAMP)
	$(PY) -m mypy

# the layering contract in pyproject.toml ([tool.importlinter]): layers only import the layers below
imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

pytest: $(STAMP) system-deps
	$(PY) -m pytest

test: lint types imports pytest

bench: $(STAMP) system-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
