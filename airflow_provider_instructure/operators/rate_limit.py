"""Waiting out DAP's rate limits in the triggerer instead of in the worker.

DAP allows a few job creations and table listings per minute (5/min documented). A deferrable
operator makes those calls inside :meth:`InstructureHook.raise_on_rate_limit`: a 429 is raised
at once instead of slept on, and the task defers:

* job creation to :class:`~airflow_provider_instructure.triggers.create_job.CD2CreateJobTrigger`,
  which creates the job itself once the account's limit allows it (all throttled tables of the
  account queue at one gate in the triggerer), waits for the job and resumes the task with it;
* table listing (once per DAG run) to :class:`CD2RateLimitTrigger` until the ``Retry-After``
  moment (plus jitter); ``execute`` then runs again.

A deferred task holds no worker slot, and no pool slot unless the pool counts deferred tasks
(``include_deferred``, off by default). Non-deferrable tasks keep the hook's in-worker wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TypeVar

from airflow_provider_instructure._compat import Context
from airflow_provider_instructure.exceptions import DapRateLimitError, InstructureError
from airflow_provider_instructure.hooks.retry import rate_limit_delay
from airflow_provider_instructure.operators.cd2_jobs import _JobMemory
from airflow_provider_instructure.triggers.cd2 import CD2RateLimitTrigger
from airflow_provider_instructure.triggers.create_job import CD2CreateJobTrigger

T = TypeVar("T")

#: Extra jitter of a rate-limit deferral, as a fraction of ``Retry-After``: a hundred mapped tasks
#: throttled in the same window come back over the first fifth of the next one, not all at once.
RATE_LIMIT_SPREAD = 0.2

#: The method a rate-limited task resumes with.
RESUME_METHOD = "execute_after_rate_limit"


class RateLimitDeferral:
    """Mixin for operators whose DAP calls are rate limited (job creation, table listing).

    The operator provides ``deferrable``, ``trigger_first_delay``, ``hook``, ``log``, ``defer``
    and ``execute``; :meth:`_rate_limited` wraps a table listing, :meth:`_create_job` a job
    creation (the query operators also provide ``table``, ``poll_interval``, ``job_timeout`` and
    ``instructure_conn_id``). When a creation has to run in the worker again, what it needs (the
    ``since`` of the body, the snapshot fallback) is in :attr:`_rate_limit_state` under ``query``.
    """

    # provided by the operator
    deferrable: bool
    trigger_first_delay: float
    hook: Any
    log: Any
    defer: Callable[..., NoReturn]
    execute: Callable[[Context], Any]

    #: the state a resumed task carries: ``first_429_at`` (epoch seconds), ``deferrals`` and the carry
    _rate_limit_state: dict[str, Any] | None = None

    # provided by the query operators
    table: str
    poll_interval: float
    job_timeout: float | None
    instructure_conn_id: str

    def _rate_limited(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, deferring the task on a 429 when ``deferrable`` (the hook waits otherwise).

        :param what: the call, for logs and errors (``table listing of 'canvas'``).
        :raises DapRateLimitError: still throttled after ``rate_limit_wait`` seconds of deferrals.
        """
        if not self.deferrable:
            return call()  # the hook waits on 429 in this worker, for up to rate_limit_wait seconds
        try:
            with self.hook.raise_on_rate_limit():
                result = call()
        except DapRateLimitError as exc:
            self._defer_on_rate_limit(exc, what)
        self._rate_limit_state = None  # the next limited call (if any) gets its own budget
        return result

    # -- job creation -----------------------------------------------------------------------------

    def _create_job(self, request: dict[str, Any], body: dict[str, Any], effective: dict[str, Any]) -> dict[str, Any]:
        """Start the query job ``body`` describes; on a 429, a deferrable task defers to
        :class:`CD2CreateJobTrigger`, which creates the job and resumes ``execute_complete`` with it.

        :param request: the task's request (``namespace``, ``table``, the query), remembered with the job.
        :param body: what to ask DAP (:func:`build_query`'s keys): the request's, or the snapshot
            it fell back to.
        :param effective: how the job differs from the request (``fallback_reason``).
        :returns: the job object, when DAP created it right away.
        :raises TaskDeferred: deferrable, and DAP answered 429.
        """
        namespace = request["namespace"]
        query = {k: body[k] for k in ("format", "mode", "since", "until") if k in body}
        if not self.deferrable:
            return self.hook.start_query(self.table, namespace, **query)  # waits on 429 in the worker
        try:
            with self.hook.raise_on_rate_limit():
                return self.hook.start_query(self.table, namespace, **query)
        except DapRateLimitError as exc:
            state = self._rate_limit_state or {}
            said = f"Retry-After {exc.retry_after:.0f} s" if exc.retry_after is not None else "no Retry-After"
            self.log.warning(
                "DAP rate limit on job creation for %s.%s (%s): deferring; the triggerer creates the job "
                "when the account's limit allows it, then waits for it",
                namespace,
                self.table,
                said,
            )
            self.defer(
                trigger=CD2CreateJobTrigger(
                    namespace=namespace,
                    table=self.table,
                    body=query,
                    request=request,
                    effective=effective,
                    instructure_conn_id=self.instructure_conn_id,
                    poll_interval=self.poll_interval,
                    first_delay=self.trigger_first_delay,
                    job_timeout=self.job_timeout,
                    not_before=None if exc.retry_after is None else time.time() + exc.retry_after,
                    rate_limited_since=float(state.get("first_429_at") or time.time()),
                ),
                method_name="execute_complete",
            )
            raise AssertionError("defer() returned") from None  # pragma: no cover - defer always raises

    def _after_creation(self, context: Context, event: dict[str, Any]) -> tuple[bool, Any]:
        """Handle :class:`CD2CreateJobTrigger`'s event in ``execute_complete``.

        :returns: ``(True, request)`` when the triggerer created the job (remembered in the task
            state store, so a retry resumes it; ``request`` is the effective one, for the job event's
            usual handling), or ``(False, result)`` when ``execute`` ran again in the worker (DAP
            answered the creation with another error than 429, which the worker's logic handles).
        :raises DapRateLimitError: still throttled after ``rate_limit_wait``.
        """
        request, effective = dict(event.get("request") or {}), dict(event.get("effective") or {})
        if event.get("created"):
            _JobMemory(context, self.log).remember(
                {"job_id": event["job_id"], "request": request, "effective": effective}
            )
            return True, {**request, **effective}
        if event.get("status") == "create_in_worker":
            self.log.info("The triggerer could not create the job (%s); creating it here", event.get("message"))
            self._rate_limit_state = {
                "query": {"since": (event.get("body") or {}).get("since"), "effective": effective}
            }
            return False, self.execute(context)
        if event.get("error_type") == "DapRateLimitError":
            raise DapRateLimitError(str(event.get("message")), status=429)
        raise InstructureError(f"Creating the DAP job in the triggerer failed: {event.get('message')}")

    # -- table listing: wait, then run again -------------------------------------------------------

    def _defer_on_rate_limit(self, exc: DapRateLimitError, what: str) -> NoReturn:
        previous = self._rate_limit_state or {}
        now = time.time()
        first = float(previous.get("first_429_at") or now)
        deferrals = int(previous.get("deferrals") or 0) + 1
        settings = self.hook.settings
        delay = rate_limit_delay(exc, deferrals, settings, spread=RATE_LIMIT_SPREAD)
        # Not sooner than the job trigger's first check: an event fired before the scheduler has
        # processed the deferral can leave the task up_for_retry (Airflow 3.3, apache/airflow
        # issues 66374 and 72716; see CD2JobTrigger).
        delay = max(delay, float(self.trigger_first_delay))
        waited = now - first
        if waited + delay > settings.rate_limit_wait:
            raise DapRateLimitError(
                f"DAP rate limit on {what}: still answered 429 after {waited:.0f} s and {deferrals - 1} deferral(s), "
                f"and waiting {delay:.0f} s more would pass rate_limit_wait ({settings.rate_limit_wait:.0f} s) of "
                f"connection {settings.conn_id!r}. Other tasks or clients may be using this key's limit (size the "
                "cd2_api pool, spread the DAGs), or raise rate_limit_wait in the connection's extra",
                retry_after=exc.retry_after,
                status=exc.status,
            ) from None
        state = {"what": what, "first_429_at": first, "deferrals": deferrals}
        said = f"Retry-After {exc.retry_after:.0f} s" if exc.retry_after is not None else "no Retry-After: back-off"
        self.log.warning(
            "DAP rate limit on %s: deferring %.0f s (%s; deferral %d, %.0f of rate_limit_wait=%.0f s used)",
            what,
            delay,
            said,
            deferrals,
            waited,
            settings.rate_limit_wait,
        )
        self.defer(
            trigger=CD2RateLimitTrigger(moment=datetime.now(timezone.utc) + timedelta(seconds=delay), payload=state),
            method_name=RESUME_METHOD,
            kwargs={"rate_limit": state},
        )
        raise AssertionError("defer() returned")  # pragma: no cover - defer always raises

    def execute_after_rate_limit(
        self, context: Context, event: Any = None, rate_limit: dict[str, Any] | None = None
    ) -> Any:
        """Resume after a rate-limit wait: run the task again from the start, with the carried state.

        :param event: the trigger's event payload (``dag.test()`` passes only this).
        :param rate_limit: the deferral's kwargs (a real triggerer passes these as well).
        """
        if rate_limit is None and isinstance(event, dict):
            rate_limit = event.get("rate_limit")
        self._rate_limit_state = dict(rate_limit or {})
        self.log.info("Rate-limit wait over; asking DAP again (%s)", self._rate_limit_state.get("what", "?"))
        return self.execute(context)

    def _take_carried(self, key: str) -> Any:
        """A carried value, once: the first call after a resume sees it, later ones do not."""
        state = self._rate_limit_state
        if not state or key not in state:
            return None
        return state.pop(key)
