# The two commands: `make serve` and `make test`. Both set up .venv from nothing and are
# fast when nothing changed (the install re-runs only when pyproject.toml does).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint typecheck unit bench acceptance screenshot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	# llama-cpp-python builds from source the first time (about 5 minutes on 2 cores).
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

serve: $(STAMP)
	$(BIN)/sluicegate serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check sluicegate tests bench examples
	$(BIN)/ruff format --check sluicegate tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# The page's tests drive Debian's Chromium (never `playwright install`, which downloads).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

unit: $(STAMP) /usr/bin/chromium
	$(BIN)/python -m pytest -q

screenshot: $(STAMP) /usr/bin/chromium
	SG_SCREENSHOT=$(CURDIR)/docs/screenshot.png $(BIN)/python -m pytest -q tests/e2e/test_web.py -k screenshot

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/bedrock_stream.py

acceptance: $(STAMP)
	../shared/acceptance/run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
