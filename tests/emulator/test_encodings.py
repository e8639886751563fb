"""The downloaded files, decoded independently and compared with the emulator's ground truth (dap-api.md section 7)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.encoders import format_timestamp
from airflow_provider_instructure.emulator.generator import TRICKY_STRINGS
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.emulator.conftest import CLOCK, Serve
from tests.emulator.dap_wire import DapApi, Rec, TableInfo, decode_part, first_difference, lines_of, parse_tsv

PARTS = 3
TABLES = [
    ("canvas", "users"),  # many free-text columns: the tricky strings
    ("canvas", "courses"),  # settings: a nested object with declared properties
    ("canvas", "assignment_groups"),  # rules: nested object holding an array
    ("canvas", "late_policies"),  # decimals
    ("canvas", "submissions"),  # floats, decimals, uuid, enums
    ("canvas_logs", "web_logs"),  # uuid key, integer enum, ip addresses
]
FORMATS = ["tsv", "csv", "jsonl", "parquet"]


@dataclass
class World:
    server: EmulatorServer
    api: DapApi
    base: datetime  # commit time of the initial rows
    changed: datetime  # commit time of the one round of changes
    infos: dict[tuple[str, str], TableInfo]

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def expected(self, namespace: str, table: str, at: datetime) -> dict[tuple, dict[str, Any]]:
        info = self.infos[namespace, table]
        rows = self.emulator.expected_rows(namespace, table, at)
        return {tuple(row[c.name] for c in info.keys): row for row in rows}

    def fetch(self, namespace: str, table: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[Rec]]:
        job = self.api.run_job(namespace, table, body)
        assert job["status"] == "complete", job
        info = self.infos[namespace, table]
        incremental = "since" in body
        records: list[Rec] = []
        for data in self.api.download_objects(job):
            records += decode_part(body["format"], data, info, body.get("mode", "expanded"), incremental)
        return job, records


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    emulator = Emulator(
        EmulatorConfig(parts=PARTS),
        rows={"canvas.users": 80, "*": 24},
        clock_start=CLOCK,
    )
    server = EmulatorServer(emulator).start()
    try:
        api = DapApi(server.url)
        infos = {
            (ns, t): TableInfo.from_schema(api.get(f"/dap/query/{ns}/table/{t}/schema").json()["schema"])
            for ns, t in TABLES
        }
        changed = emulator.advance(updates=6, inserts=4, deletes=5)
        yield World(server, api, CLOCK, changed, infos)
    finally:
        server.stop()


def keyed(world: World, namespace: str, table: str, records: list[Rec]) -> dict[tuple, Rec]:
    info = world.infos[namespace, table]
    out: dict[tuple, Rec] = {}
    for rec in records:
        key = tuple(rec.key[c.name] for c in info.keys)
        assert key not in out, f"key {key} appears twice in one result"
        out[key] = rec
    return out


@pytest.mark.parametrize("mode", ["expanded", "condensed"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("namespace", "table"), TABLES, ids=[t for _, t in TABLES])
def test_snapshot_decodes_to_expected_rows(world: World, namespace: str, table: str, fmt: str, mode: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    job, records = world.fetch(namespace, table, {"format": fmt, "mode": mode})
    assert len(job["objects"]) >= PARTS
    at = world.emulator.latest(namespace, table)
    assert job["at"] == format_timestamp(at)
    actual = keyed(world, namespace, table, records)
    expected = world.expected(namespace, table, at)
    problem = first_difference(expected, {k: r.flat for k, r in actual.items()})
    assert problem is None, f"{namespace}.{table} {fmt}/{mode}:\n{problem}"
    # meta.ts is the commit time of each row's latest version: the initial load or the one change.
    before = world.expected(namespace, table, world.base)
    for key, rec in actual.items():
        unchanged = before.get(key) == expected[key]
        assert rec.ts == (world.base if unchanged else world.changed), key
        assert rec.action is None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("namespace", "table"), TABLES, ids=[t for _, t in TABLES])
def test_incremental_upserts_and_deletes(world: World, namespace: str, table: str, fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    body = {"format": fmt, "since": format_timestamp(world.base)}
    job, records = world.fetch(namespace, table, body)
    assert job["until"] == format_timestamp(world.changed)
    actual = keyed(world, namespace, table, records)
    before = world.expected(namespace, table, world.base)
    after = world.expected(namespace, table, world.changed)
    deleted = set(before) - set(after)
    upserted = {k for k in after if before.get(k) != after[k]}
    assert deleted and upserted
    assert {k for k, r in actual.items() if r.action == "D"} == deleted
    assert {k for k, r in actual.items() if r.action == "U"} == upserted
    for key in deleted:
        assert actual[key].value is None
        assert actual[key].ts == world.changed
    problem = first_difference({k: after[k] for k in upserted}, {k: actual[k].flat for k in upserted})
    assert problem is None, problem


def test_tricky_strings_survive_every_text_format(world: World) -> None:
    at = world.emulator.latest("canvas", "users")
    expected = world.expected("canvas", "users", at)
    present = {v for row in expected.values() for v in row.values() if isinstance(v, str) and v in TRICKY_STRINGS}
    # The sample must actually contain the hard cases, or the comparisons above prove little.
    for needle in ("\t", "\n", "\r", "\\", '"', ",", "漢"):
        assert any(needle in s for s in present), f"no tricky string with {needle!r} in the sample"
    assert {"", "NULL", "\\N"} <= present
    assert any(v is None for row in expected.values() for v in row.values())


def tsv_escape(text: str) -> str:
    """dap-api.md section 7.3: PostgreSQL COPY escapes."""
    text = text.replace("\\", "\\\\")
    for char, escape in (("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\b", "\\b"), ("\f", "\\f"), ("\v", "\\v")):
        text = text.replace(char, escape)
    return text


def test_tsv_string_cells_byte_for_byte(world: World) -> None:
    job = world.api.run_job("canvas", "users", {"format": "tsv"})
    at = world.emulator.latest("canvas", "users")
    expected = world.expected("canvas", "users", at)
    string_columns = [c.name for c in world.infos["canvas", "users"].values if c.kind == "str"]
    checked = 0
    for data in world.api.download_objects(job):
        lines = lines_of(gzip.decompress(data).decode("utf-8"))
        header = lines[0].split("\t")
        for line in lines[1:]:
            raw = dict(zip(header, line.split("\t"), strict=True))
            row = expected[(int(raw["key.id"]),)]
            for name in string_columns:
                value = row[name]
                assert raw[f"value.{name}"] == ("\\N" if value is None else tsv_escape(value)), (name, value)
                checked += 1
    assert checked > 100


def test_csv_null_empty_and_literal_null_cells(world: World) -> None:
    job = world.api.run_job("canvas", "users", {"format": "csv"})
    text = "".join(gzip.decompress(d).decode("utf-8") for d in world.api.download_objects(job))
    expected = world.expected("canvas", "users", world.emulator.latest("canvas", "users"))
    values = [v for row in expected.values() for v in row.values()]
    # NULL is the bare literal, the string "NULL" is quoted, the empty string is "" (never a bare empty field).
    assert ",NULL," in text or ",NULL\n" in text
    assert (',"NULL",' in text or ',"NULL"\n' in text) == ("NULL" in values)
    assert (',"",' in text or ',""\n' in text) == ("" in values)
    assert ",," not in text and not any(line.endswith(",") for line in text.split("\n"))


def test_csv_delete_rows_have_absent_values_not_null(world: World) -> None:
    job = world.api.run_job("canvas", "users", {"format": "csv", "since": format_timestamp(world.base)})
    lines = [
        line
        for data in world.api.download_objects(job)
        for line in gzip.decompress(data).decode("utf-8").split("\n")[1:]
        if line.startswith(format_timestamp(world.changed) + ",D,")
    ]
    assert lines
    width = len(world.infos["canvas", "users"].header("expanded", True))
    for line in lines:
        cells = line.split(",")
        assert len(cells) == width and cells[3:] == [""] * (width - 3), line


def test_tsv_and_jsonl_deletes_carry_only_the_key(world: World) -> None:
    body = {"since": format_timestamp(world.base)}
    tsv_job = world.api.run_job("canvas", "users", {"format": "tsv", **body})
    deletes = [
        row
        for data in world.api.download_objects(tsv_job)
        for row in parse_tsv(gzip.decompress(data).decode("utf-8"))[1:]
        if row[1] == "D"
    ]
    assert deletes and all(cell is None for row in deletes for cell in row[3:])
    jsonl_job = world.api.run_job("canvas", "users", {"format": "jsonl", **body})
    for data in world.api.download_objects(jsonl_job):
        for line in gzip.decompress(data).decode("utf-8").splitlines():
            if '"action":"D"' in line:
                assert line.index('"key"') < len(line) and '"value"' not in line, line


def test_expanded_and_condensed_headers_of_nested_objects(world: World) -> None:
    for table, column in (("courses", "settings"), ("assignment_groups", "rules")):
        info = world.infos["canvas", table]
        (col,) = [c for c in info.values if c.name == column]
        assert col.kind == "object" and col.subs
        headers = {}
        for mode in ("expanded", "condensed"):
            job = world.api.run_job("canvas", table, {"format": "tsv", "mode": mode})
            data = world.api.download_objects(job)[0]
            headers[mode] = gzip.decompress(data).decode("utf-8").split("\n", 1)[0].split("\t")
        assert f"value.{column}" in headers["condensed"]
        assert f"value.{column}" not in headers["expanded"]
        assert [h for h in headers["expanded"] if h.startswith(f"value.{column}.")] == [
            f"value.{column}.{sub}" for sub, _ in col.subs
        ]
        assert headers["expanded"][:2] == headers["condensed"][:2] == ["meta.ts", f"key.{info.keys[0].name}"]


def test_rows_per_part_splits_results(serve: Serve) -> None:
    server, api = serve(rows={"canvas.users": 30, "*": 2}, parts=1, rows_per_part=4)
    job = api.run_job("canvas", "users", {"format": "tsv"})
    info = TableInfo.from_schema(api.get("/dap/query/canvas/table/users/schema").json()["schema"])
    sizes = [len(decode_part("tsv", d, info, "expanded", False)) for d in api.download_objects(job)]
    assert len(sizes) == 8 and max(sizes) <= 4 and sum(sizes) == 30, sizes
    names = [o["id"] for o in job["objects"]]
    assert all(n.endswith(".tsv.gz") for n in names)
    # A tiny result still comes in at least `parts` objects (header-only ones are fine).
    server.emulator.config.parts = 3
    job = api.run_job("canvas", "accounts", {"format": "csv"})
    assert len(job["objects"]) == 3


def test_object_names_per_format(world: World) -> None:
    suffixes = {"tsv": ".tsv.gz", "csv": ".csv.gz", "jsonl": ".json.gz", "parquet": ".parquet"}
    for fmt, suffix in suffixes.items():
        job = world.api.run_job("canvas", "accounts", {"format": fmt})
        assert all(o["id"].endswith(suffix) for o in job["objects"]), (fmt, job["objects"])
