# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   - virtualenv, install, run the end-to-end demo against the local DAP emulator
#   make test   - virtualenv with test extras (plus the official dap CLI in its own venv), run pytest
PYTHON ?= python3
VENV ?= .venv
DAP_VENV ?= .venv-dap
AIRFLOW_VERSION ?= 3.3.2
DAP_CLIENT_VERSION ?= 2.3.1
PYTEST_ARGS ?=
PIP = $(VENV)/bin/pip --disable-pip-version-check -q
# The installs go through uv (pip-compatible, resolves the same versions, ~25 s instead of 3-4 min for
# the test venv on two cores); pip only bootstraps uv into the venv. uv reads PyPI itself, not pip's config.
UV = $(VENV)/bin/uv pip install -q

export AIRFLOW_HOME ?= $(CURDIR)/.airflow-home
export AIRFLOW__CORE__LOAD_EXAMPLES = False
export DAP_TRACKING = false

.PHONY: demo test e2e lint clean matrix

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/bin/uv: $(VENV)/bin/python
	$(PIP) install uv

$(VENV)/.stamp-demo: $(VENV)/bin/uv pyproject.toml Makefile
	$(UV) --python $(VENV)/bin/python "apache-airflow==$(AIRFLOW_VERSION)" -e ".[sqlite,parquet,delta]"
	touch $@

$(VENV)/.stamp-test: $(VENV)/bin/uv pyproject.toml Makefile
	$(UV) --python $(VENV)/bin/python "apache-airflow==$(AIRFLOW_VERSION)" -e ".[test]"
	# mysqlclient (a hard dependency of the MySQL provider) needs C headers; the provider
	# runs on mysql-connector-python, which [test] installs.
	$(UV) --python $(VENV)/bin/python --no-deps "apache-airflow-providers-mysql>=6.0"
	touch $@ $(VENV)/.stamp-demo

# The official client pins exact versions that conflict with Airflow's, so it gets its own venv
# (installed by the main venv's uv).
$(DAP_VENV)/.stamp: $(VENV)/bin/uv Makefile
	$(PYTHON) -m venv $(DAP_VENV)
	$(UV) --python $(DAP_VENV)/bin/python "instructure-dap-client[postgresql,mysql]==$(DAP_CLIENT_VERSION)"
	touch $@

# The demo serves the emulator's core 15 tables; `make demo DEMO_ARGS=--all-tables` serves all 91.
demo: $(VENV)/.stamp-demo
	$(VENV)/bin/python -m example_dags.run_demo $(DEMO_ARGS)

test: $(VENV)/.stamp-test $(DAP_VENV)/.stamp
	DAP_CLI=$(CURDIR)/$(DAP_VENV)/bin/dap $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The deployment test alone (make test runs it too): a real Airflow with separate processes on a
# fresh PostgreSQL database, the example DAGs against the emulator; about 3-4 minutes.
e2e: $(VENV)/.stamp-test
	$(VENV)/bin/python -m pytest tests/deployment -m deployment $(PYTEST_ARGS)

# The version matrix (README "Supported versions"): its own venvs under .venv-matrix/, the core suites
# on the oldest and newest supported patch of Airflow 3.1-3.3, the full suite on Python 3.10 and 3.13 with the
# newest Airflow; prints the table. One cell: make matrix MATRIX_ARGS="--cells floor".
MATRIX_ARGS ?=
matrix: $(DAP_VENV)/.stamp
	$(PYTHON) scripts/matrix.py $(MATRIX_ARGS)

# The release artefacts in dist/ (wheel and sdist), checked as PyPI would check them; CI runs it
# before make test, whose tests/release installs that wheel in a clean virtualenv (README "Releasing").
.PHONY: dist
dist: $(VENV)/.stamp-test
	rm -rf dist
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(DAP_VENV) .venv-matrix .airflow-home .pytest_cache demo-output
