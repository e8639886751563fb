"""SQLite target (the embedded default of the demo; ``SqliteHook(...).get_conn()``).

SQLite has no bulk loader, so parts are parsed (:func:`~..tsv.iter_rows`) and inserted with
``executemany`` in batches. Values are converted by column kind: integers and floats to
numbers, booleans to 0/1, timestamps to fixed-width ISO-8601 UTC text
(``2024-01-01T10:00:00.500000+00:00``, which sorts chronologically), everything else is kept
as the text DAP sent (decimals included, so no digit is lost).

Atomicity: DDL is transactional in SQLite, so each sync is one ``BEGIN IMMEDIATE ...
COMMIT``. A snapshot builds ``<table>__dap_new`` beside the live table, then drops the live
table and renames the new one in that transaction (with ``legacy_alter_table`` on, so views
that name the table keep pointing at the name). Readers keep seeing the last committed
state until the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from itertools import islice
from typing import Any

from airflow_provider_instructure.dap_schema import ColumnType, TableSchema
from airflow_provider_instructure.replication.dialects.base import (
    NEW_SUFFIX,
    Dialect,
    LiveColumn,
    LoadCounts,
    LoadJob,
    Target,
)
from airflow_provider_instructure.replication.errors import ReplicationConfigError, TsvFormatError
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.tsv import META_ACTION, Part, iter_numbered_rows
from airflow_provider_instructure.replication.types import sql_type
from airflow_provider_instructure.replication.values import PYTHON_RANGE
from airflow_provider_instructure.timestamps import parse_timestamp

BATCH_ROWS = 5000
STAGE = "dap_stage"


def sqlite_timestamp(text: str) -> str:
    """``2024-01-01T10:00:00.5Z`` -> ``2024-01-01T10:00:00.500000+00:00``."""
    if len(text) >= 20 and text[10] == "T" and text[-1] == "Z" and text[19] in ".Z":
        fraction = text[20:-1] if text[19] == "." else ""
        if fraction.isdigit() or not fraction:
            return f"{text[:19]}.{fraction[:6].ljust(6, '0')}+00:00"
    # parse_timestamp, not fromisoformat: the same result on Python 3.10 (see its module).
    return parse_timestamp(text, naive_is_utc=True).isoformat(timespec="microseconds")


def _boolean(text: str) -> int:
    if text == "true":
        return 1
    if text == "false":
        return 0
    raise TsvFormatError(f"not a boolean: {text!r}")


def converter(typ: ColumnType) -> Callable[[str], Any] | None:
    """How a decoded TSV field becomes the value stored in SQLite (``None``: keep the text)."""
    if typ.kind == "integer":
        return int
    if typ.kind == "float":
        return float
    if typ.kind == "boolean":
        return _boolean
    if typ.kind == "timestamp":
        return sqlite_timestamp
    return None


class SQLiteDialect(Dialect):
    """SQLite 3.24+ through the standard ``sqlite3`` module."""

    name = "sqlite"
    title = "SQLite"
    drivers = (("sqlite3", "sqlite3"),)
    connection_hint = "a sqlite3 connection (SqliteHook(...).get_conn())"
    param = "?"
    timestamps = PYTHON_RANGE
    max_identifier = None  # SQLite has no identifier length limit

    def in_transaction(self) -> bool:
        return bool(self.conn.in_transaction)

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def _commit(self, cur: Any) -> None:
        cur.execute("COMMIT")

    def _rollback(self, cur: Any) -> None:
        if self.conn.in_transaction:
            cur.execute("ROLLBACK")

    def resolve_target(self, namespace: str, table: str, target_schema: str | None, table_prefix: str | None) -> Target:
        if table_prefix is not None:
            name = table_prefix + table
        elif target_schema is not None:
            name = table
        else:
            name = f"{namespace}__{table}"
        return self.make_target(target_schema or "main", name, namespace, table)

    # -- introspection --------------------------------------------------------------------

    def _require_attached(self, cur: Any, schema: str) -> None:
        databases = [r[1] for r in self.fetch_all(cur, "PRAGMA database_list")]
        if schema not in databases:
            raise ReplicationConfigError(
                f"SQLite has no schemas: target_schema {schema!r} must name an attached database "
                f"({', '.join(databases)}); leave it unset to use 'main' or ATTACH the database first"
            )

    def table_kind(self, cur: Any, schema: str, table: str) -> str | None:
        self._require_attached(cur, schema)
        row = self.fetch_one(cur, f"SELECT type FROM {self.quote(schema)}.sqlite_master WHERE name = ?", (table,))
        return None if row is None else str(row[0])

    def live_columns(self, cur: Any, target: Target) -> dict[str, LiveColumn]:
        rows = self.fetch_all(cur, f"PRAGMA {self.quote(target.schema)}.table_info({self.quote(target.table)})")
        return {r[1]: LiveColumn(r[1], r[2] or "", not r[3] and not r[5]) for r in rows}

    # -- checks ---------------------------------------------------------------------------

    def check_target(self, cur: Any, target: Target, *, table_exists: bool, dap_origin: bool) -> None:
        self._require_attached(cur, target.schema)
        query_only = self.fetch_one(cur, "PRAGMA query_only")
        if query_only and query_only[0]:
            raise ReplicationConfigError("the SQLite connection is query_only; open it writable")

    # -- state ----------------------------------------------------------------------------

    def to_db_timestamp(self, value: datetime) -> Any:
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")

    # -- DDL ------------------------------------------------------------------------------

    def apply_schema_change(
        self,
        target: Target,
        change: SchemaChange,
        live: dict[str, LiveColumn],
        *,
        dap_origin: bool,
        schema: TableSchema,
    ) -> list[str]:
        statements = [
            f"ALTER TABLE {self.qualified(target)} ADD COLUMN {self.quote(c.name)} {sql_type(c, self.name)}"
            for c in change.added
            if c.name not in live
        ]
        if statements:
            with self.transaction() as cur:
                for sql in statements:
                    self.log.info("schema change on %s: %s", target.display, sql)
                    cur.execute(sql)
        return statements

    # -- loading --------------------------------------------------------------------------

    def _insert_part(
        self, cur: Any, table_sql: str, part: Part, job: LoadJob, *, with_action: bool, replace: bool
    ) -> int:
        """Insert a part's records, after the bad-value policy; returns the bytes read.

        :raises BadValueError: a value that still does not convert (``abc`` in an integer column...).
        """
        picks: list[int] = []
        names: list[str] = []
        converters: list[Callable[[str], Any] | None] = []
        for i, f in enumerate(part.fields):
            if f.column is None:
                if with_action and f.label == META_ACTION:
                    picks.append(i)
                    names.append(f.label)
                    converters.append(None)
                continue
            picks.append(i)
            names.append(f.name)
            converters.append(converter(f.column.type))
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        sql = (
            f"{verb} INTO {table_sql} ({', '.join(self.quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' * len(names))})"
        )
        plan = list(zip(picks, converters, strict=True))
        fixer = job.field_fixer(part, self.timestamps, null=None)

        def rows() -> Iterator[tuple[Any, ...]]:
            for line, raw in iter_numbered_rows(part):
                fields = fixer.fix(raw, line)
                if fields is None:
                    continue  # a delete without a key
                fixer.count_text_placeholders(fields)
                try:
                    yield tuple(
                        value if value is None or conv is None else conv(value)
                        for value, conv in ((fields[i], conv) for i, conv in plan)
                    )
                except (ValueError, OverflowError, TsvFormatError) as exc:
                    bad = next(i for i, conv in plan if not _converts(conv, fields[i]))
                    raise fixer.error(line, bad, fields[bad], fields, f"cannot be loaded: {exc}") from exc

        source = rows()
        while batch := list(islice(source, BATCH_ROWS)):
            cur.executemany(sql, batch)
        return part.size if not part.compressed else _uncompressed_size(part)

    def snapshot(self, job: LoadJob) -> LoadCounts:
        t = job.target
        build = self.side_name(t.table, NEW_SUFFIX) if job.replace_live else t.table
        build_sql = self.qualify(t.schema, build)
        counts = LoadCounts(values=job.tally)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                if job.replace_live:
                    cur.execute(f"DROP TABLE IF EXISTS {build_sql}")
                cur.execute(self.create_table_sql(t, build, job.schema.columns, job.column_types))
            with job.timer.phase("load"):
                for part in job.parts:
                    counts.bytes_loaded += self._insert_part(
                        cur, build_sql, part, job, with_action=False, replace=job.dedupe
                    )
                row = self.fetch_one(cur, f"SELECT COUNT(*) FROM {build_sql}")
                counts.inserted = int(row[0]) if row else 0
            with job.timer.phase("swap"):
                if job.replace_live:
                    legacy = self.fetch_one(cur, "PRAGMA legacy_alter_table")
                    # Legacy mode renames without rewriting or validating views that name the
                    # table, so they point at the new table afterwards.
                    cur.execute("PRAGMA legacy_alter_table = ON")
                    try:
                        cur.execute(f"DROP TABLE {self.qualified(t)}")
                        cur.execute(f"ALTER TABLE {build_sql} RENAME TO {self.quote(t.table)}")
                    finally:
                        cur.execute(f"PRAGMA legacy_alter_table = {int(legacy[0]) if legacy else 0}")
                job.write_state(cur)
        return counts

    def incremental(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        live = job.live
        q = self.quote
        stage = f"temp.{q(STAGE)}"
        data_cols = job.data_columns()
        counts = LoadCounts(values=job.tally)
        live_sql = self.qualified(t)
        action = q(META_ACTION)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                cur.execute(f"DROP TABLE IF EXISTS {stage}")
                defs = [f"{action} TEXT"] + [f"{q(n)} {live[n].sql_type}" for n in data_cols]
                defs.append(f"PRIMARY KEY ({', '.join(q(k) for k in keys)})")
                cur.execute(f"CREATE TEMP TABLE {q(STAGE)} ({', '.join(defs)})")
            with job.timer.phase("load"):
                for part in job.parts:
                    # INSERT OR REPLACE: a key repeated within the result keeps its last row.
                    counts.bytes_loaded += self._insert_part(cur, stage, part, job, with_action=True, replace=True)
            with job.timer.phase("merge"):
                upserts, present = self.staged_upserts(cur, stage, live_sql, keys)
                key_list = ", ".join(q(k) for k in keys)
                key_tuple = key_list if len(keys) == 1 else f"({key_list})"
                cur.execute(
                    f"DELETE FROM {live_sql} WHERE {key_tuple} IN (SELECT {key_list} FROM {stage} WHERE {action} = 'D')"
                )
                counts.deleted = cur.rowcount
                cols = ", ".join(q(c) for c in data_cols)
                non_keys = [c for c in data_cols if c not in keys]
                conflict = (
                    f"DO UPDATE SET {', '.join(f'{q(c)} = excluded.{q(c)}' for c in non_keys)}"
                    if non_keys
                    else "DO NOTHING"
                )
                # The WHERE clause is required: without it SQLite would read ON CONFLICT as a join constraint.
                cur.execute(
                    f"INSERT INTO {live_sql} ({cols}) SELECT {cols} FROM {stage} WHERE {action} = 'U' "
                    f"ON CONFLICT ({key_list}) {conflict}"
                )
                counts.updated = present
                counts.inserted = upserts - present
                cur.execute(f"DROP TABLE {stage}")
                job.write_state(cur)
        return counts


def _converts(conv: Callable[[str], Any] | None, value: str | None) -> bool:
    if value is None or conv is None:
        return True
    try:
        conv(value)
    except (ValueError, OverflowError, TsvFormatError):
        return False
    return True


def _uncompressed_size(part: Part) -> int:
    # The gzip trailer stores the size modulo 2**32; exact for parts under 4 GiB, good enough for a metric.
    with open(part.path, "rb") as fh:
        fh.seek(-4, 2)
        return int.from_bytes(fh.read(4), "little")
