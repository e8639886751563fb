"""One retry policy (tenacity) for every DAP call, sync or async.

* 429: wait what ``Retry-After`` says (seconds or HTTP date; exponential back-off if absent),
  for up to ``rate_limit_wait`` seconds in total, so rate limits slow a task down instead
  of failing it. Inside :func:`raising_rate_limits` a 429 is raised at once instead (as
  :class:`DapRateLimitError` with ``retry_after``): deferrable operators then wait in the
  triggerer, holding neither a worker nor a pool slot, for :func:`rate_limit_delay` seconds.
* 5xx, unparseable proxy answers, connection errors and timeouts: exponential back-off with
  jitter, capped at ``retry_max_delay``, for up to ``retry_limit`` attempts.
* Anything else (400/401/403/404...) is not retried.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tenacity import RetryCallState, retry_if_exception

from airflow_provider_instructure.exceptions import DapRateLimitError
from airflow_provider_instructure.hooks.dap_protocol import is_retryable
from airflow_provider_instructure.hooks.settings import DapSettings

_SIGNED = re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+", re.IGNORECASE)


#: per thread: whether a 429 is raised at once (see :func:`raising_rate_limits`)
_raise_429 = threading.local()


@contextmanager
def raising_rate_limits() -> Iterator[None]:
    """Within this block, calls made by this thread raise :class:`DapRateLimitError` on their first
    429 instead of waiting on it; 5xx and connection errors are retried as usual.

    Thread-local, so the hook's download threads and other tasks' threads keep waiting; the login
    made on the way (whichever hook's token cache does it) is covered too.
    """
    previous = getattr(_raise_429, "on", False)
    _raise_429.on = True
    try:
        yield
    finally:
        _raise_429.on = previous


def rate_limit_delay(exc: DapRateLimitError, attempt: int, settings: DapSettings, *, spread: float = 0.0) -> float:
    """Seconds to wait before repeating a call that DAP answered 429: its ``Retry-After`` when it
    said (already parsed from seconds or an HTTP date), else exponential back-off from
    ``retry_delay`` capped at ``retry_max_delay``; plus jitter.

    :param attempt: 1 for the first 429 of this call, 2 for the next... (the back-off's exponent).
    :param spread: extra jitter, as a fraction of the wait: tasks throttled together (a hundred
        mapped tables) then come back spread over part of the window, not in one burst that the
        limit turns away again.
    """
    if exc.retry_after is not None:
        base = max(0.0, exc.retry_after)
    else:
        base = min(settings.retry_max_delay, settings.retry_delay * (2 ** max(0, attempt - 1)))
    return base + random.random() * max(0.25 * max(1.0, settings.retry_delay), spread * base)


def redact_url(text: str) -> str:
    """Blank out pre-signed URL credentials anywhere in ``text`` (exception messages, logs)."""
    return _SIGNED.sub(r"\1***", text)


class RetryPolicy:
    """Builds tenacity arguments for one logical call.

    :param settings: retry limits from the connection/hook.
    :param transport_errors: the transport's retryable exceptions (connection reset, timeout...).
    :param log: logger for the "retrying in N s" lines.
    """

    def __init__(self, settings: DapSettings, transport_errors: tuple[type[BaseException], ...], log: Any) -> None:
        self.settings = settings
        self.transport_errors = transport_errors
        self.log = log

    def retryable(self, exc: BaseException) -> bool:
        if _is_tls_error(exc):  # a server that does not speak TLS (or a bad certificate) will not start to
            return False
        return is_retryable(exc) or isinstance(exc, self.transport_errors)

    def tenacity_kwargs(self, what: str) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.Retrying``/``AsyncRetrying`` for a call described by ``what``."""
        counts = {"failures": 0}
        settings = self.settings

        def backoff(attempt: int) -> float:
            base = settings.retry_delay * (2 ** max(0, attempt - 1))
            return min(settings.retry_max_delay, base) * (0.5 + random.random() / 2)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, DapRateLimitError):
                return rate_limit_delay(exc, state.attempt_number, settings)
            return backoff(counts["failures"])

        def stop(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, DapRateLimitError):
                if getattr(_raise_429, "on", False):
                    return True  # the caller defers instead of sleeping here
                return state.idle_for + wait(state) > settings.rate_limit_wait
            counts["failures"] += 1
            return counts["failures"] >= settings.retry_limit

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "%s failed (%s); retrying in %.1f s (attempt %d)",
                what,
                redact_url(f"{type(exc).__name__}: {exc}"),
                state.next_action.sleep if state.next_action else 0.0,
                state.attempt_number + 1,
            )

        return {
            "retry": retry_if_exception(self.retryable),
            "stop": stop,
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }


def _is_tls_error(exc: BaseException) -> bool:
    """A TLS handshake or certificate failure, from either transport (``requests.exceptions.SSLError``, or
    ``ssl.SSLError`` under httpx's ``ConnectError``)."""
    import ssl

    seen: BaseException | None = exc
    for _ in range(5):  # the cause chain is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or type(seen).__name__ == "SSLError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False
