# Two commands: `make run` (the service) and `make test` (the suite). Both create .venv on first use.
# With no DATABASE_URL/REDIS_URL the embedded default is used: SQLite, in-memory channel layer,
# Celery on a filesystem broker under var/. Set both for PostgreSQL + Redis.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py ensure_admin
	$(PY) manage.py voicecall serve

# Two test processes, one per core; a test module stays on one process (its servers are shared).
test: venv
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# All benches (figures in bench/README.md); all but audio need PostgreSQL and Redis on 127.0.0.1 and
# take a few minutes each.
bench: venv
	$(PY) bench/audio_bench.py
	$(PY) bench/media_bench.py
	$(PY) bench/webhook_bench.py
	$(PY) bench/placement_bench.py
