"""The ``instructure`` connection as the Airflow 3.3.2 UI saves, edits and tests it (issue 8, findings 2-4).

The request bodies are the UI's own (``airflow/ui/dist``, Airflow 3.3.2): on *Save* an empty
field is left out (``port: e.port === "" ? undefined : Number(e.port)``), on *Test* every form
field is posted and the port is ``Number(port)``, i.e. ``0`` when empty. A field the provider's
form hides keeps its empty default on a new connection. The endpoint is Airflow's real FastAPI
app, in process, against the emulator over HTTP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.get_provider_info import get_provider_info
from airflow_provider_instructure.hooks.settings import base_url_of

pytestmark = pytest.mark.dagtest  # uses the Airflow metadata DB

CONN_ID = "my_canvas_dap"


@pytest.fixture(scope="module")
def api(airflow_db) -> Iterator[Any]:
    """Airflow's public REST API app (simple auth manager, everyone admin; Test enabled)."""
    from fastapi.testclient import TestClient

    settings = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-jwt-secret",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    from airflow.api_fastapi.app import create_app

    try:
        with TestClient(create_app()) as client:
            if client.get("/api/v2/connections").status_code == 401:
                # Airflow 3.0 (version matrix): all-admins still needs a token, which the UI gets
                # from the simple auth manager and sends as a bearer token.
                token = client.get("/auth/token").json()["access_token"]
                client.headers["Authorization"] = f"Bearer {token}"
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _form() -> dict[str, Any]:
    (conn_type,) = get_provider_info()["connection-types"]
    return conn_type


def _typed_by_user(values: dict[str, Any]) -> dict[str, str]:
    """What the form holds after the user typed ``values``: hidden fields stay at their empty default."""
    hidden = set(_form()["ui-field-behaviour"]["hidden-fields"])
    fields = {"description": "", "host": "", "login": "", "password": "", "port": "", "schema": ""}
    fields.update({k: str(v) for k, v in values.items() if k not in hidden})
    return fields


def _extra_as_the_form_sends_it() -> str:
    return json.dumps({name: f["schema"].get("default") for name, f in _form()["conn-fields"].items()})


def _save_body(form: dict[str, str]) -> dict[str, Any]:
    def blank(v: str) -> str | None:
        return None if v == "" else v

    body = {
        "conn_type": "instructure",
        "connection_id": CONN_ID,
        "description": blank(form["description"]),
        "extra": _extra_as_the_form_sends_it(),
        "host": blank(form["host"]),
        "login": blank(form["login"]),
        "password": blank(form["password"]),
        "port": None if form["port"] == "" else int(form["port"]),
        "schema": blank(form["schema"]),
    }
    return {k: v for k, v in body.items() if v is not None}  # undefined fields are not serialized


def _test_body(form: dict[str, str], password: str) -> dict[str, Any]:
    return {
        "conn_type": "instructure",
        "connection_id": CONN_ID,
        "description": form["description"],
        "extra": _extra_as_the_form_sends_it(),
        "host": form["host"],
        "login": form["login"],
        "password": password,
        "port": int(form["port"] or 0),  # Number("") === 0
        "schema": form["schema"],
    }


def _test_endpoint_merges_the_saved_connection() -> bool:
    """Airflow 3.2+'s ``POST /connections/test`` starts from the saved connection (a masked ``***``
    secret then means the saved one); older releases test the posted fields alone."""
    import inspect

    from airflow.api_fastapi.core_api.routes.public import connections

    return "get_connection_from_secrets" in inspect.getsource(connections.test_connection)


def test_ui_saved_connection_passes_the_test_button(api: Any, dap_emulator: EmulatorServer) -> None:
    # filled as the README tells a user to fill the form
    form = _typed_by_user(
        {
            "host": dap_emulator.url,
            "port": dap_emulator.port,
            "login": dap_emulator.client_id,
            "password": dap_emulator.client_secret,
        }
    )
    api.delete(f"/api/v2/connections/{CONN_ID}")
    saved = api.post("/api/v2/connections", json=_save_body(form))
    assert saved.status_code == 201, saved.text
    try:
        # right after saving, and later from the edit form (the password then shows masked)
        for password in (dap_emulator.client_secret, "***"):
            answer = api.post("/api/v2/connections/test", json=_test_body(form, password))
            assert answer.status_code == 200, answer.text
            result = answer.json()
            if password == "***" and not _test_endpoint_merges_the_saved_connection():
                # Airflow 3.0/3.1.0 (version matrix) test the form as posted: the hook says what to do
                assert result["status"] is False, result
                assert "type the secret again" in result["message"], result
                continue
            assert result["status"] is True, result
            assert result["message"].startswith(f"Connected to {dap_emulator.url} as {dap_emulator.client_id}")
            assert dap_emulator.client_secret not in result["message"]
    finally:
        api.delete(f"/api/v2/connections/{CONN_ID}")


