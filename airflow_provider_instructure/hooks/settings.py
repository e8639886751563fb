"""Read an ``instructure`` Airflow Connection into validated settings, before any network call.

Shared by the sync hook and the async trigger client, so both read a connection the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.hooks.dap_protocol import DEFAULT_API_URL, DEFAULT_REFRESH_MARGIN, check_name

#: Defaults for every setting a connection extra or a hook argument can override.
DEFAULTS: dict[str, Any] = {
    "namespace": "canvas",
    "timeout": 60.0,  # read timeout per call, seconds
    "connect_timeout": 10.0,
    "retry_limit": 6,  # attempts per call for 5xx/connection errors
    "retry_delay": 1.0,  # first back-off, seconds (exponential with jitter)
    "retry_max_delay": 60.0,
    # Total seconds one call (in the worker) or one deferrable task's job creation (deferred) may
    # spend waiting on 429s. An hour: at the documented 5 creations per minute, the last of ~100
    # mapped tables gets its turn after ~20 minutes, and only a throttled account waits longer.
    "rate_limit_wait": 3600.0,
    "refresh_margin": DEFAULT_REFRESH_MARGIN,
    "scope": None,
}


@dataclass(frozen=True)
class DapSettings:
    """Everything needed to talk to DAP for one connection.

    ``repr`` and ``str`` never show the secret.
    """

    conn_id: str
    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    namespace: str
    timeout: float
    connect_timeout: float
    retry_limit: int
    retry_delay: float
    retry_max_delay: float
    rate_limit_wait: float
    refresh_margin: float
    scope: str | None

    @property
    def region(self) -> str:
        """The region part of a ``<region>#<id>`` ClientID, for logs (never the secret)."""
        head, sep, _ = self.client_id.partition("#")
        return head if sep else "unknown"

    @property
    def cache_key(self) -> tuple[str, str, str, str]:
        """Identifies the account without holding the secret (for process-wide token sharing)."""
        digest = hashlib.sha256(self.client_secret.encode()).hexdigest()[:16]
        return (self.conn_id, self.base_url, self.client_id, digest)


def _extra(extras: dict[str, Any], key: str) -> Any:
    for candidate in (key, f"extra__instructure__{key}"):
        if candidate in extras and extras[candidate] not in (None, ""):
            return extras[candidate]
    return None


def _number(conn_id: str, key: str, value: Any, minimum: float, integer: bool = False) -> Any:
    try:
        number = int(value) if integer else float(value)
        if integer and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise InstructureConfigError(f"Connection {conn_id!r}: '{key}' must be {kind}, got {value!r}") from None
    if number < minimum:
        raise InstructureConfigError(f"Connection {conn_id!r}: '{key}' must be at least {minimum}, got {value!r}")
    return number


#: Hosts of Instructure's own API gateway: HTTPS on the default port only.
_INSTRUCTURE_HOST_SUFFIX = ".instructure.com"


