"""Triggers: ``CD2JobTrigger`` waits for a DAP query job in the triggerer, freeing the worker
(its loop, :func:`poll_job`, is shared with
:class:`~airflow_provider_instructure.triggers.create_job.CD2CreateJobTrigger`, which creates a
rate-limited job first); ``CD2RateLimitTrigger`` waits out a table listing's 429 before the task
asks DAP again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_instructure.exceptions import DapJobFailed
from airflow_provider_instructure.hooks.async_client import AsyncDapClient, aget_settings
from airflow_provider_instructure.hooks.dap_protocol import DEFAULT_TRIGGER_FIRST_DELAY, JobStatus, PollSchedule
from airflow_provider_instructure.hooks.retry import redact_url

#: the sleep between checks (tests replace it to record the schedule's waits)
_sleep = asyncio.sleep


async def poll_job(
    client: AsyncDapClient,
    job_id: str,
    schedule: PollSchedule,
    end_time: float | None,
    log: Any,
    job: dict[str, Any] | None = None,
) -> tuple[str, str, dict[str, Any] | None]:
    """Check a job until it is complete or failed, or ``end_time`` passes; the triggers' one poll loop.

    :param schedule: the waits between checks (no wait before the first one).
    :param end_time: epoch seconds (wall clock) of the deadline; None waits forever.
    :param job: the job object already in hand (e.g. the creation's answer): no GET for the first check.
    :returns: ``(status, message, job)``, status ``complete``, ``failed`` or ``timeout`` (then no job).
    :raises DapApiError: a call failed after the hook's retries (callers turn it into an ``error`` event).
    """
    while True:
        if job is None:
            job = await client.get_job(job_id)
        status = JobStatus.of(job)
        if status is JobStatus.COMPLETE:
            return "complete", f"DAP job {job_id} is complete", job
        if status is JobStatus.FAILED:
            return "failed", str(DapJobFailed(job_id, job.get("error"))), job
        remaining = None if end_time is None else end_time - time.time()
        if remaining is not None and remaining <= 0:
            return "timeout", f"DAP job {job_id} still {status.value} at the deadline", None
        delay = schedule.next() if remaining is None else min(schedule.next(), remaining)
        log.info("DAP job %s is %s; next check in %.1f s", job_id, status.value, delay)
        await _sleep(delay)
        job = None


class CD2JobTrigger(BaseTrigger):
    """Poll ``GET /dap/job/{id}`` until the job is complete or failed, or time runs out.

    Yields exactly one event, ``{"status", "job_id", "message"}`` plus ``"job"`` (the job
    object) when it reached a terminal state. ``status`` is one of ``complete``, ``failed``,
    ``timeout`` or ``error``. The JWT is never part of :meth:`serialize`: the trigger logs in
    itself, keeps its token across polls, and shares it with every other CD2 trigger on the
    same connection in the triggerer process.

    The first check comes ``first_delay`` seconds after the trigger starts, never sooner: an
    event fired within seconds of the deferral, before the scheduler has processed it, can
    leave the task ``up_for_retry`` although nothing failed (Airflow 3.3, apache/airflow issues
    66374 and 72716). Later checks follow :class:`PollSchedule` from ``poll_step`` on (past the
    waits the first delay already covered), doubling up to ``poll_interval``: with the worker's
    checks at 1, 3 and 7 s (``poll_step=3``), the trigger checks 10, 16, then every 30 s.

    :param job_id: the DAP job to wait for.
    :param instructure_conn_id: the ``instructure`` connection.
    :param poll_interval: longest wait between two checks, seconds.
    :param end_time: epoch seconds (wall clock) after which a ``timeout`` event is sent; None waits forever.
    :param hook_params: connection-setting overrides (``timeout``, ``retry_limit``...).
    :param first_delay: seconds before the first check (default
        :data:`~airflow_provider_instructure.hooks.dap_protocol.DEFAULT_TRIGGER_FIRST_DELAY`, 10 s).
    :param poll_step: waits of the schedule already taken (in the worker, before deferring).
    """

    def __init__(
        self,
        job_id: str,
        instructure_conn_id: str = "instructure_default",
        poll_interval: float = 30.0,
        end_time: float | None = None,
        hook_params: dict[str, Any] | None = None,
        first_delay: float = DEFAULT_TRIGGER_FIRST_DELAY,
        poll_step: int = 0,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.instructure_conn_id = instructure_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = end_time
        self.hook_params = dict(hook_params or {})
        self.first_delay = float(first_delay)
        self.poll_step = int(poll_step)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_instructure.triggers.cd2.CD2JobTrigger",
            {
                "job_id": self.job_id,
                "instructure_conn_id": self.instructure_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "hook_params": self.hook_params,
                "first_delay": self.first_delay,
                "poll_step": self.poll_step,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            schedule = PollSchedule(maximum=self.poll_interval, step=self.poll_step)
            # No event of any kind (a deadline or a bad connection included) before first_delay:
            # the deferral must be recorded before the task can resume.
            delay = max(self.first_delay, schedule.next())
            schedule.skip_past(delay)
            self.log.info("Checking DAP job %s in %.1f s", self.job_id, delay)
            await _sleep(delay)
            settings = await aget_settings(self.instructure_conn_id, self.hook_params)
            async with AsyncDapClient(settings, self.log) as client:
                status, message, job = await poll_job(client, self.job_id, schedule, self.end_time, self.log)
            yield self._event(status, message, job)
        except Exception as exc:  # every failure becomes the one event the task resumes with
            yield self._event("error", f"{type(exc).__name__}: {redact_url(str(exc))}")

    def _event(self, status: str, message: str, job: dict[str, Any] | None = None) -> TriggerEvent:
        payload: dict[str, Any] = {"status": status, "job_id": self.job_id, "message": message}
        if job is not None:
            payload["job"] = job
        return TriggerEvent(payload)


class CD2RateLimitTrigger(DateTimeTrigger):
    """Fire at ``moment``: the end of a wait on DAP's rate limit (a 429 and its ``Retry-After``).

    Airflow's standard :class:`DateTimeTrigger` (it does the waiting), whose event carries
    ``payload`` as well: ``{"status": "rate_limit_over", "moment": <ISO-8601>, "rate_limit":
    payload}``. The task needs that state (what it was creating, how long it has been throttled)
    when it resumes, and ``dag.test()`` resumes with the event alone, dropping the deferral's
    kwargs; a real triggerer passes both.

    :param moment: when to fire (timezone-aware).
    :param payload: JSON-native state handed back to the task in the event.
    """

    def __init__(self, moment: datetime, payload: dict[str, Any] | None = None) -> None:
        super().__init__(moment=moment)
        self.payload = dict(payload or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_instructure.triggers.cd2.CD2RateLimitTrigger",
            {"moment": self.moment, "payload": self.payload},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for _ in super().run():  # the standard trigger's wait; its own event is the moment only
            break
        yield TriggerEvent({"status": "rate_limit_over", "moment": self.moment.isoformat(), "rate_limit": self.payload})
