# `make test` and `make demo` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck unit integration bench schemas clean tools kafka test-kafka java

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

# Apache Kafka from Maven Central (kafka/pom.xml pins the release) into the git-ignored .kafka/.
KAFKA_LIB := .kafka/lib
KAFKA_STAMP := $(KAFKA_LIB)/.resolved
# The integration modules that run on both brokers, plus the Kafka-only ones.
KAFKA_TESTS := tests/integration/test_pipeline.py tests/integration/test_credits.py \
  tests/integration/test_admin.py tests/integration/test_worker_lifecycle.py \
  tests/integration/test_crash_safety.py tests/integration/test_zombie.py \
  tests/integration/test_reconcile.py tests/integration/test_standby.py \
  tests/integration/test_kafka_only.py

java:
	@command -v java >/dev/null 2>&1 || { echo "Java 17 and Maven are needed for make test-kafka: no java on PATH (Debian: apt-get install openjdk-17-jre-headless maven)" >&2; exit 1; }
	@command -v mvn >/dev/null 2>&1 || { echo "Java 17 and Maven are needed for make test-kafka: no mvn on PATH (Debian: apt-get install maven)" >&2; exit 1; }

$(KAFKA_STAMP): kafka/pom.xml
	@$(MAKE) --no-print-directory java
	rm -rf $(KAFKA_LIB)
	mvn -q -B -f kafka/pom.xml package
	touch $@

# One Apache Kafka node (broker + KRaft controller) on 127.0.0.1:9092 until Ctrl-C.
kafka: java $(STAMP) $(KAFKA_STAMP)
	$(BIN)/rating kafka

# PYTEST_ARGS: extra pytest arguments, e.g. PYTEST_ARGS="-k crash -x".
test-kafka: java $(STAMP) $(KAFKA_STAMP)
	RATING_TEST_BROKER=kafka $(BIN)/pytest -q $(KAFKA_TESTS) $(PYTEST_ARGS)

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
	$(BIN)/python -m bench.bench_state

schemas: $(STAMP)
	$(BIN)/rating schemas --write

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
