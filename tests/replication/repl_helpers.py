"""Test helpers: fetch DAP results from the emulator over HTTP, read replicas back, compare.

The provider's own download code is written separately; these tests use plain ``requests``
so they do not depend on it.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from airflow_provider_instructure.dap_schema import Column, TableSchema, parse_table_schema
from airflow_provider_instructure.emulator.dataset import SchemaRevision
from airflow_provider_instructure.emulator.jobs import utc_parse
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.timestamps import parse_timestamp


@dataclass(frozen=True)
class Result:
    """A downloaded job result."""

    namespace: str
    table: str
    files: list[Path]
    job_id: str
    schema_version: int
    versioned_schema: dict[str, Any]
    at: datetime | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def watermark(self) -> datetime:
        return self.at or self.until  # type: ignore[return-value]


class DapFetcher:
    """Runs DAP queries against an emulator and downloads their TSV parts (condensed).

    :param server: a started emulator server.
    :param directory: where parts are written (``job_<id>/part-...``).
    """

    def __init__(self, server: EmulatorServer, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.http = requests.Session()
        self._token: str | None = None
        server.emulator.config.post_wait_seconds = 5.0  # answer POST .../data with a finished job

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            response = self.http.post(
                f"{self.server.url}/ids/auth/login",
                auth=(self.server.client_id, self.server.client_secret),
                data={"grant_type": "client_credentials"},
                timeout=30,
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def schema(self, namespace: str, table: str) -> dict[str, Any]:
        response = self.http.get(
            f"{self.server.url}/dap/query/{namespace}/table/{table}/schema", headers=self._headers(), timeout=30
        )
        response.raise_for_status()
        return response.json()

    def _job(self, namespace: str, table: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(
            f"{self.server.url}/dap/query/{namespace}/table/{table}/data",
            json=body,
            headers=self._headers(),
            timeout=30,
        )
        if response.status_code >= 400:
            raise DapQueryError(response.status_code, response.json())
        job = response.json()
        deadline = time.monotonic() + 30
        while job["status"] not in ("complete", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job['id']} still {job['status']}")
            time.sleep(0.02)
            job = self.http.get(f"{self.server.url}/dap/job/{job['id']}", headers=self._headers(), timeout=30).json()
        if job["status"] == "failed":
            raise RuntimeError(f"job failed: {job['error']}")
        return job

    def _download(self, job: dict[str, Any]) -> list[Path]:
        ids = [{"id": obj["id"]} for obj in job["objects"]]
        response = self.http.post(f"{self.server.url}/dap/object/url", json=ids, headers=self._headers(), timeout=30)
        response.raise_for_status()
        target = self.directory / f"job_{job['id']}"
        target.mkdir(parents=True, exist_ok=True)
        paths = []
        for oid, entry in response.json()["urls"].items():
            data = self.http.get(entry["url"], timeout=30)
            data.raise_for_status()
            path = target / oid.rsplit("/", 1)[-1]
            path.write_bytes(data.content)
            paths.append(path)
        return paths

    def snapshot(self, namespace: str, table: str) -> Result:
        job = self._job(namespace, table, {"format": "tsv", "mode": "condensed"})
        return Result(
            namespace,
            table,
            self._download(job),
            job["id"],
            job["schema_version"],
            self._schema_for(namespace, table, job["schema_version"]),
            at=utc_parse(job["at"]),
        )

    def incremental(self, namespace: str, table: str, since: datetime, until: datetime | None = None) -> Result:
        body: dict[str, Any] = {"format": "tsv", "mode": "condensed", "since": since.isoformat()}
        if until is not None:
            body["until"] = until.isoformat()
        job = self._job(namespace, table, body)
        return Result(
            namespace,
            table,
            self._download(job),
            job["id"],
            job["schema_version"],
            self._schema_for(namespace, table, job["schema_version"]),
            since=utc_parse(job["since"]),
            until=utc_parse(job["until"]),
        )

    def _schema_for(self, namespace: str, table: str, version: int) -> dict[str, Any]:
        schema = self.schema(namespace, table)
        assert schema["version"] == version, "schema changed between the job and the schema call"
        return schema


class DapQueryError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.type = (body.get("error") or body).get("type")


# -- comparing replicas with the emulator's ground truth -------------------------------------


def normalize(column: Column, value: Any) -> Any:
    """Bring a value read from any database (or the emulator) to one comparable form."""
    if value is None:
        return None
    kind = column.type.kind
    if kind == "timestamp":
        if isinstance(value, str):
            value = parse_timestamp(value, naive_is_utc=True)  # MySQL/dap naive text holds UTC
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)  # MySQL DATETIME and dap's naive columns hold UTC
        return value.astimezone(timezone.utc)
    if kind == "boolean":
        return bool(value)
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "float":
        return float(value)
    if kind == "integer":
        return int(value)
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if kind == "json":
        if isinstance(value, (bytes, bytearray)):
            value = value.decode()
        if isinstance(value, str) and value.startswith("{") and column.schema.get("type") == "array":
            return _pg_array(value)  # a native enum array of a dap initdb table, read as text
        return json.loads(value) if isinstance(value, str) else value
    if kind == "uuid":
        if isinstance(value, (bytes, bytearray)):  # dap's BINARY(16) on MySQL
            return str(uuid.UUID(bytes=bytes(value)))
        return str(uuid.UUID(str(value)))
    if kind == "ip":
        if isinstance(value, (bytes, bytearray)):  # dap's BINARY(16): IPv4 right-padded with zero bytes
            raw = bytes(value)
            return ipaddress.ip_address(raw[:4] if raw[4:] == bytes(12) else raw)
        return ipaddress.ip_address(str(value).split("/")[0])
    if isinstance(value, (bytes, bytearray)):
        return value.decode()
    return str(value)


def _pg_array(text: str) -> list[str]:
    """Parse a one-dimensional PostgreSQL array literal of strings (``{a,"b c"}``)."""
    items: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        if body[i] == '"':
            j, buf = i + 1, []
            while body[j] != '"':
                if body[j] == "\\":
                    j += 1
                buf.append(body[j])
                j += 1
            items.append("".join(buf))
            i = j + 2
        else:
            j = body.find(",", i)
            j = len(body) if j < 0 else j
            items.append(body[i:j])
            i = j + 1
    return items


def expected_table(
    server_or_emulator: Any, namespace: str, table: str, at: datetime, versioned_schema: dict[str, Any]
) -> dict[Any, dict[str, Any]]:
    """The emulator's ground truth at ``at``, limited to the columns of ``versioned_schema``."""
    emulator = getattr(server_or_emulator, "emulator", server_or_emulator)
    schema: TableSchema = parse_table_schema(versioned_schema)
    out = {}
    for row in emulator.expected_rows(namespace, table, at=at):
        record = {c.name: normalize(c, row.get(c.name)) for c in schema.columns}
        out[tuple(record[c.name] for c in schema.key_columns)] = record
    return out


