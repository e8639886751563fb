"""Query validation, range errors, the job life cycle, de-duplication and expiry (dap-api.md sections 3.3-4, 6)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from airflow_provider_instructure.emulator.encoders import format_timestamp
from tests.emulator.conftest import CLOCK, Serve, Shared
from tests.emulator.dap_wire import parse_ts

IN_PROGRESS_KEYS = {"id", "status", "expires_at"}
SNAPSHOT_KEYS = {"id", "status", "expires_at", "objects", "schema_version", "at"}
INCREMENTAL_KEYS = {"id", "status", "expires_at", "objects", "schema_version", "since", "until"}
FAILED_KEYS = {"id", "status", "expires_at", "error"}


def assert_job_shape(body: dict[str, Any], incremental: bool = False) -> None:
    """Exactly the keys the OpenAPI schema allows for the job's status (the client rejects extras)."""
    status = body["status"]
    expected = {
        "waiting": IN_PROGRESS_KEYS,
        "running": IN_PROGRESS_KEYS,
        "complete": INCREMENTAL_KEYS if incremental else SNAPSHOT_KEYS,
        "failed": FAILED_KEYS,
    }[status]
    assert set(body) == expected, f"{status}: {sorted(body)} != {sorted(expected)}"
    uuid.UUID(body["id"])
    parse_ts(body["expires_at"])
    if status == "complete":
        assert type(body["schema_version"]) is int
        assert body["objects"] and all(set(o) == {"id"} and isinstance(o["id"], str) for o in body["objects"])
        for name in ("at", "since", "until"):
            if name in body:
                parse_ts(body[name])
    if status == "failed":
        assert set(body["error"]) == {"type", "uuid", "message"}, body["error"]


def ts(value: datetime) -> str:
    return format_timestamp(value)


# -- validation ------------------------------------------------------------------------------------


def validation_error(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "uuid", "message", "location"}, error
    assert error["type"] == "ValidationError"
    location = error["location"]
    assert set(location) == {"line", "column", "character"}
    assert all(type(v) is int and v >= 1 for v in location.values()), location
    return error


def test_malformed_json_reports_the_parser_position(shared: Shared) -> None:
    _server, api = shared
    raw = '{"format": "tsv",\n  "mode": }'
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(raw)
    location = validation_error(api.create_job("canvas", "users", raw))["location"]
    assert location == {"line": parsed.value.lineno, "column": parsed.value.colno, "character": parsed.value.pos + 1}


def assert_points_at(raw: str, location: dict[str, int], name: str) -> None:
    """``location`` (1-based) is where ``"name"`` starts in ``raw``."""
    offset = location["character"] - 1
    assert raw[offset:].startswith(f'"{name}"'), (raw, location)
    lines = raw.split("\n")
    assert location["line"] == raw.count("\n", 0, offset) + 1
    assert lines[location["line"] - 1][location["column"] - 1 :].startswith(f'"{name}"')


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"format": "tsv",\n  "filter": {"select": []}}', "filter"),
        ('{"format": "tsv", "type": "snapshot"}', "type"),
        ('{\n"format": "xml"}', "format"),
        ('{"format": "tsv",\n\n   "mode": "flat"}', "mode"),
        ('{"format": "csv", "since": "2024-05-01T12:00:00"}', "since"),
        ('{"format": "csv", "since": 1714564800}', "since"),
        ('{"format": "csv", "since": "yesterday"}', "since"),
        ('{"format": "csv",\n "until": "2024-05-01T12:00:00Z"}', "until"),
        ('{"format": "csv", "since": "2024-05-01T12:00:00Z", "until": "2024-05-01T12:00:00Z"}', "until"),
        ('{"format": "csv", "since": "2024-05-01T12:00:00Z", "until": "2024-05-01T11:00:00+00:00"}', "until"),
    ],
)
def test_invalid_queries_are_400_with_a_location(shared: Shared, raw: str, field: str) -> None:
    _server, api = shared
    error = validation_error(api.create_job("canvas", "users", raw))
    assert_points_at(raw, error["location"], field)
    assert field in error["message"]


@pytest.mark.parametrize("raw", ["{}", "[]", '"tsv"', '{"mode": "condensed"}'])
def test_queries_without_a_format_are_400(shared: Shared, raw: str) -> None:
    _server, api = shared
    validation_error(api.create_job("canvas", "users", raw))


