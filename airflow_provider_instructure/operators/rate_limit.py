"""Waiting out DAP's rate limits in the triggerer instead of in the worker.

DAP allows a few job creations and table listings per minute (5/min documented). A deferrable
operator makes those calls inside :meth:`InstructureHook.raise_on_rate_limit`: a 429 is raised
at once instead of slept on, and the task defers to :class:`CD2RateLimitTrigger` until the
``Retry-After`` moment (plus jitter), then runs ``execute`` again. A deferred task holds no worker
slot, and no pool slot unless the pool counts deferred tasks (``include_deferred``, off by
default). Non-deferrable tasks keep the hook's in-worker wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TypeVar

from airflow_provider_instructure._compat import Context
from airflow_provider_instructure.exceptions import DapRateLimitError
from airflow_provider_instructure.hooks.retry import rate_limit_delay
from airflow_provider_instructure.triggers.cd2 import CD2RateLimitTrigger

T = TypeVar("T")

#: Extra jitter of a rate-limit deferral, as a fraction of ``Retry-After``: a hundred mapped tasks
#: throttled in the same window come back over the first fifth of the next one, not all at once.
RATE_LIMIT_SPREAD = 0.2

#: The method a rate-limited task resumes with.
RESUME_METHOD = "execute_after_rate_limit"


class RateLimitDeferral:
    """Mixin for operators whose DAP calls are rate limited (job creation, table listing).

    The operator provides ``deferrable``, ``trigger_first_delay``, ``hook``, ``log``, ``defer``
    and ``execute``; :meth:`_rate_limited` wraps the limited call. What the call needs again after
    the wait (e.g. the ``since`` of an incremental) goes in ``carry`` and is back in
    :attr:`_rate_limit_state` when ``execute`` runs again.
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

    def _rate_limited(self, what: str, call: Callable[[], T], carry: dict[str, Any] | None = None) -> T:
        """``call()``, deferring the task on a 429 when ``deferrable`` (the hook waits otherwise).

        :param what: the call, for logs and errors (``job creation for canvas.users``).
        :param carry: JSON-native values ``execute`` needs again after the wait.
        :raises DapRateLimitError: still throttled after ``rate_limit_wait`` seconds of deferrals.
        """
        if not self.deferrable:
            return call()  # the hook waits on 429 in this worker, for up to rate_limit_wait seconds
        try:
            with self.hook.raise_on_rate_limit():
                result = call()
        except DapRateLimitError as exc:
            self._defer_on_rate_limit(exc, what, carry or {})
        self._rate_limit_state = None  # the next limited call (if any) gets its own budget
        return result

    def _defer_on_rate_limit(self, exc: DapRateLimitError, what: str, carry: dict[str, Any]) -> NoReturn:
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
        state = {**carry, "what": what, "first_429_at": first, "deferrals": deferrals}
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
