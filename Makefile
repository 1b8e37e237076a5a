# The two commands: `make serve` and `make test`. Both set up .venv from nothing and are
# fast when nothing changed (an install re-runs only when pyproject.toml does). `serve` installs
# what serving needs; `test` adds the test tools (pytest, mypy, ruff, playwright, the SDKs).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
SERVE_STAMP := $(VENV)/.serve-$(HASH)
TEST_STAMP := $(VENV)/.test-$(HASH)
HOST ?= 127.0.0.1
PORT ?= 8000
# llama-cpp-python builds from source the first time: only the libraries the engine loads
# (not the multimodal one nor llama.cpp's common helpers), with the native CPU kernels.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/make/llama-cpp.cmake

.PHONY: serve test lint typecheck unit bench acceptance screenshot wheel-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	rm -f $(VENV)/.serve-* && touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.test-* && touch $@

serve: $(SERVE_STAMP)
	$(BIN)/sluicegate serve --host $(HOST) --port $(PORT)

lint: $(TEST_STAMP)
	$(BIN)/ruff check sluicegate tests bench examples
	$(BIN)/ruff format --check sluicegate tests bench examples

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# The page's tests drive Debian's Chromium (never `playwright install`, which downloads).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

# The bus tests start Debian's redis-server on free ports; the deployment example's, nginx too.
/usr/bin/redis-server:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
/usr/sbin/nginx:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null

unit: $(TEST_STAMP) /usr/bin/chromium /usr/bin/redis-server /usr/sbin/nginx
	$(BIN)/python -m pytest -q

screenshot: $(TEST_STAMP) /usr/bin/chromium
	SG_SCREENSHOT=$(CURDIR)/docs/screenshot.png $(BIN)/python -m pytest -q tests/e2e/test_web.py -k screenshot

test: lint typecheck unit

# The package as a user gets it: a wheel in a fresh venv without extras, then serve and stream.
wheel-smoke: $(SERVE_STAMP)
	.ci/wheel-smoke

bench: $(TEST_STAMP)
	$(BIN)/python bench/bedrock_stream.py

acceptance: $(TEST_STAMP)
	../shared/acceptance/run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
