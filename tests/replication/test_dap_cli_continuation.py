"""A database initialized by the official ``dap initdb`` is continued in place, and ends equal
to what ``dap syncdb`` produces from the same emulator state.

Two databases get the same ``dap initdb``. Then, round after round, the emulator changes
(updates, inserts, hard deletes; in the second round also a new column, a new enum member
and a new member of an enum array), this package applies the incrementals to the first
database and ``dap syncdb`` to the second. After every round both databases hold the same
rows, column types and ``table_sync`` rows, and the first one equals the emulator.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import TableReplicator
from tests.conftest import unavailable
from tests.replication.conftest import MY, PG, Database
from tests.replication.repl_helpers import (
    DapFetcher,
    assert_same_rows,
    bump_schema,
    expected_table,
    replica_table,
)

REPO = Path(__file__).resolve().parents[2]
GROUPS = {"canvas": ["accounts", "assignments", "late_policies"], "canvas_logs": ["web_logs"]}
TABLES = [(ns, t) for ns, tables in GROUPS.items() for t in tables]


@pytest.fixture(scope="session")
def dap_cli() -> Path:
    path = Path(os.environ.get("DAP_CLI") or REPO / ".venv-dap" / "bin" / "dap")
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"official dap CLI not found at {path} (set DAP_CLI, or run `make test` to build .venv-dap)")
    return path


def connection_string(db: Database) -> str:
    if db.dialect == "postgres":
        return f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db.name}"
    return f"mysql://{MY['user']}@{MY['host']}:{MY['port']}/{db.name}"


def run_dap(dap: Path, server: EmulatorServer, command: str, db: Database) -> None:
    for namespace, tables in GROUPS.items():
        args = [
            str(dap), "--base-url", server.url, "--client-id", server.client_id,
            "--client-secret", server.client_secret, "--non-interactive", "--no-tracking",
            command, "--namespace", namespace, "--table", ",".join(tables),
            "--connection-string", connection_string(db),
        ]  # fmt: skip
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=180, env={**os.environ, "DAP_TRACKING": "false"}
        )
        assert done.returncode == 0, f"dap {command} {namespace} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def table_sync(db: Database) -> list[tuple[Any, ...]]:
    table = "instructure_dap.table_sync" if db.dialect == "postgres" else "instructure_dap__table_sync"
    return db.query(
        "SELECT source_namespace, source_table, timestamp, schema_version, target_schema, target_table, "
        f"schema_description_format, schema_description FROM {table} ORDER BY source_namespace, source_table"
    )


def column_types(db: Database, schema: str, table: str) -> list[tuple[Any, ...]]:
    if db.dialect == "postgres":
        return db.query(
            "SELECT column_name, data_type, udt_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
    return db.query(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (schema, table),
    )


def _whole_seconds(value: Any) -> Any:
    return value.replace(microsecond=0) if isinstance(value, datetime) else value


def _grow_enums(versioned: dict[str, Any]) -> None:
    props = versioned["schema"]["properties"]["value"]["properties"]
    if "workflow_state" in props:
        props["workflow_state"]["enum"].append("archived")
    if "submission_types" in props:
        props["submission_types"]["items"]["enum"].append("peer_review")


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
def test_dap_initdb_database_is_continued_like_dap_syncdb(
    dialect: str, new_db: Any, fresh_server: tuple[EmulatorServer, DapFetcher], dap_cli: Path
) -> None:
    server, fetch = fresh_server
    ours, theirs = new_db(dialect), new_db(dialect)
    run_dap(dap_cli, server, "initdb", ours)
    run_dap(dap_cli, server, "initdb", theirs)
    conn = ours.connect()

    rounds = [
        lambda: server.emulator.advance(updates=4, inserts=3, deletes=2),
        lambda: (
            server.emulator.advance(updates=2, inserts=1, deletes=1),
            server.emulator.add_column("canvas.accounts", "emulator_added_note"),
            bump_schema(server, "canvas", "accounts", _grow_enums),
            bump_schema(server, "canvas", "assignments", _grow_enums),
            # The emulator draws enum members from the current list, so a grown list would
            # silently change rows nobody committed: re-commit every row of those tables.
            server.emulator.advance(["canvas.accounts", "canvas.assignments"], updates=1.0, inserts=3, deletes=0),
        ),
    ]
    for number, change in enumerate(rounds, start=1):
        change()
        for ns, table in TABLES:
            rep = TableReplicator(conn, dialect, ns, table)
            rep.check_target()
            state = rep.read_state()
            assert state is not None and state.from_dap_cli, f"{ns}.{table}: the dap table_sync row was not found"
            inc = fetch.incremental(ns, table, state.watermark)
            result = rep.apply_incremental(
                inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until, job_id=inc.job_id
            )
            assert result.continued_from_dap
            what = f"{dialect} round {number} {ns}.{table}"
            actual = replica_table(conn, dialect, ours.qualified(rep.target), inc.versioned_schema)
            expected = expected_table(server, ns, table, inc.until, inc.versioned_schema)  # type: ignore[arg-type]
            if dialect == "mysql":
                # dap initdb creates DATETIME without fractional seconds on MySQL: dap's tables
                # cannot hold microseconds, whoever loads them.
                expected = {k: {c: _whole_seconds(v) for c, v in row.items()} for k, row in expected.items()}
            assert_same_rows(actual, expected, what)
        run_dap(dap_cli, server, "syncdb", theirs)
        theirs_conn = theirs.connect()
        for ns, table in TABLES:
            rep = TableReplicator(conn, dialect, ns, table)
            schema = fetch.schema(ns, table)
            what = f"{dialect} round {number} {ns}.{table}: ours vs dap syncdb"
            assert_same_rows(
                replica_table(conn, dialect, ours.qualified(rep.target), schema),
                replica_table(theirs_conn, dialect, theirs.qualified(rep.target), schema),
                what,
            )
            assert column_types(ours, rep.target.schema, rep.target.table) == column_types(
                theirs, rep.target.schema, rep.target.table
            ), what
        theirs_conn.close()
        assert table_sync(ours) == table_sync(theirs), f"{dialect} round {number}: table_sync rows differ"
        if number == 2:
            accounts = TableReplicator(conn, dialect, "canvas", "accounts").target
            rows = replica_table(conn, dialect, ours.qualified(accounts), fetch.schema("canvas", "accounts"))
            assert any(r["workflow_state"] == "archived" for r in rows.values()), "the new enum member was never drawn"

    # A forced snapshot hands a dap table over: this package's types, dap's table_sync row
    # removed and ours written, in the transaction (PostgreSQL) or swap (MySQL) that replaces it.
    rep = TableReplicator(conn, dialect, "canvas", "accounts")
    snap = fetch.snapshot("canvas", "accounts")
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    state = rep.read_state()
    assert state is not None and not state.from_dap_cli and state.watermark == snap.at
    assert [row[1] for row in table_sync(ours)] == ["assignments", "late_policies", "web_logs"]
    created_at = next(c for c in column_types(ours, rep.target.schema, rep.target.table) if c[0] == "created_at")
    assert created_at[1] == ("timestamp with time zone" if dialect == "postgres" else "datetime(6)")
    actual = replica_table(conn, dialect, ours.qualified(rep.target), snap.versioned_schema)
    assert_same_rows(actual, expected_table(server, "canvas", "accounts", snap.at, snap.versioned_schema), "handover")  # type: ignore[arg-type]
