"""The DAP wire protocol without I/O: shared by the sync hook (requests) and the async trigger (httpx).

Everything that decides *what* to send and *how to read* an answer lives here once:
the login request, reading a login answer into an :class:`AccessToken`, when a token
must be refreshed, mapping an error body to a typed exception, reading ``Retry-After``,
which failures are worth a retry, and the job model. The two transports only move bytes.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_provider_instructure import __version__
from airflow_provider_instructure.exceptions import (
    DapAccountError,
    DapApiError,
    DapAuthenticationError,
    DapCredentialsError,
    DapJobFailed,
    DapNoDataYetError,
    DapNotFoundError,
    DapOutOfRangeError,
    DapRateLimitError,
    DapServerError,
    DapSnapshotRequiredError,
    DapUnexpectedResponse,
    DapValidationError,
    InstructureError,
)

# The job half (names, timestamps, queries, the job model, polling) lives in dap_jobs.py and is
# re-exported here, so that callers keep one protocol module.
from airflow_provider_instructure.hooks.dap_jobs import (  # noqa: F401 - re-exported
    DEFAULT_DEFER_AFTER,
    DEFAULT_TRIGGER_FIRST_DELAY,
    FORMATS,
    MODES,
    POLL_FACTOR,
    POLL_FIRST,
    JobStatus,
    PollSchedule,
    build_query,
    check_name,
    format_timestamp,
    job_expires_within,
    parse_timestamp,
)

#: ``User-Agent`` of every request; the version is the package's single source of truth.
USER_AGENT = f"airflow-provider-instructure/{__version__}"
LOGIN_PATH = "/ids/auth/login"
LOGIN_FORM = {"grant_type": "client_credentials"}
DEFAULT_API_URL = "https://api-gateway.instructure.com"
#: Refresh this many seconds before ``exp``, as the official client does.
DEFAULT_REFRESH_MARGIN = 300.0

_ACCOUNT_TYPES = {"AccountNotOnboarded", "AccountDisabled", "AccountUnderMaintenance", "RequestTypeForbidden"}


# -- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    """A JWT and when it expires. ``repr`` never shows the token."""

    value: str = field(repr=False)
    expires_at: float  # epoch seconds
    issued_at: float
    token_type: str = "Bearer"

    def remaining(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def is_fresh(self, margin: float, now: float | None = None) -> bool:
        """True while more than ``margin`` seconds remain, the refresh rule shared by every caller.

        A token that lives shorter than twice the margin (e.g. a test server issuing
        10-second tokens) is refreshed once half its life has passed instead, so it is
        still used rather than refreshed on every call.
        """
        lifetime_margin = min(margin, max(0.0, (self.expires_at - self.issued_at) / 2))
        return self.remaining(now) > lifetime_margin


def basic_auth_header(client_id: str, client_secret: str) -> str:
    raw = f"{client_id}:{client_secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def jwt_expiry(token: str) -> float | None:
    """Read ``exp`` from a JWT without verifying it (we are not its audience)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        exp = json.loads(base64.urlsafe_b64decode(payload)).get("exp")
        return float(exp) if exp is not None else None
    except (IndexError, ValueError, TypeError, AttributeError):
        return None


def parse_login_response(status: int, content_type: str | None, text: str, now: float | None = None) -> AccessToken:
    """Turn the Identity Service's answer into an :class:`AccessToken` or a typed error.

    Credentials refused (400/401/403) raise :class:`DapCredentialsError` or
    :class:`DapAccountError` (never retried); 429/5xx raise retryable errors.
    """
    now = time.time() if now is None else now
    if status != 200:
        raise login_error(status, content_type, text)
    body = _json_object(text)
    token = body.get("access_token") if body else None
    if not isinstance(token, str) or not token:
        raise DapUnexpectedResponse(
            "The Identity Service answered 200 without an access_token; check the API URL of the connection.",
            status=status,
        )
    expires_at = jwt_expiry(token)
    if expires_at is None:
        try:
            expires_at = now + float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_at = now + 3600
    return AccessToken(token, expires_at, now, str(body.get("token_type") or "Bearer"))


