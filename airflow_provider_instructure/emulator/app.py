"""The FastAPI application: Identity Service login, the five DAP routes and a stand-in for S3.

Response bodies carry exactly the keys of the OpenAPI schemas, because the official client
rejects unknown keys (dap-api.md section 13.4).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timezone
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import FastAPI, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from airflow_provider_instructure.emulator.config import NO_DATA_MESSAGE
from airflow_provider_instructure.emulator.control import control_router
from airflow_provider_instructure.emulator.core import CallRecord, Emulator
from airflow_provider_instructure.emulator.encoders import FORMATS, MODES, format_timestamp, parquet_available
from airflow_provider_instructure.emulator.faults import Fault
from airflow_provider_instructure.emulator.jobs import Query, utc_parse
from airflow_provider_instructure.emulator.paced import PacedFile
from airflow_provider_instructure.emulator.tokens import TokenRejected

_TRANSPORT_KEY = "dap_emulator.transport"


# -- error bodies -------------------------------------------------------------------------


def _error(status: int, type_: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": type_, "uuid": str(uuid.uuid4()), "message": message, **extra}}, status)


def _not_found(kind: str, ident: str, message: str) -> JSONResponse:
    return _error(404, "NotFoundError", message, id=ident, kind=kind)


def _validation(raw: str, message: str, needle: str | None = None, pos: int | None = None) -> JSONResponse:
    if pos is None:
        pos = max(0, raw.find(f'"{needle}"')) if needle else 0
    line = raw.count("\n", 0, pos) + 1
    column = pos - (raw.rfind("\n", 0, pos) + 1) + 1
    return _error(400, "ValidationError", message, location={"line": line, "column": column, "character": pos + 1})


def _range_error(type_: str, message: str, since: datetime, until: datetime) -> JSONResponse:
    return _error(400, type_, message, since=format_timestamp(since), until=format_timestamp(until))


# -- connection-level faults ----------------------------------------------------------------


class _TransportScope:
    """Outermost ASGI layer: remembers the socket transport so a fault can drop the connection.

    Starlette wraps ``send`` in closures, so only this layer still sees uvicorn's own
    ``send`` (a bound method of the request cycle, which holds the transport).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_TRANSPORT_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await self.app(scope, receive, send)


def _close_transport(scope: Scope) -> None:
    transport = scope.get(_TRANSPORT_KEY)
    if transport is None:
        raise RuntimeError("cannot drop the connection: transport not available")
    transport.close()