def test_test_button_message_never_names_the_transient_connection_id(api: Any) -> None:
    # a connection that fails validation: the message must speak of "this connection", not of
    # the random id Airflow's test endpoint runs the hook under
    body = _test_body(_typed_by_user({"host": "ftp://example.invalid", "login": "id", "port": 21}), "secret")
    answer = api.post("/api/v2/connections/test", json={**body, "connection_id": "never_saved"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert result["message"].startswith("This connection: API URL 'ftp://example.invalid'"), result["message"]
    assert "never_saved" not in result["message"]


@pytest.mark.parametrize(
    ("host", "schema", "port", "expected"),
    [
        ("https://api-gateway.instructure.com", None, 443, "https://api-gateway.instructure.com"),
        ("https://api-gateway.instructure.com", None, 0, "https://api-gateway.instructure.com"),  # UI's empty
        ("http://127.0.0.1:8765", None, 8765, "http://127.0.0.1:8765"),
        ("http://127.0.0.1", None, 8765, "http://127.0.0.1:8765"),
        ("127.0.0.1", "http", 8765, "http://127.0.0.1:8765"),  # the URI form
        ("https://dap.example.edu/proxy/", "http", None, "https://dap.example.edu/proxy"),  # schema ignored
    ],
)
def test_api_url_from_the_form_fields(host: str, schema: str | None, port: int | None, expected: str) -> None:
    assert base_url_of("c", host, schema, port) == expected


@pytest.mark.parametrize(
    ("host", "schema", "port", "says"),
    [
        # finding 3: an emulator connection whose API URL was changed to the gateway, stale Port left
        ("https://api-gateway.instructure.com", "http", 18765, "serves HTTPS on port 443 only"),
        ("api-gateway.instructure.com", "http", 18765, "serves HTTPS on port 443 only"),
        ("http://127.0.0.1:8765", None, 18765, "names port 8765 but the Port field says 18765"),
        ("https://example.edu", None, 70000, "Port must be a number from 1 to 65535"),
    ],
)
def test_stale_or_conflicting_fields_are_refused_before_any_call(
    host: str, schema: str | None, port: int, says: str
) -> None:
    with pytest.raises(InstructureConfigError, match=says):
        base_url_of("c", host, schema, port)


# -- found by a first-time user (issue 8 review) ------------------------------------------------


def test_gateway_with_a_trailing_dot_is_still_the_gateway() -> None:
    with pytest.raises(InstructureConfigError, match="serves HTTPS on port 443 only"):
        base_url_of("c", "http://api-gateway.instructure.com.", None, 443)


def test_bare_ipv6_address_asks_for_brackets() -> None:
    with pytest.raises(InstructureConfigError, match=r"IPv6 address in brackets"):
        base_url_of("c", "::1", None, 8765)
    assert base_url_of("c", "[::1]", "http", 8765) == "http://[::1]:8765"


def _hook_for(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, host: str) -> Any:
    from airflow_provider_instructure.hooks.instructure import InstructureHook

    conn = json.loads(server.connection_json())
    conn["host"] = host
    conn.pop("port")
    monkeypatch.setenv("AIRFLOW_CONN_ODD_URL", json.dumps(conn))
    return InstructureHook("odd_url", retry_delay=1.0)


def test_api_url_with_a_path_blames_the_url_not_the_credentials(
    dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, message = _hook_for(monkeypatch, dap_emulator, f"{dap_emulator.url}/dap").test_connection()
    assert not ok
    assert "No Identity Service answered at the API URL" in message and "refused the credentials" not in message


def test_https_to_a_plain_http_server_fails_at_once_with_a_hint(
    dap_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    hook = _hook_for(monkeypatch, dap_emulator, f"https://127.0.0.1:{dap_emulator.port}")
    started = time.monotonic()
    ok, message = hook.test_connection()
    assert not ok and "must start with http://" in message, message
    # no retries of a handshake that cannot succeed (6 attempts with 1 s back-off take well over 10 s)
    assert time.monotonic() - started < 8


def test_unknown_namespace_lists_only_what_dap_says(instructure_conn: EmulatorServer) -> None:
    from airflow_provider_instructure.exceptions import DapNotFoundError
    from airflow_provider_instructure.hooks.instructure import InstructureHook

    with pytest.raises(DapNotFoundError) as info:
        InstructureHook().list_tables("nosuch")
    message = str(info.value)
    assert "Namespace 'nosuch' does not exist in DAP" in message
    assert message.count("canvas_logs") == 1, message
