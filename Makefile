# Every target creates or refreshes .venv itself: on a fresh machine `make demo` and
# `make test` are the whole setup.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo demo-cluster redis-cluster serve test test-fast bench bench-peers lint format redis clean browser-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# redis-om pulls the stale types-redis stubs, which shadow redis-py's own inline types.
	$(PY) -m pip uninstall --quiet -y types-redis
	@touch $(STAMP)

install: $(STAMP) ## create/refresh .venv with the app and dev tools

# Feast (the peer of bench/features.py) pins an older redis-py: it gets its own virtualenv.
.venv-peers/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install --quiet -e '.[peers]'
	@touch $@

bench-peers: .venv-peers/.installed ## bench/features.py with Feast side by side
	.venv-peers/bin/python -m bench.features

demo: $(STAMP) ## start embedded Redis Stack, load the real sample data, serve the API on :8000
	$(PY) -m app.cli demo

demo-cluster: $(STAMP) ## the same demo on a local 3-master Redis Cluster + search node (var/cluster)
	$(PY) -m app.cli demo --cluster 3

redis-cluster: $(STAMP) ## run a local 3-master Redis Cluster + search node on its own (Ctrl-C stops all)
	$(PY) -m app.cli redis --cluster 3

test: $(STAMP) browser-deps ## run the whole suite against a real embedded Redis Stack
	$(PY) -m pytest

browser-deps: ## Chromium for tests/api/test_browser.py (Debian: apt-get when missing and root)
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "could not install chromium: tests/api/test_browser.py will be skipped"; \
	else echo "no chromium and not root: tests/api/test_browser.py will be skipped"; fi

bench: $(STAMP) ## run the benchmarks (each prints one JSON line last)
	@for b in ingest search features feature_writes recommend evaluate memory tracking hung_redis cluster; do \
	    echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

lint: $(STAMP) ## ruff, ruff format --check, mypy --strict
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP) ## apply ruff format and autofixes
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

redis: $(STAMP) ## run the embedded Redis Stack on its own (Ctrl-C stops it)
	$(PY) -m app.cli redis

clean: ## remove .venv and local data (var/)
	rm -rf $(VENV) .venv-peers var .pytest_cache .mypy_cache .ruff_cache
