"""The ``/_emulator`` control routes, ``python -m airflow_provider_instructure.emulator`` and determinism."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import requests

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.encoders import format_timestamp
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.emulator.conftest import CLOCK, Serve
from tests.emulator.dap_wire import DapApi, parse_ts


def control(server: EmulatorServer, method: str, path: str, json: object = None) -> requests.Response:
    return requests.request(method, f"{server.url}/_emulator/{path}", json=json, timeout=5)


def test_stats_count_calls_per_route(serve: Serve) -> None:
    server, api = serve()
    api.get("/dap/query/canvas/table")
    api.run_job("canvas", "users", {"format": "tsv"})
    body = control(server, "GET", "stats").json()
    assert set(body) == {"calls", "jobs_created", "rate_limited"}
    assert body["jobs_created"] == 1
    assert body["calls"]["login"] == 1 and body["calls"]["list_tables"] == 1 and body["calls"]["create_job"] == 1
    assert set(body["calls"]) == {
        "login",
        "list_tables",
        "get_schema",
        "create_job",
        "get_job",
        "object_url",
        "download",
    }


def test_config_get_and_patch(serve: Serve) -> None:
    server, api = serve()
    config = control(server, "GET", "config").json()
    assert config["token_lifetime"] == 3600
    assert "demo-client-secret" not in str(config)  # secrets are never echoed
    patched = control(server, "PATCH", "config", {"token_lifetime": 42, "job_progress": "polls"})
    assert patched.status_code == 200 and patched.json()["token_lifetime"] == 42
    assert api.login().json()["expires_in"] == 42
    assert api.create_job("canvas", "users", {"format": "tsv"}).json()["status"] == "waiting"
    refused = control(server, "PATCH", "config", {"no_such_setting": 1})
    assert refused.status_code == 400 and "no_such_setting" in refused.json()["detail"]
    # a typo in a table name would otherwise switch nothing, silently
    typo = control(server, "PATCH", "config", {"tables_without_data": {"canvas.nosuch": "post"}})
    assert typo.status_code == 400 and "canvas.nosuch" in typo.json()["detail"]
    ok = control(server, "PATCH", "config", {"tables_without_data": {"canvas.users": "post"}})
    assert ok.status_code == 200 and ok.json()["tables_without_data"] == {"canvas.users": "post"}


def test_faults_route(serve: Serve) -> None:
    server, api = serve()
    response = control(server, "POST", "faults", {"route": "list_tables", "kind": "503", "count": 2})
    assert response.json() == {"pending": {"list_tables": [{"kind": "503", "remaining": 2}]}}
    codes = [api.get("/dap/query/canvas/table").status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    assert control(server, "POST", "faults", {"route": "nowhere", "kind": "500"}).status_code == 400
    assert control(server, "POST", "faults", {"kind": "500"}).status_code == 400
    # parameters pass through: a 429 with a chosen Retry-After
    control(server, "POST", "faults", {"route": "list_tables", "kind": "429", "retry_after": 9})
    assert api.get("/dap/query/canvas/table").headers["Retry-After"] == "9"


def test_advance_route(serve: Serve) -> None:
    server, api = serve(rows=10)
    before = server.emulator.latest("canvas", "users")
    response = control(
        server, "POST", "advance", {"tables": ["canvas.users"], "updates": 2, "inserts": 3, "deletes": 1}
    )
    ts = parse_ts(response.json()["ts"])
    assert ts - before >= timedelta(seconds=60)
    assert server.emulator.latest("canvas", "users") == ts
    assert server.emulator.latest("canvas", "accounts") == before
    assert len(list(server.emulator.expected_rows("canvas", "users"))) == 12
    job = api.run_job("canvas", "users", {"format": "jsonl", "since": format_timestamp(before)})
    assert job["until"] == response.json()["ts"]
    assert control(server, "POST", "advance", {"tables": ["canvas.nope"]}).status_code == 400
    assert control(server, "POST", "advance", {"step_seconds": 3600}).status_code == 200
    assert server.emulator.latest("canvas_logs", "web_logs") - ts >= timedelta(hours=1)


def test_schema_change_route(serve: Serve) -> None:
    server, api = serve()
    response = control(server, "POST", "schema-change", {"table": "canvas.users", "column": "nickname"})
    assert response.json() == {"version": 2}
    schema = api.get("/dap/query/canvas/table/users/schema").json()
    assert schema["version"] == 2 and "nickname" in schema["schema"]["properties"]["value"]["properties"]
    again = control(server, "POST", "schema-change", {"table": "canvas.users", "column": "nickname"})
    assert again.status_code == 400
    assert control(server, "POST", "schema-change", {}).status_code == 400


def test_reload_route(serve: Serve) -> None:
    server, api = serve()
    since = format_timestamp(server.emulator.latest("canvas", "users"))
    reload_ts = control(server, "POST", "reload", {"table": "canvas.users"}).json()["ts"]
    response = api.create_job("canvas", "users", {"format": "tsv", "since": since})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "SnapshotRequiredError"
    assert response.json()["error"]["since"] == reload_ts
    assert control(server, "POST", "reload", {}).status_code == 400


def test_revoke_tokens_route(serve: Serve) -> None:
    server, api = serve()
    assert api.get("/dap/query/canvas/table").status_code == 200
    assert control(server, "POST", "revoke-tokens").json() == {"revoked": 1}
    assert api.get("/dap/query/canvas/table").status_code == 401


def test_rate_limits_and_reset_routes(serve: Serve) -> None:
    server, api = serve()
    limits = control(server, "POST", "rate-limits", {"scale": 0.5}).json()["rate_limits"]
    assert limits["create_job"] == [5, 30.0] and limits["list_tables"] == [5, 30.0]
    codes = [api.get("/dap/query/canvas/table").status_code for _ in range(6)]
    assert codes[-1] == 429
    assert control(server, "GET", "stats").json()["rate_limited"] == {"list_tables": codes.count(429)}
    control(server, "POST", "faults", {"route": "get_schema", "kind": "500"})
    assert control(server, "POST", "reset").json() == {"ok": True}
    stats = control(server, "GET", "stats").json()["calls"]
    assert all(count == 0 for count in stats.values())
    assert control(server, "GET", "stats").json()["rate_limited"] == {}
    assert api.get("/dap/query/canvas/table/users/schema").status_code == 200  # fault cleared
    assert api.get("/dap/query/canvas/table").status_code == 200  # window history cleared
    assert control(server, "POST", "rate-limits", {"enabled": False}).json() == {"rate_limits": {}}
    assert all(api.get("/dap/query/canvas/table").status_code == 200 for _ in range(8))


@pytest.mark.parametrize(("args", "canvas_tables"), [([], 90), (["--catalog", "core"], 14)])
def test_module_entry_point_serves_and_prints_credentials(args: list[str], canvas_tables: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_instructure.emulator", "--port", "0", "--rows", "3", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any("Secret:" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
        text = "".join(lines)
        url = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", text)
        client_id = re.search(r"ClientID: (\S+)", text)
        secret = re.search(r"Secret:\s+(\S+)", text)
        assert url and client_id and secret, text
        assert int(url.group(2)) > 0
        api = DapApi(url.group(1), client_id.group(1), secret.group(1))
        deadline = time.monotonic() + 30
        while True:  # the banner is printed just before uvicorn starts serving
            try:
                response = api.get("/dap/query/canvas/table")
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.status_code == 200 and "users" in response.json()["tables"]
        assert len(response.json()["tables"]) == canvas_tables
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def contents(server: EmulatorServer, fmt: str, body: dict[str, str]) -> list[bytes]:
    api = DapApi(server.url)
    job = api.run_job("canvas", "courses", {"format": fmt, **body})
    return [gzip.decompress(d) for d in api.download_objects(job)]


def test_same_seed_and_clock_give_identical_files() -> None:
    def start(seed: int) -> EmulatorServer:
        return EmulatorServer(Emulator(EmulatorConfig(parts=2), seed=seed, rows=15, clock_start=CLOCK)).start()

    servers = [start(7), start(7), start(8)]
    try:
        for server in servers:
            server.emulator.advance(updates=3, inserts=2, deletes=2)
        since = {"since": format_timestamp(CLOCK)}
        for fmt in ("tsv", "csv", "jsonl"):
            first, second, other = (contents(s, fmt, {}) for s in servers)
            assert first == second, fmt
            assert first != other, fmt
            assert contents(servers[0], fmt, since) == contents(servers[1], fmt, since)
        assert servers[0].emulator.latest("canvas", "users") == servers[1].emulator.latest("canvas", "users")
    finally:
        for server in servers:
            server.stop()
