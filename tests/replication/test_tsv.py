"""The streaming TSV reader, the MySQL transcoder and the SQLite value converters (no database)."""

from __future__ import annotations

import gzip
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator.dataset import load_bundled_schemas
from airflow_provider_instructure.emulator.encoders import Layout, Record, tsv_lines
from airflow_provider_instructure.emulator.generator import TRICKY_STRINGS
from airflow_provider_instructure.replication import tsv
from airflow_provider_instructure.replication.dialects.sqlite import sqlite_timestamp
from airflow_provider_instructure.replication.types import mysql_column_types, sql_type

ACCOUNTS = parse_table_schema(load_bundled_schemas()["canvas"]["accounts"])
T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _emulator_part(path: Path, names: list[str | None], *, compress: bool = True) -> Path:
    """A part written by the emulator's own encoder: one record per name."""
    layout = Layout(ACCOUNTS, "condensed", incremental=True)
    records = [
        Record(T, {"id": i}, {"name": name, "workflow_state": "active", "created_at": T, "updated_at": T})
        for i, name in enumerate(names, start=1)
    ]
    text = "".join(tsv_lines(layout, records))
    if compress:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def _mysql_decode(field: bytes) -> str | None:
    """What MySQL's LOAD DATA (ESCAPED BY '\\') makes of one field."""
    if field == b"\\N":
        return None
    table = {b"0": b"\0", b"b": b"\b", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"Z": b"\x1a"}
    return re.sub(rb"\\(.)", lambda m: table.get(m.group(1), m.group(1)), field, flags=re.S).decode()


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_rows_decode_every_tricky_string(tmp_path: Path, compress: bool) -> None:
    names = [*TRICKY_STRINGS, None]
    part = tsv.read_part(_emulator_part(tmp_path / "p.tsv.gz", names, compress=compress), ACCOUNTS, incremental=True)
    assert part.compressed is compress and part.has_action and part.meta_is_leading and part.leading_meta == 2
    index = [f.label for f in part.fields].index("value.name")
    assert [row[index] for row in tsv.iter_rows(part)] == names


def test_mysql_transcode_makes_load_data_read_what_copy_reads(tmp_path: Path) -> None:
    names = [*TRICKY_STRINGS, "\\f literal", "\f\v\\\f", None]
    part = tsv.read_part(_emulator_part(tmp_path / "p.tsv.gz", names), ACCOUNTS, incremental=True)
    index = [f.label for f in part.fields].index("value.name")
    body = b"".join(tsv.mysql_transcode(chunk) for chunk in tsv.iter_body_chunks(part))
    decoded = [_mysql_decode(line.split(b"\t")[index]) for line in body.split(b"\n")[:-1]]
    assert decoded == names
    assert tsv.mysql_transcode(b"plain\\tline\n") == b"plain\\tline\n"


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("drop", [0, 1, 2])
def test_body_chunks_end_on_line_boundaries_and_cut_leading_fields(tmp_path: Path, size: int, drop: int) -> None:
    path = _emulator_part(tmp_path / "p.tsv", [*TRICKY_STRINGS, None], compress=False)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])  # the last record without its newline is still a record
    part = tsv.read_part(path, ACCOUNTS, incremental=True)
    chunks = list(tsv.iter_body_chunks(part, drop_leading=drop, size=size))
    assert all(c.endswith(b"\n") for c in chunks)
    expected = b"".join(line.split(b"\t", drop)[drop] + b"\n" for line in raw.split(b"\n")[1:-1])
    assert b"".join(chunks) == expected


def test_escape_scan_sees_escapes_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.tsv"
    path.write_bytes(b"head\nabc\\fdef\n")
    monkeypatch.setattr(tsv, "CHUNK_SIZE", 9)  # splits between the backslash and the f
    assert tsv.needs_mysql_transcode(path)
    path.write_bytes(b"head\nabc\\\\ndef\\t\n")
    assert not tsv.needs_mysql_transcode(path)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05.000000+00:00"),
        ("2024-01-02T03:04:05.5Z", "2024-01-02T03:04:05.500000+00:00"),
        ("2024-01-02T03:04:05.000001Z", "2024-01-02T03:04:05.000001+00:00"),
        ("2024-01-02T03:04:05.1234567Z", "2024-01-02T03:04:05.123456+00:00"),
        ("2024-01-02T05:04:05+02:00", "2024-01-02T03:04:05.000000+00:00"),
    ],
)
def test_sqlite_timestamps_are_fixed_width_utc(text: str, stored: str) -> None:
    assert sqlite_timestamp(text) == stored


def test_type_mapping_per_dialect() -> None:
    web_logs = parse_table_schema(load_bundled_schemas()["canvas_logs"]["web_logs"])
    late = parse_table_schema(load_bundled_schemas()["canvas"]["late_policies"])
    cases = {
        ("postgres", ACCOUNTS, "id"): "bigint",
        ("postgres", ACCOUNTS, "created_at"): "timestamp with time zone",
        ("postgres", ACCOUNTS, "workflow_state"): "text",
        ("postgres", ACCOUNTS, "name"): "varchar(255)",
        ("postgres", late, "late_submission_deduction"): "numeric(5,2)",
        ("postgres", web_logs, "id"): "uuid",
        ("postgres", web_logs, "remote_ip"): "inet",
        ("postgres", web_logs, "http_status"): "smallint",
        ("mysql", ACCOUNTS, "created_at"): "DATETIME(6)",
        ("mysql", ACCOUNTS, "workflow_state"): "VARCHAR(255)",
        ("mysql", late, "late_submission_deduction"): "DECIMAL(5,2)",
        ("mysql", late, "missing_submission_deduction_enabled"): "BOOLEAN",
        ("mysql", web_logs, "id"): "CHAR(36)",
        ("mysql", web_logs, "url"): "LONGTEXT",
        ("sqlite", late, "late_submission_deduction"): "TEXT",
        ("sqlite", late, "missing_submission_deduction_enabled"): "INTEGER",
        ("sqlite", ACCOUNTS, "created_at"): "TEXT",
    }
    for (dialect, schema, column), expected in cases.items():
        assert sql_type(schema.column(column), dialect) == expected, (dialect, column)
    assert (
        sql_type(parse_table_schema(load_bundled_schemas()["canvas"]["courses"]).column("settings"), "postgres")
        == "jsonb"
    )
    # Hundreds of VARCHAR(255) columns would exceed InnoDB's row size: the widest become LONGTEXT.
    wide = {"version": 1, "schema": {"properties": {
        "key": {"properties": {"id": {"type": "integer", "format": "int64"}}, "required": ["id"]},
        "value": {"properties": {f"c{i}": {"type": "string", "maxLength": 255} for i in range(100)}},
    }}}  # fmt: skip
    types = mysql_column_types(parse_table_schema(wide).columns)
    assert types["id"] == "BIGINT" and "LONGTEXT" in types.values() and "VARCHAR(255)" in types.values()