def login_error(status: int, content_type: str | None, text: str) -> DapApiError:
    error = map_error(status, content_type, text)
    if isinstance(error, (DapRateLimitError, DapServerError)):
        return error
    if isinstance(error, DapAccountError):
        return error
    if status in (404, 405):
        # Not a verdict on the credentials: nothing at <API URL>/ids/auth/login answers logins.
        return DapCredentialsError(
            f"No Identity Service answered at the API URL (HTTP {status} for {LOGIN_PATH}). Check the API URL "
            "of the connection: it is the gateway's address without a path, e.g. https://api-gateway.instructure.com",
            status=status,
            error_type=error.error_type,
            error_uuid=error.error_uuid,
            error_message=error.error_message,
            body=error.body,
        )
    return DapCredentialsError(
        f"The Identity Service refused the credentials (HTTP {status}"
        f"{', ' + error.error_type if error.error_type else ''}: {error.error_message or 'no message'}). "
        "Check the Client ID (login) and Client Secret (password) of the connection; "
        "keys are created at identity.instructure.com and may have expired.",
        status=status,
        error_type=error.error_type,
        error_uuid=error.error_uuid,
        error_message=error.error_message,
        body=error.body,
    )


class TokenState:
    """The cached token and the rule for when it must be replaced. No I/O and no locking:
    the sync and async caches wrap it with their own lock and login call."""

    def __init__(self, margin: float = DEFAULT_REFRESH_MARGIN) -> None:
        self.margin = margin
        self.token: AccessToken | None = None
        self.logins = 0

    def current(self, now: float | None = None) -> AccessToken | None:
        """The cached token if it is still fresh, else ``None`` (a login is due)."""
        token = self.token
        if token is not None and token.is_fresh(self.margin, now):
            return token
        return None

    def store(self, token: AccessToken) -> None:
        self.token = token
        self.logins += 1

    def invalidate(self, rejected: str | None) -> None:
        """Forget ``rejected`` (a token DAP answered 401 to) unless a newer one already replaced it."""
        if self.token is not None and (rejected is None or self.token.value == rejected):
            self.token = None


_SHARED_STATES: dict[Any, TokenState] = {}
_SHARED_STATES_LOCK = threading.Lock()


def shared_token_state(key: Any, margin: float) -> TokenState:
    """The one :class:`TokenState` of this process for ``key`` (the connection settings).

    The sync hook and the async trigger client both use it, so any code path in a process
    that already holds a fresh token for a connection reuses it instead of logging in.
    """
    with _SHARED_STATES_LOCK:
        state = _SHARED_STATES.get(key)
        if state is None:
            state = _SHARED_STATES[key] = TokenState(margin)
        return state


def clear_shared_token_states() -> None:
    """Forget every token of this process (tests use it to count logins per case)."""
    with _SHARED_STATES_LOCK:
        _SHARED_STATES.clear()


class SyncTokenCache:
    """Thread-safe token cache: concurrent callers trigger at most one login."""

    def __init__(self, state: TokenState, login: Any) -> None:
        self._state = state
        self._login = login
        self._lock = threading.Lock()

    @property
    def logins(self) -> int:
        return self._state.logins

    def get(self) -> AccessToken:
        token = self._state.current()
        if token is not None:
            return token
        with self._lock:
            token = self._state.current()
            if token is None:
                token = self._login()
                self._state.store(token)
            return token

    def invalidate(self, rejected: str | None) -> None:
        with self._lock:
            self._state.invalidate(rejected)


