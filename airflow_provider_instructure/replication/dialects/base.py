"""What every target dialect provides.

A dialect wraps one DB-API connection and knows how to quote names, run a transaction,
introspect a table, create and bulk-load tables, merge a staged incremental, and swap a
freshly loaded snapshot in. :class:`~..replicator.TableReplicator` decides *what* to do;
the dialect decides *how* on its database.

What is the same everywhere lives here, with the per-dialect differences as class data:
driver detection (:attr:`Dialect.drivers`), ``CREATE TABLE`` (:attr:`Dialect.value_null`,
:attr:`Dialect.table_options`, :attr:`Dialect.primary_key_suffix`), the upsert
(:attr:`Dialect.upsert_conflict`, :attr:`Dialect.upsert_assign`) and the state table's types
(:func:`~..types.state_column_types`). The value types they pass around are in
:mod:`.load_job` (re-exported here).
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime, timezone
from typing import Any, ClassVar

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.dialects.load_job import (
    NEW_SUFFIX,
    OLD_SUFFIX,
    LiveColumn,
    LoadCounts,
    LoadJob,
    PhaseTimer,
    Target,
)
from airflow_provider_instructure.replication.errors import (
    ConcurrentReplicationError,
    ReplicationConfigError,
    TsvFormatError,
)
from airflow_provider_instructure.replication.identifiers import shorten, utf8_length
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.tsv import META_ACTION
from airflow_provider_instructure.replication.types import state_column_types
from airflow_provider_instructure.replication.values import TimestampRange
from airflow_provider_instructure.timestamps import parse_timestamp


class Dialect(ABC):
    """Base of the PostgreSQL, MySQL/MariaDB and SQLite targets.

    :param connection: an open DB-API connection with no transaction in progress.
    :param log: logger for DDL and progress lines.
    """

    name: ClassVar[str]
    #: The database as people write it, for messages (``PostgreSQL``).
    title: ClassVar[str]
    #: The DB-API drivers this dialect accepts: ``(module, driver)``; a connection whose class
    #: (or a base class) is defined in ``module`` or below it is served by ``driver``.
    drivers: ClassVar[tuple[tuple[str, str], ...]]
    #: What connection to pass, for the error naming a connection of another driver.
    connection_hint: ClassVar[str]
    #: DB-API placeholder.
    param: ClassVar[str] = "%s"
    #: Longest identifier the database accepts (``None``: no limit), measured by
    #: :meth:`identifier_length`.
    max_identifier: ClassVar[int | None] = 63
    #: ``CREATE TABLE``: appended to a value column's type (MySQL spells ``NULL`` out, as
    #: ``dap initdb`` does), to the column list (MySQL: engine and character set), and the
    #: suffix of a named primary-key constraint (PostgreSQL: ``<table>_pkey`` for every table,
    #: so a side table's constraint is renamed with it; ``None``: an unnamed ``PRIMARY KEY``).
    value_null: ClassVar[str] = ""
    table_options: ClassVar[str] = ""
    primary_key_suffix: ClassVar[str | None] = None
    #: The upsert of :meth:`upsert_sql`: the conflict clause and one column's assignment.
    upsert_conflict: ClassVar[str] = "ON CONFLICT ({keys}) DO UPDATE SET"
    upsert_assign: ClassVar[str] = "{c} = EXCLUDED.{c}"
    #: The snapshot commits its state with ``pending_swap`` set and the table is renamed in
    #: afterwards by :meth:`swap_in` (databases whose DDL cannot join a transaction).
    deferred_swap: ClassVar[bool] = False
    #: The timestamps the target stores, for the bad-value policy (:mod:`~..values`).
    timestamps: ClassVar[TimestampRange]

    def __init__(self, connection: Any, log: logging.Logger) -> None:
        self.conn = connection
        self.log = log
        #: The driver serving ``connection`` (:attr:`drivers`), None for one this dialect cannot use.
        self.driver: str | None = self.driver_of(connection)

    @classmethod
    def driver_of(cls, connection: Any) -> str | None:
        """The name of the driver in :attr:`drivers` whose module defines ``connection``'s class
        or one of its bases (a subclass of ``sqlite3.Connection`` is a sqlite3 connection), else None."""
        for klass in type(connection).__mro__:
            module = klass.__module__ or ""
            for prefix, driver in cls.drivers:
                if module == prefix or module.startswith(prefix + "."):
                    return driver
        return None

    @property
    def state_types(self) -> dict[str, str]:
        """Column types of the state table by role (``key``, ``name``, ``short``, ``ts``, ``int``,
        ``long_text``): :func:`~..types.state_column_types`."""
        return state_column_types(self.name)

    # -- identifiers ----------------------------------------------------------------------

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def qualify(self, schema: str | None, table: str) -> str:
        if schema is None:
            return self.quote(table)
        return f"{self.quote(schema)}.{self.quote(table)}"

    def qualified(self, target: Target, table: str | None = None) -> str:
        return self.qualify(target.schema, table or target.table)

    def identifier_length(self, name: str) -> int:
        """How the database measures an identifier against :attr:`max_identifier`."""
        return utf8_length(name)

    def fit(self, name: str) -> str:
        """``name``, or its deterministic short form when it exceeds the identifier limit
        (:func:`~..identifiers.shorten`)."""
        return shorten(name, self.max_identifier, self.identifier_length)

    def side_name(self, table: str, suffix: str) -> str:
        """``<table><suffix>``, shortened with a hash when it would exceed the identifier limit."""
        return shorten(table, self.max_identifier, self.identifier_length, suffix=suffix)

    def check_identifier(self, name: str, what: str) -> None:
        if not name or (self.max_identifier is not None and self.identifier_length(name) > self.max_identifier):
            raise ReplicationConfigError(
                f"{what} {name!r} is empty or longer than {self.max_identifier} "
                f"{'characters' if self.identifier_length('é') == 1 else 'bytes'}, the {self.name} limit; pass a "
                "shorter target_schema (CD2SyncTableOperator's destination_schema)"
            )

    def make_target(self, schema: str, wanted: str, namespace: str, table: str) -> Target:
        """The :class:`Target` for table name ``wanted`` in ``schema``: the name shortened if it
        does not fit (recorded in the state row), the schema refused if it does not.

        :raises ReplicationConfigError: ``schema`` is empty or too long (it is the user's choice
            or the namespace, and a hashed schema name would surprise more than an error).
        """
        self.check_identifier(schema, "schema (database) name")
        if not wanted:
            raise ReplicationConfigError("the table name is empty")
        used = self.fit(wanted)
        if used != wanted:
            self.log.info(
                "table name %r exceeds the %s identifier limit (%s); using %r (recorded in the state table)",
                wanted,
                self.name,
                self.max_identifier,
                used,
            )
        return Target(schema, used, namespace, table, requested=wanted)

    @abstractmethod
    def resolve_target(
        self, namespace: str, table: str, target_schema: str | None, table_prefix: str | None
    ) -> Target: ...

    # -- transactions ---------------------------------------------------------------------

    @abstractmethod
    def in_transaction(self) -> bool: ...

    def cursor(self) -> Any:
        return self.conn.cursor()

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN")

    def _commit(self, cur: Any) -> None:
        self.conn.commit()

    def _rollback(self, cur: Any) -> None:
        self.conn.rollback()

    def _locked_elsewhere(self, target: Target) -> ConcurrentReplicationError:
        return ConcurrentReplicationError(
            f"another replication of {target.display} is running (lock {self.lock_name(target)!r} is held); "
            "retry when it has finished"
        )

    def require_idle(self) -> None:
        if self.in_transaction():
            raise ReplicationConfigError(
                "the connection has a transaction in progress; commit or roll it back before replicating "
                "(the replicator must own the transaction boundaries to keep data and watermark together)"
            )

    @contextmanager
    def transaction(self, *, read_only: bool = False, timer: PhaseTimer | None = None) -> Iterator[Any]:
        """One transaction: committed when the block succeeds (rolled back if ``read_only``),
        rolled back on any exception, including ``KeyboardInterrupt``.

        :param timer: if given, the commit is timed as phase ``commit``.
        """
        self.require_idle()
        cur = self.cursor()
        try:
            self._begin(cur)
            yield cur
        except BaseException:
            try:
                self._rollback(cur)
            except Exception:  # the original error matters more than a failed rollback
                self.log.warning("rollback after a failed replication step also failed", exc_info=True)
            raise
        else:
            if read_only:
                self._rollback(cur)
            else:
                with timer.phase("commit") if timer is not None else nullcontext():
                    self._commit(cur)
        finally:
            with suppress(Exception):  # a dead connection cannot close its cursor either
                cur.close()

    def fetch_all(self, cur: Any, sql: str, params: tuple[Any, ...] | list[Any] | None = None) -> list[tuple[Any, ...]]:
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        return list(cur.fetchall())

    def fetch_one(
        self, cur: Any, sql: str, params: tuple[Any, ...] | list[Any] | None = None
    ) -> tuple[Any, ...] | None:
        rows = self.fetch_all(cur, sql, params)
        return rows[0] if rows else None

    # -- one replication per target at a time ---------------------------------------------

    @staticmethod
    def lock_name(target: Target) -> str:
        # Short and fixed-length: MySQL lock names are limited to 64 characters.
        digest = hashlib.sha1(f"{target.schema}\x1f{target.table}".encode()).hexdigest()[:40]
        return f"dap_replication:{digest}"

    @contextmanager
    def exclusive(self, target: Target) -> Iterator[None]:
        """Hold a session-level lock on ``target`` for a whole sync, so two runs cannot
        interleave (watermark checks, side tables, swaps). Non-blocking: a busy lock raises
        :class:`~..errors.ConcurrentReplicationError`. No-op where the database serializes
        writers anyway (SQLite)."""
        yield

    # -- introspection --------------------------------------------------------------------

    @abstractmethod
    def table_kind(self, cur: Any, schema: str, table: str) -> str | None:
        """``"table"``, ``"view"`` (or another non-table relation), or ``None`` if absent."""

    @abstractmethod
    def live_columns(self, cur: Any, target: Target) -> dict[str, LiveColumn]: ...

    # -- checks ---------------------------------------------------------------------------

    def check_connection(self) -> None:
        """The connection belongs to one of this dialect's :attr:`drivers`, is open and is idle.

        :raises ReplicationConfigError: naming what to pass instead, or that it is closed or busy.
        """
        if self.driver is None:
            kind = f"{type(self.conn).__module__}.{type(self.conn).__name__}"
            raise ReplicationConfigError(
                f"dialect {self.name!r} needs {self.connection_hint}, got {kind}; pass the dialect that matches "
                "the connection"
            )
        if self.is_closed():
            raise ReplicationConfigError(f"the {self.title} connection is closed")
        self.require_idle()

    def is_closed(self) -> bool:
        """Whether the connection is known to be closed (False where the driver cannot tell)."""
        return False

    @abstractmethod
    def check_target(self, cur: Any, target: Target, *, table_exists: bool, dap_origin: bool) -> None:
        """Schema/database usable, privileges present, database writable; raise
        :class:`ReplicationConfigError` naming what is wrong and how to fix it."""

    # -- state table primitives -----------------------------------------------------------

    def to_db_timestamp(self, value: datetime) -> Any:
        return value.astimezone(timezone.utc)

    def from_db_timestamp(self, value: Any) -> datetime:
        if isinstance(value, str):  # SQLite's ISO text; naive text is UTC, as naive values are
            value = parse_timestamp(value, naive_is_utc=True)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def upsert_sql(self, table_sql: str, columns: list[str], keys: list[str]) -> str:
        """``INSERT ... VALUES (params)`` that updates the non-key columns on a key conflict
        (:attr:`upsert_conflict`, :attr:`upsert_assign`).

        :param table_sql: the quoted table; ``columns`` and ``keys``: quoted column names.
        """
        updates = ", ".join(self.upsert_assign.format(c=c) for c in columns if c not in keys)
        return (
            f"INSERT INTO {table_sql} ({', '.join(columns)}) VALUES ({', '.join([self.param] * len(columns))}) "
            f"{self.upsert_conflict.format(keys=', '.join(keys))} {updates}"
        )

    def dap_sync_table(self, target: Target) -> tuple[str | None, str] | None:
        """Where the official ``dap`` CLI keeps its ``table_sync`` state, if this dialect has one."""
        return None

    def dap_target_matches(self, target: Target, target_schema: str | None, target_table: str) -> bool:
        """Whether a ``table_sync`` row's target names ``target``."""
        return target_schema == target.schema and target_table == target.table

    def dap_timestamp(self, cur: Any, target: Target, value: datetime) -> datetime:
        """The naive-UTC value to store in ``table_sync.timestamp``."""
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    # -- schema changes, loads, swaps -----------------------------------------------------

    def ensure_schema(self, cur: Any, target: Target) -> None:  # noqa: B027 - optional hook
        """Create the target schema if the database has schemas and it is missing."""

    def create_table_sql(
        self,
        target: Target,
        table: str,
        columns: tuple[Column, ...],
        types: dict[str, str],
        *,
        primary_key: bool = True,
    ) -> str:
        """``CREATE TABLE`` for ``table`` in the target's schema: key columns ``NOT NULL``, value
        columns nullable (:mod:`~..types` says why), the primary key on the key columns.

        :param types: the SQL type of every column, by name.
        :param primary_key: False to add it after the bulk load (PostgreSQL snapshots).
        """
        defs = [f"{self.quote(c.name)} {types[c.name]}{' NOT NULL' if c.is_key else self.value_null}" for c in columns]
        if primary_key:
            defs.append(self.primary_key_sql(table, [c.name for c in columns if c.is_key]))
        return f"CREATE TABLE {self.qualify(target.schema, table)} ({', '.join(defs)}){self.table_options}"

    def primary_key_sql(self, table: str, keys: list[str]) -> str:
        """The primary-key clause of ``table`` (named after :attr:`primary_key_suffix` if set)."""
        clause = f"PRIMARY KEY ({', '.join(self.quote(k) for k in keys)})"
        if self.primary_key_suffix is None:
            return clause
        return f"CONSTRAINT {self.quote(self.side_name(table, self.primary_key_suffix))} {clause}"

    @abstractmethod
    def apply_schema_change(
        self,
        target: Target,
        change: SchemaChange,
        live: dict[str, LiveColumn],
        *,
        dap_origin: bool,
        schema: TableSchema,
    ) -> list[str]:
        """Apply the in-place part of ``change`` idempotently (columns or members already
        present are skipped) and return the DDL statements run."""

    @abstractmethod
    def snapshot(self, job: LoadJob) -> LoadCounts:
        """Build the table from the parts beside the live one and swap it in with the state row."""

    @abstractmethod
    def incremental(self, job: LoadJob) -> LoadCounts:
        """Stage the parts, apply deletes and upserts, write the state row: one transaction."""

    def swap_in(self, target: Target, build: str) -> bool:
        """Dialects with :attr:`deferred_swap`: rename the loaded side table ``build`` over the
        live table, idempotently (False if there was nothing left to rename)."""
        raise NotImplementedError

    # -- helpers shared by the dialects -----------------------------------------------------

    def key_match(self, left: str, right: str, keys: list[str]) -> str:
        return " AND ".join(f"{left}.{self.quote(k)} = {right}.{self.quote(k)}" for k in keys)

    def staged_upserts(self, cur: Any, stage: str, live_sql: str, keys: list[str]) -> tuple[int, int]:
        """Check the staged incremental's ``meta.action`` values and count its upserts:
        ``(U rows, U rows whose key the live table holds)`` (so inserts and updates are told
        apart before the merge changes the table).

        :param stage: the quoted staging table; ``live_sql``: the quoted live table.
        :raises TsvFormatError: a record whose action is not ``U`` or ``D``.
        """
        action = self.quote(META_ACTION)
        bad = self.fetch_one(cur, f"SELECT COUNT(*) FROM {stage} WHERE {action} IS NULL OR {action} NOT IN ('U', 'D')")
        if bad and bad[0]:
            raise TsvFormatError(f"{bad[0]} record(s) have a meta.action other than U or D")
        upserts = self.fetch_one(cur, f"SELECT COUNT(*) FROM {stage} WHERE {action} = 'U'")
        present = self.fetch_one(
            cur,
            f"SELECT COUNT(*) FROM {stage} s JOIN {live_sql} t ON {self.key_match('t', 's', keys)} "
            f"WHERE s.{action} = 'U'",
        )
        return (int(upserts[0]) if upserts else 0), (int(present[0]) if present else 0)


__all__ = [
    "NEW_SUFFIX",
    "OLD_SUFFIX",
    "Dialect",
    "LiveColumn",
    "LoadCounts",
    "LoadJob",
    "PhaseTimer",
    "Target",
]
