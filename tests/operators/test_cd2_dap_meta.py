"""A database left by instructure-dap-client 0.3.x (watermark in ``<namespace>.dap_meta``) is continued
in place: an incremental from the ``dap_meta`` watermark, no new snapshot.

0.3.x is not installable next to Airflow 3, so the database is made the way its successor's
upgrade script reads it back: the official 2.3.1 ``dap initdb`` loads the table, then its
``table_sync`` row moves into a ``dap_meta`` table with 0.3.x's columns (dap 2.3.1
``dap/version_upgrade/*_0_to_1.sql``; 0.3.x ``dap/model/meta_table.py``) and the 2.x state
tables are dropped. On MySQL 0.3.x named the table without a prefix.
"""

# The fixtures shared with test_cd2_sync are imported, then requested by name.
# ruff: noqa: F811

from __future__ import annotations

import os
import subprocess
from datetime import timezone
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import STATE_TABLE, TableReplicator
from airflow_provider_instructure.timestamps import parse_timestamp
from tests.conftest import REPO, unavailable
from tests.operators.test_cd2_sync import server, sync, warehouse  # noqa: F401 - fixtures
from tests.replication.conftest import MY, PG, Database, my_server, pg_server  # noqa: F401 - fixtures
from tests.replication.repl_helpers import assert_same_rows, expected_table, replica_table

PG_DAP_META = """CREATE TABLE canvas.dap_meta (
    id SERIAL PRIMARY KEY, namespace VARCHAR(64) NOT NULL, source_table VARCHAR(64) NOT NULL,
    "timestamp" TIMESTAMP WITHOUT TIME ZONE NOT NULL, schema_version INTEGER NOT NULL, target_schema VARCHAR(64),
    target_table VARCHAR(64) NOT NULL, schema_description_format VARCHAR(64) NOT NULL, schema_description TEXT NOT NULL,
    CONSTRAINT "UQ__dap_meta__namespace__source_table" UNIQUE (namespace, source_table))"""
MY_DAP_META = """CREATE TABLE dap_meta (
    id INTEGER NOT NULL AUTO_INCREMENT PRIMARY KEY, namespace VARCHAR(64) NOT NULL, source_table VARCHAR(64) NOT NULL,
    `timestamp` DATETIME NOT NULL, schema_version INTEGER NOT NULL, target_schema VARCHAR(64) NULL,
    target_table VARCHAR(64) NOT NULL, schema_description_format VARCHAR(64) NOT NULL, schema_description TEXT NOT NULL,
    CONSTRAINT UQ__dap_meta__namespace__source_table UNIQUE (namespace, source_table))"""
COLUMNS = "schema_version, schema_description_format, schema_description"


