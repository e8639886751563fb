"""``CD2CreateJobTrigger``: create a rate-limited DAP query job in the triggerer, then wait for it.

DAP allows a few job creations per minute per account (5 documented). When a deferrable task's
``POST .../data`` answers 429, the task defers to this trigger instead of sleeping in its worker
or waking up once per window to try again. In the triggerer, every throttled table of an account
queues at one :class:`CreationGate`: a FIFO :class:`asyncio.Lock` around each creation attempt
and a ``not_before`` moment set from ``Retry-After``. Only the queue's head asks DAP, so a
window sees one 429 (not one per waiting table), and when the window opens the head goes first,
the next ones right behind it until DAP says 429 again. The created job is then polled exactly
like :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger` does.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_instructure.exceptions import DapRateLimitError
from airflow_provider_instructure.hooks.async_client import AsyncDapClient, aget_settings
from airflow_provider_instructure.hooks.dap_protocol import (
    DEFAULT_TRIGGER_FIRST_DELAY,
    JobStatus,
    PollSchedule,
    job_expires_within,
)
from airflow_provider_instructure.hooks.retry import redact_url
from airflow_provider_instructure.hooks.settings import DapSettings
from airflow_provider_instructure.triggers import cd2

#: a job DAP hands back from an earlier identical query must outlive this many seconds, as the
#: sync hook's ``reuse_expiry_margin``; otherwise the worker's start_query waits for a fresh one
REUSE_EXPIRY_MARGIN = 30.0


class CreationGate:
    """The queue of job creations of one DAP account in this process.

    :ivar lock: held around each creation attempt; asyncio's lock wakes waiters in arrival order,
        so the table that has waited longest asks first.
    :ivar rate_limited: 429 answers seen through this gate (for logs and tests).
    """

    def __init__(self, account: tuple[str, str]) -> None:
        self.account = account
        self.lock = asyncio.Lock()
        self.rate_limited = 0

    @property
    def not_before(self) -> float:
        """Epoch seconds before which no creation is tried: the last ``Retry-After``. Process-wide
        (plain data, unlike the lock), so triggers run on other loops (``dag.test``) honour it too."""
        return _NOT_BEFORE.get(self.account, 0.0)

    @not_before.setter
    def not_before(self, value: float) -> None:
        _NOT_BEFORE[self.account] = value


#: account -> epoch seconds of its next allowed creation attempt
_NOT_BEFORE: dict[tuple[str, str], float] = {}

#: account (base URL, client id) -> its gate, per event loop (asyncio locks cannot cross loops;
#: the triggerer runs one loop, so this is one gate per account for the whole process)
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], CreationGate]] = (
    weakref.WeakKeyDictionary()
)


def creation_gate(settings: DapSettings) -> CreationGate:
    """The gate shared by every creation trigger of ``settings``' account in the running loop.

    Keyed by base URL and client id, not by connection: two connections with the same key share
    DAP's limit.
    """
    account = (settings.base_url, settings.client_id)
    per_loop = _GATES.setdefault(asyncio.get_running_loop(), {})
    gate = per_loop.get(account)
    if gate is None:
        gate = per_loop[account] = CreationGate(account)
    return gate


class _GiveUp(Exception):
    """Still rate limited when ``rate_limit_wait`` runs out."""


class CD2CreateJobTrigger(BaseTrigger):
    """Create a DAP query job once the account's rate limit allows it, then wait for the job.

    Yields exactly one event, never sooner than ``first_delay`` seconds after the trigger
    started (an earlier event can leave the task ``up_for_retry`` on Airflow 3.3, see
    :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger`). The event has
    :class:`CD2JobTrigger`'s shape (``status``, ``job_id``, ``message``, ``job`` when terminal)
    plus ``created`` (whether a job was created), ``request``, ``effective`` and ``body`` (the
    values given here, so a task resumed by ``dag.test()``, which passes the event alone, has
    them). ``status`` is:

    * ``complete``, ``failed``, ``timeout`` or ``error`` (``created`` true): the job's outcome,
      as from :class:`CD2JobTrigger`;
    * ``create_in_worker`` (``created`` false): DAP answered the creation with another error
      than 429 (snapshot required, no data yet, a 4xx...), or handed back a job about to expire;
      the task creates the job in its worker again, where that logic lives;
    * ``error`` with ``error_type`` ``DapRateLimitError`` (``created`` false): still 429 after
      ``rate_limit_wait`` seconds (the connection's setting) from ``rate_limited_since``.

    :param namespace: DAP namespace.
    :param table: table name.
    :param body: the ``POST .../data`` body, from :func:`~airflow_provider_instructure.hooks.dap_jobs.build_query`.
    :param request: the task's request (JSON-native), handed back in the event.
    :param effective: how the request differs from what the task asked (``fallback_reason``), handed back.
    :param instructure_conn_id: the ``instructure`` connection.
    :param hook_params: connection-setting overrides.
    :param poll_interval: longest wait between two job checks, seconds.
    :param first_delay: seconds from the trigger's start before any event.
    :param job_timeout: seconds from the job's creation before a ``timeout`` event; None waits forever.
    :param not_before: epoch seconds before which this table does not ask (the worker's ``Retry-After``).
    :param rate_limited_since: epoch seconds of the first 429 (default: now); ``rate_limit_wait`` counts from it.
    """

    def __init__(
        self,
        namespace: str,
        table: str,
        body: dict[str, Any],
        request: dict[str, Any] | None = None,
        effective: dict[str, Any] | None = None,
        instructure_conn_id: str = "instructure_default",
        hook_params: dict[str, Any] | None = None,
        poll_interval: float = 30.0,
        first_delay: float = DEFAULT_TRIGGER_FIRST_DELAY,
        job_timeout: float | None = None,
        not_before: float | None = None,
        rate_limited_since: float | None = None,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.table = table
        self.body = dict(body)
        self.request = dict(request or {})
        self.effective = dict(effective or {})
        self.instructure_conn_id = instructure_conn_id
        self.hook_params = dict(hook_params or {})
        self.poll_interval = float(poll_interval)
        self.first_delay = float(first_delay)
        self.job_timeout = None if job_timeout is None else float(job_timeout)
        self.not_before = None if not_before is None else float(not_before)
        self.rate_limited_since = time.time() if rate_limited_since is None else float(rate_limited_since)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_instructure.triggers.create_job.CD2CreateJobTrigger",
            {
                "namespace": self.namespace,
                "table": self.table,
                "body": self.body,
                "request": self.request,
                "effective": self.effective,
                "instructure_conn_id": self.instructure_conn_id,
                "hook_params": self.hook_params,
                "poll_interval": self.poll_interval,
                "first_delay": self.first_delay,
                "job_timeout": self.job_timeout,
                "not_before": self.not_before,
                "rate_limited_since": self.rate_limited_since,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        started = time.monotonic()
        try:
            payload = await self._outcome()
        except Exception as exc:  # every failure becomes the one event the task resumes with
            payload = self._payload("error", f"{type(exc).__name__}: {redact_url(str(exc))}")
        floor = self.first_delay - (time.monotonic() - started)
        if floor > 0:
            await cd2._sleep(floor)
        yield TriggerEvent(payload)

    async def _outcome(self) -> dict[str, Any]:
        settings = await aget_settings(self.instructure_conn_id, self.hook_params)
        async with AsyncDapClient(settings, self.log) as client:
            try:
                job = await self._create(client, settings)
            except _GiveUp as exc:
                return {**self._payload("error", str(exc)), "error_type": "DapRateLimitError"}
            except Exception as exc:  # the worker's start_query knows what to do with it
                said = f"{type(exc).__name__}: {redact_url(str(exc))}"
                self.log.info("Creating the job of %s.%s: %s; the task creates it in the worker", *self._what(), said)
                return self._payload("create_in_worker", said)
            job_id = str(job["id"])
            self.log.info("Created DAP job %s for %s.%s: %s", job_id, *self._what(), job.get("status"))
            if JobStatus.of(job).is_terminal and job_expires_within(job, REUSE_EXPIRY_MARGIN):
                expiring = f"DAP handed back job {job_id}, expiring at {job.get('expires_at')}"
                return self._payload("create_in_worker", expiring)
            end_time = None if self.job_timeout is None else time.time() + self.job_timeout
            try:
                status, message, polled = await cd2.poll_job(
                    client, job_id, PollSchedule(maximum=self.poll_interval), end_time, self.log, job=job
                )
            except Exception as exc:  # the job exists: the task's retry resumes it
                return self._payload("error", f"{type(exc).__name__}: {redact_url(str(exc))}", job_id, created=True)
            return self._payload(status, message, job_id, polled, created=True)

    async def _create(self, client: AsyncDapClient, settings: DapSettings) -> dict[str, Any]:
        """Create the job through the account's gate; 429s wait for ``Retry-After`` at the gate."""
        gate = creation_gate(settings)
        budget_end = self.rate_limited_since + settings.rate_limit_wait
        try:
            await asyncio.wait_for(gate.lock.acquire(), timeout=max(0.0, budget_end - time.time()))
        except asyncio.TimeoutError:
            raise _GiveUp(self._give_up_message(settings, "queued behind other tables")) from None
        try:
            own = self.not_before or 0.0
            attempts = 0
            while True:
                wait = max(gate.not_before, own) - time.time()
                if time.time() + max(0.0, wait) > budget_end:
                    raise _GiveUp(self._give_up_message(settings, f"{attempts} attempt(s) in the triggerer"))
                if wait > 0:
                    await cd2._sleep(wait)
                attempts += 1
                try:
                    return await client.start_query(self.namespace, self.table, self.body)
                except DapRateLimitError as exc:
                    gate.rate_limited += 1
                    # No jitter: only the queue's head asks, so nobody else comes back at that moment.
                    delay = (
                        exc.retry_after
                        if exc.retry_after is not None
                        else min(settings.retry_max_delay, settings.retry_delay * 2 ** (attempts - 1))
                    )
                    gate.not_before = max(gate.not_before, time.time() + max(0.0, delay))
                    self.log.info("Job creation of %s.%s: 429, next attempt in %.1f s", *self._what(), delay)
        finally:
            gate.lock.release()

    def _give_up_message(self, settings: DapSettings, how: str) -> str:
        waited = time.time() - self.rate_limited_since
        return (
            f"DAP rate limit on job creation for {self.namespace}.{self.table}: still waiting after {waited:.0f} s "
            f"({how}), and rate_limit_wait of connection {settings.conn_id!r} is {settings.rate_limit_wait:.0f} s. "
            "Other tasks or clients may be using this key's limit (size the cd2_api pool, spread the DAGs), "
            "or raise rate_limit_wait in the connection's extra"
        )

    def _what(self) -> tuple[str, str]:
        return self.namespace, self.table

    def _payload(
        self,
        status: str,
        message: str,
        job_id: str | None = None,
        job: dict[str, Any] | None = None,
        *,
        created: bool = False,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": status,
            "job_id": job_id,
            "message": message,
            "created": created,
            "request": self.request,
            "effective": self.effective,
            "body": self.body,
        }
        if job is not None:
            payload["job"] = job
        return payload
