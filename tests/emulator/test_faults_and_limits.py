"""Fault injection and rate limits, as a client sees them on the wire (dap-api.md sections 6 and 13.12-13)."""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

import pytest
import requests

from airflow_provider_instructure.emulator.faults import FaultPlan
from tests.emulator.conftest import Serve
from tests.emulator.dap_wire import DapApi


def call_route(api: DapApi, route: str) -> Callable[[], requests.Response]:
    """A zero-argument call of ``route`` (jobs, objects and URLs are prepared up front)."""
    if route == "login":
        return api.login
    if route == "list_tables":
        return lambda: api.get("/dap/query/canvas/table")
    if route == "get_schema":
        return lambda: api.get("/dap/query/canvas/table/users/schema")
    if route == "create_job":
        return lambda: api.create_job("canvas", "users", {"format": "tsv"})
    job = api.run_job("canvas", "users", {"format": "tsv"})
    if route == "get_job":
        return lambda: api.get_job(job["id"])
    oid = job["objects"][0]["id"]
    if route == "object_url":
        return lambda: api.post("/dap/object/url", json=[{"id": oid}])
    url = api.object_urls([oid])[oid]
    return lambda: requests.get(url, timeout=5)


ROUTES = ["login", "list_tables", "get_schema", "create_job", "get_job", "object_url", "download"]


@pytest.mark.parametrize("route", ROUTES)
def test_429_with_retry_after_seconds_then_recovers(serve: Serve, route: str) -> None:
    server, api = serve()
    call = call_route(api, route)
    before = server.emulator.stats.count(route)
    server.emulator.faults.inject(route, "429", count=2, retry_after=7)
    for _ in range(2):
        response = call()
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.json() == {"message": "Too Many Requests"}
    assert call().status_code in (200, 202)
    assert server.emulator.stats.count(route) == before + 3