def test_offsets_other_than_utc_are_accepted(shared: Shared) -> None:
    server, api = shared
    latest = server.emulator.latest("canvas", "users")
    since = (latest - timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    job = api.run_job("canvas", "users", {"format": "jsonl", "since": since})
    assert parse_ts(job["since"]) == latest - timedelta(hours=1)
    assert parse_ts(job["until"]) == latest


# -- range errors --------------------------------------------------------------------------------


def range_error(response: requests.Response, type_: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"type", "uuid", "message", "since", "until"}, error
    assert error["type"] == type_
    return error


def test_reload_requires_a_new_snapshot(serve: Serve) -> None:
    server, api = serve()
    emulator = server.emulator
    at = parse_ts(api.run_job("canvas", "users", {"format": "tsv"})["at"])
    emulator.advance(["canvas.users"], updates=2)
    reload_ts = emulator.reload("canvas.users")
    error = range_error(api.create_job("canvas", "users", {"format": "tsv", "since": ts(at)}), "SnapshotRequiredError")
    assert parse_ts(error["since"]) == reload_ts
    assert parse_ts(error["until"]) == emulator.latest("canvas", "users")
    # From the reload on, incrementals work again; other tables were never affected.
    assert api.run_job("canvas", "users", {"format": "tsv", "since": error["since"]})["status"] == "complete"
    assert api.run_job("canvas", "accounts", {"format": "tsv", "since": ts(at)})["status"] == "complete"
    assert api.run_job("canvas", "users", {"format": "tsv"})["status"] == "complete"


def test_web_logs_keep_30_days(serve: Serve) -> None:
    server, api = serve()
    emulator = server.emulator
    latest = emulator.advance(["canvas_logs.web_logs"], step=timedelta(days=40), inserts=3)
    floor = latest - timedelta(days=30)
    body = {"format": "jsonl", "since": ts(floor - timedelta(seconds=1))}
    error = range_error(api.create_job("canvas_logs", "web_logs", body), "OutOfRangeError")
    assert parse_ts(error["since"]) == floor
    assert parse_ts(error["until"]) == latest
    job = api.run_job("canvas_logs", "web_logs", {"format": "jsonl", "since": ts(floor)})
    assert job["status"] == "complete"
    # canvas tables keep their whole history
    job = api.run_job("canvas", "users", {"format": "jsonl", "since": ts(CLOCK - timedelta(days=400))})
    assert job["status"] == "complete"


def test_since_or_until_after_the_latest_commit_is_out_of_range(shared: Shared) -> None:
    server, api = shared
    latest = server.emulator.latest("canvas", "users")
    for body in (
        {"format": "csv", "since": ts(latest + timedelta(seconds=1))},
        {"format": "csv", "since": ts(latest - timedelta(hours=1)), "until": ts(latest + timedelta(hours=1))},
    ):
        error = range_error(api.create_job("canvas", "users", body), "OutOfRangeError")
        assert parse_ts(error["until"]) == latest


def test_range_fault_bodies(serve: Serve) -> None:
    server, api = serve()
    for kind, type_ in (("snapshot_required", "SnapshotRequiredError"), ("out_of_range", "OutOfRangeError")):
        server.emulator.faults.inject("create_job", kind)
        range_error(api.create_job("canvas", "users", {"format": "tsv"}), type_)


# -- life cycle ------------------------------------------------------------------------------------


def test_lifecycle_by_polls_202_until_complete_then_200(serve: Serve) -> None:
    _server, api = serve(job_progress="polls")
    response = api.create_job("canvas", "users", {"format": "tsv"})
    assert response.status_code == 202
    assert response.json()["status"] == "waiting"
    assert_job_shape(response.json())
    job_id = response.json()["id"]
    seen = []
    for _ in range(20):
        response = api.get_job(job_id)
        body = response.json()
        assert_job_shape(body)
        assert response.status_code == (200 if body["status"] == "complete" else 202)
        seen.append(body["status"])
        if body["status"] == "complete":
            break
    assert seen[0] == "running" and seen[-1] == "complete", seen
    assert set(seen) == {"running", "complete"}
    # The official client reads the job once more for its objects: it must stay retrievable.
    again = api.get_job(job_id)
    assert again.status_code == 200 and again.json() == body


def test_lifecycle_by_wall_clock(serve: Serve) -> None:
    _server, api = serve(job_progress="time", job_waiting_seconds=0.4, job_running_seconds=0.4)
    sent = time.monotonic()
    response = api.create_job("canvas", "users", {"format": "csv"})
    assert (response.status_code, response.json()["status"]) == (202, "waiting")
    job_id = response.json()["id"]
    first_seen: dict[str, float] = {"waiting": sent}
    while "complete" not in first_seen:
        assert time.monotonic() - sent < 10, first_seen
        time.sleep(0.03)
        response = api.get_job(job_id)
        body = response.json()
        assert_job_shape(body)
        assert response.status_code == (200 if body["status"] == "complete" else 202)
        first_seen.setdefault(body["status"], time.monotonic())
    # waiting -> running -> complete, never earlier than the configured times (the job is created after `sent`)
    assert list(first_seen) == ["waiting", "running", "complete"]
    assert first_seen["running"] - sent >= 0.4
    assert first_seen["complete"] - sent >= 0.8


def test_post_wait_answers_complete_on_post(serve: Serve) -> None:
    server, api = serve(post_wait_seconds=5)
    response = api.create_job("canvas", "users", {"format": "tsv"})
    assert response.status_code == 200
    assert_job_shape(response.json())
    assert response.json()["at"] == ts(server.emulator.latest("canvas", "users"))


def test_complete_incremental_job_shape(serve: Serve) -> None:
    server, api = serve()
    since = server.emulator.latest("canvas", "users")
    until = server.emulator.advance(["canvas.users"], updates=2)
    job = api.run_job("canvas", "users", {"format": "tsv", "since": ts(since)})
    assert_job_shape(job, incremental=True)
    assert (parse_ts(job["since"]), parse_ts(job["until"])) == (since, until)


def test_expires_at_is_creation_plus_ttl(serve: Serve) -> None:
    _server, api = serve(job_ttl=7200)
    before = time.time()
    body = api.create_job("canvas", "users", {"format": "tsv"}).json()
    expires = parse_ts(body["expires_at"]).timestamp()
    assert before + 7200 - 1 <= expires <= time.time() + 7200


def test_unknown_job_is_404(shared: Shared) -> None:
    _server, api = shared
    job_id = str(uuid.uuid4())
    response = api.get_job(job_id)
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"type", "uuid", "message", "id", "kind"}
    assert (error["kind"], error["id"]) == ("job", job_id)