def base_url_of(conn_id: str, host: str | None, schema: str | None, port: int | str | None) -> str:
    """The API base URL from a connection's API URL (``host``), Port and (hidden) ``schema`` fields.

    * ``host`` should be a whole URL (``https://api-gateway.instructure.com``); a host without a
      scheme is ``https``, or ``schema`` when that is ``http``/``https`` (URI-form connections such
      as ``instructure://...@127.0.0.1:8765/http`` store the scheme there). ``schema`` is ignored
      when the URL has a scheme, so a stale hidden value cannot change it.
    * Port applies when the URL names none. ``0`` and empty mean unset (the Airflow 3.3.2 UI
      posts ``Number("")``, i.e. 0, for an empty Port). A URL port and a different Port field
      are refused, as is a non-443 port for Instructure's gateway: both are typically a value
      left over from an emulator connection, which would otherwise silently redirect calls.
    * The scheme's default port (443/80) is not written into the URL.

    :raises InstructureConfigError: naming the connection and the field to fix.
    """
    host = (host or "").strip()
    if not host:
        return DEFAULT_API_URL
    if "://" not in host:
        scheme = schema.lower() if schema and schema.lower() in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    try:
        url_port = parts.port
    except ValueError:
        url_port = -1
    if parts.scheme in ("http", "https") and host.count(":") > 2 and "[" not in host:
        raise InstructureConfigError(
            f"Connection {conn_id!r}: API URL {host!r}: write an IPv6 address in brackets, e.g. http://[::1]:8765"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or url_port == -1:
        raise InstructureConfigError(
            f"Connection {conn_id!r}: API URL {host!r} is not an http(s) URL; set the host to e.g. {DEFAULT_API_URL}"
        )
    field_port = _port(conn_id, port)
    if url_port is not None and field_port is not None and url_port != field_port:
        raise InstructureConfigError(
            f"Connection {conn_id!r}: the API URL {host!r} names port {url_port} but the Port field says "
            f"{field_port}; make them agree (or clear Port)"
        )
    effective = url_port if url_port is not None else field_port
    default = 443 if parts.scheme == "https" else 80
    # "api-gateway.instructure.com." (a fully qualified name) is the same host
    if parts.hostname.rstrip(".").endswith(_INSTRUCTURE_HOST_SUFFIX) and (
        parts.scheme != "https" or effective not in (None, 443)
    ):
        raise InstructureConfigError(
            f"Connection {conn_id!r}: Instructure's API gateway {parts.hostname} serves HTTPS on port 443 only, "
            f"but the connection says {parts.scheme}:// and port {effective}; set the API URL to "
            f"https://{parts.hostname} and Port to 443 (a Port left over from an emulator connection?)"
        )
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if effective is not None and effective != default:
        netloc = f"{netloc}:{effective}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def _port(conn_id: str, value: int | str | None) -> int | None:
    if value in (None, "", 0, "0"):
        return None
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1
    if not 0 < number < 65536:
        raise InstructureConfigError(f"Connection {conn_id!r}: Port must be a number from 1 to 65535, got {value!r}")
    return number


def read_settings(
    conn: Any, overrides: dict[str, Any] | None = None, extras: dict[str, Any] | None = None
) -> DapSettings:
    """Validate a Connection (plus hook-level overrides) into :class:`DapSettings`.

    :param extras: the connection's extras when already read (async code must read them
        with ``aextra_dejson``); ``conn.extra_dejson`` otherwise.
    :raises InstructureConfigError: naming the connection and the field to fix.
    """
    conn_id = conn.conn_id
    if conn.conn_type and conn.conn_type not in ("instructure", "http", "https"):
        raise InstructureConfigError(
            f"Connection {conn_id!r} has type {conn.conn_type!r}; create it with type 'instructure'"
        )
    client_id = (conn.login or "").strip()
    secret = conn.password or ""
    if not client_id:
        raise InstructureConfigError(
            f"Connection {conn_id!r}: the Client ID (login) is empty; set it to the ClientID of your DAP key "
            "(e.g. us-east-1#...) from identity.instructure.com"
        )
    if not secret:
        raise InstructureConfigError(
            f"Connection {conn_id!r}: the Client Secret (password) is empty; set it to the secret of your DAP key"
        )
    extras = (conn.extra_dejson if extras is None else extras) or {}
    values = dict(DEFAULTS)
    for key in DEFAULTS:
        found = _extra(extras, key)
        if found is not None:
            values[key] = found
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise InstructureConfigError(f"Unknown InstructureHook setting {key!r}; known: {sorted(DEFAULTS)}")
        if value is not None:
            values[key] = value
    try:
        namespace = check_name(values["namespace"], "namespace")
    except ValueError as exc:
        raise InstructureConfigError(f"Connection {conn_id!r}: {exc}") from None
    return DapSettings(
        conn_id=conn_id,
        base_url=base_url_of(conn_id, conn.host, conn.schema, conn.port),
        client_id=client_id,
        client_secret=secret,
        namespace=namespace,
        timeout=_number(conn_id, "timeout", values["timeout"], 0.1),
        connect_timeout=_number(conn_id, "connect_timeout", values["connect_timeout"], 0.1),
        retry_limit=_number(conn_id, "retry_limit", values["retry_limit"], 1, integer=True),
        retry_delay=_number(conn_id, "retry_delay", values["retry_delay"], 0),
        retry_max_delay=_number(conn_id, "retry_max_delay", values["retry_max_delay"], 0),
        rate_limit_wait=_number(conn_id, "rate_limit_wait", values["rate_limit_wait"], 0),
        refresh_margin=_number(conn_id, "refresh_margin", values["refresh_margin"], 0),
        scope=str(values["scope"]) if values["scope"] else None,
    )
