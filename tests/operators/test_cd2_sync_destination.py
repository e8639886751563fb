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


def test_parts_directory_follows_what_the_connection_points_at(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Same connection id, different databases (two deployments on one host): never the same parts directory."""
    op = CD2SyncTableOperator(
        task_id="sync_users", table="users", destination_conn_id="cd2_warehouse", workdir=str(tmp_path)
    )
    meta = {"namespace": "canvas", "table": "users", "job_id": "job-1"}
    dirs = set()
    for database in ("warehouse_a", "warehouse_b"):
        conn = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "etl", "schema": database}
        monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps(conn))
        dirs.add(op._parts_dir(meta))
    assert len(dirs) == 2
    # and the same destination under another connection id shares nothing it should not: stable per target
    monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": "/data/w.db"}))
    assert op._parts_dir(meta) == op._parts_dir(meta)
