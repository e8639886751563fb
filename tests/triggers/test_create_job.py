"""CD2CreateJobTrigger against the emulator over HTTP: job creation queued at one gate per account.

The emulator's documented limits are on, the window scaled to 3 s (5 job creations per 3 s).
Triggers run concurrently in one event loop, as in the triggerer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.hooks.dap_protocol import build_query
from airflow_provider_instructure.triggers.create_job import CD2CreateJobTrigger

#: the emulator's documented limit, scaled: 5 creations per 3 s
PER_WINDOW, WINDOW = 5, 3.0
TABLES = [
    "accounts", "assignment_groups", "assignments", "calendar_events", "course_sections", "courses",
    "enrollment_terms", "enrollments", "pseudonyms", "scores", "submissions", "users",
]  # fmt: skip


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    # post_wait_seconds: a job answers complete from its POST, so the makespan is the creations'
    emulator = Emulator(EmulatorConfig(post_wait_seconds=2.0), rows=5, catalog="core")
    srv = dap_emulator_factory(emulator=emulator)
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_delay=0.01))
    srv.emulator.config.enable_rate_limits(scale=WINDOW / 60)
    return srv


@pytest.fixture
def creations(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Monotonic times at which the emulator created a job."""
    times: list[float] = []
    submit = server.emulator.jobs.submit

    def recording(*args: Any, **kwargs: Any) -> Any:
        job, created = submit(*args, **kwargs)
        if created:
            times.append(time.monotonic())
        return job, created

    monkeypatch.setattr(server.emulator.jobs, "submit", recording)
    return times


def trigger(table: str, **kwargs: Any) -> CD2CreateJobTrigger:
    body = build_query("jsonl")
    request = {"namespace": "canvas", "table": table, **body}
    options = {"poll_interval": 0.05, "first_delay": 0, **kwargs}
    return CD2CreateJobTrigger("canvas", table, body, request=request, **options)


async def run_all(triggers: list[CD2CreateJobTrigger]) -> list[dict[str, Any]]:
    async def one(t: CD2CreateJobTrigger) -> dict[str, Any]:
        events = [e.payload async for e in t.run()]
        assert len(events) == 1
        return events[0]

    return await asyncio.gather(*(one(t) for t in triggers))


def bursts(times: list[float], gap: float = 1.0) -> list[int]:
    """Creations grouped where more than ``gap`` seconds pass between two of them."""
    sizes: list[int] = []
    previous = None
    for t in sorted(times):
        if previous is None or t - previous > gap:
            sizes.append(0)
        sizes[-1] += 1
        previous = t
    return sizes


def test_serialize_round_trip() -> None:
    t = trigger("users", job_timeout=600, not_before=1234.5, rate_limited_since=1200.0)
    classpath, kwargs = t.serialize()
    assert classpath == "airflow_provider_instructure.triggers.create_job.CD2CreateJobTrigger"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["body"] == {"format": "jsonl"} and kwargs["not_before"] == 1234.5 and kwargs["job_timeout"] == 600
    assert "token" not in repr(kwargs).lower() and "secret" not in repr(kwargs).lower()


def test_twelve_tables_queue_at_one_gate_one_429_per_window(server: EmulatorServer, creations: list[float]) -> None:
    """12 triggers at once: 5 creations per window, one 429 per window beyond the first, and the
    makespan of the windows the tables need (here the jobs are done at creation)."""
    started = time.monotonic()
    payloads = asyncio.run(run_all([trigger(t) for t in TABLES]))
    ended = time.monotonic()
    elapsed = ended - started

    assert [p["status"] for p in payloads] == ["complete"] * len(TABLES)
    assert all(p["created"] and p["job"]["objects"] for p in payloads)
    assert sorted(p["request"]["table"] for p in payloads) == sorted(TABLES)
    assert server.emulator.jobs.created_count == len(TABLES)
    windows = math.ceil(len(TABLES) / PER_WINDOW)
    assert bursts(creations) == [5, 5, 2]
    rejected = server.emulator.limiter.rejected_counts().get("create_job", 0)
    # One 429 per window the queue had to wait for (the head's), not one per waiting table (7 + 2).
    assert rejected == windows - 1, rejected
    # The lower bound: the last window opens (windows - 1) windows after the first creation (the
    # jobs take no time here). Each window costs a little more: Retry-After is whole seconds,
    # counted from the 429 that follows the window's creations (one POST at a time, ~30 ms each).
    bound = (windows - 1) * WINDOW
    limited = ended - min(creations)
    print(f"12 tables: {elapsed:.2f} s in all, {limited:.2f} s from the first creation; bound {bound:.1f} s")
    assert limited <= 1.1 * bound, (limited, bound)
    # + reading the connection, 12 clients and one login before the first creation (~1 s here)
    assert elapsed <= 1.1 * bound + 1.5, (elapsed, bound)


def test_the_worker_retry_after_is_honoured_and_fifo(server: EmulatorServer, creations: list[float]) -> None:
    """Triggers deferred with the worker's Retry-After do not ask before it; earlier ones go first."""
    from airflow_provider_instructure.hooks.instructure import InstructureHook

    hook = InstructureHook()
    for table in TABLES[:5]:
        hook.start_query(table)
    not_before = time.time() + WINDOW

    async def staggered() -> list[dict[str, Any]]:
        triggers = [trigger(t, not_before=not_before) for t in TABLES[5:]]
        tasks = []
        for t in triggers:  # deferred one after the other, as the worker's 429s come in
            tasks.append(asyncio.ensure_future(run_all([t])))
            await asyncio.sleep(0.01)
        return [p for group in await asyncio.gather(*tasks) for p in group]

    payloads = asyncio.run(staggered())
    assert all(p["status"] == "complete" for p in payloads)
    assert server.emulator.limiter.rejected_counts().get("create_job", 0) <= 2
    assert bursts(creations) == [5, 5, 2]
    created = server.emulator.jobs.history[5:]
    assert [q.table for q in created] == TABLES[5:], "first deferred, first created"


def test_the_first_event_waits_for_first_delay(server: EmulatorServer) -> None:
    started = time.monotonic()
    (payload,) = asyncio.run(run_all([trigger("users", first_delay=1.5)]))
    assert payload["status"] == "complete"
    assert time.monotonic() - started >= 1.5


def test_a_running_job_is_polled_until_complete(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_progress="polls"), rows=5, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    (payload,) = asyncio.run(run_all([trigger("users")]))
    assert payload["status"] == "complete" and payload["job"]["objects"]
    assert srv.emulator.stats.count("get_job") >= 2 and srv.emulator.stats.count("create_job") == 1


def test_a_failed_job_and_a_job_timeout(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=60), rows=5, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    (timeout,) = asyncio.run(run_all([trigger("users", job_timeout=0.3)]))
    assert timeout["status"] == "timeout" and timeout["created"] and timeout["job_id"]
    srv.emulator.config.job_running_seconds = 0
    srv.emulator.faults.inject("create_job", "fail_job")
    (failed,) = asyncio.run(run_all([trigger("courses")]))
    assert failed["status"] == "failed" and failed["created"] and failed["job"]["error"]


def test_other_creation_errors_go_back_to_the_worker(server: EmulatorServer) -> None:
    server.emulator.faults.inject("create_job", "snapshot_required")
    (payload,) = asyncio.run(run_all([trigger("users")]))
    assert payload["status"] == "create_in_worker" and payload["created"] is False and payload["job_id"] is None
    assert "SnapshotRequired" in payload["message"] and payload["body"] == {"format": "jsonl"}
