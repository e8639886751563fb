"""Fault injection: make the next N calls to a route misbehave in a chosen way."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_instructure.emulator.config import ROUTES

#: Fault kinds and the routes they make sense on.
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "429": ROUTES,  # Too Many Requests with Retry-After (param: retry_after seconds)
    "500": ROUTES,  # DAP error envelope
    "503": ROUTES,
    "504": ROUTES,  # GatewayTimeoutError: {"message": ...}
    "502_html": ROUTES,  # a proxy's HTML page, not JSON
    "drop": ROUTES,  # close the connection without answering
    "truncate": ("download",),  # send half of the file, then close
    "expired_url": ("object_url",),  # hand out URLs that have already expired
    "fail_job": ("create_job",),  # the job ends as failed
    "revoke_token": tuple(r for r in ROUTES if r not in ("login", "download")),  # invalidate all tokens, 401
    "account_disabled": ("login",),  # 403 AccountDisabled
    "snapshot_required": ("create_job",),  # 400 SnapshotRequiredError
    "out_of_range": ("create_job",),  # 400 OutOfRangeError
}


@dataclass
class Fault:
    """One queued fault; ``remaining`` calls are affected."""

    kind: str
    remaining: int
    params: dict[str, Any] = field(default_factory=dict)


class FaultPlan:
    """Per-route queues of faults, consumed one call at a time (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {route: deque() for route in ROUTES}

    def inject(self, route: str, kind: str, count: int = 1, **params: Any) -> None:
        """Make the next ``count`` calls to ``route`` fail with ``kind``.

        :raises ValueError: for an unknown route or a kind that does not apply to it.
        """
        if route not in self._queues:
            raise ValueError(f"unknown route {route!r}; routes are {list(ROUTES)}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; faults are {sorted(FAULT_KINDS)}")
        if route not in FAULT_KINDS[kind]:
            raise ValueError(f"fault {kind!r} does not apply to route {route!r}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._queues[route].append(Fault(kind, count, dict(params)))

    def take(self, route: str) -> Fault | None:
        """Consume one call's worth of the oldest fault queued for ``route``."""
        with self._lock:
            queue = self._queues[route]
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.popleft()
            return fault

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {
                route: [{"kind": f.kind, "remaining": f.remaining, **f.params} for f in queue]
                for route, queue in self._queues.items()
                if queue
            }

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
