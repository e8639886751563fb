"""CD2JobTrigger against the emulator: async end to end, one event, one login across polls and triggers."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.hooks.instructure import InstructureHook, clear_token_caches
from airflow_provider_instructure.triggers.cd2 import CD2JobTrigger


@pytest.fixture
def slow_server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """Jobs advance one state per poll: waiting, running (x N), complete."""
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_progress="polls"), rows=10))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    return srv


def as_triggerer(server: EmulatorServer) -> None:
    """Forget the worker's token and counters: the triggerer is another process."""
    clear_token_caches()
    server.emulator.stats.reset()


def events(trigger: CD2JobTrigger) -> list:
    async def collect() -> list:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


def test_serialize_round_trip() -> None:
    trigger = CD2JobTrigger("job-1", "my_conn", poll_interval=7, end_time=1234.5, hook_params={"timeout": 5})
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_instructure.triggers.cd2.CD2JobTrigger"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs == {
        "job_id": "job-1",
        "instructure_conn_id": "my_conn",
        "poll_interval": 7.0,
        "end_time": 1234.5,
        "hook_params": {"timeout": 5},
        "first_delay": 10.0,
        "poll_step": 0,
    }
    assert "token" not in repr(kwargs).lower() and "password" not in repr(kwargs).lower()


def test_complete_event_after_many_polls_with_one_login(slow_server: EmulatorServer) -> None:
    job = InstructureHook().start_query("users")  # the worker's own login
    as_triggerer(slow_server)
    result = events(CD2JobTrigger(job["id"], poll_interval=0.01, first_delay=0))
    assert len(result) == 1
    payload = result[0].payload
    assert payload["status"] == "complete" and payload["job_id"] == job["id"]
    assert payload["job"]["objects"] and payload["job"]["schema_version"] == 1
    assert slow_server.emulator.stats.count("get_job") >= 2
    assert slow_server.emulator.stats.count("login") == 1


def test_failed_event(slow_server: EmulatorServer) -> None:
    slow_server.emulator.faults.inject("create_job", "fail_job")
    job = InstructureHook().start_query("users")
    (event,) = events(CD2JobTrigger(job["id"], poll_interval=0.01, first_delay=0))
    assert event.payload["status"] == "failed"
    assert job["id"] in event.payload["message"] and event.payload["job"]["error"]["uuid"] in event.payload["message"]


def test_timeout_event(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=60), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    job = InstructureHook().start_query("users")
    started = time.monotonic()
    (event,) = events(CD2JobTrigger(job["id"], poll_interval=0.2, first_delay=0, end_time=time.time() + 0.5))
    assert event.payload["status"] == "timeout" and "still running" in event.payload["message"]
    assert time.monotonic() - started < 3


def test_error_event_for_unknown_job(slow_server: EmulatorServer) -> None:
    (event,) = events(CD2JobTrigger("no-such-job", poll_interval=0.01, first_delay=0))
    assert event.payload["status"] == "error" and "404" in event.payload["message"]


def test_transient_errors_while_polling_are_retried(slow_server: EmulatorServer) -> None:
    job = InstructureHook().start_query("users")
    slow_server.emulator.faults.inject("get_job", "503", count=2)
    slow_server.emulator.faults.inject("get_job", "drop", count=1)
    (event,) = events(CD2JobTrigger(job["id"], poll_interval=0.01, first_delay=0, hook_params={"retry_delay": 0.01}))
    assert event.payload["status"] == "complete"


def test_revoked_token_relogs_in_once(slow_server: EmulatorServer) -> None:
    job = InstructureHook().start_query("users")
    as_triggerer(slow_server)
    slow_server.emulator.faults.inject("get_job", "revoke_token")
    (event,) = events(CD2JobTrigger(job["id"], poll_interval=0.01, first_delay=0))
    assert event.payload["status"] == "complete"
    assert slow_server.emulator.stats.count("login") == 2


def test_hundred_triggers_share_one_login(slow_server: EmulatorServer) -> None:
    hook = InstructureHook()
    jobs = [hook.start_query(table)["id"] for table in ("users", "courses", "accounts", "scores")]
    as_triggerer(slow_server)

    async def all_of_them() -> list:
        async def one(job_id: str) -> list:
            return [e async for e in CD2JobTrigger(job_id, poll_interval=0.01, first_delay=0).run()]

        return await asyncio.gather(*(one(jobs[i % len(jobs)]) for i in range(100)))

    results = asyncio.run(all_of_them())
    assert all(len(r) == 1 and r[0].payload["status"] == "complete" for r in results)
    assert slow_server.emulator.stats.count("login") == 1


