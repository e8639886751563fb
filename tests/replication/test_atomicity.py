"""A failure at any point leaves data and watermark as they were; rerunning converges.

"Killing the load" is simulated by raising inside the transaction: after the first part is
loaded, or in place of the state write (after the deletes and upserts ran). A MySQL crash
between the snapshot's state commit and its ``RENAME`` is simulated too: the next call
finishes the swap before doing anything else.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import SyncResult, TableReplicator
from airflow_provider_instructure.replication.dialects.mysql import MySQLDialect
from airflow_provider_instructure.replication.dialects.postgres import PostgresDialect
from airflow_provider_instructure.replication.dialects.sqlite import SQLiteDialect
from airflow_provider_instructure.replication.state import StateStore
from tests.replication.conftest import Database
from tests.replication.repl_helpers import DapFetcher, Result, assert_same_rows, expected_table, replica_table

LOADERS = {
    "postgres": (PostgresDialect, "_copy_part"),
    "mysql": (MySQLDialect, "_load_part"),
    "sqlite": (SQLiteDialect, "_insert_part"),
}
TABLES = [("canvas", "accounts"), ("canvas_logs", "web_logs")]


class Killed(RuntimeError):
    """Stands for the process dying in the middle of a load."""


def fail_after_first_part(monkeypatch: pytest.MonkeyPatch, dialect: str) -> list[int]:
    cls, name = LOADERS[dialect]
    original = getattr(cls, name)
    calls: list[int] = []

    def loader(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            raise Killed("killed after the first part")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, loader)
    return calls


def fail_state_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def write(*args: Any, **kwargs: Any) -> None:
        raise Killed("killed just before the watermark was written")

    monkeypatch.setattr(StateStore, "write", write)


def check(db: Database, conn: Any, server: EmulatorServer, rep: TableReplicator, result: Result, what: str) -> None:
    expected = expected_table(server, rep.namespace, rep.table, result.watermark, result.versioned_schema)
    actual = replica_table(conn, db.dialect, db.qualified(rep.target), result.versioned_schema)
    assert_same_rows(actual, expected, what)
    state = rep.read_state()
    assert state is not None and state.watermark == result.watermark, what


def apply(rep: TableReplicator, result: Result) -> SyncResult:
    if result.at is not None:
        return rep.apply_snapshot(result.files, versioned_schema=result.versioned_schema, at=result.at)
    return rep.apply_incremental(
        result.files, versioned_schema=result.versioned_schema, since=result.since, until=result.until
    )


@pytest.mark.parametrize("fail_at", ["load", "state"])
def test_failed_incremental_leaves_the_previous_state_and_the_rerun_converges(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher], monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    server, fetch = fresh_server
    conn = db.connect()
    snapshots = {key: fetch.snapshot(*key) for key in TABLES}
    for key, snap in snapshots.items():
        apply(TableReplicator(conn, db.dialect, *key), snap)
    server.emulator.advance(updates=4, inserts=3, deletes=3)
    for key, snap in snapshots.items():
        rep = TableReplicator(conn, db.dialect, *key)
        inc = fetch.incremental(*key, snap.at)  # type: ignore[arg-type]
        with monkeypatch.context() as patch:
            if fail_at == "load":
                fail_after_first_part(patch, db.dialect)
            else:
                fail_state_write(patch)
            with pytest.raises(Killed):
                apply(rep, inc)
        check(db, conn, server, rep, snap, f"{key} after the failed incremental")
        first = apply(rep, inc)
        check(db, conn, server, rep, inc, f"{key} after the rerun")
        assert first.rows_deleted == 3 and first.rows_inserted == 3
        # The same window once more (a retry after a commit whose success was not recorded): same result.
        again = apply(rep, inc)
        check(db, conn, server, rep, inc, f"{key} after applying the window twice")
        assert (again.rows_inserted, again.rows_deleted) == (0, 0)
        assert again.rows_updated == first.rows_updated + first.rows_inserted


def test_failed_snapshot_rebuild_keeps_the_live_table(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, fetch = fresh_server
    conn = db.connect()
    key = ("canvas", "accounts")
    rep = TableReplicator(conn, db.dialect, *key)
    first = fetch.snapshot(*key)
    apply(rep, first)
    server.emulator.advance(updates=2, inserts=5, deletes=2)
    second = fetch.snapshot(*key)
    with monkeypatch.context() as patch:
        fail_after_first_part(patch, db.dialect)
        with pytest.raises(Killed):
            apply(rep, second)
    check(db, conn, server, rep, first, "live table after the failed rebuild")
    side = rep.target.table + "__dap_new"
    if db.dialect == "sqlite":
        leftover = db.query("SELECT COUNT(*) FROM sqlite_master WHERE name = ?", (side,))
    else:
        leftover = db.query(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (rep.target.schema, side),
        )
    # PostgreSQL and SQLite roll the side table back with everything else; MySQL leaves it for the rerun to drop.
    assert leftover[0][0] == (1 if db.dialect == "mysql" else 0)
    result = apply(rep, second)
    assert result.rows_inserted == len(expected_table(server, *key, second.watermark, second.versioned_schema))
    check(db, conn, server, rep, second, "after the rebuild's rerun")


def test_mysql_crash_between_state_commit_and_rename_is_finished_by_the_next_call(
    new_db: Any, fresh_server: tuple[EmulatorServer, DapFetcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = new_db("mysql")
    server, fetch = fresh_server
    conn = db.connect()
    key = ("canvas", "accounts")
    rep = TableReplicator(conn, "mysql", *key)
    first = fetch.snapshot(*key)
    apply(rep, first)
    server.emulator.advance(updates=3, inserts=4, deletes=2)
    second = fetch.snapshot(*key)
    with monkeypatch.context() as patch:

        def crash(self: Any, target: Any, build: str) -> bool:
            raise Killed("killed before RENAME TABLE")

        patch.setattr(MySQLDialect, "swap_in", crash)
        with pytest.raises(Killed):
            apply(rep, second)
    # The watermark already names the new snapshot, and the marker says its table is not live yet.
    state = rep.read_state()
    assert state is not None and state.watermark == second.at and state.pending_swap == rep.target.table + "__dap_new"
    old_rows = replica_table(conn, "mysql", db.qualified(rep.target), first.versioned_schema)
    assert_same_rows(old_rows, expected_table(server, *key, first.at, first.versioned_schema), "live table still old")
    # The next run (an incremental from the new watermark) first finishes the swap.
    server.emulator.advance(updates=2, inserts=1, deletes=1)
    third = fetch.incremental(*key, second.at)  # type: ignore[arg-type]
    result = apply(rep, third)
    assert "recover" in result.seconds
    check(db, conn, server, rep, third, "after recovery and the incremental")
    assert rep.read_state().pending_swap is None  # type: ignore[union-attr]
