"""Identity Service login and the bearer check of every ``/dap`` route (dap-api.md section 2)."""

from __future__ import annotations

import base64
import time
import uuid

import jwt
import pytest
import requests

from airflow_provider_instructure.emulator.config import DEMO_CLIENT_ID
from tests.emulator.conftest import Serve, Shared
from tests.emulator.dap_wire import DapApi

ERROR_KEYS = {"type", "uuid", "message"}


def assert_error(response: requests.Response, status: int, type_: str) -> dict:
    """The DAP error envelope: exactly ``{"error": {type, uuid, message}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["type"] == type_
    uuid.UUID(body["error"]["uuid"])
    assert body["error"]["message"]
    return body["error"]


# -- login -------------------------------------------------------------------------------------


def test_login_returns_exactly_four_keys_and_an_hs256_jwt(serve: Serve) -> None:
    server, api = serve(token_lifetime=1234)
    before = int(time.time())
    response = api.login()
    after = int(time.time())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1234
    assert isinstance(body["scope"], str)
    token = body["access_token"]
    assert token.count(".") == 2
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})  # what the official client does
    assert isinstance(claims["exp"], int)
    assert before + 1234 <= claims["exp"] <= after + 1235
    # The basic-auth username may contain '#': it is part of the ClientID.
    assert "#" in api.client_id
    assert server.emulator.stats.count("login") == 1


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        ((DEMO_CLIENT_ID, "wrong-secret"), "wrong secret"),
        (("us-east-1#nobody", "whatever"), "unknown client"),
        (None, "no Authorization header"),
    ],
)
def test_bad_credentials_answer_403_by_default(shared: Shared, auth: tuple[str, str] | None, reason: str) -> None:
    _server, api = shared
    response = api.login(auth=auth)
    error = assert_error(response, 403, "AuthenticationError")
    assert "credential" in error["message"].lower(), reason


def test_bad_credentials_answer_401_when_configured(serve: Serve) -> None:
    _server, api = serve(login_reject_status=401)
    assert_error(api.login(auth=(DEMO_CLIENT_ID, "nope")), 401, "AuthenticationError")
    assert api.login().status_code == 200


def test_garbled_basic_header_is_refused(shared: Shared) -> None:
    server, _api = shared
    response = requests.post(
        f"{server.url}/ids/auth/login",
        headers={"Authorization": "Basic !!!not-base64!!!"},
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert_error(response, 403, "AuthenticationError")
    no_colon = base64.b64encode(DEMO_CLIENT_ID.encode()).decode()
    response = requests.post(
        f"{server.url}/ids/auth/login",
        headers={"Authorization": f"Basic {no_colon}"},
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert_error(response, 403, "AuthenticationError")


@pytest.mark.parametrize("data", [{}, {"grant_type": "password"}, {"grant_type": ""}, "garbage&&=="])
def test_missing_or_garbage_grant_type_is_400(shared: Shared, data: object) -> None:
    _server, api = shared
    assert_error(api.login(data=data), 400, "ValidationError")


def test_disabled_account_is_403_account_disabled(serve: Serve) -> None:
    server, api = serve()
    server.emulator.config.disabled_clients = {DEMO_CLIENT_ID}
    error = assert_error(api.login(), 403, "AccountDisabled")
    assert "disabled" in error["message"].lower()
    server.emulator.config.disabled_clients = set()
    assert api.login().status_code == 200


def test_account_disabled_fault_hits_one_login(serve: Serve) -> None:
    server, api = serve()
    server.emulator.faults.inject("login", "account_disabled")
    assert_error(api.login(), 403, "AccountDisabled")
    assert api.login().status_code == 200


def test_each_login_failure_has_its_own_body(serve: Serve) -> None:
    server, api = serve()
    server.emulator.config.clients["us-east-1#off"] = "s"
    server.emulator.config.disabled_clients = {"us-east-1#off"}
    answers = {
        "bad credentials": api.login(auth=(DEMO_CLIENT_ID, "x")),
        "bad grant_type": api.login(data={"grant_type": "x"}),
        "disabled": api.login(auth=("us-east-1#off", "s")),
    }
    kinds = {(r.status_code, r.json()["error"]["type"], r.json()["error"]["message"]) for r in answers.values()}
    assert len(kinds) == 3, kinds


def test_login_counter_counts_every_attempt(serve: Serve) -> None:
    server, api = serve()
    api.login()
    api.login(auth=(DEMO_CLIENT_ID, "x"))
    api.login(data={})
    assert server.emulator.stats.count("login") == 3
    assert server.emulator.stats.count("list_tables") == 0


# -- bearer checks -------------------------------------------------------------------------------

DAP_ROUTES = [
    ("GET", "/dap/query/canvas/table"),
    ("GET", "/dap/query/canvas/table/users/schema"),
    ("POST", "/dap/query/canvas/table/users/data"),
    ("GET", "/dap/job/00000000-0000-0000-0000-000000000000"),
    ("POST", "/dap/object/url"),
]


@pytest.mark.parametrize(("method", "path"), DAP_ROUTES)
def test_every_dap_route_needs_a_bearer_token(shared: Shared, method: str, path: str) -> None:
    server, _api = shared
    response = requests.request(method, server.url + path, json={"format": "tsv"}, timeout=5)
    error = assert_error(response, 401, "AuthenticationError")
    assert "missing" in error["message"].lower()


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-jwt", "Bearer a.b.c", "Bearer ", "Basic Zm9vOmJhcg==", "bearer"],
)
def test_malformed_authorization_is_401(shared: Shared, header: str) -> None:
    server, _api = shared
    response = requests.get(f"{server.url}/dap/query/canvas/table", headers={"Authorization": header}, timeout=5)
    assert_error(response, 401, "AuthenticationError")


def test_expired_token_is_401(serve: Serve) -> None:
    _server, api = serve(token_lifetime=1)
    token = api.token
    assert api.get("/dap/query/canvas/table").status_code == 200
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    error = assert_error(api.get("/dap/query/canvas/table"), 401, "AuthenticationError")
    assert "expired" in error["message"]


def test_token_signed_with_a_foreign_key_is_401(serve: Serve) -> None:
    server, api = serve()
    genuine = jwt.decode(api.token, options={"verify_signature": False})
    forged = jwt.encode(genuine, "somebody-elses-key-of-32-bytes!!", algorithm="HS256")
    response = requests.get(
        f"{server.url}/dap/query/canvas/table", headers={"Authorization": f"Bearer {forged}"}, timeout=5
    )
    error = assert_error(response, 401, "AuthenticationError")
    assert "signature" in error["message"]


def test_token_of_another_emulator_is_401(serve: Serve) -> None:
    _first, first_api = serve()
    second, _second_api = serve()
    response = requests.get(
        f"{second.url}/dap/query/canvas/table", headers={"Authorization": f"Bearer {first_api.token}"}, timeout=5
    )
    assert_error(response, 401, "AuthenticationError")


def test_revoked_token_is_401_and_a_new_login_works(serve: Serve) -> None:
    server, api = serve()
    assert api.get("/dap/query/canvas/table").status_code == 200
    assert server.emulator.revoke_tokens() == 1
    error = assert_error(api.get("/dap/query/canvas/table"), 401, "AuthenticationError")
    assert "revoked" in error["message"]
    fresh = DapApi(server.url)
    assert fresh.get("/dap/query/canvas/table").status_code == 200


def test_x_instauth_is_accepted(shared: Shared) -> None:
    server, api = shared
    response = requests.get(f"{server.url}/dap/query/canvas/table", headers={"x-instauth": api.token}, timeout=5)
    assert response.status_code == 200, response.text
    assert server.emulator.stats.recent[-1].headers["x-instauth"] == api.token


def test_authorization_takes_precedence_over_x_instauth(shared: Shared) -> None:
    server, api = shared
    url = f"{server.url}/dap/query/canvas/table"
    good = {"Authorization": f"Bearer {api.token}", "x-instauth": "garbage"}
    assert requests.get(url, headers=good, timeout=5).status_code == 200
    bad = {"Authorization": "Bearer garbage", "x-instauth": api.token}
    assert_error(requests.get(url, headers=bad, timeout=5), 401, "AuthenticationError")
