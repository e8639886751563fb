"""The value types the replicator and the dialects pass each other: where a table goes
(:class:`Target`), what a live column is (:class:`LiveColumn`), one load's inputs
(:class:`LoadJob`) and outcome (:class:`LoadCounts`), and seconds per phase (:class:`PhaseTimer`).

Kept apart from :mod:`.base` (the dialects' shared behaviour), which re-exports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.errors import ReplicationError
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


__all__ = ["NEW_SUFFIX", "OLD_SUFFIX", "LiveColumn", "LoadCounts", "LoadJob", "PhaseTimer", "Target"]
