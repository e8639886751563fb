"""A bad value never aborts a table and never passes silently (issue 8, findings 6-8): the
emulator's value quirks (out-of-range timestamps both ways, the oversized placeholder in text,
JSON and typed columns, empty fields in typed columns and in deletes) are replicated on
PostgreSQL, MariaDB and SQLite with the same policy, counted in the result and logged; a value
that still cannot load names the table, part, line, column, key and value."""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.dap_schema import Column, TableSchema, parse_table_schema
from airflow_provider_instructure.emulator.dataset import load_bundled_schemas
from airflow_provider_instructure.emulator.quirks import AFTER_9999, BEFORE_0001, PLACEHOLDER, QUIRKS
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import DataLoadError, TableReplicator
from tests.replication.conftest import CLOCK_START, Database
from tests.replication.repl_helpers import DapFetcher, Result, assert_same_rows, normalize, write_part

UTC = timezone.utc

#: What each target stores for a timestamp it cannot take as DAP spells it. PostgreSQL stores
#: both exactly (read back as text: Python's datetime stops at 0001-9999).
STORED_TIMESTAMPS = {
    "postgres": {AFTER_9999: "10000-01-01 00:00:00+00", BEFORE_0001: "0002-01-01 00:00:00+00 BC"},
    "mysql": {
        AFTER_9999: datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        BEFORE_0001: datetime(1000, 1, 1, tzinfo=UTC),
    },
    "sqlite": {
        AFTER_9999: datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        BEFORE_0001: datetime(1, 1, 1, tzinfo=UTC),
    },
}


def stored(dialect: str, column: Column, raw: Any) -> Any:
    """What the policy stores for the emulator's raw value ``raw``."""
    kind = column.type.kind
    if isinstance(raw, str) and kind != "string":
        if raw == "":
            return None
        if raw == PLACEHOLDER:
            return PLACEHOLDER if kind == "json" else None  # the JSON string reads back as the text
        if kind == "timestamp" and raw in (AFTER_9999, BEFORE_0001):
            return STORED_TIMESTAMPS[dialect][raw]
    return normalize(column, raw)


def truth(server: EmulatorServer, result: Result, dialect: str) -> dict[Any, dict[str, Any]]:
    schema = parse_table_schema(result.versioned_schema)
    out = {}
    for row in server.emulator.expected_rows(result.namespace, result.table, at=result.watermark):
        record = {c.name: stored(dialect, c, row.get(c.name)) for c in schema.columns}
        out[tuple(record[c.name] for c in schema.key_columns)] = record
    return out


def read_replica(db: Database, conn: Any, qualified: str, schema: TableSchema) -> dict[Any, dict[str, Any]]:
    """The replica's rows; PostgreSQL timestamps outside Python's range stay text."""
    quote = db.quote
    as_text = {c.name for c in schema.columns if db.dialect == "postgres" and c.type.kind == "timestamp"}
    cols = [f"{quote(c.name)}::text" if c.name in as_text else quote(c.name) for c in schema.columns]
    cur = conn.cursor()
    if db.dialect == "postgres":
        cur.execute("SET TIME ZONE 'UTC'")
    cur.execute(f"SELECT {', '.join(cols)} FROM {qualified}")
    rows = cur.fetchall()
    cur.close()
    conn.rollback()
    out = {}
    for row in rows:
        record = {}
        for c, value in zip(schema.columns, row, strict=True):
            if isinstance(value, str) and c.type.kind == "timestamp" and db.dialect == "postgres":
                year = value.split("-", 1)[0]
                record[c.name] = value if (" BC" in value or len(year) > 4) else normalize(c, value)
            elif isinstance(value, str) and c.type.kind == "json" and db.dialect == "postgres":
                record[c.name] = value  # psycopg decodes jsonb itself: a str is a JSON string
            else:
                record[c.name] = normalize(c, value)
        out[tuple(record[c.name] for c in schema.key_columns)] = record
    return out


