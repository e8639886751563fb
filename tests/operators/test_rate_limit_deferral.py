"""Rate limits without sleeping workers: a 429 on job creation or table listing defers the task.

Job creation defers to CD2CreateJobTrigger, which creates the job in the triggerer and resumes
the task with it; table listing defers to CD2RateLimitTrigger and runs again. Against the
emulator over HTTP with its documented limits switched on (5 job creations and 5 table listings
per window), the window scaled to 3 s. ``retry_sleeps`` records every sleep of the hook's retry
loop (tenacity): a deferrable task must never sleep on a 429 in the worker.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
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
from airflow_provider_instructure.triggers.create_job import CD2CreateJobTrigger

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


def run_trigger(deferral: TaskDeferred) -> dict[str, Any]:
    """What the triggerer does: rebuild the trigger from its serialized form and run it to its event."""
    classpath, kwargs = deferral.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event

    event = asyncio.run(first_event())
    json.dumps(event.payload)  # what the triggerer stores
    return event.payload


def resume(op: Any, deferral: TaskDeferred, context: dict | None = None) -> Any:
    """The triggerer, then the resumed worker: the resume method gets the event and the deferral's kwargs."""
    payload = run_trigger(deferral)
    return getattr(op, deferral.method_name)(context or {}, payload, **(deferral.kwargs or {}))


