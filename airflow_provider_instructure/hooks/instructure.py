"""``InstructureHook``: the only code that talks HTTP to DAP from workers."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from tenacity import Retrying

from airflow_provider_instructure._compat import AirflowNotFoundException, BaseHook, mask_secret
from airflow_provider_instructure.exceptions import (
    DapApiError,
    DapConnectionError,
    DapNotFoundError,
    InstructureConfigError,
)
from airflow_provider_instructure.hooks.dap_protocol import (
    LOGIN_FORM,
    LOGIN_PATH,
    USER_AGENT,
    AccessToken,
    SyncTokenCache,
    basic_auth_header,
    clear_shared_token_states,
    parse_login_response,
    raise_for_error,
    read_json,
    shared_token_state,
)
from airflow_provider_instructure.hooks.instructure_jobs import TRANSPORT_ERRORS, DapJobsMixin, _checked
from airflow_provider_instructure.hooks.retry import RetryPolicy, redact_url
from airflow_provider_instructure.hooks.settings import DapSettings, read_settings

KNOWN_NAMESPACES = ("canvas", "canvas_logs", "catalog", "new_quizzes")


_TOKEN_CACHES: dict[DapSettings, SyncTokenCache] = {}
_TOKEN_CACHES_LOCK = threading.Lock()


def clear_token_caches() -> None:
    """Forget every cached JWT of this process (tests use it to count logins per case)."""
    with _TOKEN_CACHES_LOCK:
        _TOKEN_CACHES.clear()
    clear_shared_token_states()


class _BearerAuth(AuthBase):
    """Attach a fresh JWT to every request; on a 401, log in again and replay once.

    Works for any request sent through the hook's session, so ``hook.get_conn()`` stays
    authorized by itself. The replay copies the original request, so headers and body are
    identical apart from the new token.
    """

    def __init__(self, tokens: SyncTokenCache, log: Any) -> None:
        self._tokens = tokens
        self._log = log

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._tokens.get()
        request.headers["Authorization"] = f"Bearer {token.value}"
        request.headers.pop("x-instauth", None)
        request.register_hook("response", self._replay_on_401)
        return request

    def _replay_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or request.headers.get("X-Dap-Replay"):
            return response
        rejected = (request.headers.get("Authorization") or "")[len("Bearer ") :] or None
        self._log.info(
            "DAP answered 401 to %s %s; logging in again and replaying it once", request.method, _path(request.url)
        )
        self._tokens.invalidate(rejected)
        response.content  # noqa: B018 - drain so the connection returns to the pool
        response.close()
        replay = request.copy()
        replay.headers["Authorization"] = f"Bearer {self._tokens.get().value}"
        replay.headers["X-Dap-Replay"] = "1"
        retried = response.connection.send(replay, **kwargs)
        retried.history.append(response)
        retried.request = replay
        return retried


def _path(url: str | None) -> str:
    return redact_url((url or "").split("?", 1)[0])


class InstructureHook(DapJobsMixin, BaseHook):
    """Talks to Instructure's Data Access Platform (Canvas Data 2).

    The connection holds the ClientID (login) and Secret (password). The hook logs in to
    the Identity Service on first use, caches the JWT until ``refresh_margin`` seconds
    before it expires, refreshes it transparently (one login for many calls, threads and
    hooks on the same connection in a process), and replays a request once after a 401.
    Construction does no I/O.

    :param instructure_conn_id: the ``instructure`` connection to use.
    :param namespace: default DAP namespace (else the connection's, else ``canvas``).
    :param timeout: read timeout per call, seconds.
    :param retry_limit: attempts per call on 5xx and connection errors.
    :param retry_delay: first back-off in seconds (exponential with jitter).
    :param retry_max_delay: cap of one back-off, seconds.
    :param rate_limit_wait: seconds one call may spend waiting on 429 answers in total.
    :param refresh_margin: refresh the JWT when fewer seconds than this remain.
    :param scope: DAP ``scope`` for credentials with several scopes.

    .. code-block:: python

        hook = InstructureHook()
        tables = hook.list_tables("canvas")
        schema = hook.get_table_schema("users")
    """

    conn_name_attr = "instructure_conn_id"
    default_conn_name = "instructure_default"
    conn_type = "instructure"
    hook_name = "Instructure DAP"

    def __init__(
        self,
        instructure_conn_id: str = default_conn_name,
        *,
        namespace: str | None = None,
        timeout: float | None = None,
        retry_limit: int | None = None,
        retry_delay: float | None = None,
        retry_max_delay: float | None = None,
        rate_limit_wait: float | None = None,
        refresh_margin: float | None = None,
        scope: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.instructure_conn_id = instructure_conn_id
        self._overrides: dict[str, Any] = {
            "namespace": namespace,
            "timeout": timeout,
            "retry_limit": retry_limit,
            "retry_delay": retry_delay,
            "retry_max_delay": retry_max_delay,
            "rate_limit_wait": rate_limit_wait,
            "refresh_margin": refresh_margin,
            "scope": scope,
        }
        self._trace_id = uuid.uuid4().hex
        #: seconds: a reused complete job expiring sooner than this is not used (as the official client)
        self.reuse_expiry_margin = 30.0
        #: object ids per ``POST /dap/object/url`` call [INF: DAP documents no maximum]
        self.url_batch = 100
        #: seconds after which a pre-signed URL is fetched again before use (they live ~15 min)
        self.url_max_age = 600.0

    def __repr__(self) -> str:
        return f"<InstructureHook conn_id={self.instructure_conn_id!r}>"

    # -- connection and session -------------------------------------------------------------

    @cached_property
    def settings(self) -> DapSettings:
        """The validated connection settings (read once, lazily)."""
        try:
            conn = self.get_connection(self.instructure_conn_id)
        except AirflowNotFoundException:
            raise InstructureConfigError(
                f"Connection {self.instructure_conn_id!r} is not defined (or Airflow could not parse it, e.g. a "
                "non-numeric port); create an 'instructure' connection "
                "(UI, CLI, or AIRFLOW_CONN_" + self.instructure_conn_id.upper() + " environment variable)"
            ) from None
        return read_settings(conn, self._overrides)

    @cached_property
    def _tokens(self) -> SyncTokenCache:
        # Shared by every hook on the same connection settings in this process, so mapped
        # tasks or several hooks in one task (or one dag.test()) log in once, not once each.
        with _TOKEN_CACHES_LOCK:
            cache = _TOKEN_CACHES.get(self.settings)
            if cache is None:
                cache = _TOKEN_CACHES[self.settings] = SyncTokenCache(
                    shared_token_state(self.settings, self.settings.refresh_margin), self._login
                )
            return cache

    @cached_property
    def _retry(self) -> RetryPolicy:
        return RetryPolicy(self.settings, TRANSPORT_ERRORS, self.log)

    def _base_headers(self) -> dict[str, str]:
        return {"User-Agent": USER_AGENT, "traceparent": f"00-{self._trace_id}-{uuid.uuid4().hex[:16]}-01"}

    @cached_property
    def _login_session(self) -> requests.Session:
        # A separate, plain session: the token call must never go through the bearer auth.
        session = requests.Session()
        session.headers.update(self._base_headers())
        return session

    @cached_property
    def session(self) -> requests.Session:
        """One long-lived session that stays authorized by itself."""
        session = requests.Session()
        session.headers.update(self._base_headers())
        session.auth = _BearerAuth(self._tokens, self.log)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def get_conn(self) -> requests.Session:
        """The authorized :class:`requests.Session` (``Authorization: Bearer`` added per request)."""
        return self.session

    @property
    def login_count(self) -> int:
        """How many logins the token cache this hook uses has made (for logs and tests)."""
        return self._tokens.logins

    # -- token lifecycle -------------------------------------------------------------------------

    def _login(self) -> AccessToken:
        settings = self.settings
        url = settings.base_url + LOGIN_PATH
        what = f"Login to the Identity Service at {settings.base_url}"
        try:
            for attempt in Retrying(**self._retry.tenacity_kwargs(what)):
                with attempt:
                    response = self._login_session.post(
                        url,
                        data=LOGIN_FORM,
                        headers={"Authorization": basic_auth_header(settings.client_id, settings.client_secret)},
                        timeout=(settings.connect_timeout, settings.timeout),
                    )
                    token = parse_login_response(
                        response.status_code, response.headers.get("Content-Type"), response.text
                    )
        except TRANSPORT_ERRORS as exc:
            if isinstance(exc, requests.exceptions.SSLError):
                raise DapConnectionError(
                    f"TLS to the Identity Service at {settings.base_url} failed ({redact_url(str(exc))[:200]}); "
                    f"if the server speaks plain HTTP (the local emulator), the API URL of connection "
                    f"{settings.conn_id!r} must start with http://"
                ) from None
            raise DapConnectionError(
                f"Could not reach the Identity Service at {settings.base_url} after {settings.retry_limit} attempts "
                f"({type(exc).__name__}); check the API URL of connection {settings.conn_id!r} and the network"
            ) from None
        mask_secret(token.value)
        self.log.info(
            "Logged in to DAP as %s (region %s); token valid until %s",
            settings.client_id,
            settings.region,
            datetime.fromtimestamp(token.expires_at, timezone.utc).isoformat(timespec="seconds"),
        )
        return token

    # -- the one funnel every API call goes through -----------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        scoped: bool = False,
    ) -> requests.Response:
        settings = self.settings
        if scoped and settings.scope:
            params = {**(params or {}), "scope": settings.scope}
        url = settings.base_url + path
        try:
            for attempt in Retrying(**self._retry.tenacity_kwargs(what)):
                with attempt:
                    response = self.session.request(
                        method, url, json=json, params=params, timeout=(settings.connect_timeout, settings.timeout)
                    )
                    raise_for_error(response)
        except TRANSPORT_ERRORS as exc:
            raise DapConnectionError(
                f"{what}: DAP at {settings.base_url} could not be reached after {settings.retry_limit} attempts "
                f"({type(exc).__name__}: {redact_url(str(exc))})"
            ) from None
        return response

    def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        return read_json(self._request(method, path, what=what, **kwargs), what)

    def _namespace(self, namespace: str | None) -> str:
        return _checked(namespace or self.settings.namespace, "namespace")

    # -- API verbs -----------------------------------------------------------------------------------

    def list_tables(self, namespace: str | None = None) -> list[str]:
        """Names of the tables in ``namespace``, sorted.

        :param namespace: DAP namespace; the hook's default when omitted.
        """
        ns = self._namespace(namespace)
        try:
            body = self._json("GET", f"/dap/query/{ns}/table", what=f"List tables of {ns!r}", scoped=True)
        except DapNotFoundError as exc:
            raise _with_message(exc, _missing_namespace(ns, exc)) from None
        return sorted(str(t) for t in body.get("tables") or [])

    def get_table_schema(self, table: str, namespace: str | None = None) -> dict[str, Any]:
        """The versioned JSON schema of a table: ``{"schema": {...}, "version": <int>}``.

        :param table: table name, e.g. ``users``.
        :param namespace: DAP namespace; the hook's default when omitted.
        """
        ns = self._namespace(namespace)
        tbl = _checked(table, "table")
        try:
            body = self._json(
                "GET", f"/dap/query/{ns}/table/{tbl}/schema", what=f"Get schema of {ns}.{tbl}", scoped=True
            )
        except DapNotFoundError as exc:
            raise self._explain_missing(exc, ns, tbl) from None
        if "schema" not in body or "version" not in body:
            raise DapApiError(f"DAP answered the schema of {ns}.{tbl} without 'schema'/'version'")
        return {"schema": body["schema"], "version": int(body["version"])}

    def _explain_missing(self, exc: DapNotFoundError, namespace: str, table: str) -> DapNotFoundError:
        """Turn a 404 on a table into a message that lists the tables that do exist."""
        if exc.kind == "namespace":
            return _with_message(exc, _missing_namespace(namespace, exc))
        try:
            tables = self.list_tables(namespace)
        except Exception:  # the listing is a courtesy; the original error is what matters
            return exc
        return _with_message(
            exc, f"Table {table!r} does not exist in namespace {namespace!r}. Tables there: {', '.join(tables)}. {exc}"
        )

    def test_connection(self) -> tuple[bool, str]:
        """Log in and list the default namespace's tables; never raises, never shows the token.

        The message names the API URL and Client ID, never the connection id: Airflow's test
        endpoint (``POST /api/v2/connections/test``, the UI's Test button) runs the hook under a
        random transient id, which would only confuse the user.

        :return: ``(True, message)`` or ``(False, reason)``.
        """
        try:
            tables = self.list_tables()
            token = self._tokens.get()
            until = datetime.fromtimestamp(token.expires_at, timezone.utc).isoformat(timespec="seconds")
            return True, (
                f"Connected to {self.settings.base_url} as {self.settings.client_id}; token valid until {until}; "
                f"namespace {self.settings.namespace!r} has {len(tables)} tables"
            )
        except Exception as exc:
            message = redact_url(str(exc)) or type(exc).__name__
            for named, anonymous in (("Connection {!r}", "This connection"), ("connection {!r}", "this connection")):
                message = message.replace(named.format(self.instructure_conn_id), anonymous)
            message = message.replace(repr(self.instructure_conn_id), "this connection")
            if not isinstance(exc, InstructureConfigError):
                message = f"{message} (API URL {self.settings.base_url}, Client ID {self.settings.client_id})"
            if self._masked_secret():
                # Airflow 3.0/3.1.0's test endpoint tests the form as posted: the edit form's masked
                # secret is not replaced by the saved one (3.2 merges the saved connection).
                message = (
                    f"{message}. The client secret was the masked placeholder '***': this Airflow's Test "
                    "button does not use the saved secret; type the secret again, then Test"
                )
            return False, message

    def _masked_secret(self) -> bool:
        try:
            return self.settings.client_secret == "***"
        except Exception:  # settings that failed to load: the original error says why
            return False

    # -- Airflow 2 / 3.0-3.1 connection form (3.2+ reads get_provider_info) ----------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, StringField
        from wtforms.validators import NumberRange, Optional

        return {
            "namespace": StringField(lazy_gettext("Default namespace"), widget=BS3TextFieldWidget(), default="canvas"),
            "timeout": IntegerField(
                lazy_gettext("HTTP timeout (seconds)"), validators=[Optional(), NumberRange(min=1)], default=60
            ),
            "retry_limit": IntegerField(
                lazy_gettext("Retry limit"), validators=[Optional(), NumberRange(min=1)], default=6
            ),
            "scope": StringField(lazy_gettext("Scope"), widget=BS3TextFieldWidget()),
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema"],
            "relabeling": {
                "login": "Client ID",
                "password": "Client Secret",
                "host": "API URL",
                "port": "Port (443 for Instructure)",
            },
            "placeholders": {
                "login": "us-east-1#12345678-aaaa-bbbb-cccc-1234567890ab",
                "host": "https://api-gateway.instructure.com",
                "port": "443",
            },
        }


def _with_message(exc: DapApiError, message: str) -> Any:
    clone = type(exc)(
        message,
        status=exc.status,
        error_type=exc.error_type,
        error_uuid=exc.error_uuid,
        error_message=exc.error_message,
        body=exc.body,
    )
    return clone


def _missing_namespace(namespace: str, exc: DapApiError) -> str:
    # DAP's own message may list the namespaces this key can see; a second, generic list would contradict it.
    known = "" if "amespaces" in str(exc) else f" (namespaces DAP documents: {', '.join(KNOWN_NAMESPACES)})"
    return f"Namespace {namespace!r} does not exist in DAP{known}. {exc}"