def file_counts(result: Result, dialect: str) -> tuple[Counter[str], Counter[str], int, set[Any]]:
    """Independent count of what the policy must do with ``result``'s parts:
    (coerced per column, placeholders per column, skipped deletes, keys deleted)."""
    schema = parse_table_schema(result.versioned_schema)
    by_header = {c.header: c for c in schema.columns}
    coerced: Counter[str] = Counter()
    oversized: Counter[str] = Counter()
    skipped = 0
    deleted: set[Any] = set()
    for path in result.files:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            for line in fh:
                fields = dict(zip(header, line.rstrip("\n").split("\t"), strict=True))
                key_col = schema.key_columns[0]
                if fields.get("meta.action") == "D":
                    if fields[key_col.header] == "":
                        coerced[key_col.name] += 1
                        skipped += 1
                    else:
                        deleted.add((normalize(key_col, fields[key_col.header]),))
                    continue
                for label, raw in fields.items():
                    column = by_header.get(label)
                    if column is None:
                        continue
                    if raw == PLACEHOLDER:
                        oversized[column.name] += 1
                    elif (raw == "" and column.type.kind != "string") or (
                        raw in (AFTER_9999, BEFORE_0001) and dialect != "postgres"  # clamped
                    ):
                        coerced[column.name] += 1
    return coerced, oversized, skipped, deleted


def check_result(outcome: Any, result: Result, dialect: str, caplog: pytest.LogCaptureFixture) -> None:
    coerced, oversized, skipped, _ = file_counts(result, dialect)
    data = outcome.to_dict()
    assert data["coerced_values"] == dict(coerced), result.table
    assert data["oversized_values"] == dict(oversized), result.table
    assert data["skipped_deletes"] == skipped
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for column, count in coerced.items():
        lines = [w for w in warnings if f"column {column}: {count} value(s) coerced" in w and "e.g. key id=" in w]
        assert len(lines) == 1, (column, count, warnings)
    for column, count in oversized.items():
        lines = [w for w in warnings if f"column {column}: {count} oversized value(s)" in w and "e.g. key id=" in w]
        assert len(lines) == 1, (column, count, warnings)
    caplog.clear()


def _quirk_seen(quirk: str, server: EmulatorServer, results: list[Result]) -> bool:
    """The emulator did produce ``quirk`` in these results (else the test proves nothing)."""
    wanted = {"timestamp_after_9999": AFTER_9999, "timestamp_before_0001": BEFORE_0001, "empty_typed": ""}
    for result in results:
        for path in result.files:
            with gzip.open(path, "rt", encoding="utf-8", newline="\n") as fh:
                header = fh.readline().rstrip("\n").split("\t")
                for line in fh:
                    fields = dict(zip(header, line.rstrip("\n").split("\t"), strict=True))
                    if fields.get("meta.action") == "D":
                        if quirk == "delete_empty_key" and fields["key.id"] == "":
                            return True
                        if quirk == "delete_empty_fields" and "" in fields.values() and fields["key.id"]:
                            return True
                        continue
                    for label, raw in fields.items():
                        if label.startswith("meta."):
                            continue
                        kind = TABLE_SCHEMA.column(label.split(".", 1)[1]).type.kind
                        if quirk.startswith("placeholder_") and raw == PLACEHOLDER:
                            group = {"string": "text", "json": "json"}.get(kind, "typed")
                            if quirk == f"placeholder_{group}":
                                return True
                        elif quirk in wanted and raw == wanted[quirk] and kind != "string":
                            return True
    return False


TABLE = ("canvas", "courses")  # nullable bigint, boolean, timestamp, JSON and text columns
TABLE_SCHEMA = parse_table_schema(load_bundled_schemas()[TABLE[0]][TABLE[1]])


