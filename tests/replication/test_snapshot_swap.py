"""A forced snapshot (``SnapshotRequiredError`` after an upstream reload) is built beside the
live table and swapped in: readers see the old rows or the new ones, never a missing or
half-loaded table."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import TableReplicator
from airflow_provider_instructure.replication.state import StateStore
from tests.replication.conftest import Database
from tests.replication.repl_helpers import (
    DapFetcher,
    DapQueryError,
    assert_same_rows,
    expected_table,
    replica_table,
)
from tests.replication.test_atomicity import LOADERS

KEY = ("canvas", "accounts")


def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)


def _reader(db: Database) -> Any:
    # Autocommit: a reader must not hold a transaction (and its locks) between queries.
    if db.dialect == "postgres":
        return db.connect(autocommit=True)
    if db.dialect == "mysql":
        return db.connect(autocommit=True)
    return db.connect(check_same_thread=False, timeout=30)


def test_forced_snapshot_is_swapped_in_without_a_window(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    server.emulator.advance(updates=3, inserts=2, deletes=1)
    inc = fetch.incremental(*KEY, snap.at)  # type: ignore[arg-type]
    rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    old = expected_table(server, *KEY, inc.until, inc.versioned_schema)  # type: ignore[arg-type]

    server.emulator.advance(updates=2, inserts=7, deletes=1)
    server.emulator.reload("canvas.accounts")
    with pytest.raises(DapQueryError) as refused:
        fetch.incremental(*KEY, inc.until)  # type: ignore[arg-type]
    assert refused.value.type == "SnapshotRequiredError"
    forced = fetch.snapshot(*KEY)
    new = expected_table(server, *KEY, forced.at, forced.versioned_schema)  # type: ignore[arg-type]
    assert len(new) != len(old)

    live = db.qualified(rep.target)
    reader = _reader(db)
    during_load: list[dict[Any, Any]] = []
    cls, name = LOADERS[db.dialect]
    original = getattr(cls, name)

    def loader(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        # Another connection, with the new table half loaded: it still sees the old table, whole.
        during_load.append(replica_table(reader, db.dialect, live, inc.versioned_schema))
        return out

    monkeypatch.setattr(cls, name, loader)
    # Widen the moment that matters: sleep inside the transaction right after the state write,
    # which PostgreSQL and SQLite do after dropping and renaming (MySQL before its RENAME).
    original_write = StateStore.write

    def slow_write(self: Any, *args: Any, **kwargs: Any) -> None:
        original_write(self, *args, **kwargs)
        time.sleep(0.4)

    monkeypatch.setattr(StateStore, "write", slow_write)

    counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        other = _reader(db)
        try:
            while not stop.is_set():
                cur = other.cursor()
                cur.execute(f"SELECT COUNT(*) FROM {live}")
                counts.append(int(cur.fetchone()[0]))
                cur.close()
        except BaseException as exc:  # any error means readers saw a missing table
            errors.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: bool(counts) or bool(errors))
        result = rep.apply_snapshot(forced.files, versioned_schema=forced.versioned_schema, at=forced.at)
        _wait_for(lambda: bool(errors) or (bool(counts) and counts[-1] == len(new)))
    finally:
        stop.set()
        thread.join(timeout=30)

    assert not errors, f"a concurrent reader failed during the swap: {errors[0]!r}"
    assert during_load and all(rows == old for rows in during_load)
    assert set(counts) == {len(old), len(new)}, "the reader should see the old table, then the new one"
    assert counts == sorted(counts, key=lambda c: c == len(new)), "never back to the old table after the new one"
    assert result.mode == "snapshot" and result.rows_inserted == len(new)
    assert_same_rows(replica_table(reader, db.dialect, live, forced.versioned_schema), new, "after the swap")
    assert rep.read_state().watermark == forced.at  # type: ignore[union-attr]
    reader.close()


def test_snapshot_keeps_grants_and_refuses_to_drop_dependent_views(
    new_db: Any, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    """PostgreSQL: grants on the live table carry over to the new one; a dependent view makes
    the swap fail with a clear message and nothing changes."""
    db = new_db("postgres")
    server, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, "postgres", *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    live = db.qualified(rep.target)
    db.query("GRANT SELECT ON " + live + " TO PUBLIC")
    server.emulator.advance(updates=1, inserts=2)
    second = fetch.snapshot(*KEY)
    rep.apply_snapshot(second.files, versioned_schema=second.versioned_schema, at=second.at)
    grants = db.query(
        "SELECT privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = 'canvas' AND table_name = 'accounts' AND grantee = 'PUBLIC'"
    )
    assert grants == [("SELECT",)]

    db.query(f"CREATE VIEW canvas.active_accounts AS SELECT id FROM {live}")
    server.emulator.advance(inserts=1)
    third = fetch.snapshot(*KEY)
    from airflow_provider_instructure.replication import ReplicationError

    with pytest.raises(ReplicationError, match="depend on it"):
        rep.apply_snapshot(third.files, versioned_schema=third.versioned_schema, at=third.at)
    assert rep.read_state().watermark == second.at  # type: ignore[union-attr]
    assert db.query("SELECT COUNT(*) FROM canvas.active_accounts")[0][0] == len(
        expected_table(server, *KEY, second.at, second.versioned_schema)  # type: ignore[arg-type]
    )
