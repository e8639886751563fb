"""Wrong destination, missing permissions, name collisions, bad windows and bad files fail
with a clear error before any data moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import (
    ConcurrentReplicationError,
    ReplicationConfigError,
    SnapshotRequired,
    TableReplicator,
    TsvFormatError,
    WatermarkError,
)
from tests.replication.conftest import MY, PG, SESSION, Database, my_connect, pg_connect
from tests.replication.repl_helpers import DapFetcher, write_part

KEY = ("canvas", "accounts")


def _default_table(db: Database) -> tuple[str, str]:
    if db.dialect == "postgres":
        return "canvas", "accounts"
    return ("main" if db.dialect == "sqlite" else db.name), "canvas__accounts"


def _create_schema(db: Database) -> None:
    if db.dialect == "postgres":
        db.query("CREATE SCHEMA canvas")


# -- any dialect ----------------------------------------------------------------------------


def test_unknown_dialect_and_mismatched_driver(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(ReplicationConfigError, match="unknown dialect 'oracle'"):
        TableReplicator(conn, "oracle", *KEY)
    with pytest.raises(ReplicationConfigError, match="psycopg"):
        TableReplicator(conn, "postgres", *KEY)
    with pytest.raises(ReplicationConfigError, match="mysql-connector"):
        TableReplicator(conn, "mysql", *KEY)
    with pytest.raises(ReplicationConfigError, match="sqlite3 connection"):
        TableReplicator(object(), "sqlite", *KEY)


def test_a_transaction_in_progress_is_refused(db: Database) -> None:
    conn = db.connect()
    cur = conn.cursor()
    cur.execute("BEGIN" if db.dialect == "sqlite" else "START TRANSACTION" if db.dialect == "mysql" else "SELECT 1")
    with pytest.raises(ReplicationConfigError, match="transaction in progress"):
        TableReplicator(conn, db.dialect, *KEY)


def test_a_table_this_package_does_not_manage_is_never_overwritten(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    _, fetch = fresh_server
    _create_schema(db)
    schema, table = _default_table(db)
    qualified = f"{db.quote(schema)}.{db.quote(table)}"
    db.query(f"CREATE TABLE {qualified} (id INTEGER PRIMARY KEY, note VARCHAR(20))")
    db.query(f"INSERT INTO {qualified} VALUES (1, 'mine')")
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    with pytest.raises(ReplicationConfigError, match="not managed by this replicator") as caught:
        rep.check_target()
    assert "table_prefix" in str(caught.value)
    snap = fetch.snapshot(*KEY)
    with pytest.raises(ReplicationConfigError):
        rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    assert db.query(f"SELECT note FROM {qualified}") == [("mine",)]
    # The way out the message suggests works.
    other = TableReplicator(conn, db.dialect, *KEY, table_prefix="dap_")
    other.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    assert other.target.table == "dap_accounts"


def test_a_view_at_the_target_name_is_refused(db: Database) -> None:
    _create_schema(db)
    schema, table = _default_table(db)
    db.query(f"CREATE VIEW {db.quote(schema)}.{db.quote(table)} AS SELECT 1 AS id")
    with pytest.raises(ReplicationConfigError, match="is a view"):
        TableReplicator(db.connect(), db.dialect, *KEY).check_target()


def test_a_state_row_of_another_dap_table_is_a_collision(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    _, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    state_table = f"{db.quote(rep.target.schema)}.{db.quote('dap_replication_state')}"
    db.query(f"UPDATE {state_table} SET source_table = 'users'")
    with pytest.raises(ReplicationConfigError, match=r"already replicates canvas\.users"):
        TableReplicator(db.connect(), db.dialect, *KEY).check_target()


def test_windows_that_do_not_connect_to_the_watermark_are_refused(
    fresh_server: tuple[EmulatorServer, DapFetcher], tmp_path: Path
) -> None:
    server, fetch = fresh_server
    conn = sqlite3.connect(tmp_path / "replica.db")
    rep = TableReplicator(conn, "sqlite", *KEY)
    snap = fetch.snapshot(*KEY)
    server.emulator.advance(updates=2)
    first = fetch.incremental(*KEY, snap.at)  # type: ignore[arg-type]
    with pytest.raises(SnapshotRequired, match="load a snapshot first"):
        rep.apply_incremental(
            first.files, versioned_schema=first.versioned_schema, since=first.since, until=first.until
        )
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    rep.apply_incremental(first.files, versioned_schema=first.versioned_schema, since=first.since, until=first.until)
    server.emulator.advance(updates=2)
    second = fetch.incremental(*KEY, first.until)  # type: ignore[arg-type]
    server.emulator.advance(updates=2)
    third = fetch.incremental(*KEY, second.until)  # type: ignore[arg-type]
    with pytest.raises(WatermarkError, match="changes in between would be lost") as gap:
        rep.apply_incremental(
            third.files, versioned_schema=third.versioned_schema, since=third.since, until=third.until
        )
    assert gap.value.watermark == first.until
    with pytest.raises(WatermarkError, match="older than the watermark"):
        rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    rep.apply_incremental(
        second.files, versioned_schema=second.versioned_schema, since=second.since, until=second.until
    )
    rep.apply_incremental(third.files, versioned_schema=third.versioned_schema, since=third.since, until=third.until)
    with pytest.raises(WatermarkError, match="bring back older values"):
        rep.apply_incremental(
            first.files, versioned_schema=first.versioned_schema, since=first.since, until=first.until
        )
    assert rep.read_state().watermark == third.until  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="timezone-aware"):
        rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at.replace(tzinfo=None))  # type: ignore[union-attr]


def test_parts_that_do_not_match_the_schema_are_refused_before_loading(
    fresh_server: tuple[EmulatorServer, DapFetcher], tmp_path: Path
) -> None:
    _, fetch = fresh_server
    conn = sqlite3.connect(tmp_path / "replica.db")
    rep = TableReplicator(conn, "sqlite", *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    at = snap.at
    with pytest.raises(TsvFormatError, match=r"must have a 'meta\.action' column"):
        rep.apply_incremental(snap.files, versioned_schema=snap.versioned_schema, since=at, until=at)  # type: ignore[arg-type]
    bad = write_part(tmp_path / "bad" / "part-00000.tsv.gz", ["meta.ts", "meta.action", "key.id", "value.nope"], [])
    with pytest.raises(TsvFormatError, match=r"'value\.nope' is not in schema version 1"):
        rep.apply_incremental([bad], versioned_schema=snap.versioned_schema, since=at, until=at)  # type: ignore[arg-type]
    nested = write_part(tmp_path / "bad" / "part-00001.tsv", ["meta.ts", "key.id", "value.settings.x"], [])
    with pytest.raises(TsvFormatError, match="expanded"):
        rep.apply_snapshot([nested], versioned_schema=snap.versioned_schema, at=at)  # type: ignore[arg-type]
    empty = tmp_path / "bad" / "part-00002.tsv"
    empty.write_bytes(b"")
    with pytest.raises(TsvFormatError, match="empty file"):
        rep.apply_snapshot([empty], versioned_schema=snap.versioned_schema, at=at)  # type: ignore[arg-type]
    assert rep.read_state().last_mode == "snapshot"  # type: ignore[union-attr]


# -- PostgreSQL -----------------------------------------------------------------------------


def test_postgres_missing_privileges_are_named_with_the_grant_to_run(
    new_db: Any, fresh_server: tuple[EmulatorServer, DapFetcher], request: pytest.FixtureRequest
) -> None:
    db = new_db("postgres")
    _, fetch = fresh_server
    role = f"{SESSION}_ro"
    with pg_connect("postgres", autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')

    def drop_role() -> None:
        with pg_connect(db.name, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
        with pg_connect("postgres", autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')

    request.addfinalizer(drop_role)
    import psycopg

    limited = psycopg.connect(dbname=db.name, host=PG["host"], port=PG["port"], user=role)
    with pytest.raises(ReplicationConfigError, match="may not create schemas") as caught:
        TableReplicator(limited, "postgres", *KEY).check_target()
    assert "CREATE SCHEMA" in str(caught.value)
    db.query("CREATE SCHEMA canvas")
    with pytest.raises(ReplicationConfigError, match=r"lacks USAGE and CREATE on schema 'canvas'"):
        TableReplicator(limited, "postgres", *KEY).check_target()
    db.query(f'GRANT USAGE, CREATE ON SCHEMA canvas TO "{role}"')
    snap = fetch.snapshot(*KEY)
    TableReplicator(db.connect(), "postgres", *KEY).apply_snapshot(
        snap.files, versioned_schema=snap.versioned_schema, at=snap.at
    )
    db.query(f'GRANT SELECT, INSERT, UPDATE, DELETE ON canvas.accounts, canvas.dap_replication_state TO "{role}"')
    with pytest.raises(ReplicationConfigError, match="not owned by role"):
        TableReplicator(limited, "postgres", *KEY).check_target()
    db.query(f'REVOKE DELETE ON canvas.accounts FROM "{role}"')
    with pytest.raises(ReplicationConfigError, match=r"lacks DELETE on canvas\.accounts") as caught:
        TableReplicator(limited, "postgres", *KEY).check_target()
    assert "GRANT DELETE ON" in str(caught.value)
    limited.close()


# -- MySQL / MariaDB ------------------------------------------------------------------------


def test_mysql_missing_privileges_local_infile_and_database_are_named(
    new_db: Any, request: pytest.FixtureRequest
) -> None:
    db = new_db("mysql")
    user = f"{SESSION}_ro"[:32]
    admin = my_connect(None)
    cur = admin.cursor()
    for host in ("%", "localhost", "127.0.0.1"):
        cur.execute(f"CREATE USER '{user}'@'{host}'")
        cur.execute(f"GRANT SELECT ON `{db.name}`.* TO '{user}'@'{host}'")
    admin.close()

    def drop_user() -> None:
        conn = my_connect(None)
        for host in ("%", "localhost", "127.0.0.1"):
            conn.cursor().execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        conn.close()

    request.addfinalizer(drop_user)
    import mysql.connector

    limited = mysql.connector.connect(
        host=MY["host"], port=MY["port"], user=user, password="", database=db.name, allow_local_infile=True
    )
    with pytest.raises(ReplicationConfigError, match="lacks INSERT, UPDATE, DELETE, CREATE, DROP, ALTER") as caught:
        TableReplicator(limited, "mysql", *KEY).check_target()
    assert f"ON `{db.name}`.*" in str(caught.value)
    limited.close()

    no_infile = my_connect(db.name, allow_local_infile=False)
    with pytest.raises(ReplicationConfigError, match="without LOCAL INFILE support") as caught:
        TableReplicator(no_infile, "mysql", *KEY).check_target()
    assert "local_infile=True" in str(caught.value)

    conn = db.connect()
    with pytest.raises(ReplicationConfigError, match="does not exist"):
        TableReplicator(conn, "mysql", *KEY, target_schema=f"{SESSION}_missing").check_target()
    no_database = my_connect(None)
    with pytest.raises(ReplicationConfigError, match="no default database"):
        TableReplicator(no_database, "mysql", *KEY)


# -- SQLite ---------------------------------------------------------------------------------


def test_sqlite_schema_must_be_an_attached_database_and_the_file_writable(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "replica.db")
    with pytest.raises(ReplicationConfigError, match="must name an attached database"):
        TableReplicator(conn, "sqlite", *KEY, target_schema="canvas").check_target()
    conn.execute(f"ATTACH DATABASE '{tmp_path / 'canvas.db'}' AS canvas")
    attached = TableReplicator(conn, "sqlite", *KEY, target_schema="canvas")
    attached.check_target()
    assert attached.target_name == "canvas.accounts"
    conn.close()

    read_only = sqlite3.connect(f"file:{tmp_path / 'replica.db'}?mode=ro", uri=True)
    with pytest.raises(ReplicationConfigError, match="attempt to write a readonly database"):
        TableReplicator(read_only, "sqlite", *KEY).check_target()


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])  # SQLite serializes writers itself
def test_a_second_run_on_the_same_target_fails_fast(
    dialect: str, new_db: Any, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    """Overlapping runs (a backfill next to the schedule) must not interleave their windows."""
    db = new_db(dialect)
    server, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    server.emulator.advance(updates=2)
    inc = fetch.incremental(*KEY, snap.at)  # type: ignore[arg-type]
    other = TableReplicator(db.connect(), dialect, *KEY)
    with other._d.exclusive(other.target), pytest.raises(ConcurrentReplicationError, match="another replication of"):
        rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    assert rep.read_state().watermark == inc.until  # type: ignore[union-attr]


def test_an_empty_result_moves_only_the_watermark_and_a_directory_is_accepted(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    _, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files[0].parent, versioned_schema=snap.versioned_schema, at=snap.at)
    later = snap.at.replace(hour=1)  # type: ignore[union-attr]
    result = rep.apply_incremental([], versioned_schema=snap.versioned_schema, since=snap.at, until=later)  # type: ignore[arg-type]
    assert (result.rows_inserted, result.rows_updated, result.rows_deleted, result.files) == (0, 0, 0, 0)
    assert rep.read_state().watermark == later  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="directory of parts"):
        rep.apply_incremental("no-such-dir", versioned_schema=snap.versioned_schema, since=later, until=later)
