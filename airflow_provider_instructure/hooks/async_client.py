"""Async access to DAP for triggers: the same protocol as the hook, with httpx as transport.

Nothing here blocks the triggerer's event loop: the connection is read with the async-safe
APIs, the JWT is masked with ``amask_secret``, and every call is awaited. A token is
shared by every trigger on the same connection in the triggerer process, so a hundred
deferred tables cost one login, not a hundred.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState

from airflow_provider_instructure.exceptions import DapConnectionError, DapRateLimitError, InstructureConfigError
from airflow_provider_instructure.hooks.dap_jobs import check_name
from airflow_provider_instructure.hooks.dap_protocol import (
    LOGIN_FORM,
    LOGIN_PATH,
    USER_AGENT,
    AccessToken,
    basic_auth_header,
    parse_login_response,
    raise_for_error,
    read_json,
    shared_token_state,
)
from airflow_provider_instructure.hooks.retry import RetryPolicy, redact_url
from airflow_provider_instructure.hooks.settings import DapSettings, read_settings

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError,)


async def aget_settings(conn_id: str, overrides: dict[str, Any] | None = None) -> DapSettings:
    """Read and validate a connection without blocking the event loop."""
    from airflow_provider_instructure._compat import AirflowNotFoundException, BaseHook

    try:
        if hasattr(BaseHook, "aget_connection"):
            conn = await BaseHook.aget_connection(conn_id)
        else:  # pragma: no cover - Airflow < 3.1
            from asgiref.sync import sync_to_async

            conn = await sync_to_async(BaseHook.get_connection)(conn_id)
    except AirflowNotFoundException:
        raise InstructureConfigError(f"Connection {conn_id!r} is not defined") from None
    if hasattr(conn, "aextra_dejson"):
        extras = await conn.aextra_dejson()
    else:  # pragma: no cover - Airflow < 3.3
        from asgiref.sync import sync_to_async

        extras = await sync_to_async(lambda: conn.extra_dejson)()
    return read_settings(conn, overrides, extras=extras)


async def _amask(secret: str) -> None:
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:  # pragma: no cover - Airflow < 3.3
        from asgiref.sync import sync_to_async

        from airflow_provider_instructure._compat import mask_secret

        await sync_to_async(mask_secret)(secret)
        return
    await amask_secret(secret)


class AsyncTokenCache:
    """Async access to the process's token for one connection; concurrent awaiters log in once.

    The token itself is shared process-wide (with the sync hook too); the lock is per event
    loop because asyncio locks cannot cross loops.
    """

    def __init__(self, settings: DapSettings, log: Any) -> None:
        self.settings = settings
        self.state = shared_token_state(settings, settings.refresh_margin)
        self._lock = asyncio.Lock()
        self._log = log

    @property
    def logins(self) -> int:
        return self.state.logins

    async def get(self) -> AccessToken:
        token = self.state.current()
        if token is not None:
            return token
        async with self._lock:
            token = self.state.current()
            if token is None:
                token = await self._login()
                self.state.store(token)
            return token

    def invalidate(self, rejected: str | None) -> None:
        self.state.invalidate(rejected)

    async def _login(self) -> AccessToken:
        settings = self.settings
        what = f"Login to the Identity Service at {settings.base_url}"
        policy = RetryPolicy(settings, TRANSPORT_ERRORS, self._log)
        # A client of its own: the token outlives any one trigger's client.
        async with httpx.AsyncClient(timeout=_timeout(settings), headers={"User-Agent": USER_AGENT}) as client:
            try:
                async for attempt in AsyncRetrying(**policy.tenacity_kwargs(what)):
                    with attempt:
                        response = await client.post(
                            settings.base_url + LOGIN_PATH,
                            data=LOGIN_FORM,
                            headers={"Authorization": basic_auth_header(settings.client_id, settings.client_secret)},
                        )
                        token = parse_login_response(
                            response.status_code, response.headers.get("Content-Type"), response.text
                        )
            except TRANSPORT_ERRORS as exc:
                raise DapConnectionError(
                    f"Could not reach the Identity Service at {settings.base_url} ({type(exc).__name__})"
                ) from None
        await _amask(token.value)
        self._log.info("Logged in to DAP as %s (region %s)", settings.client_id, settings.region)
        return token


_CACHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[DapSettings, AsyncTokenCache]] = (
    weakref.WeakKeyDictionary()
)


def shared_token_cache(settings: DapSettings, log: Any) -> AsyncTokenCache:
    """The token cache every trigger on ``settings`` shares within the running event loop."""
    per_loop = _CACHES.setdefault(asyncio.get_running_loop(), {})
    cache = per_loop.get(settings)
    if cache is None:
        cache = per_loop[settings] = AsyncTokenCache(settings, log)
    return cache


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every trigger's client in this process: httpx builds a new one per
    client otherwise (loading the CA bundle, ~50-150 ms of CPU on the event loop), which a
    hundred triggers starting together would pay a hundred times. The same trust as httpx's
    default (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi)."""
    return httpx.create_ssl_context()


