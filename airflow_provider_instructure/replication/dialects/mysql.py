"""MySQL 8 / MariaDB 10.6+ target (mysql-connector-python, as ``MySqlHook`` returns with the
``client: mysql-connector-python`` extra; PyMySQL works too).

Loading (:mod:`.mysql_load`): ``LOAD DATA LOCAL INFILE`` of each part. MySQL's escapes are
almost COPY's; the differences are handled without touching rows in Python:

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
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.dialects.base import (
    LiveColumn,
    Target,
)
from airflow_provider_instructure.replication.dialects.mysql_load import STAGE, MySQLLoader
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.identifiers import char_length
from airflow_provider_instructure.replication.schema_changes import SchemaChange
from airflow_provider_instructure.replication.types import dap_cli_type, sql_type
from airflow_provider_instructure.replication.values import MYSQL_RANGE

_REQUIRED_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "CREATE TEMPORARY TABLES")
_ENUM_MEMBER = re.compile(r"'((?:[^']|'')*)'")
_CLIENT_LOCAL_FILES = 128  # capability flag CLIENT_LOCAL_FILES


def _literal(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


class MySQLDialect(MySQLLoader):
    """MySQL 8 and MariaDB through mysql-connector-python or PyMySQL."""

    name = "mysql"
    title = "MySQL"
    drivers = (("mysql.connector", "mysql-connector"), ("pymysql", "pymysql"), ("MySQLdb", "mysqlclient"))
    connection_hint = "a mysql-connector-python or PyMySQL connection (MySqlHook(...).get_conn())"
    max_identifier = 64  # characters, not bytes
    timestamps = MYSQL_RANGE
    deferred_swap = True
    value_null = " NULL"
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    upsert_conflict = "ON DUPLICATE KEY UPDATE"
    upsert_assign = "{c} = VALUES({c})"

    # -- identifiers and connection -------------------------------------------------------

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def identifier_length(self, name: str) -> int:
        return char_length(name)

    def cursor(self) -> Any:
        if self.driver == "mysql-connector":
            # Unbuffered mysql-connector cursors refuse the next statement until every row is read.
            return self.conn.cursor(buffered=True)
        return self.conn.cursor()

    def is_closed(self) -> bool:
        return self.driver == "mysql-connector" and not self.conn.is_connected()

    def in_transaction(self) -> bool:
        if self.driver == "mysql-connector":
            return bool(self.conn.in_transaction)
        status = getattr(self.conn, "server_status", 0) or 0
        return bool(status & 1)  # SERVER_STATUS_IN_TRANS

    def _begin(self, cur: Any) -> None:
        cur.execute("START TRANSACTION")

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
        return self.make_target(database, name, namespace, table)

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


__all__ = ["STAGE", "MySQLDialect"]
