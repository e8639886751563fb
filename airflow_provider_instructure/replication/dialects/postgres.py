"""PostgreSQL target (psycopg 3, which ``PostgresHook`` returns on Airflow 3, or psycopg2).

Loading: ``COPY ... FROM STDIN`` in text format, fed with the parts' bytes as they are
decompressed. DAP's TSV escapes are COPY's, so no field is ever parsed in Python; only the
header line is skipped and, for snapshots, the leading ``meta.*`` fields are cut off each
line (one split and join per 1 MiB block). A background thread decompresses and cuts the
next blocks while the server parses the previous one, so the load runs at the server's pace.

Atomicity: PostgreSQL DDL is transactional, so everything happens in one transaction.

* Snapshot: ``CREATE TABLE`` (a side table ``<table>__dap_new`` when a live table exists),
  ``COPY ... FREEZE`` every part, drop duplicate keys where the source repeats them (last
  one wins), ``ADD PRIMARY KEY`` (building the index once is faster than maintaining it),
  ``ANALYZE``, then ``DROP`` the live table, ``RENAME`` the side table and its key index,
  re-apply the old table's grants, write the state row, ``COMMIT``. Readers see the old
  table until the commit and the new one after it; there is no moment without a table.
  Views that depend on the live table make the ``DROP`` fail: the transaction rolls back
  and :class:`~..errors.ReplicationError` names them.

The loading half (``COPY``, snapshot build and swap, incremental merge) is in
:mod:`.postgres_load`.
* Incremental: schema DDL first in its own short transaction (``ALTER TYPE ... ADD VALUE``
  cannot be used in the transaction that adds it), then ``CREATE TEMP TABLE ... ON COMMIT
  DROP`` typed like the target, ``COPY`` into it, ``ANALYZE`` of its key and action
  columns (all the merge's plans need), ``DELETE ... USING`` for ``D`` rows,
  ``INSERT ... ON CONFLICT DO UPDATE`` for ``U`` rows (``xmax = 0`` tells inserts from
  updates), the state row, ``COMMIT``.

Tables created by ``dap initdb`` are continued with their own column types: native enums
(new members are added first), naive ``timestamp`` (PostgreSQL ignores the ``Z`` of the
input), ``jsonb``, ``inet`` and enum arrays (the JSON cell is converted with
``jsonb_array_elements_text``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.dialects.base import LiveColumn, Target
from airflow_provider_instructure.replication.dialects.postgres_load import STAGE, PostgresLoader
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.types import dap_cli_type, sql_type
from airflow_provider_instructure.replication.values import POSTGRES_RANGE

_RELKINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence", "c": "composite type"}


def _literal(value: str) -> str:
    # DDL cannot take bind parameters (psycopg 3 binds server-side); standard_conforming_strings is on.
    return "'" + str(value).replace("'", "''") + "'"


class PostgresDialect(PostgresLoader):
    """PostgreSQL 12+ through psycopg (3) or psycopg2."""

    name = "postgres"
    title = "PostgreSQL"
    drivers = (("psycopg2", "psycopg2"), ("psycopg", "psycopg"))
    connection_hint = "a psycopg or psycopg2 connection (PostgresHook(...).get_conn())"
    max_identifier = 63
    timestamps = POSTGRES_RANGE
    primary_key_suffix = "_pkey"

    # -- connection -----------------------------------------------------------------------

    def is_closed(self) -> bool:
        return bool(self.conn.closed)

    def in_transaction(self) -> bool:
        return int(self.conn.info.transaction_status) != 0  # 0 = idle

    def _begin(self, cur: Any) -> None:
        if self.conn.autocommit:
            cur.execute("BEGIN")

    def _commit(self, cur: Any) -> None:
        if self.conn.autocommit:
            cur.execute("COMMIT")
        else:
            self.conn.commit()

    def _rollback(self, cur: Any) -> None:
        if self.conn.autocommit:
            cur.execute("ROLLBACK")
        else:
            self.conn.rollback()

    @contextmanager
    def exclusive(self, target: Target) -> Iterator[None]:
        name = self.lock_name(target)
        cur = self.cursor()
        try:
            row = self.fetch_one(cur, "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (name,))
            if self.in_transaction():
                self._rollback(cur)  # session-level lock: it outlives this statement's transaction
        finally:
            cur.close()
        if not (row and row[0]):
            raise self._locked_elsewhere(target)
        try:
            yield
        finally:
            cur = self.cursor()
            try:
                if self.in_transaction():
                    self._rollback(cur)
                cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (name,))
                if self.in_transaction():
                    self._rollback(cur)
            except Exception:  # a broken connection releases its locks by itself
                self.log.debug("could not release %s", name, exc_info=True)
            finally:
                cur.close()

    def resolve_target(self, namespace: str, table: str, target_schema: str | None, table_prefix: str | None) -> Target:
        return self.make_target(target_schema or namespace, (table_prefix or "") + table, namespace, table)

    # -- introspection --------------------------------------------------------------------

    def table_kind(self, cur: Any, schema: str, table: str) -> str | None:
        row = self.fetch_one(
            cur,
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        )
        if row is None:
            return None
        kind = row[0]
        if kind in ("r", "p"):
            return "table"
        return _RELKINDS.get(kind, f"relation of kind {kind!r}")

    def live_columns(self, cur: Any, target: Target) -> dict[str, LiveColumn]:
        rows = self.fetch_all(
            cur,
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, "
            "CASE WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END, "
            "CASE WHEN t.typtype = 'e' THEN a.atttypid "
            "     WHEN t.typcategory = 'A' AND te.typtype = 'e' THEN t.typelem END "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type te ON te.oid = t.typelem "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.qualified(target),),
        )
        out: dict[str, LiveColumn] = {}
        for name, typ, nullable, elem, enum_oid in rows:
            enum_type = None
            labels: tuple[str, ...] = ()
            if enum_oid is not None:
                enum_type = self.fetch_one(cur, "SELECT format_type(%s, NULL)", (enum_oid,))[0]  # type: ignore[index]
                labels = tuple(
                    r[0]
                    for r in self.fetch_all(
                        cur, "SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder", (enum_oid,)
                    )
                )
            out[name] = LiveColumn(name, typ, bool(nullable), array_of=elem, enum_type=enum_type, enum_values=labels)
        return out

    # -- checks ---------------------------------------------------------------------------

    def check_target(self, cur: Any, target: Target, *, table_exists: bool, dap_origin: bool) -> None:
        in_recovery, read_only, user, database, can_create_schema = self.fetch_one(  # type: ignore[misc]
            cur,
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), current_user, "
            "current_database(), has_database_privilege(current_database(), 'CREATE')",
        )
        if in_recovery or read_only == "on":
            raise ReplicationConfigError(
                f"database {database!r} is read-only for this session (a hot standby, or "
                "default_transaction_read_only is on); connect to the primary"
            )
        nsp = self.fetch_one(
            cur,
            "SELECT has_schema_privilege(oid, 'CREATE'), has_schema_privilege(oid, 'USAGE') "
            "FROM pg_namespace WHERE nspname = %s",
            (target.schema,),
        )
        if nsp is None:
            if not can_create_schema:
                raise ReplicationConfigError(
                    f"schema {target.schema!r} does not exist in database {database!r} and role {user!r} may not "
                    f"create schemas; run CREATE SCHEMA {self.quote(target.schema)} AUTHORIZATION {self.quote(user)}, "
                    f"GRANT CREATE ON DATABASE {self.quote(database)} TO {self.quote(user)}, or pass an existing "
                    "target_schema"
                )
        elif not (nsp[0] and nsp[1]):
            raise ReplicationConfigError(
                f"role {user!r} lacks USAGE and CREATE on schema {target.schema!r}; "
                f"GRANT USAGE, CREATE ON SCHEMA {self.quote(target.schema)} TO {self.quote(user)}"
            )
        if table_exists:
            owner, *privileges = self.fetch_one(  # type: ignore[misc]
                cur,
                "SELECT pg_has_role(c.relowner, 'USAGE'), has_table_privilege(c.oid, 'SELECT'), "
                "has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'UPDATE'), "
                "has_table_privilege(c.oid, 'DELETE') FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (self.qualified(target),),
            )
            missing = [p for p, ok in zip(("SELECT", "INSERT", "UPDATE", "DELETE"), privileges, strict=True) if not ok]
            if missing:
                raise ReplicationConfigError(
                    f"role {user!r} lacks {', '.join(missing)} on {target.display}; "
                    f"GRANT {', '.join(missing)} ON {self.qualified(target)} TO {self.quote(user)}"
                )
            if not owner:
                raise ReplicationConfigError(
                    f"{target.display} is not owned by role {user!r} (or a role it belongs to); snapshot rebuilds "
                    f"replace the table and schema changes alter it: ALTER TABLE {self.qualified(target)} OWNER TO "
                    f"{self.quote(user)}"
                )
        if dap_origin:
            ok = self.fetch_one(
                cur,
                "SELECT has_table_privilege('instructure_dap.table_sync', 'UPDATE') "
                "AND has_table_privilege('instructure_dap.table_sync', 'DELETE')",
            )
            if not (ok and ok[0]):
                raise ReplicationConfigError(
                    f"role {user!r} may not UPDATE/DELETE instructure_dap.table_sync, which holds the watermark of "
                    f"this dap initdb table; GRANT UPDATE, DELETE ON instructure_dap.table_sync TO {self.quote(user)}"
                )

    # -- state ----------------------------------------------------------------------------

    def dap_sync_table(self, target: Target) -> tuple[str | None, str] | None:
        return ("instructure_dap", "table_sync")

    # -- DDL ------------------------------------------------------------------------------

    def ensure_schema(self, cur: Any, target: Target) -> None:
        if self.fetch_one(cur, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (target.schema,)) is None:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.quote(target.schema)}")

    def apply_schema_change(
        self,
        target: Target,
        change: SchemaChange,
        live: dict[str, LiveColumn],
        *,
        dap_origin: bool,
        schema: TableSchema,
    ) -> list[str]:
        statements: list[str] = []
        if dap_origin:
            statements += self._enum_additions(target, schema, live)
        for col in change.added:
            if col.name in live:
                continue
            if dap_origin and col.type.kind == "enum":
                type_name = self.qualify(target.schema, self.side_name(target.table, f"__{col.name}"))
                members = ", ".join(_literal(v) for v in col.type.values)
                statements.append(f"CREATE TYPE {type_name} AS ENUM ({members})")
                typ = type_name
            else:
                typ = dap_cli_type(col, self.name) if dap_origin else sql_type(col, self.name)
            statements.append(
                f"ALTER TABLE {self.qualified(target)} ADD COLUMN IF NOT EXISTS {self.quote(col.name)} {typ}"
            )
        if dap_origin:
            for name in change.relaxed:
                if name in live and not live[name].nullable:
                    statements.append(
                        f"ALTER TABLE {self.qualified(target)} ALTER COLUMN {self.quote(name)} DROP NOT NULL"
                    )
        if statements:
            # Committed before the data transaction: a new enum member cannot be used in the
            # transaction that adds it. Each statement is idempotent, so a failed load is harmless.
            with self.transaction() as cur:
                for sql in statements:
                    self.log.info("schema change on %s: %s", target.display, sql)
                    cur.execute(sql)
        return statements

    def _enum_additions(self, target: Target, schema: TableSchema, live: dict[str, LiveColumn]) -> list[str]:
        out: list[str] = []
        for col in schema.columns:
            have = live.get(col.name)
            if have is None or have.enum_type is None:
                continue
            if col.type.kind == "enum":
                wanted = col.type.values
            else:  # an enum array stored natively by dap initdb
                wanted = tuple((col.schema.get("items") or {}).get("enum") or ())
            for value in wanted:
                if value not in have.enum_values:
                    out.append(f"ALTER TYPE {have.enum_type} ADD VALUE IF NOT EXISTS {_literal(value)}")
        return out


__all__ = ["STAGE", "PostgresDialect"]
