"""``CD2JobSensor``: wait for an existing DAP query job."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow_provider_instructure._compat import BaseSensorOperator, Context, PokeReturnValue, conf
from airflow_provider_instructure.exceptions import DapJobFailed, DapJobTimeout, InstructureError
from airflow_provider_instructure.hooks.dap_protocol import JobStatus
from airflow_provider_instructure.hooks.instructure import InstructureHook
from airflow_provider_instructure.triggers.cd2 import CD2JobTrigger


class CD2JobSensor(BaseSensorOperator):
    """Wait until a DAP job is complete; fail if it failed.

    Poke mode (or ``mode="reschedule"``) polls with the hook; ``deferrable=True`` waits in the
    triggerer with the same :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger`
    the query operators use. The complete job object goes to XCom.

    :param job_id: the job to wait for (templated), e.g. ``"{{ ti.xcom_pull('query')['job_id'] }}"``.
    :param instructure_conn_id: the ``instructure`` connection.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("job_id",)

    def __init__(
        self,
        *,
        job_id: str,
        instructure_conn_id: str = InstructureHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.instructure_conn_id = instructure_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> InstructureHook:
        return InstructureHook(self.instructure_conn_id)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        job = self.hook.get_job(self.job_id)
        status = JobStatus.of(job)
        if status is JobStatus.FAILED:
            raise DapJobFailed(self.job_id, job.get("error"))
        if status is JobStatus.COMPLETE:
            return PokeReturnValue(is_done=True, xcom_value=job)
        self.log.info("Job %s is %s", self.job_id, status.value)
        return False

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        done = self.poke(context)
        if isinstance(done, PokeReturnValue) and done.is_done:
            return done.xcom_value
        timeout = float(self.timeout) if self.timeout is not None else None
        self.defer(
            trigger=CD2JobTrigger(
                job_id=self.job_id,
                instructure_conn_id=self.instructure_conn_id,
                poll_interval=float(self.poke_interval),
                end_time=None if timeout is None else time.time() + timeout,
            ),
            method_name="execute_complete",
            timeout=None if timeout is None else timedelta(seconds=timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        status = event.get("status")
        if status == "complete":
            return event["job"]
        if status == "failed":
            raise DapJobFailed(event["job_id"], (event.get("job") or {}).get("error"))
        if status == "timeout":
            raise DapJobTimeout(event.get("message", "DAP job timed out"))
        raise InstructureError(f"Waiting for DAP job {event.get('job_id')} failed: {event.get('message')}")
