"""The job poll schedule: unit tests of PollSchedule, and the hook's waits against the emulator.

Timing is asserted on the sequence of waits and on the emulator's counters, not on tight
wall-clock figures.
"""

from __future__ import annotations

import time

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapJobTimeout
from airflow_provider_instructure.hooks.dap_protocol import (
    DEFAULT_DEFER_AFTER,
    DEFAULT_TRIGGER_FIRST_DELAY,
    JobStatus,
    PollSchedule,
)
from airflow_provider_instructure.hooks.instructure import InstructureHook

# -- PollSchedule --------------------------------------------------------------------------------


def take(schedule: PollSchedule, n: int) -> list[float]:
    return [schedule.next() for _ in range(n)]


def test_schedule_starts_at_one_second_and_doubles_up_to_the_cap() -> None:
    assert take(PollSchedule(maximum=30), 8) == [1, 2, 4, 8, 16, 30, 30, 30]
    assert take(PollSchedule(maximum=60), 8) == [1, 2, 4, 8, 16, 32, 60, 60]


def test_schedule_below_one_second_is_flat() -> None:
    assert take(PollSchedule(maximum=0.05), 3) == [0.05, 0.05, 0.05]
    assert take(PollSchedule(maximum=0), 2) == [0, 0]


def test_schedule_step_carries_the_state() -> None:
    worker = PollSchedule(maximum=30)
    assert take(worker, 3) == [1, 2, 4] and worker.step == 3
    continued = PollSchedule(maximum=30, step=worker.step)  # what a trigger rebuilds from poll_step
    assert continued.peek() == 8 and take(continued, 3) == [8, 16, 30]
    assert PollSchedule(maximum=30).delay(1000) == 30  # no float overflow far down the schedule


def test_schedule_skip_past_a_longer_wait() -> None:
    schedule = PollSchedule(maximum=30)
    schedule.skip_past(10)
    assert take(schedule, 2) == [16, 30]
    capped = PollSchedule(maximum=5)
    capped.skip_past(10)  # the cap is never skipped
    assert capped.next() == 5


def test_schedule_other_shapes_and_bad_values() -> None:
    assert take(PollSchedule(maximum=10, first=2, factor=3), 4) == [2, 6, 10, 10]
    assert take(PollSchedule(maximum=10, factor=1), 3) == [1, 1, 1]
    for kwargs in ({"maximum": -1}, {"first": 0}, {"factor": 0.5}, {"step": -1}, {"maximum": float("nan")}):
        with pytest.raises(ValueError):
            PollSchedule(**kwargs)


def test_documented_defaults() -> None:
    # The worker checks at 1, 3 and 7 s before deferring; the trigger waits at least 10 s.
    assert DEFAULT_DEFER_AFTER == 7.0 and DEFAULT_TRIGGER_FIRST_DELAY == 10.0
    schedule = PollSchedule(maximum=30)
    waited = 0.0
    while waited + schedule.peek() <= DEFAULT_DEFER_AFTER:
        waited += schedule.next()
    assert schedule.step == 3 and waited == 7


# -- the hook against the emulator ------------------------------------------------------------------


def server_with(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, **config) -> EmulatorServer:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(**config), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    return srv


def test_a_two_second_job_is_returned_in_seconds_not_after_poll_interval(
    dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, poll_waits
) -> None:
    """Finding 12: with fixed 30 s polling a job done in 2 s cost 30 s."""
    server = server_with(dap_emulator_factory, monkeypatch, job_waiting_seconds=0.5, job_running_seconds=1.5)
    waits = poll_waits(real=True)
    hook = InstructureHook()
    job = hook.start_query("users")
    assert job["status"] == "waiting"
    started = time.monotonic()
    done = hook.wait_for_job(job["id"], poll_interval=30)
    assert done["status"] == "complete" and done["objects"]
    assert waits == [1.0, 2.0]  # checks at 0 (immediate), 1 and 3 s
    assert server.emulator.stats.count("get_job") == 3
    assert time.monotonic() - started < 10


def test_poll_job_for_a_few_seconds_returns_the_running_job(
    dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, poll_waits
) -> None:
    server = server_with(dap_emulator_factory, monkeypatch, job_running_seconds=3600)
    waits = poll_waits(real=False)
    hook = InstructureHook()
    job = hook.start_query("users")
    schedule = PollSchedule(maximum=30)
    last = hook.poll_job(job["id"], schedule, job=job, for_seconds=DEFAULT_DEFER_AFTER)
    assert JobStatus.of(last) is JobStatus.RUNNING
    assert waits == [1.0, 2.0, 4.0] and schedule.step == 3
    assert server.emulator.stats.count("get_job") == 3  # none before the first wait: the POST's answer counts
    assert hook.poll_job(job["id"], schedule, job=last, for_seconds=0) is last  # no budget: no call
    assert server.emulator.stats.count("get_job") == 3


def test_wait_for_job_honours_the_timeout_exactly(
    dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, poll_waits
) -> None:
    server_with(dap_emulator_factory, monkeypatch, job_running_seconds=3600)
    waits = poll_waits(real=True)
    hook = InstructureHook()
    job = hook.start_query("users")
    started = time.monotonic()
    with pytest.raises(DapJobTimeout, match="still running"):
        hook.wait_for_job(job["id"], poll_interval=30, timeout=2.0)
    elapsed = time.monotonic() - started
    assert waits[0] == 1.0 and waits[-1] < 1.0  # 1 s, then what was left of the 2 s: a last check at the deadline
    assert 2.0 <= elapsed < 4
