"""Empty tables: DAP's ``ProcessingError`` "There is no data available yet", over the wire.

The emulator announces it for a table switched to ``tables_without_data``: as the answer to
``POST .../data`` (``post``) or as a failed job (``job``). Syncs end with 0 rows, an empty
target table and no watermark; downloads with no files; queries with ``no_data: true``. Once
the switch is off, the next run takes the snapshot.
"""

# The fixtures shared with test_cd2_sync are imported, then requested by name.
# ruff: noqa: F811

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapJobFailed, DapNoDataYetError, DapServerError
from airflow_provider_instructure.hooks.dap_protocol import job_failure, map_error
from airflow_provider_instructure.hooks.instructure import InstructureHook
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from airflow_provider_instructure.operators.cd2_download import CD2DownloadOperator
from airflow_provider_instructure.replication import STATE_TABLE, TableReplicator
from tests.operators.test_cd2_sync import replica_equals_emulator, server, sync, warehouse  # noqa: F401 - fixtures
from tests.replication.conftest import Database, my_server, pg_server  # noqa: F401 - fixtures

VARIANTS = ["post", "job"]


def no_data(server: EmulatorServer, table: str, variant: str | None) -> None:
    server.emulator.config.tables_without_data = {f"canvas.{table}": variant} if variant else {}


def state_rows(db: Database, rep: TableReplicator) -> list[tuple[Any, ...]]:
    kind = db.query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = %s"
        if db.dialect != "sqlite"
        else "SELECT COUNT(*) FROM sqlite_master WHERE name = ?",
        (STATE_TABLE,),
    )[0][0]
    if not kind:
        return []
    table = db.qualified(type(rep.target)(rep.target.schema, STATE_TABLE, "", ""))
    return db.query(f"SELECT target_table FROM {table}")


# -- the error itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 500])
def test_the_message_maps_to_a_typed_error_whatever_the_status(status: int) -> None:
    body = {"error": {"type": "ProcessingError", "uuid": "u-1", "message": "There is NO data available yet."}}
    error = map_error(status, "application/json", json.dumps(body))
    assert isinstance(error, DapNoDataYetError) and not isinstance(error, DapServerError)
    assert error.error_uuid == "u-1" and error.status == status
    other = map_error(500, "application/json", json.dumps({"error": {**body["error"], "message": "boom"}}))
    assert type(other) is DapServerError
    failed = job_failure("job-1", body["error"])
    assert isinstance(failed, DapNoDataYetError) and failed.job_id == "job-1"
    assert type(job_failure("job-2", {"type": "ProcessingError", "message": "boom"})) is DapJobFailed


def test_emulator_switch_answers_both_ways_and_is_off_by_default(server: EmulatorServer) -> None:
    hook = InstructureHook()
    assert server.emulator.config.tables_without_data == {}
    response = httpx.patch(f"{server.url}/_emulator/config", json={"tables_without_data": {"canvas.users": "post"}})
    assert response.status_code == 200 and response.json()["tables_without_data"] == {"canvas.users": "post"}
    with pytest.raises(DapNoDataYetError, match="no data available yet"):
        hook.start_query("users", "canvas", format="tsv")
    assert server.emulator.stats.count("create_job") == 1  # not retried like a 5xx
    bad = httpx.patch(f"{server.url}/_emulator/config", json={"tables_without_data": {"canvas.users": "later"}})
    assert bad.status_code == 400
    no_data(server, "users", "job")
    job = hook.start_query("users", "canvas", format="tsv")
    with pytest.raises(DapNoDataYetError) as info:
        hook.wait_for_job(job["id"], poll_interval=0.05)
    assert info.value.job_id == job["id"]
    no_data(server, "users", None)
    assert hook.wait_for_job(hook.start_query("users", "canvas", format="tsv")["id"], poll_interval=0.05)["objects"]


# -- CD2SyncTableOperator -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_snapshot_without_data_creates_the_table_empty_and_the_next_run_snapshots(
    server: EmulatorServer, warehouse: Database, variant: str
) -> None:
    no_data(server, "courses", variant)
    result = sync("courses")
    assert result["no_data"] is True and result["mode"] == "snapshot"
    assert (result["rows_inserted"], result["rows_updated"], result["rows_deleted"]) == (0, 0, 0)
    assert result["watermark"] is None and result["schema_version"] == 1
    json.dumps(result)
    rep = TableReplicator(warehouse.connect(), warehouse.dialect, "canvas", "courses")
    assert rep.read_state() is None  # no watermark: the next run takes a snapshot
    assert state_rows(warehouse, rep) == []
    assert warehouse.query(f"SELECT COUNT(*) FROM {warehouse.qualified(rep.target)}")[0][0] == 0
    assert sync("courses")["no_data"] is True  # still nothing: the empty table is accepted again

    no_data(server, "courses", None)
    later = sync("courses")
    assert later["mode"] == "snapshot" and later["rows_inserted"] == 15 and later["no_data"] is False
    assert set(result) - {"no_data_reason"} == set(later)  # one set of keys, data or not
    replica_equals_emulator(warehouse, server, "canvas", "courses", later)


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
def test_an_empty_table_of_someone_else_is_still_refused(server: EmulatorServer, warehouse: Database) -> None:
    conn = warehouse.connect()
    conn.execute("CREATE TABLE canvas__courses (id INTEGER PRIMARY KEY, mine TEXT)")
    conn.commit()
    with pytest.raises(Exception, match="not managed by this replicator") as info:
        sync("courses")
    # the advice names the operator's real arguments (a first-time user was told "target_schema")
    assert "destination_schema / table_prefix" in str(info.value) and "target_schema" not in str(info.value)
    assert server.emulator.stats.count("create_job") == 0


