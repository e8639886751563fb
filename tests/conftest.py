"""Shared test set-up.

* ``AIRFLOW_HOME`` points at a throw-away directory before anything imports Airflow.
* The emulator fixtures (``dap_emulator``, ``dap_emulator_factory``...) come from the
  package's own pytest plugin, registered through its ``pytest11`` entry point.
* Database fixtures skip with a visible reason when a server is missing on a laptop, and
  fail when ``CI=true``: CI never passes on skips.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))


def _dags_folder() -> str:
    """dag.test() serializes DAGs from the dags folder first: give it the example DAGs and the test DAGs."""
    folder = Path(tempfile.mkdtemp(prefix="airflow-dags-"))
    for source in [
        *sorted((REPO / "example_dags").glob("example_*.py")),
        *sorted((REPO / "tests" / "dags").glob("*.py")),
    ]:
        (folder / source.name).symlink_to(source)
    return str(folder)


os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", _dags_folder())
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("DAP_TRACKING", "false")

from collections.abc import Iterator

import pytest


def _airflow_30_31_test_names() -> None:
    """The tests import ``TaskDeferred`` and ``redact`` from their Airflow 3.2+ homes; on older
    releases (the version matrix, ``scripts/matrix.py``) alias them there from where they were."""
    import airflow.sdk.exceptions as sdk_exceptions
    import airflow.sdk.log as sdk_log

    if not hasattr(sdk_exceptions, "TaskDeferred"):
        from airflow.exceptions import TaskDeferred

        sdk_exceptions.TaskDeferred = TaskDeferred  # type: ignore[attr-defined]
    if not hasattr(sdk_log, "redact"):
        try:
            from airflow.sdk._shared.secrets_masker import redact
        except ImportError:
            from airflow.sdk.execution_time.secrets_masker import redact
        sdk_log.redact = redact  # type: ignore[attr-defined]
    import importlib.util
    import sys

    if importlib.util.find_spec("airflow.dag_processing.dagbag") is None:  # Airflow 3.0/3.1: models.dagbag
        import airflow.models.dagbag as models_dagbag

        if not hasattr(models_dagbag, "sync_bag_to_db"):  # Airflow 3.0: a DagBag method

            def sync_bag_to_db(bag, bundle_name, bundle_version, *args, **kwargs):  # type: ignore[no-untyped-def]
                return bag.sync_to_db(bundle_name, bundle_version, *args, **kwargs)

            models_dagbag.sync_bag_to_db = sync_bag_to_db  # type: ignore[attr-defined]
        sys.modules["airflow.dag_processing.dagbag"] = models_dagbag


_airflow_30_31_test_names()

from airflow_provider_instructure.emulator.server import EmulatorServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_token_caches() -> Iterator[None]:
    """Each test counts its own logins: no JWT cached by an earlier test."""
    from airflow_provider_instructure.hooks.instructure import clear_token_caches

    clear_token_caches()
    yield
    clear_token_caches()


@pytest.fixture(autouse=True)
def _fresh_secrets_masker() -> Iterator[None]:
    """Each test masks its own secrets: Airflow's masker recompiles one regex of every secret it
    has seen on each new one, so a session's worth of JWTs and URL signatures would slow every
    later test (a real task process starts with an empty masker)."""
    try:
        from airflow.sdk._shared.secrets_masker import _secrets_masker
    except ImportError:  # Airflow 3.0
        from airflow.sdk.execution_time.secrets_masker import _secrets_masker

    masker = _secrets_masker()
    patterns, replacer = set(masker.patterns), masker.replacer
    yield
    masker.patterns = patterns
    masker.replacer = replacer


@pytest.fixture
def instructure_conn(dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    """``instructure_default`` pointing at the shared emulator (no metadata DB involved)."""
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", dap_emulator.connection_json())
    yield dap_emulator


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A fresh Airflow metadata DB (SQLite under AIRFLOW_HOME) for ``dag.test()`` runs."""
    from airflow.utils.db import resetdb

    resetdb()


@pytest.fixture
def poll_waits(monkeypatch: pytest.MonkeyPatch):
    """Record the hook's job-poll waits (worker side). ``real=True`` also sleeps them, for
    time-driven jobs; a wait above 5 s fails at once: the fixed 30 s polling the adaptive schedule
    replaced would otherwise just be slow."""
    import time

    from airflow_provider_instructure.hooks import instructure_jobs

    def install(real: bool) -> list[float]:
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(round(seconds, 3))
            assert seconds <= 5, f"a {seconds} s wait in the worker: polling is not adaptive"
            if real:
                time.sleep(seconds)

        monkeypatch.setattr(instructure_jobs, "_sleep", sleep)
        return waits

    return install
