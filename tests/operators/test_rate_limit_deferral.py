"""Rate limits without sleeping workers: a 429 on job creation or table listing defers the task.

Against the emulator over HTTP with its documented limits switched on (5 job creations and 5
table listings per window), the window scaled to 3 s. ``retry_sleeps`` records every sleep of
the hook's retry loop (tenacity): a deferrable task must never sleep on a 429 in the worker.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapRateLimitError
from airflow_provider_instructure.hooks.instructure import InstructureHook
from airflow_provider_instructure.operators.cd2 import (
    CD2DownloadOperator,
    CD2QueryOperator,
    ListCD2TablesOperator,
)
from airflow_provider_instructure.operators.file_watermark import read_watermark
from airflow_provider_instructure.triggers.cd2 import CD2RateLimitTrigger

#: five tables to use up a window of job creations with
FIVE = ["accounts", "courses", "enrollments", "scores", "submissions"]
#: deferrable, and no floor under the deferral (the emulator's window is 3 s, not a minute)
DEFER = {"deferrable": True, "trigger_first_delay": 0, "poll_interval": 0.05}


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    # post_wait_seconds: a job answers complete from its POST, so a created job never defers to poll
    emulator = Emulator(EmulatorConfig(post_wait_seconds=2.0), rows=5, catalog="core")
    srv = dap_emulator_factory(emulator=emulator)
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_delay=0.01))
    srv.emulator.config.enable_rate_limits(scale=0.05)  # documented limits, 3-second window
    return srv


@pytest.fixture
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every sleep of the hook's retry loop (tenacity's default sleep), still slept."""
    import tenacity.nap

    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 3))
        time.sleep(seconds)

    monkeypatch.setattr(tenacity.nap, "time", SimpleNamespace(sleep=sleep))
    return sleeps


def throttled(server: EmulatorServer, route: str) -> int:
    return sum(1 for c in server.emulator.stats.recent if c.route == route and c.status == 429)


def use_up_creations(server: EmulatorServer) -> None:
    hook = InstructureHook()
    for table in FIVE:
        hook.start_query(table)
    assert throttled(server, "create_job") == 0


def deferred(op: Any, context: dict | None = None) -> TaskDeferred:
    started = time.monotonic()
    with pytest.raises(TaskDeferred) as info:
        op.execute(context or {})
    assert time.monotonic() - started < 1.5, "the task waited in the worker before deferring"
    return info.value


def resume(op: Any, deferral: TaskDeferred, context: dict | None = None) -> Any:
    """What the triggerer and the resumed worker do: rebuild the trigger from its serialized
    form, run it, and call the resume method with the event and the deferral's kwargs."""
    classpath, kwargs = deferral.trigger.serialize()
    assert classpath == "airflow_provider_instructure.triggers.cd2.CD2RateLimitTrigger"
    trigger = CD2RateLimitTrigger(**kwargs)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event

    event = asyncio.run(first_event())
    assert event.payload["status"] == "rate_limit_over"
    json.dumps(event.payload)
    return getattr(op, deferral.method_name)(context or {}, event.payload, **(deferral.kwargs or {}))


def test_a_429_on_job_creation_defers_until_retry_after(server: EmulatorServer, retry_sleeps: list[float]) -> None:
    use_up_creations(server)
    op = CD2QueryOperator(task_id="q", table="users", **DEFER)
    asked = datetime.now(timezone.utc)
    deferral = deferred(op)
    assert throttled(server, "create_job") == 1 and retry_sleeps == []
    trigger = deferral.trigger
    assert isinstance(trigger, DateTimeTrigger)
    # the window's oldest call leaves it within 3 s: Retry-After is 1..3 s, plus up to 20 % (at least 0.25 s)
    wait = (trigger.moment - asked).total_seconds()
    assert 0.9 <= wait <= 3 * 1.2 + 0.5, wait
    assert deferral.method_name == "execute_after_rate_limit"
    assert deferral.kwargs["rate_limit"]["deferrals"] == 1

    meta = resume(op, deferral)
    assert meta["table"] == "users" and meta["kind"] == "snapshot" and meta["objects"]
    assert server.emulator.jobs.created_count == len(FIVE) + 1
    assert retry_sleeps == []


def test_mapped_creations_beyond_the_limit_defer_spread_out(server: EmulatorServer, retry_sleeps: list[float]) -> None:
    tables = [*FIVE, "users", "pseudonyms", "assignments"]

    def run(table: str) -> Any:
        op = CD2QueryOperator(task_id="q", table=table, **DEFER)
        try:
            return op.execute({})
        except TaskDeferred as exc:
            return exc

    started = time.monotonic()
    with ThreadPoolExecutor(len(tables)) as pool:
        outcomes = list(pool.map(run, tables))
    assert time.monotonic() - started < 2.5
    deferrals = [o for o in outcomes if isinstance(o, TaskDeferred)]
    done = [o for o in outcomes if isinstance(o, dict)]
    assert (len(done), len(deferrals)) == (5, 3)
    assert retry_sleeps == [] and throttled(server, "create_job") == 3
    moments = {d.trigger.moment for d in deferrals}
    assert len(moments) == 3, "jitter: tasks throttled together do not come back at the same instant"


def test_a_non_deferrable_task_still_waits_in_the_worker(server: EmulatorServer, retry_sleeps: list[float]) -> None:
    use_up_creations(server)
    meta = CD2QueryOperator(task_id="q", table="users", poll_interval=0.05).execute({})
    assert meta["table"] == "users"
    assert len(retry_sleeps) == 1 and retry_sleeps[0] >= 0.9


