# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# The embedded default: SQLite and an in-process broker, no servers. The serving
# processes run dramatiq worker threads over their in-process broker; migrate and the
# demo do not.
RUN_ENV := DEBUG=1
SERVE_ENV := $(RUN_ENV) TANDEM_INPROCESS_WORKER=1
# The suite: PostgreSQL (DATABASE_URL, or the local server) and real Redis.
TEST_DATABASE_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/test)
TEST_REDIS_URL ?= $(or $(REDIS_URL),redis://127.0.0.1:6379/0)
TEST_BROKER_URL ?= $(or $(DRAMATIQ_BROKER_URL),redis://127.0.0.1:6379/1)
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	DRAMATIQ_BROKER_URL=$(TEST_BROKER_URL) SECRET_KEY=test-only-secret DEBUG=0 \
	SECURE_SSL_REDIRECT=0

.PHONY: install run test lint bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch first, exactly pinned, so nothing below resolves another build of it.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	mkdir -p var
	$(RUN_ENV) $(PY) manage.py migrate --noinput
	$(RUN_ENV) $(PY) manage.py demo
	# Beside the web process: the follower (rating, invoices' accruals, the jobs'
	# lifecycle, training on its in-process worker), the matching loop and the demo
	# node's agent (northlake-gpu-01: it runs the node's leased work, the demo's
	# raw-lease command first, in var/agent-work). Ctrl-C, or the web process ending,
	# stops all four (the agent kills its runs first). The portal is at
	# http://127.0.0.1:8000/ (sign in with the people the demo printed); runserver
	# serves its static files with DEBUG on, whitenoise under gunicorn.
	trap 'kill $$(jobs -p) 2>/dev/null' EXIT; \
	$(SERVE_ENV) $(PY) manage.py run_follower & \
	$(SERVE_ENV) $(PY) manage.py run_matching & \
	$(RUN_ENV) $(PY) manage.py run_agent --server http://127.0.0.1:$${PORT:-8000} \
		--key-file $${TANDEM_VAR_DIR:-var}/demo-agent.key \
		--inventory providers/examples/inventory.json \
		--work-dir $${TANDEM_VAR_DIR:-var}/agent-work --start-timeout 60 & \
	$(SERVE_ENV) $(PY) manage.py runserver 127.0.0.1:$${PORT:-8000}

# The portal's browser tests drive Debian's Chromium (Playwright is pinned to the
# release built for its major version); installed here when missing (CI runs as root).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null)

test: install chromium
	$(TEST_ENV) $(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy

bench: install
	$(TEST_ENV) $(PY) bench/ledger.py
	$(TEST_ENV) $(PY) bench/ingest.py
	$(TEST_ENV) $(PY) bench/heartbeats.py
	$(TEST_ENV) $(PY) bench/close.py
	$(TEST_ENV) $(PY) bench/node.py
	$(PY) bench/matching.py
	$(PY) bench/train.py
	$(PY) bench/inference.py

clean:
	rm -rf $(VENV) var