def test_failed_job_body(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("create_job", "fail_job")
    job = api.run_job("canvas", "users", {"format": "tsv"})
    assert job["status"] == "failed"
    assert_job_shape(job)
    uuid.UUID(job["error"]["uuid"])
    assert api.get_job(job["id"]).status_code == 200


# -- de-duplication and expiry ---------------------------------------------------------------------


def test_identical_queries_share_a_job(serve: Serve) -> None:
    server, api = serve()
    first = api.run_job("canvas", "users", {"format": "tsv", "mode": "condensed"})
    # Same parameters in another key order and spacing: still the same job, now 200 complete.
    response = api.create_job("canvas", "users", '{ "mode" : "condensed",\n"format":"tsv" }')
    assert response.status_code == 200
    assert response.json() == first
    assert server.emulator.jobs.created_count == 1
    others = [
        api.create_job("canvas", "users", {"format": "csv", "mode": "condensed"}).json()["id"],
        api.create_job("canvas", "users", {"format": "tsv", "mode": "expanded"}).json()["id"],
        api.create_job("canvas", "courses", {"format": "tsv", "mode": "condensed"}).json()["id"],
    ]
    assert len({first["id"], *others}) == 4


def test_new_commit_new_job_other_tables_keep_theirs(serve: Serve) -> None:
    server, api = serve()
    users = api.run_job("canvas", "users", {"format": "tsv"})
    accounts = api.run_job("canvas", "accounts", {"format": "tsv"})
    server.emulator.advance(["canvas.users"], updates=1)
    assert api.create_job("canvas", "users", {"format": "tsv"}).json()["id"] != users["id"]
    assert api.create_job("canvas", "accounts", {"format": "tsv"}).json()["id"] == accounts["id"]


def test_schema_change_gives_a_new_job_with_the_new_version(serve: Serve) -> None:
    server, api = serve()
    before = api.run_job("canvas", "users", {"format": "tsv"})
    version = server.emulator.add_column("canvas.users")
    after = api.run_job("canvas", "users", {"format": "tsv"})
    assert after["id"] != before["id"]
    assert after["schema_version"] == version == before["schema_version"] + 1


def test_expired_job_and_its_objects_are_gone(serve: Serve) -> None:
    _server, api = serve(job_ttl=1)
    job = api.run_job("canvas", "users", {"format": "tsv"})
    ids = [o["id"] for o in job["objects"]]
    assert api.post("/dap/object/url", json=[{"id": i} for i in ids]).status_code == 200
    time.sleep(max(0.0, parse_ts(job["expires_at"]).timestamp() + 1.05 - time.time()))
    response = api.get_job(job["id"])
    assert response.status_code == 404 and response.json()["error"]["kind"] == "job"
    response = api.post("/dap/object/url", json=[{"id": ids[0]}])
    assert response.status_code == 404 and response.json()["error"]["kind"] == "object"
    # The same query now starts a new job.
    assert api.create_job("canvas", "users", {"format": "tsv"}).json()["id"] != job["id"]
