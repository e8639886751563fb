"""The emulator's tables and their change log.

Each table starts with ``rows`` rows committed at the clock's start. :meth:`Dataset.advance`
appends a commit per table: updates (a row's version goes up), inserts (new keys) and hard
deletes. Only the keys a commit touched are stored, so the state of a million-row table at
any point in time is "generated row ``k`` at version 0" overlaid with a small dict.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema, parse_table_schema
from airflow_provider_instructure.emulator.generator import RowFactory

DELETED = None

#: The emulator's original 15 tables, chosen to cover every column type the reference schemas
#: use (int16/32/64, float, decimal, boolean, date, date-time, string and integer enums, uuid,
#: ipv4/6, arrays, nested objects, the oversized placeholder). ``catalog="core"`` serves only
#: these; they keep the full row counts under ``catalog="full"`` too.
CORE_TABLES: frozenset[str] = frozenset(
    {
        "canvas.accounts",
        "canvas.assignment_groups",
        "canvas.assignments",
        "canvas.calendar_events",
        "canvas.course_sections",
        "canvas.courses",
        "canvas.enrollment_terms",
        "canvas.enrollments",
        "canvas.late_policies",
        "canvas.learning_outcomes",
        "canvas.pseudonyms",
        "canvas.scores",
        "canvas.submissions",
        "canvas.users",
        "canvas_logs.web_logs",
    }
)

#: ``"full"``: every table of the DAP OpenAPI 0.9.0 document whose data DAP exposes (90 in
#: ``canvas``, ``web_logs`` in ``canvas_logs``; scripts/extract_dap_schemas.py derives the list).
#: ``"core"``: :data:`CORE_TABLES` only.
CATALOGS = ("full", "core")

#: Initial rows of a table outside :data:`CORE_TABLES` unless ``rows`` names it: few, so the
#: 76 extra tables cost little time in a demo or a test.
EXTRA_TABLE_ROWS = 10


def load_bundled_schemas(catalog: str = "full") -> dict[str, dict[str, dict[str, Any]]]:
    """The versioned schemas shipped with the emulator, as ``{namespace: {table: schema}}``.

    :param catalog: ``"full"`` or ``"core"`` (:data:`CATALOGS`).
    :raises ValueError: for an unknown catalog.
    """
    if catalog not in CATALOGS:
        raise ValueError(f"catalog must be one of {CATALOGS}, got {catalog!r}")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in resources.files("airflow_provider_instructure.emulator.schemas").iterdir():
        if entry.name.endswith(".json"):
            namespace = entry.name[: -len(".json")]
            tables = json.loads(entry.read_text(encoding="utf-8"))
            if catalog == "core":
                tables = {name: s for name, s in tables.items() if f"{namespace}.{name}" in CORE_TABLES}
            out[namespace] = tables
    return out


@dataclass(frozen=True)
class Commit:
    """One commit to one table: ``changes`` maps key index to new version, or ``None`` for a hard delete."""

    ts: datetime
    changes: dict[int, int | None]
    max_key: int


@dataclass(frozen=True)
class RowState:
    """A row as of some point in time."""

    k: int
    version: int | None  # None: hard-deleted
    ts: datetime

    @property
    def deleted(self) -> bool:
        return self.version is None


@dataclass
class SchemaRevision:
    ts: datetime
    versioned: dict[str, Any]
    parsed: TableSchema
    added_column: str | None = None


@dataclass
class Table:
    """One emulated table with its schema history and change log."""

    namespace: str
    name: str
    initial_rows: int
    base_ts: datetime
    seed: int
    revisions: list[SchemaRevision]
    retention: timedelta | None = None
    commits: list[Commit] = field(default_factory=list)
    reload_ts: datetime | None = None
    _versions: dict[int, int] = field(default_factory=dict)
    _deleted: set[int] = field(default_factory=set)
    _factory: RowFactory | None = None
    quirks: Callable[[], Mapping[str, float]] | None = None

    # -- schema -------------------------------------------------------------------------

    @property
    def schema(self) -> TableSchema:
        return self.revisions[-1].parsed

    @property
    def versioned_schema(self) -> dict[str, Any]:
        return self.revisions[-1].versioned

    @property
    def schema_version(self) -> int:
        return self.schema.version

    @property
    def factory(self) -> RowFactory:
        if self._factory is None or self._factory.schema is not self.schema:
            self._factory = RowFactory(self.namespace, self.name, self.schema, self.seed, self.quirks)
        return self._factory

    def hidden_columns(self, row_ts: datetime) -> frozenset[str]:
        """Columns added after ``row_ts``: rows last written before a column existed read NULL there."""
        return frozenset(rev.added_column for rev in self.revisions if rev.added_column is not None and row_ts < rev.ts)

    def add_column(self, ts: datetime, name: str, node: dict[str, Any]) -> int:
        """Bump the schema version with a new nullable value column; returns the new version."""
        versioned = copy.deepcopy(self.versioned_schema)
        value = versioned["schema"]["properties"]["value"]
        if name in value["properties"] or name in versioned["schema"]["properties"]["key"]["properties"]:
            raise ValueError(f"column {name!r} already exists in {self.namespace}.{self.name}")
        value["properties"][name] = node
        versioned["version"] = int(versioned["version"]) + 1
        self.revisions.append(SchemaRevision(ts, versioned, parse_table_schema(versioned), name))
        return versioned["version"]

    # -- change log ------------------------------------------------------------------------

    @property
    def latest_ts(self) -> datetime:
        return self.commits[-1].ts if self.commits else self.base_ts

    @property
    def max_key(self) -> int:
        return self.commits[-1].max_key if self.commits else self.initial_rows

    @property
    def live_count(self) -> int:
        return self.max_key - len(self._deleted)

    def commit(self, ts: datetime, updates: int, inserts: int, deletes: int, rnd: random.Random) -> Commit:
        """Append one commit at ``ts`` touching the requested number of rows."""
        live = self.live_count
        updates = min(updates, live)
        deletes = min(deletes, max(0, live - updates))
        chosen = self._pick_live(updates + deletes, rnd)
        changes: dict[int, int | None] = {}
        for k in chosen[:updates]:
            version = self._versions.get(k, 0) + 1
            self._versions[k] = version
            changes[k] = version
        for k in chosen[updates:]:
            changes[k] = DELETED
            self._deleted.add(k)
        max_key = self.max_key
        for k in range(max_key + 1, max_key + inserts + 1):
            changes[k] = 0
        commit = Commit(ts=ts, changes=changes, max_key=max_key + inserts)
        self.commits.append(commit)
        return commit

    def _pick_live(self, n: int, rnd: random.Random) -> list[int]:
        if n <= 0:
            return []
        picked: list[int] = []
        seen: set[int] = set()
        max_key = self.max_key
        while len(picked) < n:
            batch = rnd.sample(range(1, max_key + 1), min(max_key, n - len(picked) + len(self._deleted)))
            for k in batch:
                if k not in self._deleted and k not in seen:
                    seen.add(k)
                    picked.append(k)
                    if len(picked) == n:
                        break
        return picked

    def _overlay(self, after: datetime | None, upto: datetime) -> dict[int, RowState]:
        overlay: dict[int, RowState] = {}
        for commit in self.commits:
            if commit.ts > upto:
                break
            if after is not None and commit.ts <= after:
                continue
            for k, version in commit.changes.items():
                overlay[k] = RowState(k, version, commit.ts)
        return overlay

    def max_key_at(self, at: datetime) -> int:
        max_key = self.initial_rows
        for commit in self.commits:
            if commit.ts > at:
                break
            max_key = commit.max_key
        return max_key

    def snapshot(self, at: datetime) -> tuple[int, Iterator[RowState]]:
        """Every live row as of ``at`` in key order (deleted rows are absent), with their count."""
        overlay = self._overlay(None, at)
        max_key = self.max_key_at(at)
        count = max_key - sum(1 for s in overlay.values() if s.deleted and s.k <= max_key)
        base = self.base_ts

        def rows() -> Iterator[RowState]:
            for k in range(1, max_key + 1):
                state = overlay.get(k)
                if state is None:
                    yield RowState(k, 0, base)
                elif not state.deleted:
                    yield state

        return count, rows()

    def changes(self, since: datetime, until: datetime) -> tuple[int, Iterator[RowState]]:
        """The latest change of every row changed in ``since < ts <= until``, in key order.

        The initial rows count as committed at ``base_ts``: a window that contains it
        returns them too (unless a later commit in the window supersedes them).
        """
        overlay = self._overlay(since, until)
        if since < self.base_ts <= until:
            for k in range(1, self.initial_rows + 1):
                overlay.setdefault(k, RowState(k, 0, self.base_ts))
        return len(overlay), (overlay[k] for k in sorted(overlay))

    def commit_timestamps(self) -> list[datetime]:
        return [self.base_ts, *(c.ts for c in self.commits)]


class Dataset:
    """All emulated namespaces and tables, plus the logical clock that orders their commits.

    :param seed: seed of every generated value.
    :param rows: rows per table at the start, as an int for all tables or a mapping from
        ``"namespace.table"`` (or a bare table name) to a count; ``"*"`` sets the default.
    :param clock_start: commit time of the initial rows. Defaults to the start of the
        current hour two days ago, so ``at``/``until`` look like real DAP watermarks.
    :param schemas: ``{namespace: {table: versioned schema}}``; the bundled ones of ``catalog``
        by default.
    :param catalog: which bundled tables to serve when ``schemas`` is not given: ``"full"``
        (every exposed DAP table, the default) or ``"core"`` (:data:`CORE_TABLES`).
    :param extra_rows: initial rows of each table outside :data:`CORE_TABLES` that ``rows``
        does not name explicitly (``"namespace.table"`` or bare name): the smaller of this and
        what ``rows`` gives. ``None`` applies ``rows`` to every table alike.
    :param retention: per ``"namespace.table"`` retention of incremental history.
    :param quirks: returns the value quirks to apply (:mod:`.quirks`); read whenever a row is
        generated, so changing them affects the next job.
    """

    def __init__(
        self,
        seed: int = 0,
        rows: int | dict[str, int] = 50,
        clock_start: datetime | None = None,
        schemas: dict[str, dict[str, dict[str, Any]]] | None = None,
        retention: dict[str, timedelta] | None = None,
        quirks: Callable[[], Mapping[str, float]] | None = None,
        catalog: str = "full",
        extra_rows: int | None = EXTRA_TABLE_ROWS,
    ) -> None:
        if clock_start is None:
            now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
            clock_start = now - timedelta(days=2)
        if clock_start.tzinfo is None:
            raise ValueError("clock_start must be timezone-aware")
        self.seed = seed
        self.clock = clock_start
        self._lock = threading.RLock()
        self._rnd = random.Random(seed)
        retention = {"canvas_logs.web_logs": timedelta(days=30)} if retention is None else retention
        self.tables: dict[str, dict[str, Table]] = {}
        for namespace, tables in (schemas or load_bundled_schemas(catalog)).items():
            for name, versioned in sorted(tables.items()):
                self.tables.setdefault(namespace, {})[name] = Table(
                    namespace=namespace,
                    name=name,
                    initial_rows=_row_count(rows, namespace, name, extra_rows),
                    base_ts=clock_start,
                    seed=seed,
                    revisions=[SchemaRevision(clock_start, versioned, parse_table_schema(versioned))],
                    retention=retention.get(f"{namespace}.{name}"),
                    quirks=quirks,
                )

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def namespaces(self) -> list[str]:
        return sorted(self.tables)

    def table(self, namespace: str, name: str) -> Table:
        return self.tables[namespace][name]

    def _tick(self, step: timedelta) -> datetime:
        # Micro-second jitter so watermarks exercise fractional-second handling everywhere.
        self.clock = self.clock + step + timedelta(microseconds=self._rnd.randrange(1, 999_999))
        return self.clock

    def advance(
        self,
        tables: list[str] | None = None,
        *,
        updates: int | float = 0.1,
        inserts: int | float = 0.02,
        deletes: int | float = 0.01,
        step: timedelta = timedelta(minutes=1),
    ) -> datetime:
        """Commit a round of changes and return its timestamp.

        :param tables: ``"namespace.table"`` names (bare names mean ``canvas``); all tables by default.
        :param updates: rows to update, as a count (int) or a fraction of live rows (float).
        :param inserts: rows to insert, count or fraction.
        :param deletes: rows to hard-delete, count or fraction.
        :param step: how far the logical clock moves.
        """
        with self._lock:
            targets = self._resolve(tables)
            ts = self._tick(step)
            for table in targets:
                live = table.live_count
                table.commit(
                    ts,
                    updates=_amount(updates, live),
                    inserts=_amount(inserts, live),
                    deletes=_amount(deletes, live),
                    rnd=random.Random(f"{self.seed}/{table.namespace}.{table.name}/{len(table.commits)}"),
                )
            return ts

    def add_column(
        self,
        table: str,
        column: str = "emulator_added_note",
        node: dict[str, Any] | None = None,
        step: timedelta = timedelta(seconds=1),
    ) -> int:
        """Switch ``table`` to a new schema version with one added nullable column."""
        node = node or {"type": "string", "maxLength": 255, "description": "Added by a schema change."}
        with self._lock:
            (target,) = self._resolve([table])
            return target.add_column(self._tick(step), column, node)

    def reload(self, table: str, step: timedelta = timedelta(seconds=1)) -> datetime:
        """Mark ``table`` as reloaded upstream: incrementals from before now need a new snapshot."""
        with self._lock:
            (target,) = self._resolve([table])
            target.reload_ts = self._tick(step)
            target.commits.append(Commit(target.reload_ts, {}, target.max_key))
            return target.reload_ts

    def _resolve(self, names: list[str] | None) -> list[Table]:
        if names is None:
            return [t for ns in self.namespaces() for t in self.tables[ns].values()]
        out = []
        for name in names:
            namespace, _, table = name.rpartition(".")
            namespace = namespace or "canvas"
            try:
                out.append(self.tables[namespace][table])
            except KeyError:
                raise KeyError(f"no table {namespace}.{table} in the emulator") from None
        return out


def _row_count(rows: int | dict[str, int], namespace: str, table: str, extra_rows: int | None) -> int:
    named = not isinstance(rows, int) and (f"{namespace}.{table}" in rows or table in rows)
    if isinstance(rows, int):
        count = rows
    else:
        count = next((int(rows[key]) for key in (f"{namespace}.{table}", table, "*") if key in rows), 50)
    if extra_rows is not None and not named and f"{namespace}.{table}" not in CORE_TABLES:
        count = min(count, extra_rows)
    return count


def _amount(amount: int | float, live: int) -> int:
    if isinstance(amount, float):
        return max(1, round(amount * live)) if amount > 0 and live > 0 else 0
    return int(amount)
