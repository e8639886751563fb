"""``CD2JobSensor``: wait for an existing DAP query job."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from airflow_provider_instructure._compat import BaseSensorOperator, Context, PokeReturnValue, conf
from airflow_provider_instructure.exceptions import DapJobTimeout, InstructureError
from airflow_provider_instructure.hooks.dap_protocol import (
    DEFAULT_DEFER_AFTER,
    DEFAULT_TRIGGER_FIRST_DELAY,
    JobStatus,
    PollSchedule,
    job_failure,
)
from airflow_provider_instructure.hooks.instructure import InstructureHook
from airflow_provider_instructure.triggers.cd2 import CD2JobTrigger


class CD2JobSensor(BaseSensorOperator):
    """Wait until a DAP job is complete; fail if it failed.

    Poke mode checks after 1, 2, 4, 8... seconds, doubling up to ``poke_interval``
    (:class:`PollSchedule`, as the operators; ``exponential_backoff=True`` keeps Airflow's own
    back-off instead). ``mode="reschedule"`` waits ``poke_interval`` between checks: each check
    there is a new worker start, so short ones would cost more than they save. ``deferrable=True``
    checks in the worker for ``defer_after`` seconds, then waits in the triggerer with the same
    :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger` the query operators use,
    continuing the schedule. The complete job object goes to XCom.

    :param job_id: the job to wait for (templated), e.g. ``"{{ ti.xcom_pull('query')['job_id'] }}"``.
    :param instructure_conn_id: the ``instructure`` connection.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param defer_after: deferrable only: seconds of checks in the worker before deferring (default 7).
    :param trigger_first_delay: deferrable only: seconds from the deferral to the trigger's first
        check (default 10; see :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger`).
    """

    template_fields: Sequence[str] = ("job_id",)

    def __init__(
        self,
        *,
        job_id: str,
        instructure_conn_id: str = InstructureHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        defer_after: float = DEFAULT_DEFER_AFTER,
        trigger_first_delay: float = DEFAULT_TRIGGER_FIRST_DELAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.instructure_conn_id = instructure_conn_id
        self.deferrable = deferrable
        self.defer_after = float(defer_after)
        self.trigger_first_delay = float(trigger_first_delay)

    @cached_property
    def hook(self) -> InstructureHook:
        return InstructureHook(self.instructure_conn_id)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        job = self.hook.get_job(self.job_id)
        status = JobStatus.of(job)
        if status is JobStatus.FAILED:
            raise job_failure(self.job_id, job.get("error"))
        if status is JobStatus.COMPLETE:
            return PokeReturnValue(is_done=True, xcom_value=job)
        self.log.info("Job %s is %s", self.job_id, status.value)
        return False

    def _get_next_poke_interval(
        self, started_at: datetime | float, run_duration: Callable[[], float], poke_count: int
    ) -> float:
        if self.reschedule or self.exponential_backoff:
            return super()._get_next_poke_interval(started_at, run_duration, poke_count)
        # poke_count is 1 after the first check: the wait before the second is the schedule's first.
        delay = PollSchedule(maximum=self.poke_interval).delay(poke_count - 1)
        self.log.info("Next check of job %s in %.1f s", self.job_id, delay)
        return delay

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        timeout = float(self.timeout) if self.timeout is not None else None
        deadline = None if timeout is None else time.monotonic() + timeout
        schedule = PollSchedule(maximum=self.poke_interval)
        job = self.hook.poll_job(self.job_id, schedule, for_seconds=self.defer_after, deadline=deadline)
        if JobStatus.of(job) is JobStatus.FAILED:
            raise job_failure(self.job_id, job.get("error"))
        if JobStatus.of(job) is JobStatus.COMPLETE:
            return job
        self.log.info("Job %s is still %s; deferring", self.job_id, job.get("status"))
        remaining = None if deadline is None else deadline - time.monotonic()
        self.defer(
            trigger=CD2JobTrigger(
                job_id=self.job_id,
                instructure_conn_id=self.instructure_conn_id,
                poll_interval=float(self.poke_interval),
                end_time=None if remaining is None else time.time() + remaining,
                first_delay=self.trigger_first_delay,
                poll_step=schedule.step,
            ),
            method_name="execute_complete",
            timeout=None if remaining is None else timedelta(seconds=remaining),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        status = event.get("status")
        if status == "complete":
            return event["job"]
        if status == "failed":
            raise job_failure(event["job_id"], (event.get("job") or {}).get("error"))
        if status == "timeout":
            raise DapJobTimeout(event.get("message", "DAP job timed out"))
        raise InstructureError(f"Waiting for DAP job {event.get('job_id')} failed: {event.get('message')}")
