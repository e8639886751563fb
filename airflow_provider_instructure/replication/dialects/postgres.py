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

import logging
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.dialects.base import (
    NEW_SUFFIX,
    Dialect,
    LiveColumn,
    LoadCounts,
    LoadJob,
    Target,
)
from airflow_provider_instructure.replication.errors import ReplicationConfigError, ReplicationError, TsvFormatError
from airflow_provider_instructure.replication.locate import at_line, pg_copy_location
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.tsv import (
    CHUNK_SIZE,
    META_ACTION,
    ChunkFile,
    Part,
    iter_body_chunks,
    prefetch,
)
from airflow_provider_instructure.replication.types import dap_cli_type, sql_type
from airflow_provider_instructure.replication.values import POSTGRES_RANGE

_RELKINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence", "c": "composite type"}
STAGE = "dap_stage"


def _literal(value: str) -> str:
    # DDL cannot take bind parameters (psycopg 3 binds server-side); standard_conforming_strings is on.
    return "'" + str(value).replace("'", "''") + "'"


class PostgresDialect(Dialect):
    """PostgreSQL 12+ through psycopg (3) or psycopg2."""

    name = "postgres"
    max_identifier = 63
    timestamps = POSTGRES_RANGE
    state_types = {
        "key": "varchar(255)",
        "name": "varchar(64)",
        "short": "varchar(16)",
        "ts": "timestamp with time zone",
        "int": "integer",
        "long_text": "text",
    }

    def __init__(self, connection: Any, log: logging.Logger) -> None:
        super().__init__(connection, log)
        module = type(connection).__module__
        if module.startswith("psycopg2"):
            self.driver: str | None = "psycopg2"
        elif module.startswith("psycopg"):
            self.driver = "psycopg"
        else:
            self.driver = None

    # -- connection -----------------------------------------------------------------------

    def check_connection(self) -> None:
        if self.driver is None:
            kind = f"{type(self.conn).__module__}.{type(self.conn).__name__}"
            raise ReplicationConfigError(
                f"dialect 'postgres' needs a psycopg or psycopg2 connection (PostgresHook(...).get_conn()), "
                f"got {kind}; pass the dialect that matches the connection"
            )
        if self.conn.closed:
            raise ReplicationConfigError("the PostgreSQL connection is closed")
        self.require_idle()

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
        target = Target(target_schema or namespace, (table_prefix or "") + table, namespace, table)
        self.check_identifier(target.schema, "schema name")
        self.check_identifier(target.table, "table name")
        self.check_identifier(self.side_name(target.table, NEW_SUFFIX), "side table name")
        return target

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

    def upsert_sql(self, table_sql: str, columns: list[str], keys: list[str]) -> str:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in keys)
        return (
            f"INSERT INTO {table_sql} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )

    def dap_sync_table(self, target: Target) -> tuple[str | None, str] | None:
        return ("instructure_dap", "table_sync")

    # -- DDL ------------------------------------------------------------------------------

    def ensure_schema(self, cur: Any, target: Target) -> None:
        if self.fetch_one(cur, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (target.schema,)) is None:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.quote(target.schema)}")

    def create_table_sql(
        self,
        target: Target,
        table: str,
        columns: tuple[Column, ...],
        types: dict[str, str],
        *,
        primary_key: bool = True,
    ) -> str:
        defs = [f"{self.quote(c.name)} {types[c.name]}{' NOT NULL' if c.is_key else ''}" for c in columns]
        if primary_key:
            keys = ", ".join(self.quote(c.name) for c in columns if c.is_key)
            defs.append(f"CONSTRAINT {self.quote(self.side_name(table, '_pkey'))} PRIMARY KEY ({keys})")
        return f"CREATE TABLE {self.qualify(target.schema, table)} ({', '.join(defs)})"

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

    # -- loading --------------------------------------------------------------------------

    def _copy(self, cur: Any, sql: str, chunks: Iterable[bytes]) -> tuple[int, int]:
        """Run one ``COPY ... FROM STDIN``; returns (rows, bytes).

        The blocks are produced on a background thread (:func:`~..tsv.prefetch`): the client
        decompresses and cuts the next block while the server parses the previous one.
        """
        with closing(prefetch(chunks)) as blocks:
            if self.driver == "psycopg2":
                source = ChunkFile(blocks)
                cur.copy_expert(sql, source, size=CHUNK_SIZE)
                return cur.rowcount, source.count
            sent = 0
            with cur.copy(sql) as copy:
                for chunk in blocks:
                    copy.write(chunk)
                    sent += len(chunk)
            return cur.rowcount, sent

    def _copy_part(
        self, cur: Any, table_sql: str, part: Part, job: LoadJob, *, with_meta: bool, freeze: bool
    ) -> tuple[int, int]:
        fields = part.fields if with_meta else part.data_fields
        drop = 0 if with_meta else part.leading_meta
        cols = ", ".join(self.quote(f.name) for f in fields)
        # DAP files are UTF-8 whatever the session's client_encoding says.
        options = "FORMAT text, ENCODING 'UTF8'" + (", FREEZE" if freeze else "")
        fixer = job.chunk_fixer(part, self.timestamps)
        chunks = iter_body_chunks(part, drop_leading=drop, fix=fixer)
        try:
            return self._copy(cur, f"COPY {table_sql} ({cols}) FROM STDIN WITH ({options})", chunks)
        except Exception as exc:
            location = pg_copy_location(exc) if str(_sqlstate(exc) or "")[:2] in ("22", "23") else None
            if location is None:
                raise
            line, column = location
            raise at_line(job.where, part, fixer.file_line(line), column, str(exc).splitlines()[0]) from exc

    def _dedupe(self, cur: Any, table_sql: str, keys: list[str]) -> int:
        # Fresh tables and temp tables are filled in file order, so the larger ctid is the
        # later occurrence: keep it, as an upsert in file order would.
        cur.execute(
            f"DELETE FROM {table_sql} a USING {table_sql} b WHERE {self.key_match('a', 'b', keys)} AND a.ctid < b.ctid"
        )
        return cur.rowcount

    def snapshot(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        build = self.side_name(t.table, NEW_SUFFIX) if job.replace_live else t.table
        build_sql = self.qualify(t.schema, build)
        counts = LoadCounts(values=job.tally)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                self.ensure_schema(cur, t)
                if job.replace_live:
                    cur.execute(f"DROP TABLE IF EXISTS {build_sql}")
                cur.execute(self.create_table_sql(t, build, job.schema.columns, job.column_types, primary_key=False))
            with job.timer.phase("load"):
                rows = 0
                for part in job.parts:
                    if part.meta_is_leading:
                        n, sent = self._copy_part(cur, build_sql, part, job, with_meta=False, freeze=True)
                    else:
                        n, sent = self._copy_through_stage(cur, build_sql, part, job)
                    rows += n
                    counts.bytes_loaded += sent
            with job.timer.phase("index"):
                if job.dedupe:
                    rows -= self._dedupe(cur, build_sql, keys)
                pkey = self.side_name(build, "_pkey")
                cur.execute(
                    f"ALTER TABLE {build_sql} ADD CONSTRAINT {self.quote(pkey)} "
                    f"PRIMARY KEY ({', '.join(self.quote(k) for k in keys)})"
                )
                cur.execute(f"ANALYZE {build_sql}")
            with job.timer.phase("swap"):
                if job.replace_live:
                    self._swap(cur, t, build, pkey)
                job.write_state(cur)
        counts.inserted = rows
        return counts

    def _copy_through_stage(self, cur: Any, build_sql: str, part: Part, job: LoadJob) -> tuple[int, int]:
        # Rare layout: a meta field between data fields cannot be cut off by prefix, so the
        # part goes through a temporary table that has every header field.
        stage = self.quote(STAGE + "_snapshot")
        defs = [f"{self.quote(f.name)} {'text' if f.is_meta else job.column_types[f.name]}" for f in part.fields]
        cur.execute(f"CREATE TEMP TABLE {stage} ({', '.join(defs)}) ON COMMIT DROP")
        n, sent = self._copy_part(cur, stage, part, job, with_meta=True, freeze=False)
        cols = ", ".join(self.quote(f.name) for f in part.data_fields)
        cur.execute(f"INSERT INTO {build_sql} ({cols}) SELECT {cols} FROM {stage}")
        cur.execute(f"DROP TABLE {stage}")
        return n, sent

    def _swap(self, cur: Any, t: Target, build: str, pkey: str) -> None:
        live_sql = self.qualified(t)
        grants = self.fetch_all(
            cur,
            "SELECT r.rolname, a.privilege_type, a.is_grantable FROM pg_class c "
            "CROSS JOIN LATERAL aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner",
            (live_sql,),
        )
        try:
            cur.execute(f"DROP TABLE {live_sql}")
        except Exception as exc:
            if _sqlstate(exc) == "2BP01":  # dependent_objects_still_exist
                detail = getattr(getattr(exc, "diag", None), "message_detail", None) or str(exc)
                raise ReplicationError(
                    f"cannot swap the new snapshot into {t.display}: other objects depend on it ({detail.strip()}). "
                    "Drop them before the snapshot and re-create them after; nothing was changed"
                ) from exc
            raise
        cur.execute(f"ALTER TABLE {self.qualify(t.schema, build)} RENAME TO {self.quote(t.table)}")
        cur.execute(
            f"ALTER INDEX {self.qualify(t.schema, pkey)} RENAME TO {self.quote(self.side_name(t.table, '_pkey'))}"
        )
        for role, privilege, grantable in grants:
            grantee = self.quote(role) if role else "PUBLIC"
            option = " WITH GRANT OPTION" if grantable and role else ""
            cur.execute(f"GRANT {privilege} ON {live_sql} TO {grantee}{option}")

    def incremental(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        live = job.live
        stage = self.quote(STAGE)
        fields = job.incoming_fields()  # staging column -> is meta
        data_cols = [name for name, meta in fields.items() if not meta]
        counts = LoadCounts(values=job.tally)
        with self.transaction(timer=job.timer) as cur:
            with job.timer.phase("prepare"):
                defs = []
                for name, meta in fields.items():
                    typ = "text" if meta else ("jsonb" if live[name].array_of else live[name].sql_type)
                    defs.append(f"{self.quote(name)} {typ}")
                if META_ACTION not in fields:
                    defs.append(f"{self.quote(META_ACTION)} text")
                cur.execute(f"CREATE TEMP TABLE {stage} ({', '.join(defs)}) ON COMMIT DROP")
            with job.timer.phase("load"):
                for part in job.parts:
                    _, sent = self._copy_part(cur, stage, part, job, with_meta=True, freeze=False)
                    counts.bytes_loaded += sent
                # Statistics of the key and action columns are all the merge's plans need;
                # a full ANALYZE of a wide stage costs as much as loading it.
                analyzed = ", ".join(self.quote(c) for c in [*keys, META_ACTION])
                cur.execute(f"ANALYZE {stage} ({analyzed})")
            with job.timer.phase("merge"):
                action = self.quote(META_ACTION)
                bad = self.fetch_one(
                    cur, f"SELECT count(*) FROM {stage} WHERE {action} IS NULL OR {action} NOT IN ('U', 'D')"
                )
                if bad and bad[0]:
                    raise TsvFormatError(f"{bad[0]} record(s) have a meta.action other than U or D")
                if job.dedupe:
                    self._dedupe(cur, stage, keys)
                live_sql = self.qualified(t)
                cur.execute(
                    f"DELETE FROM {live_sql} t USING {stage} s WHERE s.{action} = 'D' AND "
                    f"{self.key_match('t', 's', keys)}"
                )
                counts.deleted = cur.rowcount
                counts.inserted, counts.updated = self._upsert(cur, live_sql, stage, data_cols, keys, live)
                job.write_state(cur)
        return counts

    def _upsert(
        self, cur: Any, live_sql: str, stage: str, cols: list[str], keys: list[str], live: dict[str, LiveColumn]
    ) -> tuple[int, int]:
        q = self.quote
        exprs = []
        for name in cols:
            elem = live[name].array_of
            if elem:
                exprs.append(
                    f"CASE WHEN s.{q(name)} IS NULL THEN NULL ELSE "
                    f"ARRAY(SELECT jsonb_array_elements_text(s.{q(name)}))::{live[name].sql_type} END"
                )
            else:
                exprs.append(f"s.{q(name)}")
        non_keys = [c for c in cols if c not in keys]
        conflict = (
            f"DO UPDATE SET {', '.join(f'{q(c)} = EXCLUDED.{q(c)}' for c in non_keys)}" if non_keys else "DO NOTHING"
        )
        row = self.fetch_one(
            cur,
            f"WITH up AS (INSERT INTO {live_sql} ({', '.join(q(c) for c in cols)}) "
            f"SELECT {', '.join(exprs)} FROM {stage} s WHERE s.{q(META_ACTION)} = 'U' "
            f"ON CONFLICT ({', '.join(q(k) for k in keys)}) {conflict} RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up",
        )
        assert row is not None
        return int(row[0]), int(row[1])


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