@pytest.mark.parametrize("quirk", QUIRKS)
def test_every_quirk_is_replicated_by_the_same_policy(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture, quirk: str
) -> None:
    ns, table = TABLE
    caplog.set_level(logging.INFO)
    conn = db.connect()
    with EmulatorServer(rows=40, seed=11, clock_start=CLOCK_START, catalog="core") as server:
        server.emulator.config.update({"quirks": {quirk: 0.5 if quirk.startswith("delete_") else 0.15}})
        fetch = DapFetcher(server, tmp_path / "dap")
        snap = fetch.snapshot(ns, table)
        replicator = TableReplicator(conn, db.dialect, ns, table)
        outcome = replicator.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
        check_result(outcome, snap, db.dialect, caplog)
        schema = parse_table_schema(snap.versioned_schema)
        expected = truth(server, snap, db.dialect)
        qualified = db.qualified(replicator.target)
        assert_same_rows(read_replica(db, conn, qualified, schema), expected, f"{db.dialect} {table} snapshot")

        server.emulator.advance([f"{ns}.{table}"], updates=6, inserts=4, deletes=12)
        inc = fetch.incremental(ns, table, snap.at)
        outcome = replicator.apply_incremental(
            inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until
        )
        check_result(outcome, inc, db.dialect, caplog)
        _, _, skipped, deleted = file_counts(inc, db.dialect)
        after = truth(server, inc, db.dialect)
        # A delete without a key deletes nothing: those rows keep their last state.
        kept = {k: v for k, v in expected.items() if k not in after and k not in deleted}
        assert len(kept) == skipped, (table, skipped)
        assert outcome.rows_deleted == len(deleted & set(expected))
        assert_same_rows(
            read_replica(db, conn, qualified, schema), {**after, **kept}, f"{db.dialect} {table} incremental"
        )
        assert _quirk_seen(quirk, server, [snap, inc]), f"the emulator produced no {quirk}"


def _part(tmp_path: Path, name: str, rows: list[list[Any]], *, incremental: bool = False) -> Path:
    header = ["meta.ts", *(["meta.action"] if incremental else []), "key.id", "value.s", "value.big", "value.doc"]
    return write_part(tmp_path / name, header, rows)


SMALL_SCHEMA: dict[str, Any] = {
    "version": 1,
    "schema": {
        "type": "object",
        "properties": {
            "key": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
            "value": {
                "type": "object",
                "properties": {
                    "s": {"type": "string"},
                    "big": {"type": "integer", "format": "int64"},
                    "doc": {"type": "object"},
                },
            },
        },
    },
}
TS = "2024-03-01T00:00:00Z"


@pytest.mark.parametrize("bad", ["integer", "json", "key"])
def test_a_value_that_still_cannot_load_names_part_line_column_key_and_value(
    db: Database, tmp_path: Path, bad: str
) -> None:
    _refused(db, tmp_path, bad)


def test_psycopg2_reports_the_same_error(new_db: Any, tmp_path: Path) -> None:
    """psycopg2 wraps an error raised while it reads the data in QueryCanceled; ours comes through."""
    db = new_db("postgres")
    db.driver = "psycopg2"
    _refused(db, tmp_path, "key")


def _refused(db: Database, tmp_path: Path, bad: str) -> None:
    long = "x" * 200
    column = {"integer": "big", "json": "doc", "key": "id"}[bad]
    cell = {"integer": "not a number " + long, "json": "{oops " + long, "key": ""}[bad]
    row = {
        "integer": [TS, 2, "b", cell, {"a": 1}],
        "json": [TS, 2, "b", 5, cell],
        "key": [TS, "", "b", 5, {"a": 1}],
    }[bad]
    part = _part(tmp_path, "part-00000-x.tsv.gz", [[TS, 1, "a", 1, {"a": 1}], row, [TS, 3, "c", 3, None]])
    conn = db.connect()
    replicator = TableReplicator(conn, db.dialect, "canvas", "tiny")
    if bad == "json" and db.dialect == "sqlite":
        # SQLite has no JSON type to refuse it: the text is kept as DAP sent it (README's policy table)
        result = replicator.apply_snapshot([part], versioned_schema=SMALL_SCHEMA, at=TS)
        assert result.rows_inserted == 3
        conn.close()
        assert db.query(f"SELECT doc FROM {db.qualified(replicator.target)} WHERE id = 2") == [(cell,)]
        return
    with pytest.raises(DataLoadError) as info:
        replicator.apply_snapshot([part], versioned_schema=SMALL_SCHEMA, at=TS)
    message = str(info.value)
    key = "id=" if bad == "key" else "id=2"
    for fragment in ("canvas.tiny", "part-00000-x.tsv.gz", "line 3", f"column {column}", f"key {key}"):
        assert fragment in message, message
    if long in cell:
        assert repr(cell[:77] + "...") in message and long not in message, message
    assert info.value.line == 3 and info.value.column == column and info.value.key == key
    assert replicator.read_state() is None
