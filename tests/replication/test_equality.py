"""After every sync the replica equals the emulator's state at the watermark, row for row and
column for column, for every table of both namespaces, on PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from airflow_provider_instructure.replication import TableReplicator
from tests.replication.conftest import Database, Scenario
from tests.replication.repl_helpers import Result, assert_same_rows, expected_table, replica_table


def _upsert_records(result: Result) -> int:
    count = 0
    for path in result.files:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            action = header.index("meta.action")
            count += sum(1 for line in fh if line.split("\t")[action] == "U")
    return count


def _sync_all(db: Database, conn: Any, scenario: Scenario, tables: list[tuple[str, str]]) -> None:
    previous: dict[tuple[str, str], dict[Any, Any]] = {}
    for step_no, step in enumerate(scenario.steps):
        for key in tables:
            ns, table = key
            result = step[key]
            replicator = TableReplicator(conn, db.dialect, ns, table)
            if step_no == 0:
                assert replicator.read_state() is None
                outcome = replicator.apply_snapshot(
                    result.files, versioned_schema=result.versioned_schema, at=result.at, job_id=result.job_id
                )
            else:
                state = replicator.read_state()
                assert state is not None and state.watermark == result.since
                outcome = replicator.apply_incremental(
                    result.files,
                    versioned_schema=result.versioned_schema,
                    since=result.since,
                    until=result.until,
                    job_id=result.job_id,
                )
            what = f"{db.dialect} {ns}.{table} step {step_no}"
            expected = expected_table(scenario.server, ns, table, result.watermark, result.versioned_schema)
            actual = replica_table(conn, db.dialect, db.qualified(replicator.target), result.versioned_schema)
            assert_same_rows(actual, expected, what)
            if step_no == 0:
                assert outcome.rows_inserted == len(expected), what
            else:
                before = previous[key]
                assert outcome.rows_inserted == len(set(expected) - set(before)), what
                assert outcome.rows_deleted == len(set(before) - set(expected)), what
                assert outcome.rows_inserted + outcome.rows_updated == _upsert_records(result), what
            previous[key] = expected
            state = replicator.read_state()
            assert state is not None
            assert (state.watermark, state.schema_version, state.job_id) == (
                result.watermark,
                result.schema_version,
                result.job_id,
            )
            assert outcome.to_dict()["watermark"] == result.watermark.isoformat()


def test_every_table_matches_the_emulator_after_snapshot_and_incrementals(db: Database, scenario: Scenario) -> None:
    conn = db.connect()
    _sync_all(db, conn, scenario, scenario.tables)
    # 15 tables, each a different mix of types; all of them replicated.
    assert len(scenario.tables) >= 15 and ("canvas_logs", "web_logs") in scenario.tables


@pytest.mark.parametrize("driver", ["psycopg2"])
def test_postgres_through_psycopg2(new_db: Any, scenario: Scenario, driver: str) -> None:
    """PostgresHook returns psycopg 3 on Airflow 3 with SQLAlchemy 2, psycopg2 otherwise: both load."""
    db = new_db("postgres")
    db.driver = driver
    conn = db.connect()
    tables = [("canvas", "assignments"), ("canvas", "late_policies"), ("canvas_logs", "web_logs")]
    _sync_all(db, conn, scenario, tables)


@pytest.mark.parametrize("dialect", ["postgres", "mysql", "sqlite"])
def test_connections_in_autocommit_mode_work_too(new_db: Any, scenario: Scenario, dialect: str) -> None:
    """The replicator opens its own transactions explicitly, whatever the connection's mode."""
    db = new_db(dialect)
    conn = db.connect(isolation_level=None) if dialect == "sqlite" else db.connect(autocommit=True)
    _sync_all(db, conn, scenario, [("canvas", "late_policies"), ("canvas_logs", "web_logs")])