# -- errors ---------------------------------------------------------------------------------


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _is_json(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";")[0].strip().lower().endswith("json")  # type: ignore[union-attr]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: an integer, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def map_error(status: int, content_type: str | None, text: str, retry_after: str | None = None) -> DapApiError:
    """Map an error answer (status >= 400) to the matching typed exception.

    Parsing is lenient: unknown fields are kept in ``body`` and ignored otherwise.
    """
    body = _json_object(text) if _is_json(content_type) or text.lstrip().startswith("{") else None
    err = body.get("error") if body else None
    err = err if isinstance(err, dict) else {}
    etype = err.get("type") if isinstance(err.get("type"), str) else None
    euuid = err.get("uuid") if isinstance(err.get("uuid"), str) else None
    emsg = err.get("message") if isinstance(err.get("message"), str) else None
    if emsg is None and body and isinstance(body.get("message"), str):
        emsg = body["message"]  # gateway-style {"message": ...}
    detail = f"HTTP {status}"
    if etype:
        detail += f" {etype}"
    detail += f": {emsg or _snippet(text) or 'no message'}"
    if euuid:
        detail += f" (error uuid {euuid})"
    kwargs: dict[str, Any] = {
        "status": status,
        "error_type": etype,
        "error_uuid": euuid,
        "error_message": emsg,
        "body": err,
    }
    if is_no_data_yet(emsg):
        # Whatever the status (DAP documents ProcessingError as 400 or 500): not worth a retry.
        return DapNoDataYetError(f"DAP has no data for this table yet ({detail})", **kwargs)
    if status == 429:
        seconds = parse_retry_after(retry_after)
        return DapRateLimitError(f"DAP rate limit reached ({detail})", retry_after=seconds, **kwargs)
    if status >= 500 or body is None:
        return DapServerError(f"DAP service error ({detail})", **kwargs)
    if status == 401:
        return DapAuthenticationError(f"DAP rejected the access token ({detail})", **kwargs)
    if status == 403 and etype in _ACCOUNT_TYPES:
        return DapAccountError(f"DAP refused the account ({detail}); contact your Instructure administrator", **kwargs)
    if status == 404:
        return DapNotFoundError(f"Not found ({detail})", **kwargs)
    if status == 400 and ("since" in err or etype in ("OutOfRangeError", "SnapshotRequiredError")):
        cls = DapSnapshotRequiredError if etype == "SnapshotRequiredError" else DapOutOfRangeError
        return cls(
            f"DAP cannot serve this time range ({detail}); allowed since={err.get('since')} "
            f"until={err.get('until')}. Take a new snapshot.",
            **kwargs,
        )
    if status == 400:
        return DapValidationError(f"DAP rejected the request ({detail})", **kwargs)
    return DapApiError(f"DAP error ({detail})", **kwargs)


#: DAP's ``ProcessingError`` message for a table without data [user-needs.md section 3, finding 10].
_NO_DATA_YET = re.compile(r"\bno data available yet\b", re.IGNORECASE)


def is_no_data_yet(message: Any) -> bool:
    """True for DAP's "There is no data available yet" (any case), from an error answer or a failed job."""
    return isinstance(message, str) and _NO_DATA_YET.search(message) is not None


def job_failure(job_id: str, error: dict[str, Any] | None) -> InstructureError:
    """The exception for a job that ended ``failed``: :class:`DapNoDataYetError` when DAP says the
    table has no data yet, else :class:`DapJobFailed`. The sync hook, the sensor and the operators
    resuming from the trigger's event all go through here."""
    error = error if isinstance(error, dict) else {}
    if is_no_data_yet(error.get("message")):
        return DapNoDataYetError(
            f"DAP job {job_id} failed: {error.get('type') or 'error'}: {error.get('message')} "
            f"(error uuid {error.get('uuid') or 'n/a'})",
            job_id=job_id,
            error_type=error.get("type"),
            error_uuid=error.get("uuid"),
            error_message=error.get("message"),
            body=error,
        )
    return DapJobFailed(job_id, error)


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_json(status: int, content_type: str | None, text: str, what: str) -> dict[str, Any]:
    """Read a 2xx JSON object leniently, or raise :class:`DapUnexpectedResponse`."""
    body = _json_object(text)
    if body is None:
        raise DapUnexpectedResponse(
            f"DAP answered {what} with HTTP {status} but not a JSON object ({_snippet(text, 120)!r}); "
            "is the connection's API URL pointing at the DAP API gateway?",
            status=status,
        )
    return body


def raise_for_error(response: Any) -> None:
    """Raise the typed error for an error answer of either transport (``requests`` or ``httpx``
    responses both offer ``status_code``, ``headers`` and ``text``)."""
    if response.status_code >= 400:
        raise map_error(
            response.status_code,
            response.headers.get("Content-Type"),
            response.text,
            response.headers.get("Retry-After"),
        )


def read_json(response: Any, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer of either transport."""
    return parse_json(response.status_code, response.headers.get("Content-Type"), response.text, what)


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx and unparseable proxy answers; never 400/401/403/404 (transport errors are
    classified by each transport)."""
    return isinstance(exc, (DapRateLimitError, DapServerError))
