"""CD2QueryOperator, CD2DownloadOperator and CD2JobSensor against the emulator."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import (
    DapJobFailed,
    DapServerError,
    InstructureConfigError,
    InstructureError,
)
from airflow_provider_instructure.operators.cd2 import JOB_STATE_KEY, CD2DownloadOperator, CD2QueryOperator
from airflow_provider_instructure.operators.file_watermark import WATERMARK_FILE, read_watermark
from airflow_provider_instructure.sensors.cd2 import CD2JobSensor
from tests.dap_files import read_records


class FakeStateStore:
    """Stands in for Airflow 3.3's task_state_store (it survives retries of a task instance)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


#: Defer at once and let the trigger check at once, so these tests take the deferred path
#: (a quick job otherwise finishes in the worker, see test_query_polling.py).
DEFER_NOW = {"defer_after": 0, "trigger_first_delay": 0}


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(parts=2, job_running_seconds=0.2), rows=20))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_delay=0.01))
    return srv


def run_deferred(op: CD2QueryOperator, context: dict) -> Any:
    """Run an operator the way Airflow does: execute, then the trigger, then execute_complete."""
    try:
        return op.execute(context)
    except TaskDeferred as deferred:
        trigger = deferred.trigger
        classpath, kwargs = trigger.serialize()
        assert classpath.endswith("CD2JobTrigger") and "token" not in json.dumps(kwargs)

        async def first_event() -> Any:
            async for event in trigger.run():
                return event

        event = asyncio.run(first_event())
        return getattr(op, deferred.method_name)(context, event.payload, **(deferred.kwargs or {}))


def test_query_returns_job_metadata(server: EmulatorServer) -> None:
    meta = CD2QueryOperator(task_id="q", table="users", format="tsv", poll_interval=0.05).execute({})
    assert meta["kind"] == "snapshot" and meta["at"] == meta["watermark"]
    assert meta["namespace"] == "canvas" and meta["table"] == "users" and meta["format"] == "tsv"
    assert len(meta["objects"]) == 2 and meta["schema_version"] == 1
    json.dumps(meta)


def test_deferrable_query_defers_and_completes(server: EmulatorServer) -> None:
    op = CD2QueryOperator(task_id="q", table="courses", deferrable=True, poll_interval=0.05, **DEFER_NOW)
    with pytest.raises(TaskDeferred) as info:
        op.execute({})
    assert info.value.method_name == "execute_complete"
    meta = run_deferred(
        CD2QueryOperator(task_id="q", table="courses", deferrable=True, poll_interval=0.05, **DEFER_NOW), {}
    )
    assert meta["kind"] == "snapshot" and meta["objects"]


def test_job_already_complete_is_not_deferred(server: EmulatorServer) -> None:
    server.emulator.config.job_running_seconds = 0
    server.emulator.config.post_wait_seconds = 2
    meta = CD2QueryOperator(task_id="q", table="users", deferrable=True).execute({})  # no TaskDeferred
    assert meta["kind"] == "snapshot"


@pytest.mark.parametrize("deferrable", [False, True])
def test_failed_job_fails_task_with_job_id_and_uuid(server: EmulatorServer, deferrable: bool) -> None:
    server.emulator.faults.inject("create_job", "fail_job")
    op = CD2QueryOperator(task_id="q", table="users", deferrable=deferrable, poll_interval=0.05, **DEFER_NOW)
    with pytest.raises(DapJobFailed) as info:
        run_deferred(op, {})
    assert info.value.job_id in str(info.value) and info.value.error_uuid in str(info.value)


@pytest.mark.parametrize("deferrable", [False, True])
def test_retry_resumes_the_same_job(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, deferrable: bool) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_limit=1))
    server.emulator.config.job_running_seconds = 0.5
    store = FakeStateStore()
    context = {"task_state_store": store}
    server.emulator.faults.inject("get_job", "500", count=3)
    op = CD2QueryOperator(task_id="q", table="users", deferrable=deferrable, poll_interval=0.05, **DEFER_NOW)
    with pytest.raises((DapServerError, InstructureError), match="500"):  # try 1: job started, polling failed
        run_deferred(op, context)
    started = store.get(JOB_STATE_KEY)["job_id"]
    server.emulator.advance(["canvas.users"], updates=1)  # new data: a fresh POST would make a new job
    server.emulator.faults.clear()
    meta = run_deferred(
        CD2QueryOperator(task_id="q", table="users", deferrable=deferrable, poll_interval=0.05, **DEFER_NOW), context
    )
    assert meta["job_id"] == started
    assert server.emulator.stats.count("create_job") == 1
    assert store.get(JOB_STATE_KEY) is None  # forgotten once done: a cleared task starts afresh


def test_incremental_falls_back_to_snapshot(server: EmulatorServer) -> None:
    snap = CD2QueryOperator(task_id="q", table="users", poll_interval=0.05).execute({})
    server.emulator.reload("canvas.users")
    meta = CD2QueryOperator(task_id="q", table="users", since=snap["at"], poll_interval=0.05).execute({})
    assert meta["kind"] == "snapshot" and meta["fallback_reason"] == "SnapshotRequiredError"
    strict = CD2QueryOperator(task_id="q", table="users", since=snap["at"], snapshot_fallback=False)
    with pytest.raises(Exception, match="SnapshotRequiredError"):
        strict.execute({})