class Store:
    """Stands in for Airflow 3.3's task_state_store (it survives retries of a task instance)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def test_a_429_on_job_creation_defers_to_the_creation_trigger(
    server: EmulatorServer, retry_sleeps: list[float]
) -> None:
    use_up_creations(server)
    op = CD2QueryOperator(task_id="q", table="users", **DEFER)
    asked = time.time()
    deferral = deferred(op)
    assert throttled(server, "create_job") == 1 and retry_sleeps == []
    trigger = deferral.trigger
    assert isinstance(trigger, CD2CreateJobTrigger)
    assert (trigger.namespace, trigger.table, trigger.body) == ("canvas", "users", {"format": "jsonl"})
    # the window's oldest call leaves it within 3 s: the worker's Retry-After (1..3 s) is the trigger's first moment
    assert 0.9 <= trigger.not_before - asked <= 3.5, trigger.not_before - asked
    assert deferral.method_name == "execute_complete"
    created_before = server.emulator.jobs.created_count

    payload = run_trigger(deferral)
    assert payload["status"] == "complete" and payload["created"] is True
    assert payload["request"] == {"namespace": "canvas", "table": "users", "format": "jsonl"}
    # the trigger waited for the window instead of asking at once: no 429 in the triggerer
    assert throttled(server, "create_job") == 1
    assert time.time() - asked >= 0.9
    meta = op.execute_complete({}, payload, **(deferral.kwargs or {}))  # dag.test passes the event alone
    assert meta["table"] == "users" and meta["kind"] == "snapshot" and meta["objects"]
    assert meta["job_id"] == payload["job_id"]
    assert server.emulator.jobs.created_count == created_before + 1 == len(FIVE) + 1
    assert retry_sleeps == []


def test_the_created_job_is_remembered_so_a_retry_resumes_it(server: EmulatorServer) -> None:
    """The trigger created the job but its wait failed: the next try resumes that job, no new creation."""
    use_up_creations(server)
    store = Store()
    op = CD2QueryOperator(task_id="q", table="users", **DEFER)
    deferral = deferred(op, {"task_state_store": store})
    payload = run_trigger(deferral)
    assert payload["created"] and payload["job_id"]
    failed_wait = {**payload, "status": "error", "message": "ConnectError: the triggerer lost DAP", "job": None}
    with pytest.raises(Exception, match="the triggerer lost DAP"):
        op.execute_complete({"task_state_store": store}, failed_wait)
    assert store.get("instructure_cd2_job")["job_id"] == payload["job_id"]
    created = server.emulator.jobs.created_count
    meta = CD2QueryOperator(task_id="q", table="users", **DEFER).execute({"task_state_store": store})
    assert meta["job_id"] == payload["job_id"]
    assert server.emulator.jobs.created_count == created and server.emulator.stats.count("create_job") == 7


def test_mapped_creations_beyond_the_limit_queue_in_the_triggerer(
    server: EmulatorServer, retry_sleeps: list[float]
) -> None:
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
    assert all(isinstance(d.trigger, CD2CreateJobTrigger) for d in deferrals)

    async def triggerer() -> list[dict[str, Any]]:
        async def one(deferral: TaskDeferred) -> dict[str, Any]:
            async for event in deferral.trigger.run():
                return event.payload
            raise AssertionError("no event")

        return await asyncio.gather(*(one(d) for d in deferrals))

    payloads = asyncio.run(triggerer())
    assert [p["status"] for p in payloads] == ["complete"] * 3
    assert time.monotonic() - started < 3 * 1.1 + 1.5  # the next window, not one per table
    assert throttled(server, "create_job") <= 4  # at most one more 429, answered to the queue's head
    assert server.emulator.jobs.created_count == len(tables)


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
    body = deferral.trigger.body
    assert body["since"] == since.strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = resume(op, deferral)
    assert meta["kind"] == "incremental" and meta["since"] == body["since"]
    assert server.emulator.jobs.history[-1].since == since.replace(microsecond=0)


def test_a_429_on_the_snapshot_fallback_creates_that_snapshot(server: EmulatorServer) -> None:
    server.emulator.config.rate_limits = {}
    server.emulator.faults.inject("create_job", "snapshot_required")
    server.emulator.faults.inject("create_job", "429", retry_after=1)
    op = CD2QueryOperator(task_id="q", table="users", since="2024-01-01T00:00:00Z", **DEFER)
    deferral = deferred(op)
    assert deferral.trigger.body == {"format": "jsonl"}
    assert deferral.trigger.effective == {"fallback_reason": "SnapshotRequiredError"}
    meta = resume(op, deferral)
    assert meta["kind"] == "snapshot" and meta["fallback_reason"] == "SnapshotRequiredError"
    # the trigger went straight for the snapshot: no second incremental request
    assert server.emulator.stats.count("create_job") == 3


def test_another_error_in_the_triggerer_creates_the_job_in_the_worker(server: EmulatorServer) -> None:
    """DAP answers the trigger's creation with "no data yet": the worker's logic handles it."""
    server.emulator.config.rate_limits = {}
    server.emulator.config.tables_without_data = {"canvas.users": "post"}
    server.emulator.faults.inject("create_job", "429", retry_after=1)
    op = CD2QueryOperator(task_id="q", table="users", **DEFER)
    deferral = deferred(op)
    payload = run_trigger(deferral)
    assert payload["status"] == "create_in_worker" and payload["created"] is False
    assert "There is no data available yet" in payload["message"]
    meta = op.execute_complete({}, payload)
    assert meta["no_data"] is True and meta["watermark"] is None
    assert server.emulator.stats.count("create_job") == 3  # the worker's 429, the trigger's, the worker's again


def test_a_throttled_account_fails_with_a_clear_message(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(rate_limit_wait=30))
    use_up_creations(server)
    op = CD2QueryOperator(task_id="q", table="users", **DEFER)
    deferral = deferred(op)
    deferral.trigger.rate_limited_since = time.time() - 29  # throttled for 29 s already: 1..3 s more is too long
    payload = run_trigger(deferral)
    assert payload["status"] == "error" and payload["error_type"] == "DapRateLimitError"
    with pytest.raises(DapRateLimitError) as info:
        op.execute_complete({}, payload)
    message = str(info.value)
    assert "DAP rate limit on job creation for canvas.users" in message
    assert "rate_limit_wait of connection 'instructure_default' is 30 s" in message
    assert server.emulator.jobs.created_count == len(FIVE)


def test_a_429_on_table_listing_defers(server: EmulatorServer, retry_sleeps: list[float]) -> None:
    hook = InstructureHook()
    for _ in range(5):
        hook.list_tables()
    op = ListCD2TablesOperator(task_id="tables", include="course*", deferrable=True, trigger_first_delay=0)
    deferral = deferred(op)
    assert isinstance(deferral.trigger, DateTimeTrigger) and retry_sleeps == []
    assert deferral.method_name == "execute_after_rate_limit"
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
    """14 tables, 2 job creations per 8 s: tasks defer on 429 to CD2CreateJobTrigger (dag.test runs
    it inline), which creates the job; every task succeeds on its first try, one job per table."""
    from airflow.models.pool import Pool
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from tests.test_example_dags import fresh_dag_module

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.1), rows=5, catalog="core"))
    server.emulator.config.enable_rate_limits(scale=0.05)
    # dag.test() runs the mapped tasks one after another, so job creations come at the pace of
    # task start-up: 2-5 s apart on Airflow 3.1.8 (matrix log), where 5 per 3 s was never met
    # (0 429s). 2 per 8 s is met at that pace too, so the run always meets the limit it must
    # finish under.
    server.emulator.config.rate_limits["create_job"] = (2, 8.0)
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_delay=0.01))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")})
    )
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    # A new DAG object: an earlier dag.test() of this module (the OpenLineage test, run_conf
    # tables="c*") leaves its params in the tasks (see fresh_dag_module).
    module = fresh_dag_module("example_dags.example_cd2_sync_to_database")
    sync = module.dag.get_task("sync")
    assert sync.partial_kwargs["deferrable"] and module.dag.get_task("list_tables").deferrable
    # No floor under the deferral here: dag.test has no scheduler to race with.
    monkeypatch.setitem(sync.partial_kwargs, "trigger_first_delay", 0)

    started = time.monotonic()
    run = module.dag.test(run_conf={"poll_interval": 0.1})
    elapsed = time.monotonic() - started
    assert run.state == "success"
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
        states = {(ti.task_id, ti.map_index): (ti.state, ti.try_number) for ti in tis}
    tables = sorted(server.emulator.dataset.tables["canvas"])
    assert len(states) == len(tables) + 2
    assert all(state == ("success", 1) for state in states.values()), states
    rejected = server.emulator.limiter.rejected_counts().get("create_job", 0)
    print(f"example sync DAG, {len(tables)} tables: {elapsed:.1f} s, {rejected} 429s on job creation")
    assert rejected > 0, "the run should have met the limit"
    assert server.emulator.jobs.created_count == len(tables)
    assert retry_sleeps == []
