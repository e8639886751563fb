"""InstructureHook against the emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import (
    DapAccountError,
    DapConnectionError,
    DapCredentialsError,
    DapNotFoundError,
    InstructureConfigError,
)
from airflow_provider_instructure.hooks.instructure import USER_AGENT, InstructureHook

FAST = {"retry_delay": 0.01, "retry_max_delay": 0.05}
DAP_ROUTES = ("list_tables", "get_schema", "create_job", "get_job", "object_url")


def dap_statuses(server: EmulatorServer) -> list[int]:
    return [c.status for c in server.emulator.stats.recent if c.route in DAP_ROUTES]


# -- construction and connection parsing ------------------------------------------------------


def test_construction_does_no_io(dap_emulator: EmulatorServer) -> None:
    hook = InstructureHook("no_such_connection")  # would fail on first use, not here
    assert hook.instructure_conn_id == "no_such_connection"
    assert dap_emulator.emulator.stats.snapshot() == dict.fromkeys(dap_emulator.emulator.stats.snapshot(), 0)
    try:
        with pytest.raises(InstructureConfigError, match=r"no_such_connection.*not defined"):
            hook.list_tables()
    except ImportError as exc:
        # Airflow 3.1.0 (version matrix): outside a task its lookup of a missing connection fails
        # importing the supervisor's channel instead of raising AirflowNotFoundException (3.1.8 fixed)
        if "SUPERVISOR_COMMS" not in str(exc):
            raise
        pytest.skip(f"Airflow 3.1.0 outside a task: {exc}")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("login", "", r"'bad'.*Client ID \(login\) is empty"),
        ("password", "", r"'bad'.*Client Secret \(password\) is empty"),
        ("host", "ftp://example.com", r"'bad'.*not an http\(s\) URL"),
    ],
)
def test_bad_connection_fails_before_any_network_call(
    dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    conn = json.loads(dap_emulator.connection_json())
    conn[field] = value
    monkeypatch.setenv("AIRFLOW_CONN_BAD", json.dumps(conn))
    with pytest.raises(InstructureConfigError, match=message):
        InstructureHook("bad").list_tables()
    assert dap_emulator.emulator.stats.count("login") == 0
    assert dap_emulator.emulator.stats.count("list_tables") == 0


def test_bad_extra_is_named(dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BAD", dap_emulator.connection_json(retry_limit="many"))
    with pytest.raises(InstructureConfigError, match="'retry_limit' must be an integer"):
        InstructureHook("bad").list_tables()


def test_bad_table_name_fails_before_any_network_call(instructure_conn: EmulatorServer) -> None:
    with pytest.raises(InstructureConfigError, match="not a valid DAP name"):
        InstructureHook().get_table_schema("users; DROP TABLE x")
    assert instructure_conn.emulator.stats.count("login") == 0


def test_uri_connection_form(dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import quote

    user = quote(dap_emulator.client_id, safe="")
    secret = quote(dap_emulator.client_secret, safe="")
    uri = f"instructure://{user}:{secret}@127.0.0.1:{dap_emulator.port}/http?namespace=canvas_logs&timeout=30"
    monkeypatch.setenv("AIRFLOW_CONN_FROM_URI", uri)
    hook = InstructureHook("from_uri")
    assert hook.list_tables() == ["web_logs"]
    assert hook.settings.base_url == dap_emulator.url
    assert hook.settings.timeout == 30


def test_json_connection_form_with_prefixed_extras(
    dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_JSON", dap_emulator.connection_json(extra__instructure__namespace="canvas_logs"))
    assert InstructureHook("json").list_tables() == ["web_logs"]


# -- the token lifecycle ---------------------------------------------------------------------------


def test_many_calls_one_login(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook()
    for _ in range(10):
        hook.list_tables()
    hook.get_table_schema("users")
    assert instructure_conn.emulator.stats.count("login") == 1
    assert instructure_conn.emulator.stats.count("list_tables") == 10


def test_eight_threads_share_one_login(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                hook.get_table_schema("accounts")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert instructure_conn.emulator.stats.count("login") == 1
    assert instructure_conn.emulator.stats.count("get_schema") == 24


def test_short_lived_tokens_are_refreshed_before_expiry(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(token_lifetime=3), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    hook = InstructureHook()
    deadline = time.monotonic() + 7
    calls = 0
    while time.monotonic() < deadline:
        hook.list_tables()
        calls += 1
        time.sleep(0.05)
    logins = server.emulator.stats.count("login")
    assert 401 not in dap_statuses(server)
    # 3 s tokens refreshed at half-life: a few logins, never one per call
    assert 3 <= logins <= 8, logins
    assert calls > 5 * logins


def test_revoked_token_relogs_in_once_and_replays(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook()
    hook.list_tables()
    instructure_conn.emulator.faults.inject("get_schema", "revoke_token")
    schema = hook.get_table_schema("users")
    assert schema["version"] >= 1
    assert instructure_conn.emulator.stats.count("login") == 2
    assert instructure_conn.emulator.stats.count("get_schema") == 2
    assert dap_statuses(instructure_conn).count(401) == 1


def test_persistent_401_is_not_a_loop(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook()
    hook.list_tables()
    instructure_conn.emulator.faults.inject("list_tables", "revoke_token", count=2)
    from airflow_provider_instructure.exceptions import DapAuthenticationError

    with pytest.raises(DapAuthenticationError):
        hook.list_tables()
    assert instructure_conn.emulator.stats.count("list_tables") == 3  # first call, the 401, one replay


def test_sends_bearer_and_user_agent_never_x_instauth(instructure_conn: EmulatorServer) -> None:
    InstructureHook().list_tables()
    calls = list(instructure_conn.emulator.stats.recent)
    login = next(c for c in calls if c.route == "login")
    listing = next(c for c in calls if c.route == "list_tables")
    assert login.headers["authorization"].startswith("Basic ")
    assert listing.headers["authorization"].startswith("Bearer ")
    assert "x-instauth" not in listing.headers
    assert listing.headers["user-agent"] == USER_AGENT
    assert listing.headers["traceparent"].startswith("00-")


def test_get_conn_session_stays_authorized(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook()
    session = hook.get_conn()
    assert session is hook.get_conn()
    response = session.get(f"{instructure_conn.url}/dap/query/canvas/table")
    assert response.status_code == 200
    instructure_conn.emulator.revoke_tokens()
    assert session.get(f"{instructure_conn.url}/dap/query/canvas/table").status_code == 200
    assert instructure_conn.emulator.stats.count("login") == 2


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("429", {"retry_after": 1}),
        ("429", {"retry_after": 2, "http_date": True}),
        ("500", {}),
        ("503", {}),
        ("504", {}),
        ("502_html", {}),
        ("drop", {}),
    ],
)
def test_transient_failures_are_retried(instructure_conn: EmulatorServer, kind: str, params: dict) -> None:
    hook = InstructureHook(**FAST)
    hook.list_tables()
    instructure_conn.emulator.faults.inject("get_schema", kind, count=2, **params)
    started = time.monotonic()
    assert hook.get_table_schema("users")["version"] >= 1
    assert instructure_conn.emulator.stats.count("get_schema") == 3
    if kind == "429":
        # Retry-After honoured twice; an HTTP date has whole-second resolution, so 2 s may read as 1 s
        assert time.monotonic() - started >= 1.9


def test_retries_are_capped(instructure_conn: EmulatorServer) -> None:
    from airflow_provider_instructure.exceptions import DapServerError

    hook = InstructureHook(retry_limit=3, **FAST)
    instructure_conn.emulator.faults.inject("list_tables", "500", count=10)
    with pytest.raises(DapServerError, match="HTTP 500"):
        hook.list_tables()
    assert instructure_conn.emulator.stats.count("list_tables") == 3


def test_login_is_retried_on_server_errors(instructure_conn: EmulatorServer) -> None:
    instructure_conn.emulator.faults.inject("login", "503", count=2)
    assert InstructureHook(**FAST).list_tables()
    assert instructure_conn.emulator.stats.count("login") == 3


def test_404_is_not_retried_and_lists_tables(instructure_conn: EmulatorServer) -> None:
    hook = InstructureHook(**FAST)
    with pytest.raises(DapNotFoundError) as info:
        hook.get_table_schema("no_such_table")
    assert instructure_conn.emulator.stats.count("get_schema") == 1
    message = str(info.value)
    assert "'no_such_table' does not exist in namespace 'canvas'" in message
    assert "accounts" in message and "web_logs" not in message
    assert info.value.status == 404 and info.value.error_uuid


def test_unknown_namespace_says_so(instructure_conn: EmulatorServer) -> None:
    with pytest.raises(DapNotFoundError, match="Namespace 'nowhere' does not exist"):
        InstructureHook(**FAST).list_tables("nowhere")
    assert instructure_conn.emulator.stats.count("list_tables") == 1


@pytest.mark.parametrize("status", [400, 403])
def test_client_errors_are_not_retried(status: int, requests_mock) -> None:
    """Narrow edge case the emulator has no fault for: a 400/403 on a DAP route."""
    import os

    os.environ["AIRFLOW_CONN_MOCKED"] = json.dumps(
        {"conn_type": "instructure", "host": "https://dap.example", "login": "id", "password": "s"}
    )
    try:
        token = "a.eyJleHAiOiA0MTAyNDQ0ODAwfQ.c"  # exp in 2100
        requests_mock.post("https://dap.example/ids/auth/login", json={"access_token": token, "expires_in": 3600})
        body = {
            "error": {"type": "AccountDisabled" if status == 403 else "ValidationError", "uuid": "u-1", "message": "no"}
        }
        requests_mock.get("https://dap.example/dap/query/canvas/table", status_code=status, json=body)
        with pytest.raises(DapAccountError if status == 403 else Exception, match=f"HTTP {status}"):
            InstructureHook("mocked", **FAST).list_tables()
        assert requests_mock.call_count == 2  # one login, one call
    finally:
        del os.environ["AIRFLOW_CONN_MOCKED"]


def test_bad_credentials_fail_fast(dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = json.loads(dap_emulator.connection_json())
    conn["password"] = "wrong-secret"
    monkeypatch.setenv("AIRFLOW_CONN_WRONG", json.dumps(conn))
    with pytest.raises(DapCredentialsError, match=r"refused the credentials \(HTTP 403.*Client ID.*Client Secret"):
        InstructureHook("wrong", **FAST).list_tables()
    assert dap_emulator.emulator.stats.count("login") == 1


def test_disabled_account_is_not_retried(instructure_conn: EmulatorServer) -> None:
    instructure_conn.emulator.faults.inject("login", "account_disabled")
    with pytest.raises(DapAccountError, match="AccountDisabled"):
        InstructureHook(**FAST).list_tables()
    assert instructure_conn.emulator.stats.count("login") == 1


def test_unreachable_service_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connection refused
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN",
        json.dumps({"conn_type": "instructure", "host": f"http://127.0.0.1:{port}", "login": "id", "password": "s"}),
    )
    with pytest.raises(DapConnectionError, match=r"Could not reach the Identity Service.*after 3 attempts"):
        InstructureHook("down", retry_limit=3, **FAST).list_tables()


# -- test_connection and secrets -----------------------------------------------------------------


def test_test_connection(instructure_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, message = InstructureHook().test_connection()
    assert (
        ok and f"Connected to {instructure_conn.url} as us-east-1#demo-client-id" in message and "90 tables" in message
    )
    conn = json.loads(instructure_conn.connection_json())
    conn["password"] = "nope"
    monkeypatch.setenv("AIRFLOW_CONN_NOPE", json.dumps(conn))
    ok, message = InstructureHook("nope", **FAST).test_connection()
    assert not ok and "refused the credentials" in message and "nope" not in message.replace("'nope'", "")


def test_secrets_never_leak(
    instructure_conn: EmulatorServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    from airflow.sdk.log import redact

    caplog.set_level(logging.DEBUG)
    hook = InstructureHook(**FAST)
    instructure_conn.emulator.faults.inject("list_tables", "revoke_token")
    instructure_conn.emulator.faults.inject("get_schema", "500")
    tables = hook.list_tables()
    hook.get_table_schema("users")
    ok, message = hook.test_connection()
    try:
        hook.get_table_schema("missing_table")
    except DapNotFoundError as exc:
        error_text = str(exc) + repr(exc)
    token = hook._tokens.get().value
    secret = instructure_conn.client_secret
    captured = capsys.readouterr()
    haystacks = {
        "logs": caplog.text + captured.out + captured.err,
        "repr": repr(hook) + repr(hook.settings),
        "xcom": json.dumps([tables, ok, message]),
        "exception": error_text,
    }
    for where, text in haystacks.items():
        assert token not in text, where
        assert secret not in text, where
    assert redact(f"Authorization: Bearer {token}") == "Authorization: Bearer ***"


def test_json_responses_are_parsed_leniently(requests_mock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_LENIENT",
        json.dumps({"conn_type": "instructure", "host": "https://dap.example", "login": "id", "password": "s"}),
    )
    requests_mock.post(
        "https://dap.example/ids/auth/login",
        json={"access_token": "a.eyJleHAiOiA0MTAyNDQ0ODAwfQ.c", "expires_in": 3600, "new_field": 1},
    )
    requests_mock.get(
        "https://dap.example/dap/query/canvas/table", json={"tables": ["b", "a"], "next": None, "extra": {}}
    )
    assert InstructureHook("lenient").list_tables() == ["a", "b"]


def test_scope_is_sent_when_configured(requests_mock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SCOPED",
        json.dumps(
            {
                "conn_type": "instructure",
                "host": "https://dap.example",
                "login": "id",
                "password": "s",
                "extra": {"scope": "root-account-uuid"},
            }
        ),
    )
    requests_mock.post("https://dap.example/ids/auth/login", json={"access_token": "a.eyJleHAiOiA0MTAyNDQ0ODAwfQ.c"})
    requests_mock.get("https://dap.example/dap/query/canvas/table", json={"tables": []})
    InstructureHook("scoped").list_tables()
    assert requests_mock.last_request.qs == {"scope": ["root-account-uuid"]}