def test_run_does_not_block_the_event_loop(slow_server: EmulatorServer) -> None:
    """While a trigger polls, other coroutines keep running (no blocking call inside run())."""
    job = InstructureHook().start_query("users")

    async def main() -> tuple[list, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        result = [e async for e in CD2JobTrigger(job["id"], poll_interval=0.05, first_delay=0).run()]
        done.set()
        await task
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result[0].payload["status"] == "complete"
    assert ticks >= 5


def test_trigger_reuses_a_token_already_held_in_its_process(slow_server: EmulatorServer) -> None:
    """dag.test() runs triggers in the worker's process: no second login there."""
    job = InstructureHook().start_query("users")
    (event,) = events(CD2JobTrigger(job["id"], poll_interval=0.01, first_delay=0))
    assert event.payload["status"] == "complete"
    assert slow_server.emulator.stats.count("login") == 1


# -- the poll schedule in the triggerer --------------------------------------------------------


@pytest.fixture
def slow_job(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> tuple[EmulatorServer, str]:
    """A job that stays running until the test releases it; the trigger's waits are recorded, not slept."""
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=3600), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    job = InstructureHook().start_query("users")
    as_triggerer(srv)
    return srv, job["id"]


def record_sleeps(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, complete_after: int) -> list[float]:
    """Replace the trigger's sleep; the job completes after ``complete_after`` waits."""
    from airflow_provider_instructure.triggers import cd2

    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))
        if len(waits) >= complete_after:
            server.emulator.config.job_running_seconds = 0
        await asyncio.sleep(0)

    monkeypatch.setattr(cd2, "_sleep", fake_sleep)
    return waits


@pytest.mark.parametrize(
    ("first_delay", "poll_step", "expected"),
    [
        (10.0, 3, [10.0, 16.0, 30.0, 30.0]),  # after the worker's checks at 1, 3, 7 s: floor, then doubling
        (10.0, 0, [10.0, 16.0, 30.0, 30.0]),  # the floor covers 1, 2, 4, 8: not back to short waits
        (0.0, 0, [1.0, 2.0, 4.0, 8.0]),
        (0.0, 3, [8.0, 16.0, 30.0, 30.0]),  # continues the worker's schedule instead of restarting at 1 s
    ],
)
def test_first_check_respects_the_floor_then_doubles_up_to_poll_interval(
    slow_job: tuple[EmulatorServer, str],
    monkeypatch: pytest.MonkeyPatch,
    first_delay: float,
    poll_step: int,
    expected: list[float],
) -> None:
    server, job_id = slow_job
    waits = record_sleeps(monkeypatch, server, complete_after=4)
    trigger = CD2JobTrigger(job_id, poll_interval=30, first_delay=first_delay, poll_step=poll_step)
    (event,) = events(trigger)
    assert event.payload["status"] == "complete"
    assert waits == expected
    assert server.emulator.stats.count("get_job") == 4  # one check after each wait, none before the first


def test_default_first_delay_is_the_documented_floor(slow_job: tuple[EmulatorServer, str], monkeypatch) -> None:
    from airflow_provider_instructure.hooks.dap_protocol import DEFAULT_TRIGGER_FIRST_DELAY

    server, job_id = slow_job
    waits = record_sleeps(monkeypatch, server, complete_after=1)
    (event,) = events(CD2JobTrigger(job_id, poll_interval=30))
    assert event.payload["status"] == "complete"
    assert waits == [DEFAULT_TRIGGER_FIRST_DELAY] and DEFAULT_TRIGGER_FIRST_DELAY >= 5


def test_no_event_of_any_kind_before_the_first_delay(
    slow_job: tuple[EmulatorServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline already past or an unknown job still waits for the floor: any early event risks the race."""
    server, job_id = slow_job
    waits = record_sleeps(monkeypatch, server, complete_after=99)
    (event,) = events(CD2JobTrigger(job_id, poll_interval=30, first_delay=10, end_time=time.time() - 1))
    assert event.payload["status"] == "timeout" and waits == [10.0]
    waits.clear()
    (event,) = events(CD2JobTrigger("no-such-job", poll_interval=30, first_delay=10))
    assert event.payload["status"] == "error" and waits == [10.0]


def test_deadline_shortens_later_waits(slow_job: tuple[EmulatorServer, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_instructure.triggers import cd2

    _, job_id = slow_job
    waits: list[float] = []

    async def real_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    monkeypatch.setattr(cd2, "_sleep", real_sleep)
    # The schedule's second wait would be the full 2 s; the deadline 3 s out cuts it short, however
    # late the first check comes back on a loaded machine.
    end_time = time.time() + 3.0
    (event,) = events(CD2JobTrigger(job_id, poll_interval=2.0, first_delay=0, end_time=end_time))
    assert event.payload["status"] == "timeout" and "still running" in event.payload["message"]
    assert len(waits) >= 2 and waits[0] == 1.0
    assert waits[-1] < 2.0  # the last wait ends at the deadline, not a full interval past it
    assert end_time <= time.time() < end_time + 1.5
