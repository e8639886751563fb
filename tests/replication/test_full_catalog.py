"""The full catalog (every table of DAP 0.9.0: 90 canvas tables and canvas_logs.web_logs)
replicates exactly on PostgreSQL, MariaDB and SQLite: a snapshot, then two incrementals of
every table, each replica equal to the emulator row for row and column for column.

Kept fast for ``make test``: few rows per table, the results downloaded once for the three
databases, one connection per database, the tables synced on a few threads (each with its
own connection; every table is its own target, so they do not contend).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import TableReplicator
from tests.replication.conftest import CLOCK_START, Database
from tests.replication.repl_helpers import DapFetcher, Result, assert_same_rows, expected_table, replica_table

#: Rows per table at the start (tables outside the core 15 are capped lower by the emulator).
ROWS = 8
THREADS = 3
#: Each window commits updates, inserts and deletes in every table.
ADVANCES = ({"updates": 3, "inserts": 2, "deletes": 1}, {"updates": 2, "inserts": 1, "deletes": 2})


@dataclass
class Catalog:
    server: EmulatorServer
    tables: list[tuple[str, str]]
    steps: list[dict[tuple[str, str], Result]]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    from airflow_provider_instructure.emulator.server import quiet_uvicorn_errors

    quiet_uvicorn_errors()
    directory = tmp_path_factory.mktemp("dap-full-catalog")
    with EmulatorServer(rows=ROWS, seed=13, clock_start=CLOCK_START, catalog="full") as server:
        dataset = server.emulator.dataset
        tables = [(ns, t) for ns in dataset.namespaces() for t in sorted(dataset.tables[ns])]
        fetchers = [DapFetcher(server, directory) for _ in range(THREADS)]

        def fetch_all(call: Any) -> dict[tuple[str, str], Result]:
            with ThreadPoolExecutor(THREADS) as pool:
                results = pool.map(lambda i_key: call(fetchers[i_key[0] % THREADS], i_key[1]), enumerate(tables))
                return dict(zip(tables, results, strict=True))

        steps = [fetch_all(lambda f, key: f.snapshot(*key))]
        for kwargs in ADVANCES:
            server.emulator.advance(**kwargs)
            previous = steps[-1]
            steps.append(fetch_all(lambda f, key, previous=previous: f.incremental(*key, previous[key].watermark)))
        yield Catalog(server, tables, steps)


def _sync_table(db: Database, conn: Any, catalog: Catalog, key: tuple[str, str]) -> dict[str, int]:
    """Snapshot and incrementals of one table, each checked against the emulator; returns the
    rows the incrementals inserted, updated and deleted."""
    ns, table = key
    moved = {"inserted": 0, "updated": 0, "deleted": 0}
    for step_no, step in enumerate(catalog.steps):
        result = step[key]
        replicator = TableReplicator(conn, db.dialect, ns, table)
        if step_no == 0:
            outcome = replicator.apply_snapshot(
                result.files, versioned_schema=result.versioned_schema, at=result.at, job_id=result.job_id
            )
        else:
            outcome = replicator.apply_incremental(
                result.files,
                versioned_schema=result.versioned_schema,
                since=result.since,
                until=result.until,
                job_id=result.job_id,
            )
        what = f"{db.dialect} {ns}.{table} step {step_no}"
        expected = expected_table(catalog.server, ns, table, result.watermark, result.versioned_schema)
        actual = replica_table(conn, db.dialect, db.qualified(replicator.target), result.versioned_schema)
        assert_same_rows(actual, expected, what)
        assert expected, f"{what}: the emulator has no rows, so nothing was compared"
        if step_no == 0:
            assert outcome.rows_inserted == len(expected), what
        else:
            moved["inserted"] += outcome.rows_inserted
            moved["updated"] += outcome.rows_updated
            moved["deleted"] += outcome.rows_deleted
        state = replicator.read_state()
        assert state is not None and state.watermark == result.watermark, what
    return moved


def test_every_table_of_the_catalog_replicates_exactly(db: Database, catalog: Catalog) -> None:
    assert len(catalog.tables) == 91 and ("canvas_logs", "web_logs") in catalog.tables
    # Every table changes in every window, so each incremental merges upserts and deletes.
    assert all(step[key].files for step in catalog.steps[1:] for key in catalog.tables)
    started = time.monotonic()
    connections = [db.connect() for _ in range(1 if db.dialect == "sqlite" else THREADS)]
    chunks = [catalog.tables[i :: len(connections)] for i in range(len(connections))]
    moved: dict[tuple[str, str], dict[str, int]] = {}

    def run(i: int) -> None:
        for key in chunks[i]:
            moved[key] = _sync_table(db, connections[i], catalog, key)

    if db.dialect == "sqlite":
        run(0)  # SQLite serializes writers (and its connection stays on its thread): one at a time
    else:
        with ThreadPoolExecutor(len(connections)) as pool:
            list(pool.map(run, range(len(connections))))
    assert set(moved) == set(catalog.tables)
    # The windows' updates and deletes reached every table (inserts may be re-deleted within a window).
    idle = [key for key, counts in moved.items() if not (counts["updated"] and counts["deleted"])]
    assert not idle, f"incrementals without updates or deletes: {idle}"
    elapsed = time.monotonic() - started
    print(f"full catalog on {db.dialect}: {len(catalog.tables)} tables x {len(catalog.steps)} steps in {elapsed:.1f}s")
