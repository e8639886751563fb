"""``CD2JobTrigger``: wait for a DAP query job in the triggerer, freeing the worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_instructure.exceptions import DapJobFailed
from airflow_provider_instructure.hooks.async_client import AsyncDapClient, aget_settings
from airflow_provider_instructure.hooks.dap_protocol import JobStatus
from airflow_provider_instructure.hooks.retry import redact_url


class CD2JobTrigger(BaseTrigger):
    """Poll ``GET /dap/job/{id}`` until the job is complete or failed, or time runs out.

    Yields exactly one event, ``{"status", "job_id", "message"}`` plus ``"job"`` (the job
    object) when it reached a terminal state. ``status`` is one of ``complete``, ``failed``,
    ``timeout`` or ``error``. The JWT is never part of :meth:`serialize`: the trigger logs in
    itself, keeps its token across polls, and shares it with every other CD2 trigger on the
    same connection in the triggerer process.

    :param job_id: the DAP job to wait for.
    :param instructure_conn_id: the ``instructure`` connection.
    :param poll_interval: seconds between polls.
    :param end_time: epoch seconds (wall clock) after which a ``timeout`` event is sent; None waits forever.
    :param hook_params: connection-setting overrides (``timeout``, ``retry_limit``...).
    """

    def __init__(
        self,
        job_id: str,
        instructure_conn_id: str = "instructure_default",
        poll_interval: float = 30.0,
        end_time: float | None = None,
        hook_params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.instructure_conn_id = instructure_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = end_time
        self.hook_params = dict(hook_params or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_instructure.triggers.cd2.CD2JobTrigger",
            {
                "job_id": self.job_id,
                "instructure_conn_id": self.instructure_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "hook_params": self.hook_params,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            settings = await aget_settings(self.instructure_conn_id, self.hook_params)
            async with AsyncDapClient(settings, self.log) as client:
                while True:
                    job = await client.get_job(self.job_id)
                    status = JobStatus.of(job)
                    if status is JobStatus.COMPLETE:
                        yield self._event("complete", f"DAP job {self.job_id} is complete", job)
                        return
                    if status is JobStatus.FAILED:
                        yield self._event("failed", str(DapJobFailed(self.job_id, job.get("error"))), job)
                        return
                    remaining = None if self.end_time is None else self.end_time - time.time()
                    if remaining is not None and remaining <= 0:
                        yield self._event("timeout", f"DAP job {self.job_id} still {status.value} at the deadline")
                        return
                    self.log.info(
                        "DAP job %s is %s; next check in %.0f s", self.job_id, status.value, self.poll_interval
                    )
                    await asyncio.sleep(self.poll_interval if remaining is None else min(self.poll_interval, remaining))
        except Exception as exc:  # every failure becomes the one event the task resumes with
            yield self._event("error", f"{type(exc).__name__}: {redact_url(str(exc))}")

    def _event(self, status: str, message: str, job: dict[str, Any] | None = None) -> TriggerEvent:
        payload: dict[str, Any] = {"status": status, "job_id": self.job_id, "message": message}
        if job is not None:
            payload["job"] = job
        return TriggerEvent(payload)
