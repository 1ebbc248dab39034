# Two commands: `make run` brings the whole dev stack up, `make test` runs the suite.
# Engines whose URL is unset (DATABASE_URL, REDIS_URL, KAFKA_BOOTSTRAP_SERVERS,
# CLICKHOUSE_URL) are started embedded, from PyPI wheels, with their data under .data/.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt | sha1sum | cut -c1-12)
TEST_ENGINES ?= postgres,redis,kafka,clickhouse
PYTEST_ARGS ?=

.PHONY: run test lint format bench bench-api bench-logs chaos fuzz soak audit venv clean-data

# Create .venv and install requirements/dev.txt (again only when requirements change).
venv: $(STAMP)
$(STAMP): requirements/base.txt requirements/dev.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	rm -f $(VENV)/.installed-* && touch $@

# Dev stack in the foreground: engines, migrations, every role; Ctrl-C stops it all.
run: venv
	$(PY) -m devtools.devstack

# Test suite against real engines (embedded ones for any URL that is unset), then the Django
# Tasks backend's tests on Django 6.0 (Python 3.12) and 6.1 (Python 3.13), each in a venv of
# its own (devtools/test_legs.py; a machine without that Python skips the leg and says so).
# LOG_SHIPPING=false: the test process's own records stay on the console (tests that ship
# logs set up their handler and topics themselves).
test: venv
	LOG_SHIPPING=false $(PY) -m devtools.engines run --only $(TEST_ENGINES) -- $(PY) -m devtools.test_legs $(PYTEST_ARGS)

# Lint and type-check.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# mypy's Django plugin imports settings, which need engine URLs; nothing connects to them.
	DATABASE_URL=$${DATABASE_URL:-postgres://lint@localhost/lint} REDIS_URL=$${REDIS_URL:-redis://localhost/0} \
		$(PY) -m mypy .

# Apply ruff's formatting and safe fixes.
format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# End-to-end benchmark (vs raw Celery, plus light-load latency) against the running dev stack,
# then two tenants: one floods or runs long jobs, the other's start wait (fairness on and off),
# then what batches and unused flow control cost, and a rate-limited key held over a minute,
# then workflows that wait and grow (100,000 waiting; a map of 10,000 vs as many plain jobs),
# then what tracing costs (CPU per job off, on for every job, on for 1 %).
bench: venv
	$(PY) manage.py bench pipeline
	$(PY) manage.py bench fairness
	$(PY) manage.py bench flow
	$(PY) manage.py bench steps
	$(PY) manage.py bench tracing

# Submit-API benchmark against the running dev stack (`make run` in another terminal).
bench-api: venv
	$(PY) manage.py bench api

# Log pipeline benchmark: handler cost, sink ingest rate, query latency over 10M rows.
bench-logs: venv
	LOG_SHIPPING=false $(PY) manage.py bench logs

# Chaos: every fault, one at a time, against private embedded engines; prints a table and
# fails if any job was lost, run twice or left unfinished (about 15 minutes).
chaos: venv
	LOG_SHIPPING=false $(PY) -m devtools.chaos

# Fuzzing on the real engines, exploring new examples each run: the API against its OpenAPI
# schema (schemathesis), hostile handler output through every role (the pipeline), and the
# worker's batch path as a Hypothesis state machine. `make test` runs a fixed-seed subset.
fuzz: venv
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} LOG_SHIPPING=false $(PY) -m devtools.engines run --only $(TEST_ENGINES) -- $(PY) -m pytest -m fuzz -p no:cacheprovider tests

# Soak: 200,000 jobs at a steady rate against a running `make run`; memory of every role.
soak: venv
	LOG_SHIPPING=false $(PY) manage.py bench soak

# Known vulnerabilities in the pinned dependencies (needs access to PyPI's or OSV's advisories).
audit: venv
	$(PY) -m pip_audit -r requirements/base.txt -r requirements/dev.txt

# Stop embedded engines and delete their data.
clean-data: venv
	$(PY) -m devtools.engines down
	rm -rf .data