def test_bad_arguments_fail_before_any_call(server: EmulatorServer, tmp_path: Path) -> None:
    with pytest.raises(InstructureConfigError, match="no time zone"):
        CD2QueryOperator(task_id="q", table="users", since="2024-05-01 00:00").execute({})
    with pytest.raises(InstructureConfigError, match="exactly one of job"):
        CD2DownloadOperator(task_id="d", target=tmp_path)
    with pytest.raises(InstructureConfigError, match="exactly one of job"):
        CD2DownloadOperator(task_id="d", target=tmp_path, job={"job_id": "x"}, table="users")
    with pytest.raises(InstructureConfigError, match="incremental=True needs table"):
        CD2DownloadOperator(task_id="d", target=tmp_path, job={"job_id": "x"}, incremental=True)
    assert server.emulator.stats.count("create_job") == 0


def test_download_from_query_xcom(server: EmulatorServer, tmp_path: Path) -> None:
    meta = CD2QueryOperator(task_id="q", table="courses", format="jsonl", poll_interval=0.05).execute({})
    result = CD2DownloadOperator(task_id="d", job=meta, target=str(tmp_path)).execute({})
    job_dir = tmp_path / "canvas" / "courses" / f"job_{meta['job_id']}"
    assert result["target"] == str(job_dir) and result["file_count"] == 2
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(Path(f["path"]).name for f in result["files"])
    assert result["rows"] == 20 and result["bytes"] == sum(p.stat().st_size for p in job_dir.iterdir())
    json.dumps(result)


def test_query_and_download_in_one_deferrable_task(server: EmulatorServer, tmp_path: Path) -> None:
    op = CD2DownloadOperator(
        task_id="d", table="web_logs", namespace="canvas_logs", format="tsv", target=tmp_path, deferrable=True,
        poll_interval=0.05, **DEFER_NOW,
    )  # fmt: skip
    result = run_deferred(op, {})
    assert result["kind"] == "snapshot" and result["rows"] == 20
    assert not (tmp_path / "canvas_logs" / "web_logs" / WATERMARK_FILE).exists()  # only incremental mode records one


def test_incremental_chain_from_the_watermark_file(server: EmulatorServer, tmp_path: Path) -> None:
    """Snapshot, then two incrementals, each starting at the previous run's watermark; then a
    SnapshotRequiredError makes the chain start over with a snapshot."""

    def run_once() -> dict:
        op = CD2DownloadOperator(
            task_id="d", table="users", format="tsv", target=tmp_path, incremental=True, poll_interval=0.05
        )
        return op.execute({})

    first = run_once()
    assert first["kind"] == "snapshot"
    assert read_watermark(tmp_path, "canvas", "users")["watermark"] == first["at"]
    schema = server.emulator.dataset.table("canvas", "users").versioned_schema
    for round_ in range(2):
        server.emulator.advance(["canvas.users"], updates=3, inserts=1, deletes=1)
        previous = read_watermark(tmp_path, "canvas", "users")["watermark"]
        result = run_once()
        assert result["kind"] == "incremental" and result["since"] == previous, round_
        assert result["until"] == result["watermark"] == read_watermark(tmp_path, "canvas", "users")["watermark"]
        records = read_records([Path(f["path"]) for f in result["files"]], "tsv", schema)
        assert sorted(r["action"] for r in records) == ["D", "U", "U", "U", "U"]
    server.emulator.reload("canvas.users")
    restarted = run_once()
    assert restarted["kind"] == "snapshot" and restarted["fallback_reason"] == "SnapshotRequiredError"
    assert read_watermark(tmp_path, "canvas", "users")["kind"] == "snapshot"


def test_failed_download_keeps_the_previous_watermark(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = CD2DownloadOperator(task_id="d", table="users", target=tmp_path, incremental=True, poll_interval=0.05)
    first = op.execute({})
    server.emulator.advance(["canvas.users"], updates=2)
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_limit=1, retry_delay=0.01))
    server.emulator.faults.inject("download", "truncate", count=5)
    with pytest.raises(Exception):  # noqa: B017 - whichever download error surfaces
        CD2DownloadOperator(task_id="d", table="users", target=tmp_path, incremental=True, poll_interval=0.05).execute(
            {}
        )
    assert read_watermark(tmp_path, "canvas", "users")["watermark"] == first["watermark"]


def test_sensor_poke_and_deferrable(server: EmulatorServer) -> None:
    from airflow_provider_instructure.hooks.instructure import InstructureHook

    job = InstructureHook().start_query("users")
    sensor = CD2JobSensor(task_id="s", job_id=job["id"], poke_interval=0.05, timeout=10)
    assert sensor.poke({}) is False or sensor.poke({}).is_done
    done = run_deferred(
        CD2JobSensor(task_id="s", job_id=job["id"], deferrable=True, poke_interval=0.05, **DEFER_NOW), {}
    )
    assert done["id"] == job["id"] and done["status"] == "complete"
    poked = CD2JobSensor(task_id="s", job_id=job["id"], poke_interval=0.05, timeout=10).poke({})
    assert poked.is_done and poked.xcom_value["id"] == job["id"]
    server.emulator.faults.inject("create_job", "fail_job")
    failed = InstructureHook().start_query("accounts")
    with pytest.raises(DapJobFailed):
        run_deferred(
            CD2JobSensor(task_id="s", job_id=failed["id"], deferrable=True, poke_interval=0.05, **DEFER_NOW), {}
        )


def test_rate_limited_job_creation_waits_instead_of_failing(server: EmulatorServer) -> None:
    server.emulator.config.enable_rate_limits(scale=0.05)  # 5 job creations per 3 s
    tables = ["users", "courses", "accounts", "scores", "enrollments", "submissions", "pseudonyms"]
    for table in tables:
        assert CD2QueryOperator(task_id=f"q_{table}", table=table, poll_interval=0.05).execute({})["table"] == table
    throttled = [c for c in server.emulator.stats.recent if c.route == "create_job" and c.status == 429]
    assert throttled, "the limit should have been hit"
    assert server.emulator.jobs.created_count == len(tables)
