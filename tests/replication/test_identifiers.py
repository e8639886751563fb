"""Names over the identifier limit (PostgreSQL 63 bytes, MySQL 64 characters) and reserved
words: replicated through snapshot, incremental and an added column on every database, equal
to the emulator, with the shortened names recorded in the state table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.dataset import Dataset
from airflow_provider_instructure.emulator.jobs import JobStore
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import TableReplicator
from airflow_provider_instructure.replication.dialects import dialect_class
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.identifiers import char_length, shorten, utf8_length
from airflow_provider_instructure.replication.state import STATE_TABLE
from tests.replication.conftest import CLOCK_START, Database
from tests.replication.repl_helpers import DapFetcher, assert_same_rows, bump_schema, expected_table, replica_table

#: 70 characters: over both limits, so the table and everything derived from it is shortened.
LONG_TABLE = "submission_comment_participants_with_a_rather_long_synthetic_table_name"
#: Two 70-character columns sharing their first 64 characters: truncation alone would merge them.
LONG_A = "late_submission_minimum_percent_enabled_for_every_section_of_course_a"
LONG_B = "late_submission_minimum_percent_enabled_for_every_section_of_course_b"
#: Added by the schema change (another long name, so the ALTER goes through the same mapping).
LONG_ADDED = "an_added_column_whose_name_is_longer_than_every_identifier_limit_there_is"
RESERVED = ["user", "order", "group", "default", "position", "primary", "rank", "comment", "select", "table", "desc"]
MULTIBYTE = "größe_" + "ü" * 30  # 36 characters, 67 UTF-8 bytes: only PostgreSQL shortens it


def _schema() -> dict[str, Any]:
    value: dict[str, Any] = {
        LONG_A: {"type": "boolean"},
        LONG_B: {"type": "integer", "format": "int32"},
        MULTIBYTE: {"type": "string", "maxLength": 64},
        "created_at": {"type": "string", "format": "date-time"},
        "settings": {"type": "object", "properties": {"a": {"type": "string"}}},
    }
    for i, word in enumerate(RESERVED):
        value[word] = {"type": "string", "maxLength": 32} if i % 2 else {"type": "integer", "format": "int64"}
    return {
        "version": 1,
        "schema": {
            "type": "object",
            "properties": {
                "meta": {
                    "type": "object",
                    "properties": {
                        "action": {"type": "string", "enum": ["U", "D"]},
                        "ts": {"type": "string", "format": "date-time"},
                    },
                    "required": ["action", "ts"],
                },
                "key": {
                    "type": "object",
                    # a reserved word as the key too
                    "properties": {"key": {"type": "integer", "format": "int64"}},
                    "required": ["key"],
                },
                "value": {"type": "object", "properties": value, "required": ["created_at"]},
            },
            "required": ["meta", "key"],
        },
    }


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    """An emulator serving only the synthetic table (``canvas.<LONG_TABLE>``)."""
    emulator = Emulator(seed=5, rows=20, clock_start=CLOCK_START, catalog="core")
    emulator.dataset = Dataset(
        seed=5,
        rows=20,
        clock_start=CLOCK_START,
        schemas={"canvas": {LONG_TABLE: _schema()}},
        quirks=lambda: emulator.config.quirks,
    )
    emulator.jobs = JobStore(emulator.dataset, emulator.config, None)
    with EmulatorServer(emulator) as running:
        yield running


def _fit(dialect: str, name: str) -> str:
    limit, measure = {"postgres": (63, utf8_length), "mysql": (64, char_length), "sqlite": (None, utf8_length)}[dialect]
    return shorten(name, limit, measure)


def _check(
    db: Database, conn: Any, server: EmulatorServer, replicator: TableReplicator, result: Any, step: str
) -> None:
    names = {n: _fit(db.dialect, n) for n in (LONG_A, LONG_B, LONG_ADDED, MULTIBYTE)}
    expected = expected_table(server, "canvas", LONG_TABLE, result.watermark, result.versioned_schema)
    actual = replica_table(conn, db.dialect, db.qualified(replicator.target), result.versioned_schema, names)
    assert_same_rows(actual, expected, f"{db.dialect} {step}")
    assert expected, "the synthetic table has rows"


def test_long_names_and_reserved_words_replicate_everywhere(
    db: Database, server: EmulatorServer, tmp_path: Any
) -> None:
    fetch = DapFetcher(server, tmp_path / "dap")
    conn = db.connect()
    replicator = TableReplicator(conn, db.dialect, "canvas", LONG_TABLE, table_prefix="dap_")
    wanted = "dap_" + LONG_TABLE
    used = replicator.target.table
    if db.dialect == "sqlite":
        assert used == wanted
    else:
        limit = 63 if db.dialect == "postgres" else 64
        assert used != wanted and len(used.encode()) <= limit and used.startswith(wanted[:40])
        # deterministic: a new replicator (a later run) derives the same name
        assert TableReplicator(conn, db.dialect, "canvas", LONG_TABLE, table_prefix="dap_").target.table == used

    snap = fetch.snapshot("canvas", LONG_TABLE)
    replicator.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at, job_id=snap.job_id)
    _check(db, conn, server, replicator, snap, "snapshot")

    server.emulator.advance(updates=5, inserts=3, deletes=2)
    inc = fetch.incremental("canvas", LONG_TABLE, snap.watermark)
    replicator.apply_incremental(
        inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until, job_id=inc.job_id
    )
    _check(db, conn, server, replicator, inc, "incremental")

    # An additive schema change with a long column name: the ALTER uses the shortened name.
    bump_schema(
        server,
        "canvas",
        LONG_TABLE,
        lambda v: v["schema"]["properties"]["value"]["properties"].update({LONG_ADDED: {"type": "string"}}),
    )
    # Rows are drawn from the schema they are read with: re-commit them all, so the emulator's
    # ground truth does not rewrite history (as in test_schema_changes).
    server.emulator.advance(updates=1.0, inserts=2, deletes=1)
    inc2 = fetch.incremental("canvas", LONG_TABLE, inc.watermark)
    later = TableReplicator(conn, db.dialect, "canvas", LONG_TABLE, table_prefix="dap_")
    outcome = later.apply_incremental(
        inc2.files, versioned_schema=inc2.versioned_schema, since=inc2.since, until=inc2.until, job_id=inc2.job_id
    )
    assert outcome.schema_changes and _fit(db.dialect, LONG_ADDED) in outcome.schema_changes[0]
    _check(db, conn, server, later, inc2, "incremental after the schema change")

    # The state row names the full names and the ones used.
    state = later.read_state()
    assert state is not None and state.watermark == inc2.until
    expected_map: dict[str, dict[str, str]] = {}
    if used != wanted:
        expected_map["table"] = {wanted: used}
    columns = {n: _fit(db.dialect, n) for n in (LONG_A, LONG_B, LONG_ADDED, MULTIBYTE) if _fit(db.dialect, n) != n}
    if columns:
        expected_map["columns"] = columns
    assert state.name_map == expected_map
    if db.dialect != "sqlite":
        assert len(columns) >= 3 and len(set(columns.values())) == len(columns)
    q = db.quote
    raw = db.query(
        f"SELECT {q('name_map')} FROM {q(later.target.schema)}.{q(STATE_TABLE)} WHERE {q('target_table')} = "
        + ("?" if db.dialect == "sqlite" else "%s"),
        (used,),
    )
    assert (json.loads(raw[0][0]) if raw[0][0] else {}) == expected_map

    # A snapshot over the live table (side table, key constraint, swap) with the long names.
    server.emulator.advance(updates=3, inserts=1, deletes=1)
    snap2 = fetch.snapshot("canvas", LONG_TABLE)
    later.apply_snapshot(snap2.files, versioned_schema=snap2.versioned_schema, at=snap2.at, job_id=snap2.job_id)
    _check(db, conn, server, later, snap2, "second snapshot")


@pytest.mark.parametrize(("dialect", "prefix_length"), [("postgres", 30), ("mysql", 31)])
def test_a_long_prefix_on_the_longest_catalog_table_is_shortened_not_refused(dialect: str, prefix_length: int) -> None:
    """``master_courses_master_content_tags`` (34 characters) behind a 30/31-character prefix
    is one over the limit: it used to be refused."""
    cls = dialect_class(dialect)
    d = cls.__new__(cls)
    d.log = __import__("logging").getLogger("test")
    t = d.make_target("warehouse", "p" * prefix_length + "master_courses_master_content_tags", "canvas", "x")
    assert t.shortened and d.identifier_length(t.table) == d.max_identifier
    assert d.identifier_length(d.side_name(t.table, "__dap_new")) <= d.max_identifier
    # A schema (database) name is the user's: checked, not shortened.
    with pytest.raises(ReplicationConfigError, match="destination_schema"):
        d.make_target("s" * (d.max_identifier + 1), "accounts", "canvas", "accounts")


def test_shorten_is_deterministic_and_fits() -> None:
    name = "x" * 100
    assert shorten(name, 63) == shorten(name, 63) and len(shorten(name, 63)) == 63
    assert shorten("short", 63) == "short" and shorten(name, None) == name
    assert shorten(name + "a", 63) != shorten(name + "b", 63)
    multibyte = "ü" * 40  # 80 bytes
    cut = shorten(multibyte, 63)
    assert len(cut.encode()) <= 63 and cut.startswith("ü")
    assert shorten(multibyte, 64, char_length) == multibyte
    assert shorten("t" * 60, 63, suffix="__dap_new").endswith("__dap_new")


def test_a_state_table_of_the_previous_layout_is_upgraded_in_place(db: Database, fresh_server: Any) -> None:
    """State tables created before ``name_map`` (and with ``source_table varchar(64)``) are read
    as they are, then get the column and the wider type on the next sync; the rows stay."""
    server, fetch = fresh_server
    conn = db.connect()
    key = ("canvas", "late_policies")
    snap = fetch.snapshot(*key)
    TableReplicator(conn, db.dialect, *key).apply_snapshot(
        snap.files, versioned_schema=snap.versioned_schema, at=snap.at, job_id=snap.job_id
    )
    replicator = TableReplicator(conn, db.dialect, *key)
    q = db.quote
    state_sql = f"{q(replicator.target.schema)}.{q(STATE_TABLE)}"
    # Back to the previous layout.
    db.query(f"ALTER TABLE {state_sql} DROP COLUMN {q('name_map')}")
    if db.dialect == "postgres":
        db.query(f"ALTER TABLE {state_sql} ALTER COLUMN source_table TYPE varchar(64)")
    elif db.dialect == "mysql":
        db.query(f"ALTER TABLE {state_sql} MODIFY COLUMN source_table VARCHAR(64) NOT NULL")

    later = TableReplicator(conn, db.dialect, *key)
    state = later.read_state()
    assert state is not None and state.watermark == snap.at and state.name_map == {}
    server.emulator.advance(updates=2, inserts=1, deletes=1)
    inc = fetch.incremental(*key, snap.at)
    later.apply_incremental(
        inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until, job_id=inc.job_id
    )
    expected = expected_table(server, *key, inc.until, inc.versioned_schema)
    assert_same_rows(replica_table(conn, db.dialect, db.qualified(later.target), inc.versioned_schema), expected, "")
    assert db.query(f"SELECT {q('name_map')} FROM {state_sql}") == [(None,)]
    if db.dialect != "sqlite":
        width = db.query(
            "SELECT character_maximum_length FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = 'source_table'",
            (later.target.schema, STATE_TABLE),
        )
        assert width == [(255,)]
    again = TableReplicator(conn, db.dialect, *key).read_state()
    assert again is not None and again.watermark == inc.until


def test_the_recorded_names_win_over_the_rule_for_the_live_table(
    db: Database, server: EmulatorServer, tmp_path: Any
) -> None:
    """A later run loads into the columns the state row names (a table built by another
    release, or renamed and recorded by hand), not into what the rule would derive today."""
    fetch = DapFetcher(server, tmp_path / "dap")
    conn = db.connect()
    snap = fetch.snapshot("canvas", LONG_TABLE)
    first = TableReplicator(conn, db.dialect, "canvas", LONG_TABLE)
    first.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at, job_id=snap.job_id)
    q = db.quote
    param = "?" if db.dialect == "sqlite" else "%s"
    db.query(f"ALTER TABLE {db.qualified(first.target)} RENAME COLUMN {q(_fit(db.dialect, LONG_A))} TO {q('custom_a')}")
    state_sql = f"{q(first.target.schema)}.{q(STATE_TABLE)}"
    recorded = dict(first.read_state().name_map)  # type: ignore[union-attr]
    recorded["columns"] = {**recorded.get("columns", {}), LONG_A: "custom_a"}
    db.query(f"UPDATE {state_sql} SET {q('name_map')} = {param}", (json.dumps(recorded),))

    server.emulator.advance(updates=1.0, inserts=2, deletes=2)
    inc = fetch.incremental("canvas", LONG_TABLE, snap.watermark)
    later = TableReplicator(conn, db.dialect, "canvas", LONG_TABLE)
    later.apply_incremental(
        inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until, job_id=inc.job_id
    )
    names = {n: _fit(db.dialect, n) for n in (LONG_B, MULTIBYTE)} | {LONG_A: "custom_a"}
    expected = expected_table(server, "canvas", LONG_TABLE, inc.until, inc.versioned_schema)
    actual = replica_table(conn, db.dialect, db.qualified(later.target), inc.versioned_schema, names)
    assert_same_rows(actual, expected, f"{db.dialect} incremental into the recorded names")
    assert later.read_state().name_map["columns"][LONG_A] == "custom_a"  # type: ignore[union-attr]
