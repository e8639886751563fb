"""Incremental semantics: ``since < ts <= until``, deletes, lossless chaining, schema changes (sections 4, 7, 8.3)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow_provider_instructure.emulator.encoders import format_timestamp
from tests.emulator.conftest import CLOCK, Serve
from tests.emulator.dap_wire import DapApi, Rec, TableInfo, decode_part, first_difference, parse_ts


class Reader:
    """Runs queries for one table and decodes the results."""

    def __init__(self, api: DapApi, namespace: str, table: str, fmt: str = "jsonl") -> None:
        self.api, self.namespace, self.table, self.fmt = api, namespace, table, fmt

    def info(self) -> TableInfo:
        response = self.api.get(f"/dap/query/{self.namespace}/table/{self.table}/schema")
        return TableInfo.from_schema(response.json()["schema"])

    def query(self, **body: Any) -> tuple[dict[str, Any], list[Rec]]:
        body = {"format": self.fmt, **{k: format_timestamp(v) for k, v in body.items()}}
        job = self.api.run_job(self.namespace, self.table, body)
        assert job["status"] == "complete", job
        info = self.info()
        records = [
            rec
            for data in self.api.download_objects(job)
            for rec in decode_part(self.fmt, data, info, "expanded", "since" in body)
        ]
        return job, records


def by_key(records: list[Rec]) -> dict[Any, Rec]:
    out: dict[Any, Rec] = {}
    for rec in records:
        key = tuple(rec.key.values())
        assert key not in out, f"duplicate key {key} in one result"
        out[key] = rec
    return out


def expected(server: Any, namespace: str, table: str, at: datetime) -> dict[Any, dict[str, Any]]:
    rows = server.emulator.expected_rows(namespace, table, at)
    key = next(iter(server.emulator.dataset.table(namespace, table).schema.key_columns)).name
    return {(row[key],): row for row in rows}


def apply(state: dict[Any, dict[str, Any]], records: list[Rec]) -> None:
    """Apply an incremental result like a replica would: upsert U rows, delete D keys."""
    for rec in records:
        key = tuple(rec.key.values())
        if rec.action == "D":
            state.pop(key, None)
        else:
            assert rec.action == "U"
            state[key] = rec.flat


def test_incremental_is_exactly_the_changed_keys(serve: Serve) -> None:
    server, api = serve(rows=20)
    reader = Reader(api, "canvas", "users")
    snap, _ = reader.query()
    since = parse_ts(snap["at"])
    until = server.emulator.advance(["canvas.users"], updates=3, inserts=2, deletes=2)
    job, records = reader.query(since=since)
    assert (parse_ts(job["since"]), parse_ts(job["until"])) == (since, until)
    got = by_key(records)
    before, after = expected(server, "canvas", "users", since), expected(server, "canvas", "users", until)
    updated = {k for k in before.keys() & after.keys() if before[k] != after[k]}
    inserted = after.keys() - before.keys()
    deleted = before.keys() - after.keys()
    assert (len(updated), len(inserted), len(deleted)) == (3, 2, 2)
    assert set(got) == updated | inserted | deleted
    for key, rec in got.items():
        assert since < rec.ts <= until
        assert rec.action == ("D" if key in deleted else "U")
        if rec.action == "D":
            assert rec.value is None and set(rec.raw) == {"meta", "key"}
    problem = first_difference(
        {k: after[k] for k in updated | inserted}, {k: r.flat for k, r in got.items() if r.action == "U"}
    )
    assert problem is None, problem


def test_chained_windows_are_lossless_and_duplicate_free(serve: Serve) -> None:
    server, api = serve(rows=25)
    reader = Reader(api, "canvas", "courses", fmt="tsv")
    emulator = server.emulator
    snap, rows = reader.query()
    state = {tuple(r.key.values()): r.flat for r in rows}
    watermark = parse_ts(snap["at"])
    commits = []
    for round_ in range(6):
        commits.append(emulator.advance(["canvas.courses"], updates=3, inserts=2, deletes=2))
        if round_ % 2 == 0 and round_ != 5:
            continue  # two commits in some windows: a row may be inserted and deleted inside one
        # an explicit `until` between two commits, then the rest with `until` omitted
        middle = commits[-1] - timedelta(seconds=1) if len(commits) > 1 else None
        windows = [middle, None] if middle and middle > watermark else [None]
        for until in windows:
            body = {"since": watermark} | ({"until": until} if until else {})
            job, records = reader.query(**body)
            end = parse_ts(job["until"])
            assert end == (until or emulator.latest("canvas", "courses"))
            by_key(records)  # no key twice
            assert all(watermark < rec.ts <= end for rec in records)
            apply(state, records)
            problem = first_difference(expected(server, "canvas", "courses", end), state)
            assert problem is None, f"window {watermark}..{end}:\n{problem}"
            watermark = end
    # one big window from the snapshot gives the same final state
    _, records = reader.query(since=parse_ts(snap["at"]))
    big = {tuple(r.key.values()): r.flat for r in rows}
    apply(big, records)
    assert big == state


def test_new_snapshot_equals_old_snapshot_plus_changes(serve: Serve) -> None:
    server, api = serve(rows=30)
    reader = Reader(api, "canvas", "assignment_groups", fmt="csv")
    snap, rows = reader.query()
    server.emulator.advance(["canvas.assignment_groups"], updates=5, inserts=3, deletes=4)
    server.emulator.advance(["canvas.assignment_groups"], updates=5, inserts=3, deletes=4)
    _, changes = reader.query(since=parse_ts(snap["at"]))
    state = {tuple(r.key.values()): r.flat for r in rows}
    apply(state, changes)
    new_snap, new_rows = reader.query()
    assert new_snap["at"] != snap["at"]
    assert {tuple(r.key.values()): r.flat for r in new_rows} == state


def test_incremental_from_before_the_initial_load_returns_it(serve: Serve) -> None:
    server, api = serve(rows=12)
    reader = Reader(api, "canvas", "users")
    server.emulator.advance(["canvas.users"], updates=2, inserts=1, deletes=1)
    _, snapshot = reader.query()
    _, records = reader.query(since=CLOCK - timedelta(days=1))
    upserts = {tuple(r.key.values()): r.flat for r in records if r.action == "U"}
    assert upserts == {tuple(r.key.values()): r.flat for r in snapshot}
    # the row deleted since the initial load is reported as a delete
    assert len([r for r in records if r.action == "D"]) == 1
    _, initial = reader.query(since=CLOCK - timedelta(days=1), until=CLOCK)
    assert len(initial) == 12 and all(rec.ts == CLOCK for rec in initial)


def test_empty_incremental(serve: Serve) -> None:
    server, api = serve(rows=5, parts=2)
    reader = Reader(api, "canvas", "users", fmt="tsv")
    latest = server.emulator.latest("canvas", "users")
    job, records = reader.query(since=latest)
    assert records == []
    assert job["since"] == job["until"] == format_timestamp(latest)
    assert len(job["objects"]) == 2  # header-only parts


def test_schema_change_bumps_version_and_nulls_older_rows(serve: Serve) -> None:
    server, api = serve(rows=20)
    emulator = server.emulator
    reader = Reader(api, "canvas", "users", fmt="tsv")
    before = api.get("/dap/query/canvas/table/users/schema").json()
    snap, _ = reader.query()
    version = emulator.add_column("canvas.users", "nickname")
    schema = api.get("/dap/query/canvas/table/users/schema").json()
    assert schema["version"] == version == before["version"] + 1
    assert "nickname" in schema["schema"]["properties"]["value"]["properties"]
    assert "nickname" not in schema["schema"]["properties"]["value"].get("required", [])
    bumped = emulator.latest("canvas", "users")
    changed = emulator.advance(["canvas.users"], updates=12, inserts=3)
    job, rows = reader.query()
    assert job["schema_version"] == version
    after = {tuple(r.key.values()): r for r in rows}
    old = [r for r in after.values() if r.ts <= bumped]
    new = [r for r in after.values() if r.ts == changed]
    assert old and len(new) == 15
    assert all(r.value["nickname"] is None for r in old)
    assert any(r.value["nickname"] is not None for r in new)
    problem = first_difference(expected(server, "canvas", "users", changed), {k: r.flat for k, r in after.items()})
    assert problem is None, problem
    inc, _ = reader.query(since=parse_ts(snap["at"]))
    assert inc["schema_version"] == version


def test_insert_and_delete_inside_one_window_is_a_delete_of_an_unseen_key(serve: Serve) -> None:
    server, api = serve(rows=10)
    reader = Reader(api, "canvas", "users")
    since = server.emulator.latest("canvas", "users")
    server.emulator.advance(["canvas.users"], inserts=5)
    until = server.emulator.advance(["canvas.users"], deletes=14)  # 14 of the 15 live rows
    before = expected(server, "canvas", "users", since)
    _, records = reader.query(since=since)
    unseen = [r for r in records if r.action == "D" and tuple(r.key.values()) not in before]
    assert len(unseen) >= 4  # at least four of the five new rows died in the same window
    state = dict(before)
    apply(state, records)
    assert state == expected(server, "canvas", "users", until)
