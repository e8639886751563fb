"""What the dialects share through :class:`~airflow_provider_instructure.replication.dialects.base.Dialect`.

The DDL and upsert text, the state table's types and the driver detection moved from each
dialect into the base with the differences as class data (issue 11). Existing replicas and
state tables were created by the earlier per-dialect code, so the text must not drift: these
expectations are what that code produced (but for SQLite's upsert, which now spells
``EXCLUDED`` in capitals as the PostgreSQL one does; SQLite reads both alike, and
:func:`test_sqlite_upsert_runs` runs it).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest

from airflow_provider_instructure.dap_schema import Column, ColumnType
from airflow_provider_instructure.replication.dialects import dialect_class
from airflow_provider_instructure.replication.dialects.base import Target
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from tests.replication.conftest import my_connect, pg_connect

LOG = logging.getLogger(__name__)
TARGET = Target("canvas", "users", "canvas", "users")
COLUMNS = (
    Column("id", "key", ColumnType("integer", bits=64), False),
    Column("name", "value", ColumnType("string", max_length=255), True),
)
TYPES = {"id": "BIGINT", "name": "TEXT"}

#: The state table's column types as the earlier releases created them.
STATE_TYPES = {
    "postgres": {
        "key": "varchar(255)",
        "name": "varchar(64)",
        "short": "varchar(16)",
        "ts": "timestamp with time zone",
        "int": "integer",
        "long_text": "text",
    },
    "mysql": {
        "key": "VARCHAR(255)",
        "name": "VARCHAR(64)",
        "short": "VARCHAR(16)",
        "ts": "DATETIME(6)",
        "int": "INT",
        "long_text": "LONGTEXT",
    },
    "sqlite": {"key": "TEXT", "name": "TEXT", "short": "TEXT", "ts": "TEXT", "int": "INTEGER", "long_text": "TEXT"},
}

CREATE = {
    "postgres": 'CREATE TABLE "canvas"."{t}" ("id" BIGINT NOT NULL, "name" TEXT, '
    'CONSTRAINT "{t}_pkey" PRIMARY KEY ("id"))',
    "mysql": "CREATE TABLE `canvas`.`{t}` (`id` BIGINT NOT NULL, `name` TEXT NULL, PRIMARY KEY (`id`)) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "sqlite": 'CREATE TABLE "canvas"."{t}" ("id" BIGINT NOT NULL, "name" TEXT, PRIMARY KEY ("id"))',
}
CREATE_NO_KEY = {
    "postgres": 'CREATE TABLE "canvas"."{t}" ("id" BIGINT NOT NULL, "name" TEXT)',
    "mysql": "CREATE TABLE `canvas`.`{t}` (`id` BIGINT NOT NULL, `name` TEXT NULL) "
    "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "sqlite": 'CREATE TABLE "canvas"."{t}" ("id" BIGINT NOT NULL, "name" TEXT)',
}
UPSERT = {
    "postgres": 'INSERT INTO st ("k", "a", "b") VALUES (%s, %s, %s) ON CONFLICT ("k") DO UPDATE SET '
    '"a" = EXCLUDED."a", "b" = EXCLUDED."b"',
    "mysql": "INSERT INTO st (`k`, `a`, `b`) VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE "
    "`a` = VALUES(`a`), `b` = VALUES(`b`)",
    "sqlite": 'INSERT INTO st ("k", "a", "b") VALUES (?, ?, ?) ON CONFLICT ("k") DO UPDATE SET '
    '"a" = EXCLUDED."a", "b" = EXCLUDED."b"',
}
DIALECTS = ["postgres", "mysql", "sqlite"]


def _dialect(name: str) -> Any:
    return dialect_class(name)(object(), LOG)  # SQL text needs no connection


@pytest.mark.parametrize("name", DIALECTS)
def test_state_table_types_are_those_of_earlier_releases(name: str) -> None:
    assert _dialect(name).state_types == STATE_TYPES[name]


@pytest.mark.parametrize("name", DIALECTS)
def test_create_table_sql_is_unchanged(name: str) -> None:
    d = _dialect(name)
    assert d.create_table_sql(TARGET, "users", COLUMNS, TYPES) == CREATE[name].format(t="users")
    assert d.create_table_sql(TARGET, "u", COLUMNS, TYPES, primary_key=False) == CREATE_NO_KEY[name].format(t="u")


def test_postgres_names_its_primary_key_after_the_table_within_the_identifier_limit() -> None:
    d = _dialect("postgres")
    long = "x" * 63
    sql = d.create_table_sql(TARGET, long, COLUMNS, TYPES)
    constraint = sql.split("CONSTRAINT ")[1].split(" PRIMARY")[0].strip('"')
    assert constraint.endswith("_pkey") and len(constraint) == 63
    assert constraint == d.side_name(long, "_pkey")


@pytest.mark.parametrize("name", DIALECTS)
def test_upsert_sql_is_unchanged(name: str) -> None:
    d = _dialect(name)
    cols = [d.quote(c) for c in ("k", "a", "b")]
    assert d.upsert_sql("st", cols, [d.quote("k")]) == UPSERT[name]


def test_sqlite_upsert_runs() -> None:
    conn = sqlite3.connect(":memory:")
    d = dialect_class("sqlite")(conn, LOG)
    conn.execute('CREATE TABLE st ("k" INTEGER PRIMARY KEY, "a" TEXT, "b" TEXT)')
    sql = d.upsert_sql("st", ['"k"', '"a"', '"b"'], ['"k"'])
    conn.execute(sql, (1, "x", "y"))
    conn.execute(sql, (1, "x2", "y2"))
    assert conn.execute("SELECT * FROM st").fetchall() == [(1, "x2", "y2")]


class _OwnConnection(sqlite3.Connection):
    pass


def test_driver_detection_accepts_the_drivers_and_subclasses() -> None:
    sqlite = dialect_class("sqlite")
    assert sqlite.driver_of(sqlite3.connect(":memory:")) == "sqlite3"
    assert sqlite.driver_of(sqlite3.connect(":memory:", factory=_OwnConnection)) == "sqlite3"
    assert dialect_class("postgres").driver_of(sqlite3.connect(":memory:")) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("postgres", "dialect 'postgres' needs a psycopg or psycopg2 connection (PostgresHook(...).get_conn()), got "),
        ("mysql", "dialect 'mysql' needs a mysql-connector-python or PyMySQL connection (MySqlHook(...).get_conn())"),
    ],
)
def test_a_connection_of_another_driver_is_refused(name: str, expected: str) -> None:
    conn = sqlite3.connect(":memory:")
    with pytest.raises(ReplicationConfigError) as err:
        dialect_class(name)(conn, LOG).check_connection()
    assert str(err.value).startswith(expected)
    assert "sqlite3.Connection; pass the dialect that matches the connection" in str(err.value)
    with pytest.raises(ReplicationConfigError, match=r"dialect 'sqlite' needs a sqlite3 connection \(SqliteHook"):
        dialect_class("sqlite")(object(), LOG).check_connection()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_postgres_drivers_are_told_apart_and_a_closed_connection_is_refused(driver: str, pg_server: None) -> None:
    conn = pg_connect("postgres", driver=driver)
    d = dialect_class("postgres")(conn, LOG)
    assert d.driver == driver
    d.check_connection()
    conn.close()
    with pytest.raises(ReplicationConfigError, match="the PostgreSQL connection is closed"):
        d.check_connection()


def test_mysql_connector_is_detected_and_a_closed_connection_is_refused(my_server: None) -> None:
    conn = my_connect(None)
    d = dialect_class("mysql")(conn, LOG)
    assert d.driver == "mysql-connector"
    d.check_connection()
    conn.close()
    with pytest.raises(ReplicationConfigError, match="the MySQL connection is closed"):
        d.check_connection()
