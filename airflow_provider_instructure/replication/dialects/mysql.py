"""MySQL 8 / MariaDB 10.6+ target (mysql-connector-python, as ``MySqlHook`` returns with the
``client: mysql-connector-python`` extra; PyMySQL works too).

Loading: ``LOAD DATA LOCAL INFILE`` of each part. MySQL's escapes are almost COPY's; the
differences are handled without touching rows in Python:

* ``\\f`` and ``\\v`` are unknown to MySQL (read as ``f``/``v``): gzip parts are decompressed
  into a temporary file, and blocks that contain these escapes get them rewritten to the raw
  bytes (:func:`~..tsv.mysql_transcode`); a plain part without them is loaded as it is;
* booleans (``true``/``false``) and timestamps (``2024-01-01T10:00:00.5Z``) go through user
  variables and ``SET col = CASE ... / CAST(... AS DATETIME(6))``, evaluated by the server;
* ``meta.ts`` goes to ``@dummy``; ``IGNORE 1 LINES`` skips the header;
* tables created by ``dap initdb`` keep UUIDs and IP addresses in ``BINARY(16)``: those
  columns get ``UNHEX(REPLACE(v, '-', ''))`` / ``INET6_ATON(v)``.

``LOCAL`` turns conversion errors and duplicate keys into warnings, so every load is
followed by ``SHOW WARNINGS`` and any warning fails it (:class:`~..errors.DataLoadError`).
Both sides must allow ``LOCAL``: the server's ``local_infile`` and the client's
``allow_local_infile=True`` (``MySqlHook(local_infile=True)``); :meth:`check_target` says
which one is missing.

Atomicity. MySQL commits implicitly around DDL, so DDL stays outside the data transaction:

* Incremental: schema DDL first (each statement idempotent: columns and enum members that
  already exist are skipped). Then one transaction: ``CREATE TEMPORARY TABLE`` (no implicit
  commit for temporary tables), ``LOAD DATA ... REPLACE`` into it (a key repeated in the
  result keeps its last row), count the ``U`` keys already present, ``DELETE ... JOIN`` the
  ``D`` keys, ``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE``, the state row, ``COMMIT``.
  A failure at any point leaves data and watermark as they were; a crash after the schema
  DDL leaves only the added column/member, which the rerun skips.
* Snapshot: ``CREATE TABLE <table>__dap_new`` and load it (not transactional, and not
  needed: nobody reads that table), then one transaction writes the state row with the new
  watermark **and** ``pending_swap = <table>__dap_new``, then ``RENAME TABLE live TO
  <table>__dap_old, <table>__dap_new TO live`` (one atomic statement: readers see the old
  or the new table, never none), ``DROP`` the old one, clear ``pending_swap``.

  Not atomic, and how it converges: a crash before the state commit leaves a stray
  ``__dap_new`` table (dropped by the rerun) and the old data and watermark intact. A crash
  after it leaves a watermark that belongs to the not-yet-renamed table; every later call
  first finishes the rename (:meth:`swap_in`) and clears the marker, so the replica never
  continues from a watermark its live table does not hold. A crash between ``RENAME`` and
  ``DROP`` leaves ``__dap_old``, dropped by the next swap.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.dialects.base import (
    NEW_SUFFIX,
    OLD_SUFFIX,
    Dialect,
    LiveColumn,
    LoadCounts,
    LoadJob,
    Target,
)
from airflow_provider_instructure.replication.dialects.mysql_load import load_part
from airflow_provider_instructure.replication.errors import ReplicationConfigError, TsvFormatError
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.tsv import META_ACTION, Part
from airflow_provider_instructure.replication.types import dap_cli_type, sql_type
from airflow_provider_instructure.replication.values import MYSQL_RANGE

STAGE = "dap_stage"
_REQUIRED_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "CREATE TEMPORARY TABLES")
_ENUM_MEMBER = re.compile(r"'((?:[^']|'')*)'")
_CLIENT_LOCAL_FILES = 128  # capability flag CLIENT_LOCAL_FILES


def _literal(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


class MySQLDialect(Dialect):
    """MySQL 8 and MariaDB through mysql-connector-python or PyMySQL."""

    name = "mysql"
    max_identifier = 64
    timestamps = MYSQL_RANGE
    deferred_swap = True
    state_types = {
        "key": "VARCHAR(255)",
        "name": "VARCHAR(64)",
        "short": "VARCHAR(16)",
        "ts": "DATETIME(6)",
        "int": "INT",
        "long_text": "LONGTEXT",
    }

    def __init__(self, connection: Any, log: logging.Logger) -> None:
        super().__init__(connection, log)
        module = type(connection).__module__
        if module.startswith("mysql.connector"):
            self.driver: str | None = "mysql-connector"
        elif module.startswith("pymysql"):
            self.driver = "pymysql"
        elif module.startswith("MySQLdb"):
            self.driver = "mysqlclient"
        else:
            self.driver = None

    # -- identifiers and connection -------------------------------------------------------

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def cursor(self) -> Any:
        if self.driver == "mysql-connector":
            # Unbuffered mysql-connector cursors refuse the next statement until every row is read.
            return self.conn.cursor(buffered=True)
        return self.conn.cursor()

    def check_connection(self) -> None:
        if self.driver is None:
            kind = f"{type(self.conn).__module__}.{type(self.conn).__name__}"
            raise ReplicationConfigError(
                f"dialect 'mysql' needs a mysql-connector-python or PyMySQL connection (MySqlHook(...).get_conn()), "
                f"got {kind}; pass the dialect that matches the connection"
            )
        if self.driver == "mysql-connector" and not self.conn.is_connected():
            raise ReplicationConfigError("the MySQL connection is closed")
        self.require_idle()

    def in_transaction(self) -> bool:
        if self.driver == "mysql-connector":
            return bool(self.conn.in_transaction)
        status = getattr(self.conn, "server_status", 0) or 0
        return bool(status & 1)  # SERVER_STATUS_IN_TRANS

    def _begin(self, cur: Any) -> None:
        cur.execute("START TRANSACTION")

    def _ddl(self, cur: Any, sql: str) -> None:
        self.log.debug("%s", sql)
        cur.execute(sql)
        self.conn.commit()  # DDL committed implicitly; leave no transaction open behind it

    @contextlib.contextmanager
    def exclusive(self, target: Target) -> Iterator[None]:
        name = self.lock_name(target)
        cur = self.cursor()
        try:
            row = self.fetch_one(cur, "SELECT GET_LOCK(%s, 0)", (name,))
            self.conn.rollback()
        finally:
            cur.close()
        if not (row and row[0] == 1):
            raise self._locked_elsewhere(target)
        try:
            yield
        finally:
            self._quietly(lambda cur: self._release(cur, name), f"could not release {name}")

    def _release(self, cur: Any, name: str) -> None:
        if self.in_transaction():
            self.conn.rollback()
        self.fetch_one(cur, "SELECT RELEASE_LOCK(%s)", (name,))
        self.conn.rollback()

    def _quietly(self, step: Callable[[Any], None], what: str) -> None:
        """Run a clean-up step that must not hide the error being raised: a load that failed
        inside the LOCAL INFILE exchange leaves the connection unusable, and every statement
        after it (even opening a cursor) fails with "MySQL Connection not available"."""
        cur = None
        try:
            cur = self.cursor()
            step(cur)
        except Exception:  # a broken connection releases its locks and temporary tables by itself
            self.log.debug("%s", what, exc_info=True)
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()

    def resolve_target(self, namespace: str, table: str, target_schema: str | None, table_prefix: str | None) -> Target:
        database = target_schema
        if database is None:
            cur = self.cursor()
            try:
                row = self.fetch_one(cur, "SELECT DATABASE()")
            finally:
                cur.close()
                self.conn.rollback()
            database = row[0] if row else None
            if not database:
                raise ReplicationConfigError(
                    "the MySQL connection has no default database; set the schema of the Airflow connection or pass "
                    "target_schema"
                )
        if table_prefix is not None:
            name = table_prefix + table
        elif target_schema is not None:
            name = table
        else:
            name = f"{namespace}__{table}"  # what dap does on MySQL
        target = Target(database, name, namespace, table)
        self.check_identifier(target.schema, "database name")
        self.check_identifier(target.table, "table name")
        return target

    # -- introspection --------------------------------------------------------------------

    def table_kind(self, cur: Any, schema: str, table: str) -> str | None:
        row = self.fetch_one(
            cur,
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (schema, table),
        )
        if row is None:
            return None
        return "table" if row[0] == "BASE TABLE" else str(row[0]).lower()

    def live_columns(self, cur: Any, target: Target) -> dict[str, LiveColumn]:
        rows = self.fetch_all(
            cur,
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, DATA_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (target.schema, target.table),
        )
        out: dict[str, LiveColumn] = {}
        for name, col_type, nullable, data_type in rows:
            col_type = col_type.decode() if isinstance(col_type, (bytes, bytearray)) else str(col_type)
            members: tuple[str, ...] = ()
            if str(data_type).lower() == "enum":
                members = tuple(m.replace("''", "'") for m in _ENUM_MEMBER.findall(col_type))
            out[name] = LiveColumn(name, col_type, nullable == "YES", enum_values=members)
        return out

    # -- checks ---------------------------------------------------------------------------

    def _client_allows_local_infile(self) -> bool | None:
        allowed = getattr(self.conn, "_allow_local_infile", None)
        if isinstance(allowed, bool):
            return allowed
        flags = getattr(self.conn, "client_flag", None)
        if isinstance(flags, int):
            return bool(flags & _CLIENT_LOCAL_FILES)
        return None  # unknown driver internals: let the load itself report it

    def check_target(self, cur: Any, target: Target, *, table_exists: bool, dap_origin: bool) -> None:
        local_infile, read_only, user = self.fetch_one(  # type: ignore[misc]
            cur, "SELECT @@GLOBAL.local_infile, @@GLOBAL.read_only, CURRENT_USER()"
        )
        if str(read_only) in ("1", "ON"):
            raise ReplicationConfigError("the MySQL server is read_only; connect to the primary")
        if str(local_infile) not in ("1", "ON"):
            raise ReplicationConfigError(
                "the MySQL server has local_infile=OFF, and rows are bulk-loaded with LOAD DATA LOCAL INFILE; "
                "run SET GLOBAL local_infile = 1 (or set local_infile=1 in the server configuration)"
            )
        if self._client_allows_local_infile() is False:
            raise ReplicationConfigError(
                "this MySQL connection was opened without LOCAL INFILE support; use MySqlHook(local_infile=True) "
                '(or the connection extra {"local_infile": true}; mysql-connector: allow_local_infile=True)'
            )
        if (
            self.fetch_one(cur, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (target.schema,))
            is None
        ):
            raise ReplicationConfigError(
                f"database {target.schema!r} does not exist; CREATE DATABASE {self.quote(target.schema)} or pass an "
                "existing target_schema"
            )
        missing = self._missing_privileges(cur, str(user), target.schema)
        if missing:
            raise ReplicationConfigError(
                f"user {user} lacks {', '.join(missing)} on database {target.schema!r}; "
                f"GRANT {', '.join(missing)} ON {self.quote(target.schema)}.* TO {user}"
            )

    def _missing_privileges(self, cur: Any, user: str, database: str) -> list[str]:
        if self.fetch_one(cur, "SELECT CURRENT_ROLE()") not in (None, (None,), ("NONE",)):
            return []  # privileges held through roles are not in information_schema: trust the load
        name, _, host = user.rpartition("@")
        grantee = f"'{name}'@'{host}'"
        have = {
            r[0]
            for r in self.fetch_all(
                cur, "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s", (grantee,)
            )
        }
        for pattern, privilege in self.fetch_all(
            cur,
            "SELECT TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s",
            (grantee,),
        ):
            if _db_pattern_matches(str(pattern), database):
                have.add(privilege)
        return [p for p in _REQUIRED_PRIVILEGES if p not in have]

    # -- state ----------------------------------------------------------------------------

    def to_db_timestamp(self, value: datetime) -> Any:
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def upsert_sql(self, table_sql: str, columns: list[str], keys: list[str]) -> str:
        updates = ", ".join(f"{c} = VALUES({c})" for c in columns if c not in keys)
        return (
            f"INSERT INTO {table_sql} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON DUPLICATE KEY UPDATE {updates}"
        )

    def dap_sync_table(self, target: Target) -> tuple[str | None, str] | None:
        return (target.schema, "instructure_dap__table_sync")

    def dap_target_matches(self, target: Target, target_schema: str | None, target_table: str) -> bool:
        name = f"{target_schema}__{target_table}" if target_schema else target_table
        return name == target.table

    def dap_timestamp(self, cur: Any, target: Target, value: datetime) -> datetime:
        naive = value.astimezone(timezone.utc).replace(tzinfo=None)
        row = self.fetch_one(
            cur,
            "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = 'instructure_dap__table_sync' AND COLUMN_NAME = 'timestamp'",
            (target.schema,),
        )
        digits = int(row[0] or 0) if row else 6
        # MySQL rounds extra digits; rounding up would skip changes, so truncate (the next
        # window then overlaps a little, which an idempotent merge absorbs).
        step = 10 ** (6 - min(digits, 6))
        return naive.replace(microsecond=naive.microsecond - naive.microsecond % step)

    # -- DDL ------------------------------------------------------------------------------

    def create_table_sql(
        self,
        target: Target,
        table: str,
        columns: tuple[Column, ...],
        types: dict[str, str],
        *,
        primary_key: bool = True,
    ) -> str:
        defs = [f"{self.quote(c.name)} {types[c.name]}{' NOT NULL' if c.is_key else ' NULL'}" for c in columns]
        if primary_key:
            defs.append(f"PRIMARY KEY ({', '.join(self.quote(c.name) for c in columns if c.is_key)})")
        table_sql = self.qualify(target.schema, table)
        return f"CREATE TABLE {table_sql} ({', '.join(defs)}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"

    def apply_schema_change(
        self,
        target: Target,
        change: SchemaChange,
        live: dict[str, LiveColumn],
        *,
        dap_origin: bool,
        schema: TableSchema,
    ) -> list[str]:
        table_sql = self.qualified(target)
        statements: list[str] = []
        for col in change.added:
            if col.name in live:
                continue
            if dap_origin and col.type.kind == "enum":
                typ = f"ENUM({', '.join(_literal(v) for v in col.type.values)})"
            else:
                typ = dap_cli_type(col, self.name) if dap_origin else sql_type(col, self.name)
            statements.append(f"ALTER TABLE {table_sql} ADD COLUMN {self.quote(col.name)} {typ} NULL")
        if dap_origin:
            for col in schema.columns:
                have = live.get(col.name)
                if have is None or not have.enum_values or col.type.kind != "enum":
                    continue
                extra = [v for v in col.type.values if v not in have.enum_values]
                nullable = have.nullable or col.name in change.relaxed
                if extra:
                    members = ", ".join(_literal(v) for v in (*have.enum_values, *extra))
                    null = "NULL" if nullable else "NOT NULL"
                    statements.append(
                        f"ALTER TABLE {table_sql} MODIFY COLUMN {self.quote(col.name)} ENUM({members}) {null}"
                    )
            for name in change.relaxed:
                have = live.get(name)
                if have is not None and not have.nullable and not have.enum_values:
                    statements.append(f"ALTER TABLE {table_sql} MODIFY COLUMN {self.quote(name)} {have.sql_type} NULL")
        if statements:
            cur = self.cursor()
            try:
                for sql in statements:
                    self.log.info("schema change on %s: %s", target.display, sql)
                    self._ddl(cur, sql)
            finally:
                cur.close()
        return statements

    # -- loading (the LOAD DATA details are in .mysql_load) -----------------------------------

    def _load_part(self, cur: Any, table_sql: str, part: Part, job: LoadJob, *, staging: bool) -> int:
        return load_part(self, cur, table_sql, part, job, staging=staging)

    def snapshot(self, job: LoadJob) -> LoadCounts:
        t = job.target
        build = self.side_name(t.table, NEW_SUFFIX)
        build_sql = self.qualify(t.schema, build)
        counts = LoadCounts(values=job.tally)
        cur = self.cursor()
        try:
            with job.timer.phase("prepare"):
                self._ddl(cur, f"DROP TABLE IF EXISTS {build_sql}")
                self._ddl(cur, self.create_table_sql(t, build, job.schema.columns, job.column_types))
            with job.timer.phase("load"):
                # Nobody reads the side table, so its loads need no enclosing transaction; a
                # crash leaves a stray table the next snapshot drops.
                for part in job.parts:
                    counts.bytes_loaded += self._load_part(cur, build_sql, part, job, staging=False)
                    self.conn.commit()
                row = self.fetch_one(cur, f"SELECT COUNT(*) FROM {build_sql}")
                self.conn.commit()
                counts.inserted = int(row[0]) if row else 0
        finally:
            with contextlib.suppress(Exception):  # a dead connection must not hide the load's error
                cur.close()
        with job.timer.phase("swap"), self.transaction(timer=job.timer) as tx:
            job.write_state(tx, pending_swap=build)
        return counts

    def swap_in(self, target: Target, build: str) -> bool:
        """Rename a loaded side table over the live one (idempotent). Returns True if renamed."""
        old = self.side_name(target.table, OLD_SUFFIX)
        cur = self.cursor()
        try:
            if self.table_kind(cur, target.schema, build) is None:
                self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
                return False
            self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
            live_sql = self.qualified(target)
            if self.table_kind(cur, target.schema, target.table) == "table":
                self._ddl(
                    cur,
                    f"RENAME TABLE {live_sql} TO {self.qualify(target.schema, old)}, "
                    f"{self.qualify(target.schema, build)} TO {live_sql}",
                )
                self._ddl(cur, f"DROP TABLE IF EXISTS {self.qualify(target.schema, old)}")
            else:
                self._ddl(cur, f"RENAME TABLE {self.qualify(target.schema, build)} TO {live_sql}")
            return True
        finally:
            cur.close()

    def incremental(self, job: LoadJob) -> LoadCounts:
        t = job.target
        keys = job.key_names
        live = job.live
        q = self.quote
        stage = q(STAGE)
        data_cols = job.data_columns()
        counts = LoadCounts(values=job.tally)
        live_sql = self.qualified(t)
        action = q(META_ACTION)
        match = self.key_match("t", "s", keys)
        try:
            with self.transaction(timer=job.timer) as cur:
                with job.timer.phase("prepare"):
                    cur.execute(f"DROP TEMPORARY TABLE IF EXISTS {stage}")
                    defs = [f"{action} CHAR(1) NULL"]
                    defs += [f"{q(name)} {live[name].sql_type} NULL" for name in data_cols if name not in keys]
                    defs += [f"{q(name)} {live[name].sql_type} NOT NULL" for name in keys]
                    defs.append(f"PRIMARY KEY ({', '.join(q(k) for k in keys)})")
                    # Temporary tables do not commit implicitly, so this stays in the transaction.
                    cur.execute(
                        f"CREATE TEMPORARY TABLE {stage} ({', '.join(defs)}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                    )
                with job.timer.phase("load"):
                    for part in job.parts:
                        counts.bytes_loaded += self._load_part(cur, stage, part, job, staging=True)
                with job.timer.phase("merge"):
                    bad = self.fetch_one(
                        cur, f"SELECT COUNT(*) FROM {stage} WHERE {action} IS NULL OR {action} NOT IN ('U', 'D')"
                    )
                    if bad and bad[0]:
                        raise TsvFormatError(f"{bad[0]} record(s) have a meta.action other than U or D")
                    upserts = self.fetch_one(cur, f"SELECT COUNT(*) FROM {stage} WHERE {action} = 'U'")
                    present = self.fetch_one(
                        cur,
                        f"SELECT COUNT(*) FROM {stage} s JOIN {live_sql} t ON {match} WHERE s.{action} = 'U'",
                    )
                    cur.execute(f"DELETE t FROM {live_sql} t JOIN {stage} s ON {match} WHERE s.{action} = 'D'")
                    counts.deleted = cur.rowcount
                    cols = ", ".join(q(c) for c in data_cols)
                    non_keys = [c for c in data_cols if c not in keys]
                    updates = ", ".join(f"{q(c)} = VALUES({q(c)})" for c in non_keys) or f"{q(keys[0])} = {q(keys[0])}"
                    cur.execute(
                        f"INSERT INTO {live_sql} ({cols}) SELECT {cols} FROM {stage} WHERE {action} = 'U' "
                        f"ON DUPLICATE KEY UPDATE {updates}"
                    )
                    counts.updated = int(present[0]) if present else 0
                    counts.inserted = (int(upserts[0]) if upserts else 0) - counts.updated
                    job.write_state(cur)
        finally:
            # The session may be gone (and its temporary table with it).
            self._quietly(lambda cur: self._ddl(cur, f"DROP TEMPORARY TABLE IF EXISTS {stage}"), "no stage dropped")
        return counts


def _db_pattern_matches(pattern: str, database: str) -> bool:
    """Match a ``SCHEMA_PRIVILEGES.TABLE_SCHEMA`` grant pattern (``%``/``_`` wildcards, ``\\`` escapes)."""
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.fullmatch(regex, database) is not None
