# `make test` and `make demo` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck unit integration bench schemas clean tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# promtool checks the alert rules; Debian's prometheus package ships it and the server.
# chromium: the admin page's browser test drives Debian's build through Playwright.
SUDO := $(if $(shell id -u | grep -qx 0 && echo y),,sudo)
tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
	  { echo "installing Debian's prometheus (promtool + server)"; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@test -x /usr/bin/chromium || \
	  { echo "installing Debian's chromium (for the admin page's browser test)"; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP) tools
	$(BIN)/pytest tests/integration -q

test: $(STAMP) tools lint typecheck
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/rating demo

bench: $(STAMP)
	$(BIN)/python -m bench.bench_rating
	$(BIN)/python -m bench.bench_pipeline $(BENCH_ARGS)

schemas: $(STAMP)
	$(BIN)/rating schemas --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
