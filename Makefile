# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-kafka fuzz chaos chaos-short lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The browser tests' npm packages (analytics.js, playwright-core), from the lock file;
# and the system packages the real peers need (.ci/system-packages says which).
BROWSER := tests/browser/node_modules/.package-lock.json

$(BROWSER): tests/browser/package-lock.json
	@./.ci/system-packages
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/browser --no-audit --no-fund --silent; \
	else echo "note: no npm: the browser tests will say what to install"; fi

# The project's own modules as bytecode, once per command: where the environment sets
# PYTHONDONTWRITEBYTECODE, Python never caches them, and every `tetik` that the demo and
# the suite start (about 70 in the suite) compiled them again: 0.2 s a start. Stale
# bytecode is never used (Python checks each file's time), only recompiled in memory.
CODE := engine flows channels clickstream bench chaos cli tests
BYTECODE = @$(BIN)/python -m compileall -q -j 0 $(CODE)

demo: $(STAMP)
	$(BYTECODE)
	$(BIN)/tetik demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The whole suite on the embedded servers (a short fuzz run included); the Apache Kafka
# subset needs Java 17 and runs in `make test-kafka` (.ci/run, where Java is).
# It runs on two pytest-xdist workers (TEST_WORKERS), each with its own servers: about 5
# minutes instead of 10 on 2 cores, since the suite mostly waits on servers and child
# processes. TEST_WORKERS=0 runs one test at a time, in process.
TEST_WORKERS ?= 2
test: lint $(BROWSER)
	$(BYTECODE)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not apache_kafka and not scenario"

test-kafka: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m pytest -m apache_kafka

# Long fuzzing of the decoder, rules loader, expression parser and templates.
# FUZZ_EXAMPLES examples per target (hypothesis); see tests/fuzz.
FUZZ_EXAMPLES ?= 200000
fuzz: $(STAMP)
	TETIK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -m fuzz -p no:randomly --timeout=0 --hypothesis-show-statistics --durations=0 $(or $(FUZZ_TARGETS),tests/fuzz)

# The standing fault suite on real servers, every action compared with replay.
chaos: $(STAMP)
	$(BIN)/tetik chaos --kills 200

chaos-short: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m pytest -m scenario
	$(BIN)/tetik chaos --short

# The full benchmark (about 10 minutes); writes the figures the README shows.
bench: $(STAMP)
	$(BIN)/tetik bench all --out docs/performance

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
