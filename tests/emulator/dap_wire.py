"""Test helpers: a small ``requests`` client for the DAP wire protocol and decoders of the DAP file formats.

The decoders are written from dap-api.md section 7, independently of the emulator's encoders, so
that a test comparing decoded files with :meth:`Emulator.expected_rows` checks the bytes on the
wire, not the emulator against itself.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import requests

from airflow_provider_instructure.emulator.config import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from airflow_provider_instructure.timestamps import parse_timestamp

TERMINAL = ("complete", "failed")

# -- the wire client ----------------------------------------------------------------------------


class DapApi:
    """Just enough of a DAP client to drive the emulator over real HTTP."""

    def __init__(self, base_url: str, client_id: str = DEMO_CLIENT_ID, client_secret: str = DEMO_CLIENT_SECRET) -> None:
        self.base = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = requests.Session()
        self._token: str | None = None

    def login(self, **kwargs: Any) -> requests.Response:
        """POST the Identity Service login exactly like the official client (Basic auth + form body)."""
        kwargs.setdefault("auth", (self.client_id, self.client_secret))
        kwargs.setdefault("data", {"grant_type": "client_credentials"})
        return requests.post(f"{self.base}/ids/auth/login", timeout=10, **kwargs)

    @property
    def token(self) -> str:
        if self._token is None:
            response = self.login()
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return self._token

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        headers = {**(self.auth_headers() if auth else {}), **kwargs.pop("headers", {})}
        return self.http.get(f"{self.base}{path}", headers=headers, timeout=10, **kwargs)

    def post(self, path: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        headers = {**(self.auth_headers() if auth else {}), **kwargs.pop("headers", {})}
        return self.http.post(f"{self.base}{path}", headers=headers, timeout=10, **kwargs)

    def create_job(self, namespace: str, table: str, body: dict[str, Any] | str) -> requests.Response:
        path = f"/dap/query/{namespace}/table/{table}/data"
        if isinstance(body, str):
            return self.post(path, data=body.encode(), headers={"Content-Type": "application/json"})
        return self.post(path, json=body)

    def get_job(self, job_id: str) -> requests.Response:
        return self.get(f"/dap/job/{job_id}")

    def run_job(self, namespace: str, table: str, body: dict[str, Any], timeout: float = 15) -> dict[str, Any]:
        """POST a query and poll until the job is terminal; returns the terminal job JSON."""
        response = self.create_job(namespace, table, body)
        assert response.status_code in (200, 202), response.text
        job = response.json()
        deadline = time.monotonic() + timeout
        while job["status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"job {job['id']} not terminal after {timeout}s: {job}"
            time.sleep(0.02)
            response = self.get_job(job["id"])
            assert response.status_code in (200, 202), response.text
            job = response.json()
        return job

    def object_urls(self, object_ids: Iterable[str]) -> dict[str, str]:
        response = self.post("/dap/object/url", json=[{"id": oid} for oid in object_ids])
        assert response.status_code == 200, response.text
        return {oid: entry["url"] for oid, entry in response.json()["urls"].items()}

    def download_objects(self, job: dict[str, Any]) -> list[bytes]:
        """Download every object of a complete job through its pre-signed URL, without auth."""
        ids = [obj["id"] for obj in job["objects"]]
        urls = self.object_urls(ids)
        out = []
        for oid in ids:
            response = requests.get(urls[oid], timeout=10)
            assert response.status_code == 200, response.text
            out.append(response.content)
        return out


# -- schema reading (independent of dap_schema) ------------------------------------------------


@dataclass(frozen=True)
class Col:
    """A column as these decoders need it: ``kind`` is one of int, float, decimal, bool, timestamp,
    date, str, json or object (a nested object with declared properties)."""

    name: str
    kind: str
    subs: tuple[tuple[str, str], ...] = ()  # (name, kind) of an object's properties


def _kind(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in node:
        options = [defs[o["$ref"].rsplit("/", 1)[-1]] if "$ref" in o else o for o in node["oneOf"]]
        return "str" if all(o.get("type") == "string" for o in options) else "json"
    typ, fmt = node.get("type"), node.get("format")
    if typ == "integer":
        return "int"
    if typ == "number":
        return "decimal" if "multipleOf" in node and fmt not in ("float32", "float64") else "float"
    if typ == "boolean":
        return "bool"
    if typ == "string":
        return {"date-time": "timestamp", "date": "date"}.get(fmt or "", "str")
    if typ == "object" and node.get("properties"):
        return "object"
    return "json"


@dataclass
class TableInfo:
    """Key and value columns of a wrapped DAP schema (the schema endpoint's ``schema``)."""

    keys: list[Col]
    values: list[Col]

    @classmethod
    def from_schema(cls, schema: dict[str, Any]) -> TableInfo:
        defs = schema.get("definitions", {})
        props = schema["properties"]
        keys = [Col(n, _kind(node, defs)) for n, node in props["key"]["properties"].items()]
        values = []
        for name, node in props["value"]["properties"].items():
            kind = _kind(node, defs)
            subs = tuple((s, _kind(sub, defs)) for s, sub in node["properties"].items()) if kind == "object" else ()
            values.append(Col(name, kind, subs))
        return cls(keys, values)

    def header(self, mode: str, incremental: bool) -> list[str]:
        """The header dap-api.md section 7.3 prescribes: ``meta.ts`` [``meta.action``] ``key.*`` ``value.*``."""
        head = ["meta.ts", *(["meta.action"] if incremental else []), *(f"key.{c.name}" for c in self.keys)]
        for col in self.values:
            if col.kind == "object" and mode == "expanded":
                head += [f"value.{col.name}.{sub}" for sub, _ in col.subs]
            else:
                head.append(f"value.{col.name}")
        return head

    def kind_of(self, header: str) -> str:
        section, _, rest = header.partition(".")
        name, _, sub = rest.partition(".")
        cols = self.keys if section == "key" else self.values
        col = next(c for c in cols if c.name == name)
        if sub:
            return dict(col.subs)[sub]
        return "json" if col.kind == "object" else col.kind


# -- value parsing -------------------------------------------------------------------------------

_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def parse_ts(text: str) -> datetime:
    """An RFC 3339 UTC timestamp with ``Z``, as every DAP format spells it."""
    assert _TS.match(text), f"not an RFC 3339 UTC timestamp with Z: {text!r}"
    return parse_timestamp(text)  # 3.10's fromisoformat reads neither "Z" nor 1-digit fractions


def from_text(kind: str, text: str) -> Any:
    """The Python value of a non-NULL text cell (TSV, CSV, a parquet string leaf)."""
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "decimal":
        return Decimal(text)
    if kind == "bool":
        assert text in ("true", "false"), f"boolean must be true/false, got {text!r}"
        return text == "true"
    if kind == "timestamp":
        return parse_ts(text)
    if kind == "date":
        return date.fromisoformat(text)
    if kind in ("json", "object"):
        return json.loads(text)
    return text


def from_json(kind: str, value: Any) -> Any:
    """The Python value of a JSONL property."""
    if kind == "timestamp":
        return parse_ts(value)
    if kind == "date":
        return date.fromisoformat(value)
    if kind == "decimal":
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if kind == "float":
        return float(value)
    return value


# -- file decoders -------------------------------------------------------------------------------


class _Absent:
    """A CSV field with no characters at all (the value columns of a delete)."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def lines_of(text: str) -> list[str]:
    """Split on ``\\n``; every file ends with one and has no blank line (the official reader stops there)."""
    assert text.endswith("\n"), "file does not end with a newline"
    lines = text[:-1].split("\n")
    assert all(lines), "file contains a blank line"
    return lines


_TSV_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def tsv_field(raw: str) -> str | None:
    """Undo the PostgreSQL-COPY escapes; the whole field ``\\N`` is NULL."""
    if raw == "\\N":
        return None
    assert "\r" not in raw, f"raw carriage return in TSV field {raw!r}"
    out, i = [], 0
    while i < len(raw):
        if raw[i] == "\\":
            escape = raw[i + 1 : i + 2]
            assert escape in _TSV_ESCAPES, f"bad TSV escape \\{escape} in {raw!r}"
            out.append(_TSV_ESCAPES[escape])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def parse_tsv(text: str) -> list[list[str | None]]:
    rows = [line.split("\t") for line in lines_of(text)]
    return [rows[0], *([tsv_field(f) for f in row] for row in rows[1:])]


def parse_csv(text: str) -> list[list[str | None]]:
    """RFC 4180 that keeps what the csv module loses: unquoted ``NULL`` is None, an empty
    unquoted field is :data:`ABSENT`, a quoted field is always a string (``""`` is empty)."""
    assert text.endswith("\n"), "file does not end with a newline"
    rows: list[list[str | None]] = []
    row: list[str | None] = []
    i = 0
    while i < len(text):
        if text[i] == '"':
            parts, i = [], i + 1
            while True:
                j = text.index('"', i)
                parts.append(text[i:j])
                if text[j + 1 : j + 2] == '"':
                    parts.append('"')
                    i = j + 2
                else:
                    i = j + 1
                    break
            value: str | None = "".join(parts)
        else:
            j = i
            while text[j] not in ",\n":
                j += 1
            raw = text[i:j]
            assert '"' not in raw and "\r" not in raw, f"unquoted CSV field needs quoting: {raw!r}"
            value = None if raw == "NULL" else (ABSENT if raw == "" else raw)
            i = j
        row.append(value)
        separator, i = text[i], i + 1
        if separator == "\n":
            assert row != [ABSENT], "CSV file contains a blank line"
            rows.append(row)
            row = []
        else:
            assert separator == ",", f"garbage after a quoted CSV field: {separator!r}"
    return rows


@dataclass
class Rec:
    """One decoded record; ``value`` is None for a hard delete."""

    ts: datetime
    action: str | None
    key: dict[str, Any]
    value: dict[str, Any] | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def flat(self) -> dict[str, Any]:
        return {**self.key, **(self.value or {})}


def _assemble(info: TableInfo, cells: dict[str, Any], deleted: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    key = {c.name: cells[f"key.{c.name}"] for c in info.keys}
    if deleted:
        return key, None
    value: dict[str, Any] = {}
    for col in info.values:
        if f"value.{col.name}" in cells:
            value[col.name] = cells[f"value.{col.name}"]
        else:  # expanded: value.<col>.<sub>; all-NULL leaves mean a NULL object
            obj = {sub: cells[f"value.{col.name}.{sub}"] for sub, _ in col.subs}
            obj = {k: v for k, v in obj.items() if v is not None}
            value[col.name] = obj or None
    return key, value


def decode_text_table(fmt: str, text: str, info: TableInfo, mode: str, incremental: bool) -> list[Rec]:
    """Decode one (gunzipped) TSV or CSV part; checks the header and the cells of deletes."""
    rows = parse_tsv(text) if fmt == "tsv" else parse_csv(text)
    header = rows[0]
    assert header == info.header(mode, incremental), f"header {header} != {info.header(mode, incremental)}"
    out = []
    for row in rows[1:]:
        assert len(row) == len(header), f"row has {len(row)} cells, header {len(header)}: {row}"
        cells = dict(zip(header, row, strict=True))
        action = cells.get("meta.action")
        assert action in (("U", "D") if incremental else (None,)), action
        deleted = action == "D"
        typed: dict[str, Any] = {}
        for name, cell in cells.items():
            if name.startswith("meta."):
                continue
            if name.startswith("value.") and deleted:
                # TSV: \N; CSV: absent (no characters), never the NULL literal.
                assert cell is (ABSENT if fmt == "csv" else None), f"delete carries a value in {name}: {cell!r}"
                continue
            assert cell is not ABSENT, f'empty unquoted CSV field in an upsert ({name}); NULL or "" expected'
            typed[name] = None if cell is None else from_text(info.kind_of(name), cell)
        key, value = _assemble(info, typed, deleted)
        out.append(Rec(parse_ts(cells["meta.ts"]), action, key, value, cells))
    return out


def _no_nulls(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            assert v is not None, f"JSONL carries an explicit null at {where}.{k}"
            _no_nulls(v, f"{where}.{k}")


def decode_jsonl(text: str, info: TableInfo, incremental: bool) -> list[Rec]:
    out = []
    for line in lines_of(text) if text else []:
        obj = json.loads(line)
        assert list(obj) in (["meta", "key", "value"], ["meta", "key"]), list(obj)
        meta = obj["meta"]
        assert set(meta) == ({"ts", "action"} if incremental else {"ts"}), meta
        action = meta.get("action")
        deleted = action == "D"
        assert ("value" not in obj) == deleted, f"value present iff not a delete: {obj}"
        _no_nulls(obj, "")
        key = {c.name: from_json(c.kind, obj["key"][c.name]) for c in info.keys}
        value = None
        if not deleted:
            known = {c.name for c in info.values}
            assert set(obj["value"]) <= known, set(obj["value"]) - known
            value = {}
            for col in info.values:
                raw = obj["value"].get(col.name)
                value[col.name] = None if raw is None else from_json(col.kind, raw)
        out.append(Rec(parse_ts(meta["ts"]), action, key, value, obj))
    return out


def decode_parquet(data: bytes, info: TableInfo, mode: str, incremental: bool) -> list[Rec]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == info.header(mode, incremental), table.column_names
    out = []
    for row in table.to_pylist():
        action = row.get("meta.action")
        deleted = action == "D"
        typed: dict[str, Any] = {}
        for name, cell in row.items():
            if name.startswith("meta.") or (deleted and name.startswith("value.")):
                continue
            kind = info.kind_of(name)
            if isinstance(cell, str) and kind not in ("str",):
                cell = from_text(kind, cell)
            typed[name] = cell
        key, value = _assemble(info, typed, deleted)
        ts = row["meta.ts"]
        assert isinstance(ts, datetime) and ts.utcoffset() is not None
        out.append(Rec(ts.astimezone(timezone.utc), action, key, value, row))
    return out


def decode_part(fmt: str, data: bytes, info: TableInfo, mode: str, incremental: bool) -> list[Rec]:
    """Decode one downloaded object; text formats must be gzip, parquet must not be."""
    if fmt == "parquet":
        assert data[:4] == b"PAR1", "parquet objects are not gzip-wrapped"
        return decode_parquet(data, info, mode, incremental)
    assert data[:2] == b"\x1f\x8b", f"{fmt} object is not gzip"
    text = gzip.decompress(data).decode("utf-8")
    if fmt == "jsonl":
        return decode_jsonl(text, info, incremental)
    return decode_text_table(fmt, text, info, mode, incremental)


def normalize(value: Any) -> Any:
    """Make an expected value comparable with a decoded one (JSON columns go through JSON)."""
    if isinstance(value, (dict, list)):
        return json.loads(json.dumps(value, default=_json_default))
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (date, Decimal)):
        return str(value)
    raise TypeError(type(value))


def first_difference(expected: dict[Any, dict[str, Any]], actual: dict[Any, dict[str, Any]]) -> str | None:
    """Compare ``{key: row}`` maps; describe the first few differences, or None if equal."""
    problems = []
    missing = sorted(set(expected) - set(actual), key=str)
    extra = sorted(set(actual) - set(expected), key=str)
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected keys, e.g. {extra[:5]}")
    for k in sorted(set(expected) & set(actual), key=str):
        exp, act = expected[k], actual[k]
        if set(exp) != set(act):
            problems.append(f"key {k}: columns differ: {sorted(set(exp) ^ set(act))}")
        for col in exp:
            if col in act and normalize(exp[col]) != normalize(act[col]):
                problems.append(f"key {k} column {col}: expected {exp[col]!r}, got {act[col]!r}")
        if len(problems) >= 10:
            break
    return "\n".join(problems) or None
