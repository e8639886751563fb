"""Databases and DAP results for the replication tests.

* Every test that asks for ``db`` gets a fresh database: ``repl_<session hex>_<n>`` on the
  PostgreSQL and MariaDB servers (created and dropped around the test, swept again at the
  end of the session) or a SQLite file in ``tmp_path``. The random session prefix keeps
  concurrent runs on the same servers apart.
* ``scenario`` is one emulator (both namespaces, every table) with a snapshot and three
  incremental windows per table, downloaded once per session over plain HTTP.
* A server that is down skips its tests with a reason on a laptop and fails them in CI.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication.dialects.base import Target
from tests.conftest import unavailable
from tests.replication.repl_helpers import DapFetcher, Result

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
SESSION = f"repl_{secrets.token_hex(4)}"
_counter = itertools.count(1)

DIALECTS = ["postgres", "mysql", "sqlite"]


def pg_connect(dbname: str, *, driver: str = "psycopg", **extra: Any) -> Any:
    if driver == "psycopg2":
        import psycopg2

        return psycopg2.connect(dbname=dbname, **PG, **extra)
    import psycopg

    return psycopg.connect(dbname=dbname, **PG, **extra)


def my_connect(database: str | None, **extra: Any) -> Any:
    import mysql.connector

    params = {**MY, "allow_local_infile": True, **extra}
    if database:
        params["database"] = database
    return mysql.connector.connect(**params)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[None]:
    try:
        conn = pg_connect("postgres", autocommit=True, connect_timeout=3)
    except Exception as exc:
        unavailable(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    try:
        yield
    finally:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (SESSION + "%",)):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def my_server() -> Iterator[None]:
    try:
        conn = my_connect(None, connection_timeout=3)
    except Exception as exc:
        unavailable(f"MariaDB/MySQL at 127.0.0.1:3306 is not reachable: {exc}")
    try:
        yield
    finally:
        cur = conn.cursor()
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s", (SESSION + "%",))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@dataclass
class Database:
    """A fresh target database for one test.

    :param dialect: ``postgres``, ``mysql`` or ``sqlite``.
    :param name: database name (file path for SQLite).
    """

    dialect: str
    name: str
    opened: list[Any] = field(default_factory=list)
    driver: str = ""

    def connect(self, **extra: Any) -> Any:
        if self.dialect == "postgres":
            conn = pg_connect(self.name, driver=self.driver or "psycopg", **extra)
        elif self.dialect == "mysql":
            conn = my_connect(self.name, **extra)
        else:
            conn = sqlite3.connect(self.name, **extra)
        self.opened.append(conn)
        return conn

    def quote(self, name: str) -> str:
        return f"`{name}`" if self.dialect == "mysql" else f'"{name}"'

    def qualified(self, target: Target) -> str:
        return f"{self.quote(target.schema)}.{self.quote(target.table)}"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on a throw-away connection (autocommit) and return its rows."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params else cur.execute(sql)
            rows = list(cur.fetchall()) if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()

    def close_all(self) -> None:
        for conn in self.opened:
            with contextlib.suppress(Exception):
                conn.close()


def make_database(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    if dialect == "sqlite":
        return Database("sqlite", str(tmp_path / "replica.db"))
    name = f"{SESSION}_{next(_counter)}"
    if dialect == "postgres":
        request.getfixturevalue("pg_server")
        with pg_connect("postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        db = Database("postgres", name)
        request.addfinalizer(lambda: _drop_pg(name))
    else:
        request.getfixturevalue("my_server")
        admin = my_connect(None)
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        admin.close()
        db = Database("mysql", name)
        request.addfinalizer(lambda: _drop_my(name))
    return db


def _drop_pg(name: str) -> None:
    with pg_connect("postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drop_my(name: str) -> None:
    admin = my_connect(None)
    admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


@pytest.fixture(params=DIALECTS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of each dialect in turn."""
    database = make_database(request.param, tmp_path, request)
    yield database
    database.close_all()


@pytest.fixture
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Database]]:
    """``new_db("postgres")``: a fresh database of one dialect (for tests that need several)."""
    made: list[Database] = []

    def factory(dialect: str) -> Database:
        sub = tmp_path / f"db{len(made)}"
        sub.mkdir()
        database = make_database(dialect, sub, request)
        made.append(database)
        return database

    yield factory
    for database in made:
        database.close_all()


# -- DAP results ------------------------------------------------------------------------------

CLOCK_START = datetime(2024, 3, 1, tzinfo=timezone.utc)


@dataclass
class Scenario:
    """Every table's snapshot and three incremental windows, as downloaded files."""

    server: EmulatorServer
    tables: list[tuple[str, str]]
    steps: list[dict[tuple[str, str], Result]]


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    from airflow_provider_instructure.emulator.server import quiet_uvicorn_errors

    quiet_uvicorn_errors()
    directory = tmp_path_factory.mktemp("dap-results")
    with EmulatorServer(rows=24, seed=7, clock_start=CLOCK_START, catalog="core") as server:
        fetch = DapFetcher(server, directory)
        dataset = server.emulator.dataset
        tables = [(ns, t) for ns in dataset.namespaces() for t in sorted(dataset.tables[ns])]
        steps = [{key: fetch.snapshot(*key) for key in tables}]
        # Window 1: one commit; window 2: two commits (a row can change twice); window 3:
        # mostly deletes.
        for advances in ([{"updates": 4, "inserts": 3, "deletes": 2}],
                         [{"updates": 5, "inserts": 2, "deletes": 1}, {"updates": 3, "inserts": 1, "deletes": 2}],
                         [{"updates": 1, "inserts": 0, "deletes": 4}]):  # fmt: skip
            for kwargs in advances:
                server.emulator.advance(**kwargs)
            previous = steps[-1]
            steps.append({key: fetch.incremental(*key, previous[key].watermark) for key in tables})
        yield Scenario(server, tables, steps)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[tuple[EmulatorServer, DapFetcher]]:
    """A private emulator (few tables' worth of rows) and a fetcher, for tests that change it."""
    with EmulatorServer(rows=12, seed=3, clock_start=CLOCK_START, catalog="core") as server:
        yield server, DapFetcher(server, tmp_path / "dap")