def test_429_with_an_http_date(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("list_tables", "429", retry_after=30, http_date=True)
    response = api.get("/dap/query/canvas/table")
    assert response.status_code == 429
    when = parsedate_to_datetime(response.headers["Retry-After"])
    assert 25 <= (when - datetime.now(timezone.utc)).total_seconds() <= 31


@pytest.mark.parametrize("kind", ["500", "503"])
def test_5xx_carry_the_dap_error_envelope(serve: Serve, kind: str) -> None:
    server, api = serve()
    server.emulator.faults.inject("get_schema", kind)
    response = api.get("/dap/query/canvas/table/users/schema")
    assert response.status_code == int(kind)
    assert set(response.json()) == {"error"}
    assert set(response.json()["error"]) == {"type", "uuid", "message"}
    assert api.get("/dap/query/canvas/table/users/schema").status_code == 200


def test_504_is_a_gateway_timeout_with_message_only(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("create_job", "504")
    response = api.create_job("canvas", "users", {"format": "tsv"})
    assert response.status_code == 504
    assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"message"}


def test_502_is_not_json(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("get_job", "502_html")
    job = api.create_job("canvas", "users", {"format": "tsv"}).json()
    response = api.get_job(job["id"])
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        response.json()


@pytest.mark.parametrize("route", ["login", "list_tables", "create_job", "download"])
def test_dropped_connection(serve: Serve, route: str) -> None:
    server, api = serve()
    call = call_route(api, route)
    server.emulator.faults.inject(route, "drop")
    with pytest.raises(requests.ConnectionError):
        call()
    assert call().status_code in (200, 202)


def test_truncated_download_is_an_incomplete_read(serve: Serve) -> None:
    server, api = serve(rows=60)
    job = api.run_job("canvas", "users", {"format": "tsv"})
    oid = job["objects"][0]["id"]
    url = api.object_urls([oid])[oid]
    full = requests.get(url, timeout=5).content
    server.emulator.faults.inject("download", "truncate", fraction=0.5)
    with pytest.raises(requests.exceptions.ChunkedEncodingError) as raised:
        requests.get(url, timeout=5)
    assert "IncompleteRead" in repr(raised.value)
    # the same with a bare HTTP client: the announced length is the full file, fewer bytes arrive
    server.emulator.faults.inject("download", "truncate", fraction=0.25)
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", f"{parts.path}?{parts.query}")
    response = conn.getresponse()
    assert int(response.headers["Content-Length"]) == len(full)
    with pytest.raises(http.client.IncompleteRead) as incomplete:
        response.read()
    assert 0 < len(incomplete.value.partial) < len(full)
    conn.close()
    assert requests.get(url, timeout=5).content == full


def test_expired_url_fault(serve: Serve) -> None:
    server, api = serve()
    job = api.run_job("canvas", "users", {"format": "tsv"})
    oid = job["objects"][0]["id"]
    server.emulator.faults.inject("object_url", "expired_url")
    stale = api.object_urls([oid])[oid]
    response = requests.get(stale, timeout=5)
    assert response.status_code == 403 and "<Code>AccessDenied</Code>" in response.text
    assert requests.get(api.object_urls([oid])[oid], timeout=5).status_code == 200


def test_revoke_token_fault(serve: Serve) -> None:
    server, api = serve()
    assert api.get("/dap/query/canvas/table").status_code == 200
    server.emulator.faults.inject("get_schema", "revoke_token")
    response = api.get("/dap/query/canvas/table/users/schema")
    assert response.status_code == 401 and response.json()["error"]["type"] == "AuthenticationError"
    assert api.get("/dap/query/canvas/table").status_code == 401
    assert DapApi(server.url).get("/dap/query/canvas/table").status_code == 200


def test_faults_are_per_route_and_counted(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("get_schema", "500", count=2)
    assert api.get("/dap/query/canvas/table").status_code == 200
    codes = [api.get("/dap/query/canvas/table/users/schema").status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    stats = server.emulator.stats.snapshot()
    assert (stats["list_tables"], stats["get_schema"], stats["login"]) == (1, 3, 1)


@pytest.mark.parametrize(
    ("route", "kind"), [("nowhere", "500"), ("get_job", "explode"), ("get_job", "truncate"), ("login", "fail_job")]
)
def test_nonsense_faults_are_refused(route: str, kind: str) -> None:
    with pytest.raises(ValueError):
        FaultPlan().inject(route, kind)


# -- rate limits -----------------------------------------------------------------------------------


def test_documented_rate_limits_answer_429_with_retry_after(serve: Serve) -> None:
    server, api = serve()
    api.login()
    server.emulator.config.enable_rate_limits(scale=0.025)  # the documented limits per 1.5 s
    window = 60 * 0.025
    codes = [api.create_job("canvas", "users", {"format": "tsv"}).status_code for _ in range(6)]
    assert all(c in (200, 202) for c in codes[:5]) and codes[5] == 429, codes
    limited = api.create_job("canvas", "users", {"format": "tsv"})
    assert limited.json() == {"message": "Too Many Requests"}
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= math.ceil(window)
    # independent buckets: list tables has its own 5, schemas their own 500
    assert [api.get("/dap/query/canvas/table").status_code for _ in range(6)] == [200] * 5 + [429]
    assert all(api.get("/dap/query/canvas/table/users/schema").status_code == 200 for _ in range(20))
    time.sleep(retry_after + 0.05)  # Retry-After is honest: by then a slot is free again
    assert api.create_job("canvas", "users", {"format": "tsv"}).status_code in (200, 202)


def test_custom_rate_limit_and_reset(serve: Serve) -> None:
    server, api = serve()
    server.emulator.config.rate_limits = {"get_schema": (2, 60.0)}
    codes = [api.get("/dap/query/canvas/table/users/schema").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    server.emulator.reset()
    assert api.get("/dap/query/canvas/table/users/schema").status_code == 200
    server.emulator.config.rate_limits = {}
    assert all(api.get("/dap/query/canvas/table/users/schema").status_code == 200 for _ in range(5))
