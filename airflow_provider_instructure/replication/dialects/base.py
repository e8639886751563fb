"""What every target dialect provides, and the small value types they share.

A dialect wraps one DB-API connection and knows how to quote names, run a transaction,
introspect a table, create and bulk-load tables, merge a staged incremental, and swap a
freshly loaded snapshot in. :class:`~..replicator.TableReplicator` decides *what* to do;
the dialect decides *how* on its database.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.errors import (
    ConcurrentReplicationError,
    ReplicationConfigError,
    ReplicationError,
)
from airflow_provider_instructure.replication.identifiers import shorten, utf8_length
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.tsv import Part
from airflow_provider_instructure.replication.values import (
    ChunkFixer,
    FieldFixer,
    TimestampRange,
    ValueTally,
    role_of,
)

#: Suffixes of the side tables a snapshot is built in / the live table is moved to.
#: ``<table>__dap_new`` and ``<table>__dap_old`` are reserved names.
NEW_SUFFIX = "__dap_new"
OLD_SUFFIX = "__dap_old"


@dataclass(frozen=True)
class Target:
    """Where a DAP table is replicated to.

    :param schema: PostgreSQL schema, MySQL database or SQLite database alias.
    :param table: table name.
    :param namespace: source DAP namespace.
    :param source_table: source DAP table.
    :param requested: the table name before shortening (:mod:`~..identifiers`), if known.
    """

    schema: str
    table: str
    namespace: str
    source_table: str
    requested: str | None = None

    @property
    def shortened(self) -> bool:
        """The table name was shortened to fit the identifier limit (``requested`` is the full one)."""
        return self.requested is not None and self.requested != self.table

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class LiveColumn:
    """A column of an existing table, as the catalog describes it.

    :param name: column name.
    :param sql_type: the type as the catalog spells it (usable in DDL and casts).
    :param nullable: ``NOT NULL`` or not.
    :param array_of: PostgreSQL only: element type of an array column (``dap initdb`` stores
        enum arrays natively; the TSV cell is JSON and needs a conversion).
    :param enum_type: PostgreSQL only: the native enum type of the column (or of its elements).
    :param enum_values: members of a native enum (PostgreSQL enum or MySQL ``ENUM``).
    """

    name: str
    sql_type: str
    nullable: bool
    array_of: str | None = None
    enum_type: str | None = None
    enum_values: tuple[str, ...] = ()


class PhaseTimer:
    """Wall-clock seconds per phase (``prepare``, ``load``, ``merge``, ``swap``, ``commit``...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class LoadCounts:
    """What a load did: rows by outcome, uncompressed bytes sent to the database, and what
    the bad-value policy did (:class:`~..values.ValueTally`)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    bytes_loaded: int = 0
    values: ValueTally = field(default_factory=ValueTally)


@dataclass
class LoadJob:
    """Everything a dialect needs to load one job's parts.

    :param target: where to load.
    :param schema: the incoming schema.
    :param parts: the result parts, sorted, headers already validated.
    :param dedupe: the source may repeat a key within one result (``canvas_logs.web_logs``):
        the last occurrence wins.
    :param write_state: writes the state row; called with a cursor inside the data transaction
        (and ``pending_swap=<side table>`` by dialects with a deferred swap).
    :param timer: accumulates seconds per phase.
    :param column_types: snapshot only: SQL type of every column of the new table.
    :param live: incremental only: the target's current columns.
    :param replace_live: snapshot only: a live table exists and is swapped out.
    :param tally: what the bad-value policy did, filled while loading.
    """

    target: Target
    schema: TableSchema
    parts: list[Part]
    dedupe: bool
    write_state: Callable[..., None]
    timer: PhaseTimer
    column_types: dict[str, str] = field(default_factory=dict)
    live: dict[str, LiveColumn] = field(default_factory=dict)
    replace_live: bool = False
    tally: ValueTally = field(default_factory=ValueTally)

    @property
    def key_names(self) -> list[str]:
        return [c.name for c in self.schema.key_columns]

    @property
    def where(self) -> str:
        """``namespace.table -> target``, for messages."""
        return f"{self.target.namespace}.{self.target.source_table} -> {self.target.display}"

    def roles(self, part: Part) -> list[str | None]:
        """The bad-value role (:func:`~..values.role_of`) of every header field of ``part``."""
        out: list[str | None] = []
        for f in part.fields:
            if f.column is None:
                out.append(None)
                continue
            live = self.live.get(f.name)
            out.append(role_of(f.column, native_array=bool(live is not None and live.array_of)))
        return out

    def field_fixer(
        self, part: Part, timestamps: TimestampRange, *, null: str | None, tally: ValueTally | None = None
    ) -> FieldFixer:
        """The bad-value policy for the records of ``part`` on a target with ``timestamps``."""
        return FieldFixer(
            where=self.where,
            part=part.path.name,
            names=[None if f.is_meta else f.name for f in part.fields],
            roles=self.roles(part),
            keys=[i for i, f in enumerate(part.fields) if f.column is not None and f.column.is_key],
            action=next((i for i, f in enumerate(part.fields) if f.label == "meta.action"), None),
            timestamps=timestamps,
            tally=self.tally if tally is None else tally,
            null=null,
        )

    def chunk_fixer(self, part: Part, timestamps: TimestampRange, *, tally: ValueTally | None = None) -> ChunkFixer:
        """The bad-value policy for blocks of ``part``'s COPY text (``\\N`` is NULL)."""
        return ChunkFixer(self.field_fixer(part, timestamps, null="\\N", tally=tally), self.roles(part))

    def incoming_fields(self) -> dict[str, bool]:
        """Incremental only: every column the parts carry (meta included), in first-seen order,
        mapped to whether it is a ``meta.*`` field.

        :raises ReplicationError: a data column the live table lacks (its schema change was not applied).
        """
        fields: dict[str, bool] = {}
        for part in self.parts:
            for f in part.fields:
                fields.setdefault(f.name, f.is_meta)
        missing = [name for name, meta in fields.items() if not meta and name not in self.live]
        if missing:
            raise ReplicationError(
                f"{self.target.display} lacks column(s) {missing} the data carries; apply the schema change first"
            )
        return fields

    def data_columns(self) -> list[str]:
        """Incremental only: the key and value columns the parts carry (see :meth:`incoming_fields`)."""
        return [name for name, meta in self.incoming_fields().items() if not meta]


class Dialect(ABC):
    """Base of the PostgreSQL, MySQL/MariaDB and SQLite targets.

    :param connection: an open DB-API connection with no transaction in progress.
    :param log: logger for DDL and progress lines.
    """

    name: ClassVar[str]
    #: DB-API placeholder.
    param: ClassVar[str] = "%s"
    #: Longest identifier the database accepts (``None``: no limit), measured by
    #: :meth:`identifier_length`.
    max_identifier: ClassVar[int | None] = 63
    #: Column types of the state table by role: ``key``, ``name``, ``short``, ``ts``, ``int``, ``long_text``.
    state_types: ClassVar[dict[str, str]]
    #: The snapshot commits its state with ``pending_swap`` set and the table is renamed in
    #: afterwards by :meth:`swap_in` (databases whose DDL cannot join a transaction).
    deferred_swap: ClassVar[bool] = False
    #: The timestamps the target stores, for the bad-value policy (:mod:`~..values`).
    timestamps: ClassVar[TimestampRange]

    def __init__(self, connection: Any, log: logging.Logger) -> None:
        self.conn = connection
        self.log = log

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

    @abstractmethod
    def check_connection(self) -> None:
        """The connection belongs to this dialect's driver and is idle."""

    @abstractmethod
    def check_target(self, cur: Any, target: Target, *, table_exists: bool, dap_origin: bool) -> None:
        """Schema/database usable, privileges present, database writable; raise
        :class:`ReplicationConfigError` naming what is wrong and how to fix it."""

    # -- state table primitives -----------------------------------------------------------

    def to_db_timestamp(self, value: datetime) -> Any:
        return value.astimezone(timezone.utc)

    def from_db_timestamp(self, value: Any) -> datetime:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @abstractmethod
    def upsert_sql(self, table_sql: str, columns: list[str], keys: list[str]) -> str:
        """``INSERT ... VALUES (params)`` that updates the non-key columns on a key conflict."""

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

    @abstractmethod
    def create_table_sql(
        self,
        target: Target,
        table: str,
        columns: tuple[Column, ...],
        types: dict[str, str],
        *,
        primary_key: bool = True,
    ) -> str: ...

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
