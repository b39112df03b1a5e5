# The two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PMON_KAFKA_PORT ?= 9092

.PHONY: demo test lint setup kafka-up kafka-down schemas docs bench faults clean screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# GrowthBook's engine, the reference the Bayesian readout is tested against (see BENCH_STAMP for --no-deps).
	$(BIN)/pip install --quiet --no-deps 'gbstats>=0.8,<0.9'
	touch $(STAMP)

demo: setup
	$(BIN)/pmon demo

# Debian packages the tests run for real: chromium renders the HTML dashboard (also for `make screenshots`),
# prometheus (with promtool) and prometheus-alertmanager check the alert rules and their delivery.
DEBIAN_TOOLS := chromium prometheus prometheus-alertmanager
CHROMIUM_STAMP := $(VENV)/.debian-tools

$(CHROMIUM_STAMP): $(STAMP)
	missing=$$(for p in $(DEBIAN_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  [ -z "$$missing" ] || (apt-get update -q && apt-get install -y -q --no-install-recommends $$missing)
	touch $(CHROMIUM_STAMP)

# Lint and types of the pure packages, streams/, cli/ and the worker harness (configured in pyproject.toml).
# `make test` runs it before the tests.
PURE := monitor detectors governance experiments incidents plans simulation pmon_errors.py
LINTED := $(PURE) streams cli pmon_harness.py

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check tests bench scripts   # the same rules; their layout is not checked (ruff format)
	$(BIN)/mypy $(LINTED)

# Three processes side by side (scripts/run-tests.sh): the broker-fault tests on a broker of their own, the other
# tests of the broker, and the rest. The broker is stopped whatever the outcome; the tests' exit code is kept.
test: setup lint $(CHROMIUM_STAMP) kafka-up
	PYTHON=$(BIN)/python bash scripts/run-tests.sh; status=$$?; bash scripts/kafka-local.sh down; exit $$status

kafka-up:
	bash scripts/kafka-local.sh up

kafka-down:
	bash scripts/kafka-local.sh down

# The README's dashboard pictures: 14 simulated days replayed in one process (about 2 min), then headless chromium.
screenshots: setup $(CHROMIUM_STAMP)
	$(BIN)/python scripts/screenshots.py --days 14 --out docs/screenshots

schemas: setup
	$(BIN)/pmon schemas --out schemas

# Generated parts of the docs: settings, glossary, metrics and alert rules, from the code (a test fails when stale).
docs: setup
	$(BIN)/python -m cli.docs docs/configuration.md docs/cli.md docs/operations.md

# The bench's peers (Quix Streams) and py-spy: bench-only dependencies, installed on first use.
BENCH_STAMP := $(VENV)/.bench-installed

# gbstats (GrowthBook's engine, for bench/experiments.py and the tests) comes with `setup`, without its
# dependencies: 0.8 pins numpy<2 and pandas<2, which river's numpy>=2.2.5 excludes; its sequential and Bayesian
# tests need only numpy, scipy, pydantic.
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP) kafka-up
	PMON_KAFKA_BOOTSTRAP=127.0.0.1:$(PMON_KAFKA_PORT) $(BIN)/python bench/throughput.py
	$(BIN)/python bench/state_size.py --days 3
	$(BIN)/python bench/stored_report.py --days 14
	$(BIN)/python bench/cli_start.py
	PMON_KAFKA_BOOTSTRAP=127.0.0.1:$(PMON_KAFKA_PORT) $(BIN)/python bench/latency.py
	$(BIN)/python bench/experiments.py
	$(BIN)/python bench/real_series.py

# Ten runs of each fault on the local broker (about an hour on 2 cores); `make test` runs one of each.
faults: setup kafka-up
	PMON_KAFKA_BOOTSTRAP=127.0.0.1:$(PMON_KAFKA_PORT) $(BIN)/python bench/faults.py --runs 10

clean:
	rm -rf $(VENV) pmon-plans .pytest_cache
