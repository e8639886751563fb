"""Per-endpoint sliding-window rate limits, answering like the API gateway (429 + Retry-After)."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque


class RateLimiter:
    """Independent buckets per route, as Instructure documents them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, deque[float]] = {}
        #: 429 answers given per route (what a benchmark or deployment test reads back).
        self.rejected: Counter[str] = Counter()

    def check(self, route: str, limit: tuple[int, float] | None) -> int | None:
        """Record a call; return ``None`` if allowed, else the seconds to put in ``Retry-After``."""
        if not limit:
            return None
        calls, window = limit
        now = time.monotonic()
        with self._lock:
            history = self._calls.setdefault(route, deque())
            while history and history[0] <= now - window:
                history.popleft()
            if len(history) >= calls:
                self.rejected[route] += 1
                return max(1, math.ceil(history[0] + window - now))
            history.append(now)
            return None

    def rejected_counts(self) -> dict[str, int]:
        """429 answers per route since the start or the last :meth:`reset`."""
        with self._lock:
            return dict(self.rejected)

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()
            self.rejected.clear()