def test_the_resumed_task_asks_for_the_same_incremental(server: EmulatorServer) -> None:
    since = server.emulator.latest("canvas", "users")
    server.emulator.advance(["canvas.users"], updates=2)
    use_up_creations(server)
    op = CD2QueryOperator(task_id="q", table="users", since=since.isoformat(), **DEFER)
    deferral = deferred(op)
    carried = deferral.kwargs["rate_limit"]["query"]
    assert carried["since"] == since.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = resume(op, deferral)
    assert meta["kind"] == "incremental" and meta["since"] == carried["since"]
    assert server.emulator.jobs.history[-1].since == since.replace(microsecond=0)


def test_a_429_on_the_snapshot_fallback_resumes_as_that_snapshot(server: EmulatorServer) -> None:
    server.emulator.config.rate_limits = {}
    server.emulator.faults.inject("create_job", "snapshot_required")
    server.emulator.faults.inject("create_job", "429", retry_after=1)
    op = CD2QueryOperator(task_id="q", table="users", since="2024-01-01T00:00:00Z", **DEFER)
    deferral = deferred(op)
    assert deferral.kwargs["rate_limit"]["query"] == {
        "since": None,
        "effective": {"fallback_reason": "SnapshotRequiredError"},
    }
    meta = resume(op, deferral)
    assert meta["kind"] == "snapshot" and meta["fallback_reason"] == "SnapshotRequiredError"
    # the resumed task went straight for the snapshot: no second incremental request
    assert server.emulator.stats.count("create_job") == 3


def test_a_throttled_account_fails_with_a_clear_message(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(rate_limit_wait=30))
    use_up_creations(server)
    op = CD2QueryOperator(task_id="q", table="users", **{**DEFER, "trigger_first_delay": 5})
    state = {"what": "job creation for canvas.users", "first_429_at": time.time() - 28, "deferrals": 7}
    with pytest.raises(DapRateLimitError) as info:
        op.execute_after_rate_limit({}, {"status": "rate_limit_over", "rate_limit": state})
    message = str(info.value)
    assert "DAP rate limit on job creation for canvas.users" in message
    assert "7 deferral(s)" in message and "rate_limit_wait (30 s)" in message and "'instructure_default'" in message


def test_a_429_on_table_listing_defers(server: EmulatorServer, retry_sleeps: list[float]) -> None:
    hook = InstructureHook()
    for _ in range(5):
        hook.list_tables()
    op = ListCD2TablesOperator(task_id="tables", include="course*", deferrable=True, trigger_first_delay=0)
    deferral = deferred(op)
    assert isinstance(deferral.trigger, DateTimeTrigger) and retry_sleeps == []
    assert throttled(server, "list_tables") == 1
    assert resume(op, deferral) == ["course_sections", "courses"]
    # not deferrable: the same 429 is waited on in the worker
    for _ in range(4):
        hook.list_tables()
    assert ListCD2TablesOperator(task_id="tables", include="users").execute({}) == ["users"]
    assert len(retry_sleeps) == 1


def test_a_download_task_defers_and_resumes_its_incremental(
    server: EmulatorServer, retry_sleeps: list[float], tmp_path: Path
) -> None:
    server.emulator.config.rate_limits = {}
    first = CD2DownloadOperator(task_id="d", table="users", target=tmp_path, incremental=True, **DEFER).execute({})
    server.emulator.advance(["canvas.users"], updates=2)
    server.emulator.config.enable_rate_limits(scale=0.05)
    use_up_creations(server)
    op = CD2DownloadOperator(task_id="d", table="users", target=tmp_path, incremental=True, **DEFER)
    deferral = deferred(op)
    result = resume(op, deferral)
    assert result["kind"] == "incremental" and result["since"] == first["watermark"] and result["rows"]
    assert read_watermark(tmp_path, "canvas", "users")["watermark"] == result["watermark"]
    assert retry_sleeps == []


@pytest.mark.dagtest
def test_the_example_sync_dag_finishes_under_the_rate_limits(
    airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, retry_sleeps: list[float]
) -> None:
    """15 tables, 5 job creations per 3 s: tasks defer on 429 (dag.test runs the trigger inline)
    and every task succeeds on its first try."""
    from airflow.models.pool import Pool
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.1), rows=5, catalog="core"))
    server.emulator.config.enable_rate_limits(scale=0.05)
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_delay=0.01))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")})
    )
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    module = importlib.import_module("example_dags.example_cd2_sync_to_database")
    sync = module.dag.get_task("sync")
    assert sync.partial_kwargs["deferrable"] and module.dag.get_task("list_tables").deferrable
    # No floor under the deferral here: dag.test has no scheduler to race with.
    monkeypatch.setitem(sync.partial_kwargs, "trigger_first_delay", 0)

    run = module.dag.test(run_conf={"poll_interval": 0.1})
    assert run.state == "success"
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
        states = {(ti.task_id, ti.map_index): (ti.state, ti.try_number) for ti in tis}
    tables = sorted(server.emulator.dataset.tables["canvas"])
    assert len(states) == len(tables) + 2
    assert all(state == ("success", 1) for state in states.values()), states
    assert throttled(server, "create_job") > 0, "the run should have met the limit"
    assert server.emulator.jobs.created_count == len(tables)
    assert retry_sleeps == []