def replica_table(
    conn: Any, dialect: str, qualified: str, versioned_schema: dict[str, Any], names: dict[str, str] | None = None
) -> dict[Any, dict[str, Any]]:
    """The replica's rows by key, normalized like :func:`expected_table`.

    :param names: the target's column name by DAP name where they differ (shortened names).
    """
    schema = parse_table_schema(versioned_schema)
    selected = [(names or {}).get(c.name, c.name) for c in schema.columns]
    quote = (lambda n: f"`{n}`") if dialect == "mysql" else (lambda n: f'"{n}"')
    cur = conn.cursor()
    cur.execute(f"SELECT {', '.join(quote(n) for n in selected)} FROM {qualified}")
    rows = cur.fetchall()
    cur.close()
    conn.rollback()
    out = {}
    for row in rows:
        record = {c.name: normalize(c, v) for c, v in zip(schema.columns, row, strict=True)}
        key = tuple(record[c.name] for c in schema.key_columns)
        assert key not in out, f"duplicate key {key} in {qualified}"
        out[key] = record
    return out


def assert_same_rows(actual: dict[Any, dict[str, Any]], expected: dict[Any, dict[str, Any]], what: str) -> None:
    """Row for row, column for column; the message names the first differences."""
    missing = sorted(set(expected) - set(actual), key=str)[:5]
    extra = sorted(set(actual) - set(expected), key=str)[:5]
    assert not missing and not extra, f"{what}: keys missing {missing}, unexpected {extra}"
    diffs = []
    for key, row in expected.items():
        got = actual[key]
        for name, value in row.items():
            if got[name] != value:
                diffs.append(f"{key}.{name}: {got[name]!r} != expected {value!r}")
    assert not diffs, f"{what}: {len(diffs)} cell(s) differ, e.g. " + "; ".join(diffs[:8])


# -- handcrafted result parts -----------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"})


def tsv_cell(value: Any) -> str:
    """One cell as DAP writes it (PostgreSQL COPY text escapes)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        text = value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        return text + "Z"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value).translate(_ESCAPES)


def write_part(path: Path, header: list[str], rows: list[list[Any]], *, compress: bool = True) -> Path:
    """Write a TSV part like DAP's: a header row, then one line per record."""
    import gzip

    text = "\t".join(header) + "\n" + "".join("\t".join(tsv_cell(v) for v in row) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def bump_schema(server: EmulatorServer, namespace: str, table: str, mutate: Any) -> int:
    """Give an emulator table a new schema version made by ``mutate(versioned_schema)``.

    The emulator's public API only adds columns; tests also need new enum members. Rows
    generated afterwards draw from the new schema (e.g. pick the new member).
    """
    dataset = server.emulator.dataset
    with dataset.lock:
        tbl = dataset.table(namespace, table)
        versioned = copy.deepcopy(tbl.versioned_schema)
        mutate(versioned)
        versioned["version"] = int(versioned["version"]) + 1
        ts = dataset._tick(timedelta(seconds=1))
        tbl.revisions.append(SchemaRevision(ts, versioned, parse_table_schema(versioned)))
        return int(versioned["version"])
