"""Handcrafted result parts: every awkward value, repeated keys, odd header layouts, gzip and
plain parts mixed, on every dialect."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator.dataset import load_bundled_schemas
from airflow_provider_instructure.emulator.generator import TRICKY_STRINGS
from airflow_provider_instructure.replication import TableReplicator
from tests.replication.conftest import Database
from tests.replication.repl_helpers import assert_same_rows, normalize, replica_table, write_part

TRICKY_SCHEMA: dict[str, Any] = {
    "version": 1,
    "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "meta": {"type": "object", "properties": {"ts": {"type": "string", "format": "date-time"}}},
            "key": {
                "type": "object",
                "properties": {"id": {"type": "integer", "format": "int64"}},
                "additionalProperties": False,
                "required": ["id"],
            },
            "value": {
                "type": "object",
                "properties": {
                    "s": {"type": "string", "maxLength": 255},
                    "body": {"oneOf": [{"type": "string", "const": "__dap_oversized_truncated__"}, {"type": "string"}]},
                    "amount": {
                        "type": "number",
                        "multipleOf": 0.01,
                        "exclusiveMinimum": -1000,
                        "exclusiveMaximum": 1000,
                    },
                    "at": {"type": "string", "format": "date-time"},
                    "flag": {"type": "boolean"},
                    "doc": {"type": "object"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "state": {"type": "string", "enum": ["__dap_unspecified__", "active", "deleted"]},
                    "ref": {"type": "string", "format": "uuid"},
                    "ratio": {"type": "number", "format": "float64"},
                    "small": {"type": "integer", "format": "int16"},
                    "big": {"type": "integer", "format": "int64"},
                    "day": {"type": "string", "format": "date"},
                },
                "additionalProperties": False,
                "required": ["state"],
            },
        },
        "additionalProperties": False,
        "required": ["meta", "key"],
    },
}
COLUMNS = ["id", "s", "body", "amount", "at", "flag", "doc", "tags", "state", "ref", "ratio", "small", "big", "day"]
UTC = timezone.utc
T0 = datetime(2024, 5, 1, tzinfo=UTC)
T1 = datetime(2024, 5, 2, 12, 0, 0, 123456, tzinfo=UTC)


def _rows(version: int) -> dict[int, list[Any]]:
    """Row values (COLUMNS order) that differ per version."""
    strings = [*TRICKY_STRINGS, "x" * 255, "__dap_oversized_truncated__", None]
    stamps = [
        datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        None,
    ]
    amounts = [Decimal("-999.99"), Decimal("0.10"), Decimal("1.00"), Decimal("999.99"), Decimal("0.00"), None]
    ratios = [0.1, 1e-07, 123456789.125, -2.5, 0.0, 1 / 3, None]
    out = {}
    for n, text in enumerate(strings):
        k = n + 1
        s = text if version == 0 else (None if text == "" else ("" if text is None else f"v{version}|{text}"[:255]))
        out[k] = [
            k,
            s,
            text if n % 2 else "__dap_oversized_truncated__",
            amounts[(n + version) % len(amounts)],
            stamps[(n + version) % len(stamps)],
            None if n % 5 == 4 else bool((n + version) % 2),
            None if n % 4 == 3 else {"note": text, "n": n, "nested": {"漢字": [1, 2.5, None, True]}},
            None if n % 6 == 5 else [text or "", "a\tb", "ü"],
            ["active", "deleted", "__dap_unspecified__"][(n + version) % 3],
            f"00000000-0000-4000-8000-{k:012d}",
            ratios[(n + version) % len(ratios)],
            [-32768, 32767, 0, None][(n + version) % 4],
            [-(2**63), 2**63 - 1, 10**13 + n, None][(n + version) % 4],
            None if n % 7 == 6 else f"20{10 + n % 20}-0{1 + n % 9}-1{n % 10}",
        ]
    return out


def _expected(rows: dict[int, list[Any]]) -> dict[Any, dict[str, Any]]:
    schema = parse_table_schema(TRICKY_SCHEMA)
    out = {}
    for row in rows.values():
        record = {c.name: normalize(c, v) for c, v in zip(schema.columns, row, strict=True)}
        out[(record["id"],)] = record
    return out


def test_every_awkward_value_round_trips(db: Database, tmp_path: Path) -> None:
    """Tabs, newlines, CR, backslashes, ``\\N``/``NULL`` text, quotes, non-ASCII, form feed and
    vertical tab, NULL vs empty string, decimals, microsecond timestamps, int extremes, JSON."""
    conn = db.connect()
    reader = db.connect()
    if db.dialect == "postgres":
        # The files are UTF-8 even when the loading session is not (the reader stays UTF-8).
        conn.execute("SET client_encoding TO 'LATIN1'")
        conn.commit()
    rep = TableReplicator(conn, db.dialect, "canvas", "tricky")
    first = _rows(0)
    keys = sorted(first)
    header = ["meta.ts", *[("key." if c == "id" else "value.") + c for c in COLUMNS]]
    # Two parts, one gzip and one plain: both forms are accepted.
    snapshot = [
        write_part(tmp_path / "snap" / "part-00000.tsv.gz", header, [[T0, *first[k]] for k in keys[:7]]),
        write_part(tmp_path / "snap" / "part-00001.tsv", header, [[T0, *first[k]] for k in keys[7:]], compress=False),
    ]
    rep.apply_snapshot(snapshot, versioned_schema=TRICKY_SCHEMA, at=T0)
    actual = replica_table(reader, db.dialect, db.qualified(rep.target), TRICKY_SCHEMA)
    assert_same_rows(actual, _expected(first), "snapshot")

    second = _rows(1)
    deleted = {keys[0], keys[5]}
    inc_header = ["meta.ts", "meta.action", *header[1:]]
    records = [[T1, "U", *second[k]] for k in keys if k not in deleted]
    records += [[T1, "D", k, *([None] * (len(COLUMNS) - 1))] for k in [*sorted(deleted), 999]]  # 999: never seen
    new_key = max(keys) + 1
    records.append([T1, "U", *[new_key, *second[keys[1]][1:]]])
    incremental = [
        write_part(tmp_path / "inc" / "part-00000.tsv.gz", inc_header, records[::2]),
        write_part(tmp_path / "inc" / "part-00001.tsv.gz", inc_header, records[1::2]),
    ]
    result = rep.apply_incremental(incremental, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    want = {k: v for k, v in second.items() if k not in deleted}
    want[new_key] = [new_key, *second[keys[1]][1:]]
    assert (result.rows_inserted, result.rows_deleted) == (1, 2)
    actual = replica_table(reader, db.dialect, db.qualified(rep.target), TRICKY_SCHEMA)
    assert_same_rows(actual, _expected(want), "incremental")


def _web_logs_schema() -> dict[str, Any]:
    return load_bundled_schemas()["canvas_logs"]["web_logs"]


def _web_log(uid: str, url: str) -> list[Any]:
    # key.id, value.timestamp, url, http_method, http_status, http_version, remote_ip, interaction_micros, participated
    return [uid, datetime(2024, 5, 1, 8, tzinfo=UTC), url, "GET", 200, "1.1", "10.0.0.1", 5, False]


WEB_HEADER = [
    "key.id", "value.timestamp", "value.url", "value.http_method", "value.http_status",
    "value.http_version", "value.remote_ip", "value.interaction_micros", "value.participated",
]  # fmt: skip


def _urls(db: Database, conn: Any, rep: TableReplicator) -> dict[str, str]:
    rows = replica_table(conn, db.dialect, db.qualified(rep.target), _web_logs_schema())
    return {key[0]: row["url"] for key, row in rows.items()}


def test_web_logs_repeated_keys_keep_the_last_occurrence(db: Database, tmp_path: Path) -> None:
    """canvas_logs.web_logs is delivered at least once: a key may repeat within one result."""
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, "canvas_logs", "web_logs")
    a, b, c = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    header = ["meta.ts", *WEB_HEADER]
    first_part = [[T0, *_web_log(a, "/first")], [T0, *_web_log(b, "/b")]]
    second_part = [[T0, *_web_log(a, "/second")], [T0, *_web_log(c, "/c")]]
    snapshot = [
        write_part(tmp_path / "s" / "part-00000.tsv.gz", header, first_part),
        write_part(tmp_path / "s" / "part-00001.tsv.gz", header, second_part),
    ]
    result = rep.apply_snapshot(snapshot, versioned_schema=_web_logs_schema(), at=T0)
    assert _urls(db, conn, rep) == {a: "/second", b: "/b", c: "/c"} and result.rows_inserted == 3

    inc_header = ["meta.ts", "meta.action", *WEB_HEADER]
    gone = [None] * (len(WEB_HEADER) - 1)
    first_part = [[T1, "U", *_web_log(b, "/b1")], [T1, "U", *_web_log(c, "/c1")]]
    second_part = [[T1, "U", *_web_log(b, "/b2")], [T1, "D", c, *gone]]
    incremental = [
        write_part(tmp_path / "i" / "part-00000.tsv.gz", inc_header, first_part),
        write_part(tmp_path / "i" / "part-00001.tsv.gz", inc_header, second_part),
    ]
    rep.apply_incremental(incremental, versioned_schema=_web_logs_schema(), since=T0, until=T1)
    assert _urls(db, conn, rep) == {a: "/second", b: "/b2"}


def test_meta_fields_anywhere_in_the_header(db: Database, tmp_path: Path) -> None:
    """Readers map columns by header name: meta fields need not lead (the usual layout) and
    unknown ``meta.*`` fields are ignored."""
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, "canvas_logs", "web_logs")
    a, b = "00000000-0000-4000-8000-0000000000aa", "00000000-0000-4000-8000-0000000000bb"
    header = [*WEB_HEADER[:3], "meta.ts", *WEB_HEADER[3:], "meta.extra"]
    row = _web_log(a, "/a")
    snapshot = [write_part(tmp_path / "s" / "part-00000.tsv.gz", header, [[*row[:3], T0, *row[3:], "x"]])]
    rep.apply_snapshot(snapshot, versioned_schema=_web_logs_schema(), at=T0)
    inc_header = ["key.id", "meta.action", *WEB_HEADER[1:], "meta.ts"]
    new = _web_log(b, "/b")
    records = [[b, "U", *new[1:], T1], [a, "D", *([None] * 8), T1]]
    incremental = [write_part(tmp_path / "i" / "part-00000.tsv", inc_header, records, compress=False)]
    result = rep.apply_incremental(incremental, versioned_schema=_web_logs_schema(), since=T0, until=T1)
    assert (result.rows_inserted, result.rows_deleted) == (1, 1)
    rows = replica_table(conn, db.dialect, db.qualified(rep.target), _web_logs_schema())
    assert list(rows) == [(b,)] and rows[(b,)]["url"] == "/b"
    assert json.loads(json.dumps(result.to_dict()))["rows_inserted"] == 1
