"""One emulator instance: its settings, data, jobs, tokens, faults and call counters."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_provider_instructure.emulator.config import ROUTES, EmulatorConfig
from airflow_provider_instructure.emulator.dataset import EXTRA_TABLE_ROWS, Dataset
from airflow_provider_instructure.emulator.faults import FaultPlan
from airflow_provider_instructure.emulator.jobs import JobStore, expected_rows
from airflow_provider_instructure.emulator.ratelimit import RateLimiter
from airflow_provider_instructure.emulator.tokens import TokenAuthority


@dataclass(frozen=True)
class CallRecord:
    """One request the emulator answered (headers lower-cased)."""

    route: str
    method: str
    path: str
    status: int
    headers: dict[str, str]


class Stats:
    """Calls per route (faulted and rejected calls included) and the most recent requests."""

    def __init__(self, keep: int = 2000) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.recent: deque[CallRecord] = deque(maxlen=keep)

    def record(self, record: CallRecord) -> None:
        with self._lock:
            self.calls[record.route] += 1
            self.recent.append(record)

    def count(self, route: str) -> int:
        with self._lock:
            return self.calls[route]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {route: self.calls[route] for route in ROUTES}

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.recent.clear()


class Emulator:
    """The state behind one emulated DAP endpoint.

    Tests steer it directly (``emulator.config.token_lifetime = 2``,
    ``emulator.faults.inject("get_job", "500", count=2)``, ``emulator.advance()``); the
    same operations are exposed over HTTP under ``/_emulator/`` for other processes.

    :param config: settings; defaults to :class:`EmulatorConfig`.
    :param seed: seed of all generated data.
    :param rows: initial rows per table (an int, or a mapping, see :class:`Dataset`).
    :param clock_start: commit time of the initial rows.
    :param workdir: where result files are written (a temporary directory by default).
    :param catalog: ``"full"`` (every exposed DAP table, default) or ``"core"`` (the original
        15); see :data:`~airflow_provider_instructure.emulator.dataset.CATALOGS`.
    :param extra_rows: cap on the initial rows of tables outside the core 15 that ``rows`` does
        not name (see :class:`Dataset`); ``None`` lifts it.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        seed: int = 0,
        rows: int | dict[str, int] = 50,
        clock_start: datetime | None = None,
        workdir: Path | None = None,
        catalog: str = "full",
        extra_rows: int | None = EXTRA_TABLE_ROWS,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.dataset = Dataset(
            seed=seed,
            rows=rows,
            clock_start=clock_start,
            quirks=lambda: self.config.quirks,
            catalog=catalog,
            extra_rows=extra_rows,
        )
        self.jobs = JobStore(self.dataset, self.config, workdir)
        self.faults = FaultPlan()
        self.limiter = RateLimiter()
        self.tokens = TokenAuthority()
        self.stats = Stats()

    # -- data -----------------------------------------------------------------------------

    def advance(self, tables: list[str] | None = None, **kwargs: Any) -> datetime:
        """Commit a round of updates, inserts and hard deletes; see :meth:`Dataset.advance`."""
        return self.dataset.advance(tables, **kwargs)

    def add_column(self, table: str, column: str = "emulator_added_note", node: dict[str, Any] | None = None) -> int:
        """Bump ``table`` to a new schema version with one added nullable column."""
        return self.dataset.add_column(table, column, node)

    def reload(self, table: str) -> datetime:
        """Make incrementals into ``table`` from before now answer ``SnapshotRequiredError``."""
        return self.dataset.reload(table)

    def expected_rows(self, namespace: str, table: str, at: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Ground truth: the table's rows at ``at`` (its latest commit by default)."""
        return expected_rows(self.dataset, namespace, table, at)

    def latest(self, namespace: str, table: str) -> datetime:
        return self.dataset.table(namespace, table).latest_ts

    # -- control --------------------------------------------------------------------------

    def revoke_tokens(self) -> int:
        """Invalidate every token issued so far (the next DAP call with one gets 401)."""
        return self.tokens.revoke_all()

    def reset(self) -> None:
        """Clear counters, faults and rate-limit history (data and jobs are kept)."""
        self.stats.reset()
        self.faults.clear()
        self.limiter.reset()

    def close(self) -> None:
        self.jobs.close()
