"""Replicate one DAP table into a SQL database: snapshot, then incrementals.

Usage (the operator does this; here with an already-downloaded job result)::

    replicator = TableReplicator(PostgresHook("warehouse").get_conn(), "postgres", "canvas", "accounts")
    replicator.check_target()                  # clear errors before any data moves
    state = replicator.read_state()            # None: first run
    if state is None:
        result = replicator.apply_snapshot(parts, versioned_schema=schema, at=job["at"], job_id=job["id"])
    else:
        # ask DAP for an incremental with since=state.watermark, download it, then:
        result = replicator.apply_incremental(
            parts, versioned_schema=schema, since=state.watermark, until=job["until"], job_id=job["id"]
        )
    xcom = result.to_dict()

``parts`` are the job's result files: ``format: tsv``, ``mode: condensed``, gzip or not.
``versioned_schema`` is the schema endpoint's ``{"schema": ..., "version": N}`` for the
job's ``schema_version``.

Guarantees:

* The watermark is stored in the target database (:mod:`~.state`) and committed with the
  data it describes; a failure anywhere leaves the previous consistent state, and rerunning
  the same window gives the same result (upserts and deletes are idempotent).
* An incremental whose window starts after the watermark (a gap) or ends before it (stale
  data) is refused with :class:`~.errors.WatermarkError`; one that starts earlier (an
  overlap) is applied, which is correct because every key it carries gets its latest state.
* A schema change that cannot be applied in place raises
  :class:`~.errors.SchemaChangeRequiresSnapshot` before anything changes; so does a missing
  state (:class:`~.errors.SnapshotRequired`). The caller then runs a snapshot, which is
  built beside the live table and swapped in atomically (see each dialect for how).
* One sync per target at a time: a session-level lock (PostgreSQL advisory lock, MySQL
  ``GET_LOCK``; SQLite serializes writers itself) is held for the whole sync, so the checks
  above cannot be raced; a second run fails fast with
  :class:`~.errors.ConcurrentReplicationError`.
* ``canvas_logs.web_logs`` may repeat a key within one result (at-least-once delivery): the
  last occurrence wins, as in ``dap``.

No Airflow, no HTTP: this package works on a DB-API connection and local files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema, parse_table_schema
from airflow_provider_instructure.replication.dialects import dialect_class
from airflow_provider_instructure.replication.dialects.base import NEW_SUFFIX, LoadCounts, LoadJob, PhaseTimer
from airflow_provider_instructure.replication.dialects.mysql import MySQLDialect
from airflow_provider_instructure.replication.empty_table import create_empty_table, is_empty_replica
from airflow_provider_instructure.replication.errors import ReplicationConfigError, SchemaChangeRequiresSnapshot
from airflow_provider_instructure.replication.identifiers import column_names, mapped_schema, shortened
from airflow_provider_instructure.replication.part_feed import Parts, read_parts
from airflow_provider_instructure.replication.result import SyncResult
from airflow_provider_instructure.replication.schema_changes import SchemaChange, diff_schemas
from airflow_provider_instructure.replication.state import ORIGIN_DAP, STATE_TABLE, StateStore, SyncState
from airflow_provider_instructure.replication.state_table import ensure_state_table
from airflow_provider_instructure.replication.tsv import Part
from airflow_provider_instructure.replication.types import mysql_column_types, sql_type
from airflow_provider_instructure.replication.windows import aware_utc, check_incremental_window, check_snapshot_at

#: Tables whose results may repeat a key (upstream at-least-once delivery), as dap knows them.
DUPLICATE_KEY_TABLES = frozenset({("canvas_logs", "web_logs")})


class TableReplicator:
    """Keeps one SQL table equal to one DAP table.

    :param connection: an open DB-API connection without a transaction in progress:
        ``PostgresHook(...).get_conn()`` (psycopg or psycopg2), ``MySqlHook(...,
        local_infile=True).get_conn()`` (mysql-connector-python or PyMySQL) or
        ``SqliteHook(...).get_conn()`` (sqlite3). The replicator commits and rolls back on it.
    :param dialect: ``postgres``, ``mysql`` (MySQL and MariaDB) or ``sqlite``.
    :param namespace: DAP namespace (``canvas``, ``canvas_logs``...).
    :param table: DAP table.
    :param target_schema: PostgreSQL schema (default: the namespace), MySQL database (default:
        the connection's) or SQLite attached database (default ``main``).
    :param table_prefix: prepended to the table name. Default: none on PostgreSQL,
        ``<namespace>__`` on MySQL and SQLite unless ``target_schema`` is given (the naming
        ``dap`` uses on MySQL). A table or column name over the database's identifier limit
        is shortened deterministically and recorded in the state row (:mod:`.identifiers`).
    :param log: logger; ``airflow_provider_instructure.replication.replicator`` by default.
    :raises ReplicationConfigError: for an unknown dialect, a connection of another driver,
        a connection with a transaction in progress, or an over-long schema name.
    """

    def __init__(
        self,
        connection: Any,
        dialect: str,
        namespace: str,
        table: str,
        *,
        target_schema: str | None = None,
        table_prefix: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.log = log or logging.getLogger(__name__)
        self.namespace = namespace
        self.table = table
        self._d = dialect_class(dialect)(connection, self.log)
        self._d.check_connection()
        self.target = self._d.resolve_target(namespace, table, target_schema, table_prefix)
        self._store = StateStore(self._d)
        self._checked = False

    @property
    def dialect(self) -> str:
        return self._d.name

    @property
    def kind(self) -> str:
        """The :class:`~.destination.Destination` kind: the dialect (``postgres``, ``mysql``, ``sqlite``)."""
        return self._d.name

    def close(self) -> None:
        """Close the DB-API connection given to the constructor (the :class:`~.destination.Destination`
        contract: the caller is done with this replica). Idempotent; errors of an already broken
        connection are ignored."""
        with contextlib.suppress(Exception):
            self._d.conn.close()

    @property
    def target_name(self) -> str:
        """The replica as ``schema.table`` (PostgreSQL schema, MySQL database, SQLite alias)."""
        return self.target.display

    # -- checks and state -----------------------------------------------------------------

    def check_target(self, *, empty_table_schema: Callable[[], dict[str, Any]] | None = None) -> None:
        """Fail early with :class:`ReplicationConfigError` if the target cannot be used.

        Checks the driver, that no transaction is open, that the schema/database exists (or
        can be created) and is writable, the privileges needed (including ``LOCAL INFILE`` on
        MySQL), and that an existing table of the target's name is managed by this package
        or by ``dap initdb`` for the same DAP table. Creates the state table, which proves
        write access. Moves no data.

        :param empty_table_schema: returns the table's versioned DAP schema; given, an existing
            table without a state row is accepted when it is empty with exactly the schema's
            columns (what a sync leaves when DAP had no data yet, :mod:`.empty_table`). Called
            only for such a table.
        """
        d = self._d
        d.check_connection()
        t = self.target
        with d.transaction(read_only=True) as cur:
            kind = d.table_kind(cur, t.schema, t.table)
            if kind not in (None, "table"):
                raise ReplicationConfigError(
                    f"{t.display} is a {kind}, not a table; choose another schema or table prefix "
                    "(CD2SyncTableOperator's destination_schema / table_prefix)"
                )
            exists = kind == "table"
            state = self._store.read(cur, t, table_exists=exists)
            # dap_origin: the target's state is a table_sync row, whose privileges the dialect checks.
            d.check_target(cur, t, table_exists=exists, dap_origin=state is not None and state.origin == ORIGIN_DAP)
            if (
                exists
                and state is None
                and not (
                    empty_table_schema is not None
                    and is_empty_replica(d, cur, t, self._mapped(parse_table_schema(empty_table_schema()))[0])
                )
            ):
                raise ReplicationConfigError(
                    f"{t.display} exists but is not managed by this replicator (no row in {STATE_TABLE}) nor by "
                    f"the dap client (no table_sync or dap_meta row), and it is not the empty table a sync leaves "
                    "when DAP had no data yet (that one has no rows and exactly the schema's columns); refusing to "
                    "overwrite it. Drop or rename it, or choose another schema or table prefix "
                    "(CD2SyncTableOperator's destination_schema / table_prefix)"
                )
        self._ensure_state_table(probe=True)
        self._checked = True

    def read_state(self) -> SyncState | None:
        """The target's state: our state row, else a ``dap initdb`` ``table_sync`` row
        (``origin="dap"``), else ``None`` (first run: snapshot)."""
        self._d.check_connection()
        with self._d.transaction(read_only=True) as cur:
            exists = self._d.table_kind(cur, self.target.schema, self.target.table) == "table"
            return self._store.read(cur, self.target, table_exists=exists)

    def create_empty(self, versioned_schema: dict[str, Any]) -> bool:
        """Create the replica without rows and without a state row (DAP has no data yet; see
        :mod:`.empty_table`). Returns False when the table exists already."""
        self._ensure_checked()
        schema, _ = self._mapped(parse_table_schema(versioned_schema))
        return create_empty_table(self._d, self.target, schema, self._column_types(schema))

    # -- snapshot -------------------------------------------------------------------------

    def apply_snapshot(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        at: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Load a snapshot into a fresh table and swap it in with the new watermark ``at``.

        Used for the first run, after ``SnapshotRequiredError``/``OutOfRangeError`` and for
        schema changes that cannot be applied in place. Readers of the live table see the old
        rows until the swap and the new ones after it.

        :param files: the snapshot job's TSV parts (condensed; gzip or plain), or the directory
            holding them (``*.tsv``, ``*.tsv.gz``).
        :param versioned_schema: ``{"schema": ..., "version": N}`` matching the job's schema_version.
        :param at: the job's ``at``.
        :param job_id: the DAP job id, recorded in the state.
        :raises WatermarkError: if ``at`` is older than the replica's watermark.
        :raises ConcurrentReplicationError: another run holds the target's lock.
        """
        at = aware_utc(at, "at")
        self._ensure_checked()
        with self._d.exclusive(self.target):
            return self._snapshot(files, versioned_schema, at, job_id)

    def _snapshot(
        self,
        files: Parts,
        versioned_schema: dict[str, Any],
        at: datetime,
        job_id: str | None,
    ) -> SyncResult:
        timer, _, schema, names, parts, previous = self._prepare(files, versioned_schema, incremental=False)
        check_snapshot_at(previous, at, self.target_name)
        with timer.phase("prepare"):
            self._ensure_state_table()
            with self._d.transaction(read_only=True) as cur:
                live_exists = self._d.table_kind(cur, self.target.schema, self.target.table) == "table"

        write_state = self._state_writer(previous, at, versioned_schema, "snapshot", job_id, names)
        job = LoadJob(
            target=self.target,
            schema=schema,
            parts=parts,
            dedupe=(self.namespace, self.table) in DUPLICATE_KEY_TABLES,
            write_state=write_state,
            timer=timer,
            column_types=self._column_types(schema),
            replace_live=live_exists,
        )
        self.log.info(
            "snapshot of %s.%s into %s: %d part(s), at %s%s",
            self.namespace,
            self.table,
            self.target_name,
            len(parts),
            at.isoformat(),
            " (replacing the live table)" if live_exists else "",
        )
        counts = self._d.snapshot(job)
        if self._d.deferred_swap:
            with timer.phase("swap"):
                self._finish_swap(self._d.side_name(self.target.table, NEW_SUFFIX))
        return self._result("snapshot", counts, parts, timer, at, schema, job_id, (), continued=False)

    # -- incremental ----------------------------------------------------------------------

    def apply_incremental(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        since: datetime | str,
        until: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Apply an incremental result: upserts (``U``) and hard deletes (``D``), then advance
        the watermark to ``until``, in one transaction.

        Additive schema changes (new nullable column, new enum member, a column becoming
        nullable) are applied in place first.

        :param files: the incremental job's TSV parts (condensed; gzip or plain), or their directory.
            No parts (an empty result) just moves the watermark.
        :param versioned_schema: ``{"schema": ..., "version": N}`` matching the job's schema_version.
        :param since: the job's ``since`` (normally the stored watermark).
        :param until: the job's ``until``: the new watermark.
        :param job_id: the DAP job id, recorded in the state.
        :raises SnapshotRequired: no state, or the state's table is gone.
        :raises SchemaChangeRequiresSnapshot: the schema changed in a way that needs a snapshot.
        :raises WatermarkError: the window leaves a gap after the watermark, or ends before it.
        :raises ConcurrentReplicationError: another run holds the target's lock.
        """
        since = aware_utc(since, "since")
        until = aware_utc(until, "until")
        if until < since:
            raise ValueError(f"until {until.isoformat()} is before since {since.isoformat()}")
        self._ensure_checked()
        with self._d.exclusive(self.target):
            return self._incremental(files, versioned_schema, since, until, job_id)

    def _incremental(
        self,
        files: Parts,
        versioned_schema: dict[str, Any],
        since: datetime,
        until: datetime,
        job_id: str | None,
    ) -> SyncResult:
        timer, original, schema, names, parts, state = self._prepare(files, versioned_schema, incremental=True)
        t = self.target
        state = check_incremental_window(state, since, until, self.target_name)
        # The state row's names describe the live table: they win over the rule (the same
        # today, but a table built by another release keeps its names).
        recorded = state.name_map.get("columns") or {}
        if any(names.get(dap) not in (None, used) for dap, used in recorded.items()):
            schema, names = self._mapped(original, recorded)
            with timer.phase("prepare"):
                parts = self._read_parts(files, original, schema, incremental=True)
        # Both schemas with the target's column names (one mapping for both), so the
        # change's DDL names the columns as the table has them.
        change = diff_schemas(self._mapped(state.schema(), recorded)[0], schema)
        if not change.in_place:
            raise SchemaChangeRequiresSnapshot(
                f"schema of {self.namespace}.{self.table} changed from version {change.old_version} to "
                f"{change.new_version} in a way that needs a new snapshot: {'; '.join(change.blocking)}",
                old_version=change.old_version,
                new_version=change.new_version,
                reasons=change.blocking,
            )
        with timer.phase("prepare"):
            if not state.from_dap_cli:
                self._ensure_state_table()
            ddl = self._apply_schema_change(change, schema, state)
            with self._d.transaction(read_only=True) as cur:
                live = self._d.live_columns(cur, t)

        write_state = self._state_writer(state, until, versioned_schema, "incremental", job_id, names)
        job = LoadJob(
            target=t,
            schema=schema,
            parts=parts,
            dedupe=(self.namespace, self.table) in DUPLICATE_KEY_TABLES,
            write_state=write_state,
            timer=timer,
            live=live,
        )
        if parts:
            counts = self._d.incremental(job)
        else:
            # No result files (nothing changed): only the watermark moves.
            counts = LoadCounts()
            with self._d.transaction(timer=timer) as cur:
                write_state(cur)
        return self._result(
            "incremental", counts, parts, timer, until, schema, job_id, tuple(ddl), continued=state.from_dap_cli
        )

    # -- internals ------------------------------------------------------------------------

    def _prepare(
        self, files: Parts, versioned_schema: dict[str, Any], *, incremental: bool
    ) -> tuple[PhaseTimer, TableSchema, TableSchema, dict[str, str], list[Part], SyncState | None]:
        """What both sync kinds start with: the schema (as DAP names it and with the target's
        names), the parts checked against it, and the state after finishing an interrupted swap."""
        timer = PhaseTimer()
        original = parse_table_schema(versioned_schema)
        schema, names = self._mapped(original)
        with timer.phase("prepare"):
            parts = self._read_parts(files, original, schema, incremental=incremental)
        return timer, original, schema, names, parts, self._recover(timer)

    def _ensure_checked(self) -> None:
        if not self._checked:
            self.check_target()

    def _ensure_state_table(self, *, probe: bool = False) -> None:
        ensure_state_table(self._d, self._store, self.target, self.log, probe=probe)

    def _mapped(
        self, schema: TableSchema, recorded: dict[str, str] | None = None
    ) -> tuple[TableSchema, dict[str, str]]:
        """``schema`` with the target's column names, and the names by DAP name
        (:mod:`.identifiers`: a name over the identifier limit is shortened; ``recorded``,
        the state row's names, take precedence)."""
        names = column_names(schema, lambda name: (recorded or {}).get(name) or self._d.fit(name))
        if shortened(names):
            self.log.info(
                "%s.%s: column name(s) over the %s identifier limit are shortened: %s",
                self.namespace,
                self.table,
                self._d.name,
                shortened(names),
            )
        return mapped_schema(schema, names), names

    def _state_writer(
        self,
        previous: SyncState | None,
        watermark: datetime,
        versioned_schema: dict[str, Any],
        mode: str,
        job_id: str | None,
        names: dict[str, str],
    ) -> Callable[..., None]:
        """The :attr:`LoadJob.write_state` of a sync: writes the state row with the cursor of
        the data transaction (and ``pending_swap`` when a dialect defers its swap)."""

        def write_state(cur: Any, pending_swap: str | None = None) -> None:
            self._store.write(
                cur,
                self.target,
                previous=previous,
                watermark=watermark,
                versioned_schema=versioned_schema,
                mode=mode,
                job_id=job_id,
                pending_swap=pending_swap,
                name_map=self._name_map(names),
            )

        return write_state

    def _name_map(self, names: dict[str, str]) -> dict[str, dict[str, str]]:
        t = self.target
        table = {t.requested: t.table} if t.shortened and t.requested else {}
        return {"table": table, "columns": shortened(names)}

    def _read_parts(self, files: Parts, schema: TableSchema, mapped: TableSchema, *, incremental: bool) -> list[Part]:
        return read_parts(files, schema, mapped, incremental=incremental)

    def _column_types(self, schema: TableSchema) -> dict[str, str]:
        if isinstance(self._d, MySQLDialect):
            return mysql_column_types(schema.columns)
        return {c.name: sql_type(c, self._d.name) for c in schema.columns}

    def _recover(self, timer: PhaseTimer) -> SyncState | None:
        """Finish a snapshot swap an earlier run committed but did not complete (MySQL only),
        then return the current state."""
        state = self.read_state()
        if state is None or not state.pending_swap:
            return state
        with timer.phase("recover"):
            self.log.warning(
                "%s: finishing the swap of %s left by an interrupted snapshot", self.target_name, state.pending_swap
            )
            self._finish_swap(state.pending_swap)
        return self.read_state()

    def _finish_swap(self, build: str) -> None:
        self._d.swap_in(self.target, build)
        with self._d.transaction() as cur:
            self._store.clear_pending(cur, self.target)

    def _apply_schema_change(self, change: SchemaChange, schema: TableSchema, state: SyncState) -> list[str]:
        if change.empty and not state.from_dap_cli:
            return []
        with self._d.transaction(read_only=True) as cur:
            live = self._d.live_columns(cur, self.target)
        return self._d.apply_schema_change(self.target, change, live, dap_origin=state.from_dap_cli, schema=schema)

    def _result(
        self,
        mode: str,
        counts: LoadCounts,
        parts: list[Part],
        timer: PhaseTimer,
        watermark: datetime,
        schema: TableSchema,
        job_id: str | None,
        ddl: tuple[str, ...],
        *,
        continued: bool,
    ) -> SyncResult:
        result = SyncResult.from_load(
            mode,
            self.target_name,
            self._d.name,
            counts,
            parts,
            timer,
            watermark,
            schema.version,
            job_id,
            ddl,
            continued=continued,
        )
        result.log_summary(self.log, f"{self.namespace}.{self.table}", counts.values)
        return result


__all__ = ["DUPLICATE_KEY_TABLES", "SyncResult", "TableReplicator"]