@pytest.mark.parametrize("warehouse", ["sqlite", "postgres"], indirect=True)
def test_incremental_without_data_changes_nothing_and_keeps_the_watermark(
    server: EmulatorServer, warehouse: Database
) -> None:
    first = sync("users")
    server.emulator.advance(["canvas.users"], updates=2, inserts=1, deletes=1)
    no_data(server, "users", "job")
    result = sync("users")
    assert result["no_data"] is True and result["mode"] == "incremental"
    assert result["watermark"] == first["watermark"] and result["rows_inserted"] == 0
    replica_equals_emulator(warehouse, server, "canvas", "users", first)  # state and rows untouched
    no_data(server, "users", None)
    later = sync("users")
    assert later["mode"] == "incremental" and later["rows_deleted"] == 1
    replica_equals_emulator(warehouse, server, "canvas", "users", later)


# -- CD2QueryOperator and CD2DownloadOperator ----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_query_returns_metadata_without_objects(server: EmulatorServer, variant: str) -> None:
    no_data(server, "users", variant)
    meta = CD2QueryOperator(task_id="q", table="users", format="tsv", poll_interval=0.05).execute({})
    assert meta["no_data"] is True and meta["objects"] == [] and meta["watermark"] is None
    assert meta["kind"] == "snapshot" and "There is no data available yet" in meta["no_data_reason"]
    assert (meta["job_id"] is None) == (variant == "post")
    json.dumps(meta)


def test_query_resumed_from_the_trigger_event_returns_no_data(server: EmulatorServer) -> None:
    no_data(server, "users", "job")
    hook = InstructureHook()
    started = hook.start_query("users", "canvas", format="jsonl")
    job = hook.get_job(started["id"])
    for _ in range(200):
        if job["status"] == "failed":
            break
        time.sleep(0.02)
        job = hook.get_job(started["id"])
    event = {"status": "failed", "job_id": job["id"], "job": job, "message": "failed"}
    op = CD2QueryOperator(task_id="q", table="users", deferrable=True)
    meta = op.execute_complete({}, event, request={"namespace": "canvas", "table": "users", "format": "jsonl"})
    assert meta["no_data"] is True and meta["job_id"] == job["id"] and meta["objects"] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_download_without_data_writes_nothing_and_keeps_the_watermark(
    server: EmulatorServer, tmp_path: Path, variant: str
) -> None:
    def download() -> dict[str, Any]:
        return CD2DownloadOperator(
            task_id="d", table="users", target=tmp_path, incremental=True, poll_interval=0.05
        ).execute({})

    first = download()
    watermark_file = tmp_path / "canvas" / "users" / "_cd2_watermark.json"
    recorded = watermark_file.read_text()
    server.emulator.advance(["canvas.users"], updates=1)
    no_data(server, "users", variant)
    result = download()
    assert result["no_data"] is True and result["file_count"] == 0 and result["files"] == []
    assert result["kind"] == "incremental" and result["since"] == first["watermark"]
    assert watermark_file.read_text() == recorded
    assert sorted(p.name for p in (tmp_path / "canvas" / "users").iterdir()) == [
        "_cd2_watermark.json",
        f"job_{first['job_id']}",
    ]
    json.dumps(result)
    # the same through job= (a query's XCom saying no_data)
    meta = CD2QueryOperator(task_id="q", table="users", poll_interval=0.05).execute({})
    assert CD2DownloadOperator(task_id="d2", job=meta, target=tmp_path).execute({})["file_count"] == 0


def test_sensor_reports_a_no_data_job_as_such(server: EmulatorServer) -> None:
    """The sensor's failed-job path goes through the same job_failure() as the operators."""
    from airflow_provider_instructure.sensors.cd2 import CD2JobSensor

    no_data(server, "users", "job")
    try:
        job = InstructureHook().start_query("users")
        sensor = CD2JobSensor(task_id="s", job_id=job["id"], poke_interval=1, timeout=60)
        with pytest.raises(DapNoDataYetError, match="There is no data available yet"):
            sensor.execute({})
    finally:
        no_data(server, "users", None)