def dap_initdb(server: EmulatorServer, db: Database, table: str) -> None:
    dap = Path(os.environ.get("DAP_CLI") or REPO / ".venv-dap" / "bin" / "dap")
    if not dap.is_file():
        unavailable(f"official dap CLI not found at {dap} (run `make test` to build .venv-dap)")
    if db.dialect == "postgres":
        url = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db.name}"
    else:
        url = f"mysql://{MY['user']}@{MY['host']}:{MY['port']}/{db.name}"
    done = subprocess.run(
        [str(dap), "--base-url", server.url, "--client-id", server.client_id, "--client-secret", server.client_secret,
         "--non-interactive", "--no-tracking", "initdb", "--namespace", "canvas", "--table", table,
         "--connection-string", url],
        capture_output=True, text=True, timeout=180, env={**os.environ, "DAP_TRACKING": "false"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def as_left_by_0_3(db: Database, table: str) -> None:
    """Turn a dap 2.x database into what 0.3.x left: dap_meta instead of table_sync."""
    if db.dialect == "postgres":
        db.query(PG_DAP_META)
        db.query(
            f"INSERT INTO canvas.dap_meta (namespace, source_table, timestamp, target_schema, target_table, {COLUMNS}) "
            f"SELECT source_namespace, source_table, timestamp, target_schema, target_table, {COLUMNS} "
            "FROM instructure_dap.table_sync"
        )
        db.query("DROP SCHEMA instructure_dap CASCADE")
    else:
        db.query(MY_DAP_META)
        db.query(f"RENAME TABLE canvas__{table} TO {table}")
        db.query(
            f"INSERT INTO dap_meta (namespace, source_table, timestamp, target_schema, target_table, {COLUMNS}) "
            f"SELECT source_namespace, source_table, timestamp, DATABASE(), source_table, {COLUMNS} "
            "FROM instructure_dap__table_sync"
        )
        db.query("DROP TABLE instructure_dap__table_sync, instructure_dap__database_version")


def dap_meta(db: Database) -> list[tuple]:
    where = "canvas.dap_meta" if db.dialect == "postgres" else "dap_meta"
    return db.query(f"SELECT source_table, timestamp, schema_version FROM {where}")


@pytest.mark.parametrize("warehouse", ["postgres", "mysql"], indirect=True)
def test_a_dap_meta_database_continues_with_an_incremental(server: EmulatorServer, warehouse: Database) -> None:
    db = warehouse
    dap_initdb(server, db, "accounts")
    as_left_by_0_3(db, "accounts")
    ((_, recorded, version),) = dap_meta(db)
    prefix = {"table_prefix": ""} if db.dialect == "mysql" else {}
    for round_ in range(2):
        server.emulator.advance(["canvas.accounts"], updates=3, inserts=2, deletes=2)
        created = server.emulator.jobs.created_count
        result = sync("accounts", **prefix)
        assert result["mode"] == "incremental" and result["continued_from_dap"], (round_, result)
        assert server.emulator.jobs.created_count == created + 1  # one incremental, no snapshot
        asked = server.emulator.jobs.history[-1]
        assert asked.since == recorded.replace(tzinfo=timezone.utc), (round_, asked)
        # dap_meta carries the new watermark (0.3.x's syncdb, or dap 2.x's upgrade, can go on)
        ((source, recorded, version),) = dap_meta(db)
        until = parse_timestamp(result["watermark"]).replace(tzinfo=None)
        if db.dialect == "mysql":  # 0.3.x's DATETIME keeps whole seconds: truncated, never rounded up
            until = until.replace(microsecond=0)
        assert source == "accounts" and recorded == until
        assert version == result["schema_version"]
        rep = TableReplicator(db.connect(), db.dialect, "canvas", "accounts", **prefix)
        state = rep.read_state()
        assert state is not None and state.origin == "dap_meta"
        schema = server.emulator.dataset.table("canvas", "accounts").versioned_schema
        actual = replica_table(db.connect(), db.dialect, db.qualified(rep.target), schema)
        expected = expected_table(server, "canvas", "accounts", parse_timestamp(result["watermark"]), schema)
        if db.dialect == "mysql":
            # dap's MySQL tables keep timestamps in whole seconds (DATETIME): compare the keys there,
            # every value on PostgreSQL.
            assert sorted(actual, key=str) == sorted(expected, key=str), round_
        else:
            assert_same_rows(actual, expected, f"{db.dialect} round {round_}")
    state_table = "canvas." + STATE_TABLE if db.dialect == "postgres" else STATE_TABLE
    assert db.query(f"SELECT COUNT(*) FROM {state_table}")[0][0] == 0  # the state stays in dap_meta


@pytest.mark.parametrize("warehouse", ["postgres"], indirect=True)
def test_a_snapshot_hands_a_dap_meta_table_over(server: EmulatorServer, warehouse: Database) -> None:
    db = warehouse
    dap_initdb(server, db, "accounts")
    as_left_by_0_3(db, "accounts")
    server.emulator.advance(["canvas.accounts"], updates=1)
    server.emulator.reload("canvas.accounts")
    result = sync("accounts")
    assert result["mode"] == "snapshot" and result["fallback_reason"] == "SnapshotRequiredError"
    assert dap_meta(db) == []  # the rebuilt table has this package's types: dap_meta no longer describes it
    state = TableReplicator(db.connect(), db.dialect, "canvas", "accounts").read_state()
    assert state is not None and state.origin == "airflow" and state.watermark.isoformat() == result["watermark"]
