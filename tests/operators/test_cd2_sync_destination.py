"""A destination that cannot be reached fails the try with a retryable error (found by the deployment test).

``too many clients``, a restarting server or a failover are transient: wrapping them in the
config error (an ``AirflowFailException``) made Airflow skip the task's retries.
"""

from __future__ import annotations

import json
import socket

import pytest

from airflow_provider_instructure._compat import AirflowFailException
from airflow_provider_instructure.exceptions import DestinationUnavailableError, InstructureConfigError
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed once the block ends: connection refused


def test_unreachable_destination_is_retryable(instructure_conn, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": _closed_port(), "login": "postgres", "schema": "x"}
    monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps(conn))
    op = CD2SyncTableOperator(task_id="sync_users", table="users", destination_conn_id="cd2_warehouse")
    jobs_before = instructure_conn.emulator.jobs.created_count
    with pytest.raises(DestinationUnavailableError, match="Cannot connect to destination 'cd2_warehouse'") as info:
        op.execute({})
    assert not isinstance(info.value, AirflowFailException)
    assert instructure_conn.emulator.jobs.created_count == jobs_before  # failed before any job was started


def test_unknown_destination_type_still_fails_without_retry(instructure_conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps({"conn_type": "oracle", "host": "db"}))
    op = CD2SyncTableOperator(task_id="sync_users", table="users", destination_conn_id="cd2_warehouse")
    with pytest.raises(InstructureConfigError, match="supported types are"):
        op.execute({})