def _timeout(settings: DapSettings) -> httpx.Timeout:
    return httpx.Timeout(settings.timeout, connect=settings.connect_timeout)


class AsyncDapClient:
    """Async DAP calls for one trigger; use as ``async with AsyncDapClient(settings, log) as client``.

    :param settings: validated connection settings (see :func:`aget_settings`).
    :param log: logger for retries and logins.
    """

    def __init__(self, settings: DapSettings, log: Any) -> None:
        self.settings = settings
        self.log = log
        self.tokens = shared_token_cache(settings, log)
        self._policy = RetryPolicy(settings, TRANSPORT_ERRORS, log)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> AsyncDapClient:
        self._client = httpx.AsyncClient(
            timeout=_timeout(self.settings), headers={"User-Agent": USER_AGENT}, verify=_ssl_context()
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(
        self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        assert self._client is not None, "use AsyncDapClient as an async context manager"
        token = await self.tokens.get()
        url = self.settings.base_url + path
        response = await self._client.request(
            method, url, json=json, params=params, headers={"Authorization": f"Bearer {token.value}"}
        )
        if response.status_code == 401:
            # One re-login and one replay, never a loop (same rule as the sync hook).
            self.log.info("DAP answered 401 to %s %s; logging in again and replaying it once", method, path)
            self.tokens.invalidate(token.value)
            token = await self.tokens.get()
            response = await self._client.request(
                method, url, json=json, params=params, headers={"Authorization": f"Bearer {token.value}"}
            )
        return response

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        scoped: bool = False,
        raise_on_429: bool = False,
    ) -> dict[str, Any]:
        """One DAP call with the hook's retry policy; the error mapping is :func:`raise_for_error`'s.

        :param scoped: send the connection's ``scope`` as a query parameter (as the sync hook does
            for query routes).
        :param raise_on_429: raise :class:`DapRateLimitError` on the first 429 instead of waiting on it
            (the caller schedules the wait itself, e.g. :class:`CD2CreateJobTrigger`'s gate).
        """
        params = {"scope": self.settings.scope} if scoped and self.settings.scope else None
        kwargs = self._policy.tenacity_kwargs(what)
        if raise_on_429:
            stop = kwargs["stop"]

            def stop_on_429(state: RetryCallState) -> bool:
                exc = state.outcome.exception() if state.outcome else None
                return isinstance(exc, DapRateLimitError) or stop(state)

            kwargs["stop"] = stop_on_429
        try:
            async for attempt in AsyncRetrying(**kwargs):
                with attempt:
                    response = await self._send(method, path, json, params)
                    raise_for_error(response)
        except TRANSPORT_ERRORS as exc:
            raise DapConnectionError(
                f"{what}: DAP at {self.settings.base_url} could not be reached "
                f"({type(exc).__name__}: {redact_url(str(exc))})"
            ) from None
        return read_json(response, what)

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self.request_json("GET", f"/dap/job/{job_id}", what=f"Get job {job_id}")

    async def start_query(self, namespace: str, table: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /dap/query/{namespace}/table/{table}/data``: start (or join) a query job, as the sync
        hook's :meth:`~airflow_provider_instructure.hooks.instructure_jobs.DapJobsMixin.start_query`
        does (same path, ``scope`` and body), once: a 429 is raised at once.

        :param body: the request body, from :func:`~airflow_provider_instructure.hooks.dap_jobs.build_query`.
        :returns: the job object (``id``, ``status``...).
        :raises DapRateLimitError: DAP answered 429 (``retry_after``: its ``Retry-After`` in seconds).
        :raises DapApiError: any other error answer, mapped by :func:`raise_for_error` (e.g.
            ``DapSnapshotRequiredError``, ``DapNoDataYetError``); 5xx and transport errors are retried first.
        """
        ns, tbl = check_name(namespace, "namespace"), check_name(table, "table")
        kind = "incremental" if "since" in body else "snapshot"
        return await self.request_json(
            "POST",
            f"/dap/query/{ns}/table/{tbl}/data",
            what=f"Start {kind} query of {ns}.{tbl}",
            json=body,
            scoped=True,
            raise_on_429=True,
        )
