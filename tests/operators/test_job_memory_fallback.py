"""Without Airflow 3.3's ``task_state_store`` a retry starts a new DAP job and says so in the log.

The version matrix (``scripts/matrix.py``) runs these on Airflow 3.0-3.2, where the real context has
no store; ``tests/test_example_dags.py::test_a_retried_task_resumes_its_job`` runs the retry itself
through ``dag.test()`` on every version.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_instructure._compat import AIRFLOW_V_3_3_PLUS, task_state_store, try_number
from airflow_provider_instructure.operators.cd2_jobs import JOB_STATE_KEY, _JobMemory

LOG = logging.getLogger("test_job_memory_fallback")
JOB = {"job_id": "job-1", "request": {"table": "users"}, "effective": {}}


class _Store:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def test_a_retry_without_a_store_says_it_started_a_new_job(caplog: pytest.LogCaptureFixture) -> None:
    memory = _JobMemory({"ti": SimpleNamespace(try_number=2)}, LOG)
    assert memory.recall() is None
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        memory.remember(JOB)
    (record,) = caplog.records
    assert "Try 2 started DAP job job-1" in record.getMessage()
    assert "no task state store (Airflow 3.3+)" in record.getMessage()


def test_a_first_try_without_a_store_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _JobMemory({"ti": SimpleNamespace(try_number=1)}, LOG).remember(JOB)
        _JobMemory({}, LOG).remember(JOB)  # execute() called with a plain dict
    assert caplog.records == []


def test_a_store_keeps_the_job_and_the_retry_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    store = _Store()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _JobMemory({"ti": SimpleNamespace(try_number=2), "task_state_store": store}, LOG).remember(JOB)
    assert store.values[JOB_STATE_KEY] == JOB and caplog.records == []
    assert _JobMemory({"task_state_store": store}, LOG).recall() == JOB


def test_compat_helpers_read_the_context() -> None:
    store = _Store()
    assert task_state_store({"task_state_store": store}) is store
    assert task_state_store({}) is None and task_state_store(object()) is None
    assert try_number({"ti": SimpleNamespace(try_number=3)}) == 3 and try_number({}) is None


def test_the_version_flag_matches_the_installed_airflow() -> None:
    """The flag the fallback and the dag.test retry test rely on (3.3 added ``task_state_store``)."""
    import airflow

    major, minor = (int(x) for x in airflow.__version__.split(".")[:2])
    assert ((major, minor) >= (3, 3)) == AIRFLOW_V_3_3_PLUS