class _DropConnection(Response):
    """Close the TCP connection without sending a byte."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _close_transport(scope)


class _TruncatedFile(Response):
    """Announce the full length, send part of the file, then close the connection."""

    def __init__(self, data: bytes, fraction: float) -> None:
        super().__init__(status_code=200)
        self.data = data
        self.fraction = fraction

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(self.data)).encode()),
                    (b"content-type", b"binary/octet-stream"),
                ],
            }
        )
        cut = max(1, int(len(self.data) * self.fraction)) if len(self.data) > 1 else 0
        await send({"type": "http.response.body", "body": self.data[:cut], "more_body": True})
        await asyncio.sleep(0.01)
        _close_transport(scope)


def _fault_response(fault: Fault) -> Response | None:
    kind = fault.kind
    if kind == "429":
        seconds = int(fault.params.get("retry_after", 1))
        value = formatdate(time.time() + seconds, usegmt=True) if fault.params.get("http_date") else str(seconds)
        return JSONResponse({"message": "Too Many Requests"}, 429, headers={"Retry-After": value})
    if kind in ("500", "503"):
        return _error(int(kind), "ProcessingError", f"Internal error (emulator fault {kind}).")
    if kind == "504":
        return JSONResponse({"error": {"message": "Gateway timeout."}}, 504)
    if kind == "502_html":
        return HTMLResponse("<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>", 502)
    if kind == "drop":
        return _DropConnection()
    return None


# -- the application ----------------------------------------------------------------------


def create_app(emulator: Emulator) -> ASGIApp:
    """Build the ASGI application serving ``emulator``."""
    app = FastAPI(title="DAP emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = emulator
    app.include_router(control_router(emulator))
    signing_key = uuid.uuid4().bytes

    def record(request: Request, route: str, response: Response) -> Response:
        emulator.stats.record(
            CallRecord(
                route=route,
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                headers={k.lower(): v for k, v in request.headers.items()},
            )
        )
        return response

    def guard(request: Request, route: str) -> Response | None:
        """Faults, rate limits and the bearer check every ``/dap`` route goes through."""
        fault = emulator.faults.take(route)
        if fault is not None:
            if fault.kind == "revoke_token":
                emulator.revoke_tokens()
            else:
                response = _fault_response(fault)
                if response is not None:
                    return response
                request.state.fault = fault
        retry_after = emulator.limiter.check(route, emulator.config.rate_limits.get(route))
        if retry_after is not None:
            return JSONResponse({"message": "Too Many Requests"}, 429, headers={"Retry-After": str(retry_after)})
        if route == "download":
            return None
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        if token is None:
            token = request.headers.get("x-instauth")  # deprecated, still accepted
        try:
            emulator.tokens.verify(token)
        except TokenRejected as exc:
            return _error(401, "AuthenticationError", str(exc))
        return None

    # -- Identity Service ---------------------------------------------------------------------

    @app.post("/ids/auth/login")
    async def login(request: Request) -> Response:
        config = emulator.config
        fault = emulator.faults.take("login")
        if fault is not None and fault.kind != "account_disabled":
            return record(request, "login", _fault_response(fault) or JSONResponse({}, 500))
        client_id, secret = _basic_credentials(request.headers.get("authorization", ""))
        if client_id is None or config.clients.get(client_id) != secret:
            return record(
                request,
                "login",
                _error(config.login_reject_status, "AuthenticationError", "Invalid client credentials."),
            )
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            return record(
                request,
                "login",
                _error(400, "ValidationError", "Missing or unsupported grant_type; expected 'client_credentials'."),
            )
        if (fault is not None and fault.kind == "account_disabled") or client_id in config.disabled_clients:
            return record(request, "login", _error(403, "AccountDisabled", "The account is disabled."))
        scope = "urn:canvas:dap:query urn:canvas:dap:job urn:canvas:dap:object"
        token = emulator.tokens.issue(client_id, config.token_lifetime, scope)
        body = {
            "access_token": token,
            "expires_in": int(config.token_lifetime),
            "scope": scope,
            "token_type": "Bearer",
        }
        return record(request, "login", JSONResponse(body))

    # -- DAP query API --------------------------------------------------------------------------

    def unknown_namespace(namespace: str) -> JSONResponse:
        return _not_found(
            "namespace",
            namespace,
            f"The namespace '{namespace}' does not exist. Namespaces: {', '.join(emulator.dataset.namespaces())}.",
        )

    def unknown_table(namespace: str, table: str) -> JSONResponse:
        return _not_found("table", table, f"The table '{table}' does not exist in namespace '{namespace}'.")

    @app.get("/dap/query/{namespace}/table")
    async def list_tables(request: Request, namespace: str) -> Response:
        denied = guard(request, "list_tables")
        if denied is not None:
            return record(request, "list_tables", denied)
        if namespace not in emulator.dataset.tables:
            return record(request, "list_tables", unknown_namespace(namespace))
        return record(request, "list_tables", JSONResponse({"tables": sorted(emulator.dataset.tables[namespace])}))

    @app.get("/dap/query/{namespace}/table/{table}/schema")
    async def get_schema(request: Request, namespace: str, table: str) -> Response:
        denied = guard(request, "get_schema")
        if denied is not None:
            return record(request, "get_schema", denied)
        if namespace not in emulator.dataset.tables:
            return record(request, "get_schema", unknown_namespace(namespace))
        if table not in emulator.dataset.tables[namespace]:
            return record(request, "get_schema", unknown_table(namespace, table))
        versioned = emulator.dataset.table(namespace, table).versioned_schema
        return record(
            request, "get_schema", JSONResponse({"schema": versioned["schema"], "version": versioned["version"]})
        )

    @app.post("/dap/query/{namespace}/table/{table}/data")
    async def create_job(request: Request, namespace: str, table: str) -> Response:
        denied = guard(request, "create_job")
        if denied is not None:
            return record(request, "create_job", denied)
        if namespace not in emulator.dataset.tables:
            return record(request, "create_job", unknown_namespace(namespace))
        if table not in emulator.dataset.tables[namespace]:
            return record(request, "create_job", unknown_table(namespace, table))
        raw = (await request.body()).decode("utf-8", "replace")
        parsed = _parse_query(emulator, namespace, table, raw, request.query_params.get("scope"))
        if isinstance(parsed, Response):
            return record(request, "create_job", parsed)
        fault = getattr(request.state, "fault", None)
        tbl = emulator.dataset.table(namespace, table)
        if fault is not None and fault.kind in ("snapshot_required", "out_of_range"):
            type_ = "SnapshotRequiredError" if fault.kind == "snapshot_required" else "OutOfRangeError"
            return record(
                request,
                "create_job",
                _range_error(type_, f"{type_} (emulator fault).", tbl.reload_ts or tbl.base_ts, tbl.latest_ts),
            )
        no_data = emulator.config.tables_without_data.get(f"{namespace}.{table}")
        if no_data == "post":
            return record(request, "create_job", _error(400, "ProcessingError", NO_DATA_MESSAGE))
        job, _created = emulator.jobs.submit(
            parsed,
            fail=fault is not None and fault.kind == "fail_job",
            fail_message=NO_DATA_MESSAGE if no_data == "job" else None,
        )
        if emulator.config.post_wait_seconds > 0 and not job.ready.is_set():
            await asyncio.to_thread(job.ready.wait, emulator.config.post_wait_seconds)
        status = job.status(emulator.config, time.time())
        code = 200 if status in ("complete", "failed") else 202
        return record(request, "create_job", JSONResponse(job.body(status), code))

    @app.get("/dap/job/{job_id}")
    async def get_job(request: Request, job_id: str) -> Response:
        denied = guard(request, "get_job")
        if denied is not None:
            return record(request, "get_job", denied)
        job = emulator.jobs.get(job_id)
        if job is None:
            return record(request, "get_job", _not_found("job", job_id, "The job does not exist or has expired."))
        job.polls += 1
        status = job.status(emulator.config, time.time())
        code = 200 if status in ("complete", "failed") else 202
        return record(request, "get_job", JSONResponse(job.body(status), code))

    @app.post("/dap/object/url")
    async def object_url(request: Request) -> Response:
        denied = guard(request, "object_url")
        if denied is not None:
            return record(request, "object_url", denied)
        raw = (await request.body()).decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            return record(request, "object_url", _validation(raw, f"Malformed JSON: {exc.msg}.", pos=exc.pos))
        if not isinstance(body, list) or not all(
            isinstance(item, dict) and set(item) == {"id"} and isinstance(item["id"], str) for item in body
        ):
            return record(request, "object_url", _validation(raw, 'Expected a JSON array of {"id": "<object id>"}.'))
        fault = getattr(request.state, "fault", None)
        ttl = emulator.config.url_ttl
        issued = time.time() - (ttl + 1 if fault is not None and fault.kind == "expired_url" else 0)
        urls: dict[str, dict[str, str]] = {}
        base = str(request.base_url).rstrip("/")
        for item in body:
            oid = item["id"]
            if emulator.jobs.object_path(oid) is None:
                return record(request, "object_url", _not_found("object", oid, "Objects do not exist or have expired."))
            urls[oid] = {"url": f"{base}/files/{quote(oid)}?{_presign(signing_key, oid, issued, ttl)}"}
        return record(request, "object_url", JSONResponse({"urls": urls}))

    @app.get("/files/{object_id:path}")
    async def download(request: Request, object_id: str) -> Response:
        denied = guard(request, "download")
        if denied is not None:
            return record(request, "download", denied)
        problem = _check_presigned(signing_key, object_id, request.query_params)
        if problem is not None:
            return record(request, "download", _s3_error(*problem))
        path = emulator.jobs.object_path(object_id)
        if path is None:
            return record(request, "download", _s3_error("NoSuchKey", "The specified key does not exist.", 404))
        fault = getattr(request.state, "fault", None)
        if fault is not None and fault.kind == "truncate":
            data = await asyncio.to_thread(path.read_bytes)
            return record(request, "download", _TruncatedFile(data, float(fault.params.get("fraction", 0.5))))
        bandwidth = emulator.config.download_bandwidth
        if bandwidth > 0:
            return record(request, "download", PacedFile(path, bandwidth))
        return record(request, "download", FileResponse(path, media_type="binary/octet-stream"))

    return _TransportScope(app)


# -- helpers --------------------------------------------------------------------------------


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    if header[:6].lower() != "basic ":
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else (None, None)


def _parse_query(emulator: Emulator, namespace: str, table: str, raw: str, scope: str | None) -> Query | Response:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _validation(raw, f"Malformed JSON: {exc.msg}.", pos=exc.pos)
    if not isinstance(body, dict):
        return _validation(raw, "The query must be a JSON object.")
    unknown = sorted(set(body) - {"format", "mode", "since", "until"})
    if unknown:
        return _validation(raw, f"Unexpected field '{unknown[0]}'.", needle=unknown[0])
    fmt = body.get("format")
    if fmt not in FORMATS:
        return _validation(raw, f"'format' must be one of {', '.join(FORMATS)}.", needle="format")
    if fmt == "parquet" and not parquet_available():
        return _validation(raw, "This emulator cannot write parquet: install pyarrow.", needle="format")
    mode = body.get("mode", "expanded")
    if mode not in MODES:
        return _validation(raw, f"'mode' must be one of {', '.join(MODES)}.", needle="mode")
    tbl = emulator.dataset.table(namespace, table)
    latest = tbl.latest_ts
    stamps: dict[str, datetime] = {}
    for name in ("since", "until"):
        if name in body:
            try:
                if not isinstance(body[name], str):
                    raise ValueError(f"'{name}' must be an RFC 3339 string")
                stamps[name] = utc_parse(body[name])
            except ValueError as exc:
                return _validation(raw, f"Invalid '{name}': {exc}.", needle=name)
    since = stamps.get("since")
    until = stamps.get("until")
    if since is None:
        if until is not None:
            return _validation(raw, "'until' is only valid together with 'since'.", needle="until")
        return Query(namespace, table, fmt, mode, None, latest, scope)
    if until is not None and until <= since:
        return _validation(raw, "'until' must be later than 'since'.", needle="until")
    floor = latest - tbl.retention if tbl.retention else None
    if tbl.reload_ts is not None and since < tbl.reload_ts:
        return _range_error(
            "SnapshotRequiredError",
            "The table was reloaded recently. A new snapshot is required to keep data consistency.",
            tbl.reload_ts,
            latest,
        )
    if (floor is not None and since < floor) or since > latest or (until is not None and until > latest):
        return _range_error(
            "OutOfRangeError",
            "Data is queried outside of the allowed time range.",
            floor or tbl.base_ts,
            latest,
        )
    return Query(namespace, table, fmt, mode, since, until or latest, scope)


def _signature(key: bytes, object_id: str, date: str, expires: int) -> str:
    return hmac.new(key, f"{object_id}\n{date}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _presign(key: bytes, object_id: str, issued: float, ttl: float) -> str:
    date = datetime.fromtimestamp(issued, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    expires = int(ttl)
    return urlencode(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Date": date,
            "X-Amz-Expires": expires,
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": _signature(key, object_id, date, expires),
        }
    )


def _check_presigned(key: bytes, object_id: str, params: Any) -> tuple[str, str, int] | None:
    try:
        date = params["X-Amz-Date"]
        expires = int(params["X-Amz-Expires"])
        signature = params["X-Amz-Signature"]
        issued = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (KeyError, ValueError):
        return "AccessDenied", "Query-string authentication requires the X-Amz-* parameters.", 403
    if not hmac.compare_digest(signature, _signature(key, object_id, date, expires)):
        return "SignatureDoesNotMatch", "The request signature we calculated does not match.", 403
    # X-Amz-Date has whole seconds: compare whole seconds too, so that a URL is good for at least
    # ``expires`` seconds (not up to one second less, which made 1 s test TTLs flaky).
    if int(time.time()) > issued + expires:
        return "AccessDenied", "Request has expired", 403
    return None


def _s3_error(code: str, message: str, status: int) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status, media_type="application/xml")
