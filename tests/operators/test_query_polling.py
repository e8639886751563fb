"""CD2QueryOperator and CD2JobSensor on the shared poll schedule, against the emulator.

A quick job finishes in the worker (no deferral); a slow one defers with the schedule's state in
the trigger's kwargs, and the trigger continues it after its minimum first delay. Asserted on the
waits taken and the emulator's counters, not on tight wall-clock figures.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapJobTimeout, InstructureConfigError
from airflow_provider_instructure.hooks.instructure import InstructureHook, clear_token_caches
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from airflow_provider_instructure.sensors.cd2 import CD2JobSensor
from airflow_provider_instructure.triggers import cd2 as trigger_module


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """Jobs take about 2 s (0.5 s waiting, 1.5 s running), like small tables on DAP."""
    srv = dap_emulator_factory(
        emulator=Emulator(EmulatorConfig(job_waiting_seconds=0.5, job_running_seconds=1.5), rows=5)
    )
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_delay=0.01))
    return srv


def run_trigger(deferred: TaskDeferred, server: EmulatorServer, monkeypatch, complete_after: int) -> tuple:
    """Run the deferred trigger as the triggerer would (from its serialized kwargs), recording
    its waits without sleeping them; the job completes after ``complete_after`` waits."""
    classpath, kwargs = deferred.trigger.serialize()
    module, _, name = classpath.rpartition(".")
    trigger = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    clear_token_caches()  # the triggerer is another process
    server.emulator.stats.reset()
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))
        if len(waits) >= complete_after:
            server.emulator.config.job_waiting_seconds = server.emulator.config.job_running_seconds = 0
        await asyncio.sleep(0)

    monkeypatch.setattr(trigger_module, "_sleep", fake_sleep)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event

    return asyncio.run(first_event()), waits


@pytest.mark.parametrize("deferrable", [True, False])
def test_a_quick_job_finishes_in_the_worker_within_seconds(
    server: EmulatorServer, poll_waits, deferrable: bool
) -> None:
    """Finding 12: a 2 s job used to cost the whole 30 s poll_interval (or a deferral)."""
    waits = poll_waits(real=True)
    started = time.monotonic()
    meta = CD2QueryOperator(task_id="q", table="users", deferrable=deferrable, poll_interval=30).execute({})
    assert meta["kind"] == "snapshot" and meta["objects"]  # no TaskDeferred
    assert waits == [1.0, 2.0]  # checks at 1 and 3 s; the job was done at 2 s
    assert server.emulator.stats.count("get_job") == 2  # the POST's answer is the check at 0 s
    assert time.monotonic() - started < 10


def test_a_slow_job_defers_and_the_trigger_continues_the_schedule(
    server: EmulatorServer, poll_waits, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.emulator.config.job_running_seconds = 3600
    waits = poll_waits(real=False)
    op = CD2QueryOperator(task_id="q", table="users", deferrable=True, poll_interval=30)
    with pytest.raises(TaskDeferred) as info:
        op.execute({})
    assert waits == [1.0, 2.0, 4.0]  # the in-worker checks at 1, 3 and 7 s, then the deferral
    assert server.emulator.stats.count("get_job") == 3
    classpath, kwargs = info.value.trigger.serialize()
    assert classpath.endswith("CD2JobTrigger")
    assert kwargs["poll_step"] == 3 and kwargs["first_delay"] == 10.0 and kwargs["poll_interval"] == 30.0
    assert kwargs["end_time"] is None
    event, trigger_waits = run_trigger(info.value, server, monkeypatch, complete_after=3)
    assert event.payload["status"] == "complete"
    assert trigger_waits == [10.0, 16.0, 30.0]  # the floor after the deferral, then doubling to poll_interval
    assert server.emulator.stats.count("get_job") == 3
    meta = op.execute_complete({}, event.payload, **info.value.kwargs)
    assert meta["job_id"] == event.payload["job_id"]


def test_defer_after_and_trigger_first_delay_are_settings(
    server: EmulatorServer, poll_waits, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.emulator.config.job_running_seconds = 3600
    waits = poll_waits(real=False)
    op = CD2QueryOperator(
        task_id="q", table="users", deferrable=True, poll_interval="60", defer_after="0", trigger_first_delay="5"
    )  # templated fields arrive as strings
    with pytest.raises(TaskDeferred) as info:
        op.execute({})
    assert waits == [] and server.emulator.stats.count("get_job") == 0  # deferred right after the POST
    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["poll_step"] == 0 and kwargs["first_delay"] == 5.0 and kwargs["poll_interval"] == 60.0
    _, trigger_waits = run_trigger(info.value, server, monkeypatch, complete_after=4)
    assert trigger_waits == [5.0, 8.0, 16.0, 32.0]
    with pytest.raises(InstructureConfigError, match="defer_after"):
        CD2QueryOperator(task_id="q", table="users", deferrable=True, defer_after="soon").execute({})
    with pytest.raises(InstructureConfigError, match="poll_interval"):
        CD2QueryOperator(task_id="q", table="users", poll_interval=0).execute({})


def test_job_timeout_counts_in_the_worker_and_carries_into_the_trigger(server: EmulatorServer, poll_waits) -> None:
    server.emulator.config.job_running_seconds = 3600
    waits = poll_waits(real=True)
    with pytest.raises(DapJobTimeout):  # the deadline comes before defer_after runs out
        CD2QueryOperator(task_id="q", table="users", deferrable=True, poll_interval=0.2, job_timeout=0.5).execute({})
    assert waits[:2] == [0.2, 0.2] and sum(waits) <= 0.55
    waits.clear()
    op = CD2QueryOperator(
        task_id="q", table="courses", deferrable=True, poll_interval=0.2, defer_after=0.4, job_timeout=100
    )
    with pytest.raises(TaskDeferred) as info:
        op.execute({})
    end_time = info.value.trigger.serialize()[1]["end_time"]
    assert time.time() + 98 < end_time <= time.time() + 100 - sum(waits)  # what is left of job_timeout


def test_sensor_quick_job_in_the_worker_slow_job_deferred(
    server: EmulatorServer, poll_waits, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = poll_waits(real=True)
    job = InstructureHook().start_query("users")
    done = CD2JobSensor(task_id="s", job_id=job["id"], deferrable=True, poke_interval=60).execute({})
    assert done["status"] == "complete" and waits == [1.0, 2.0]
    server.emulator.config.job_running_seconds = 3600
    waits = poll_waits(real=False)
    slow = InstructureHook().start_query("courses")
    sensor = CD2JobSensor(task_id="s", job_id=slow["id"], deferrable=True, poke_interval=60, timeout=600)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    assert waits == [1.0, 2.0, 4.0]  # an immediate check, then 1, 2, 4 s
    kwargs = info.value.trigger.serialize()[1]
    assert kwargs["poll_step"] == 3 and kwargs["first_delay"] == 10.0 and kwargs["poll_interval"] == 60.0
    assert time.time() + 590 < kwargs["end_time"] <= time.time() + 600
    event, trigger_waits = run_trigger(info.value, server, monkeypatch, complete_after=3)
    assert trigger_waits == [10.0, 16.0, 32.0]
    assert sensor.execute_complete({}, event.payload)["status"] == "complete"


def test_sensor_poke_mode_follows_the_schedule(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import airflow.sdk.bases.sensor as base_sensor

    job = InstructureHook().start_query("users")
    sensor = CD2JobSensor(task_id="s", job_id=job["id"], poke_interval=60, timeout=30)
    waits: list[float] = []

    class Clock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            waits.append(seconds)
            assert seconds <= 5, f"a {seconds} s poke interval: polling is not adaptive"
            time.sleep(seconds)

    monkeypatch.setattr(base_sensor, "time", Clock)
    assert sensor.execute({})["status"] == "complete"
    assert waits == [1.0, 2.0]
    assert [sensor._get_next_poke_interval(0.0, lambda: 0.0, n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    rescheduled = CD2JobSensor(task_id="s", job_id=job["id"], poke_interval=60, mode="reschedule")
    assert rescheduled._get_next_poke_interval(0.0, lambda: 0.0, 1) == 60  # each reschedule is a worker start
