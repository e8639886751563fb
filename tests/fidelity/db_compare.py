"""Read what ``dap initdb``/``syncdb`` wrote into PostgreSQL or MariaDB/MySQL and compare it with the emulator.

The official client (its bundled pysqlsync) picks the column types, so values come back in several
spellings: naive vs aware timestamps, ``jsonb`` dicts vs JSON text, ``uuid`` vs ``BINARY(16)``,
``inet`` vs ``BINARY(16)``, booleans as ``TINYINT``. :func:`normalize` maps each side to one
canonical Python value per column kind before comparing.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import quote


@dataclass
class Database:
    """One database on a PostgreSQL (``postgresql``) or MariaDB/MySQL (``mysql``) server."""

    dialect: str
    host: str
    port: int | None
    user: str
    password: str | None
    name: str

    @property
    def url(self) -> str:
        """Connection string for ``dap --connection-string``."""
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"{self.dialect}://{auth}@{self.host}:{self.port}/{self.name}"

    def connect(self, database: str | None = "") -> Any:
        name = self.name if database == "" else database
        if self.dialect == "postgresql":
            import psycopg2

            return psycopg2.connect(
                host=self.host,
                port=self.port or 5432,
                user=self.user,
                password=self.password,
                dbname=name or "postgres",
                connect_timeout=5,
            )
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port or 3306,
            user=self.user,
            password=self.password or "",
            database=name or None,
            connect_timeout=5,
            charset="utf8mb4",
            autocommit=True,
        )

    def create_database(self, connection: Any, name: str) -> None:
        if self.dialect == "postgresql":
            connection.autocommit = True
            with connection.cursor() as cur:
                cur.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")
        else:
            with connection.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def drop_database(self, connection: Any, name: str) -> None:
        with connection.cursor() as cur:
            if self.dialect == "postgresql":
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def table_name(self, namespace: str, table: str) -> str:
        """Where the client puts a DAP table: a schema per namespace in PostgreSQL, a prefix in MySQL."""
        if self.dialect == "postgresql":
            return f'"{namespace}"."{table}"'
        return f"`{namespace}__{table}`"

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        connection = self.connect()
        try:
            with connection.cursor() as cur:
                cur.execute(sql, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            connection.close()

    def rows(self, namespace: str, table: str) -> list[dict[str, Any]]:
        return self.query(f"SELECT * FROM {self.table_name(namespace, table)}")

    def sync_state(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The client's meta table: ``(namespace, table) -> {timestamp, schema_version}``."""
        meta = "instructure_dap.table_sync" if self.dialect == "postgresql" else "instructure_dap__table_sync"
        rows = self.query(f"SELECT source_namespace, source_table, timestamp, schema_version FROM {meta}")
        return {(r["source_namespace"], r["source_table"]): r for r in rows}

    def column_types(self, namespace: str, table: str) -> dict[str, str]:
        if self.dialect == "postgresql":
            rows = self.query(
                "SELECT column_name AS c, udt_name AS t FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                (namespace, table),
            )
        else:
            rows = self.query(
                "SELECT column_name AS c, column_type AS t FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                (self.name, f"{namespace}__{table}"),
            )
        return {r["c"]: r["t"] for r in rows}


# -- column kinds ----------------------------------------------------------------------------------


def column_kinds(versioned_schema: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Key column names and ``{column: kind}`` for a wrapped DAP schema.

    Kinds: int, float, decimal, bool, timestamp, date, uuid, ip, array, json, str.
    """
    schema = versioned_schema["schema"]
    defs = schema.get("definitions", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        return defs[node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node

    def kind(node: dict[str, Any]) -> str:
        node = resolve(node)
        if "oneOf" in node:
            options = [resolve(o) for o in node["oneOf"]]
            if {o.get("format") for o in options} <= {"ipv4", "ipv6"}:
                return "ip"
            return "str" if all(o.get("type") == "string" for o in options) else "json"
        typ, fmt = node.get("type"), node.get("format")
        if typ == "integer":
            return "int"
        if typ == "number":
            return "decimal" if "multipleOf" in node and fmt not in ("float32", "float64") else "float"
        if typ == "boolean":
            return "bool"
        if typ == "string":
            if fmt in ("ipv4", "ipv6"):
                return "ip"
            return {"date-time": "timestamp", "date": "date", "uuid": "uuid"}.get(fmt or "", "str")
        if typ == "array":
            return "array"
        return "json"

    props = schema["properties"]
    keys = list(props["key"]["properties"])
    kinds = {name: kind(node) for section in ("key", "value") for name, node in props[section]["properties"].items()}
    return keys, kinds


# -- normalization ---------------------------------------------------------------------------------


def _ip(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        # pysqlsync writes ``address.packed`` into MySQL BINARY(16): an IPv4 address is 4 bytes that the
        # server right-pads with zeros (so it cannot be told apart from an IPv6 address ending in 96 zero bits).
        if len(raw) == 16 and raw[4:] == bytes(12):
            return str(ipaddress.IPv4Address(raw[:4]))
        address = ipaddress.IPv6Address(raw)
        return str(address.ipv4_mapped or address)
    return str(ipaddress.ip_address(str(value).split("/")[0]))


def _pg_array(text: str) -> list[str | None]:
    """Parse a one-dimensional PostgreSQL array literal (psycopg2 returns arrays of enum types as text)."""
    assert text.startswith("{") and text.endswith("}"), text
    items: list[str | None] = []
    i, body = 0, text[1:-1]
    while i < len(body):
        if body[i] == '"':
            out, i = [], i + 1
            while body[i] != '"':
                if body[i] == "\\":
                    i += 1
                out.append(body[i])
                i += 1
            items.append("".join(out))
            i += 1
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            token = body[i:end]
            items.append(None if token == "NULL" else token)
            i = end
        i += 1  # the comma
    return items


def _json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    return json.loads(json.dumps(value, default=str))


def normalize(kind: str, value: Any, *, seconds_only: bool = False) -> Any:
    """One canonical value per kind, whichever side (emulator or database) it comes from.

    :param seconds_only: the database keeps whole seconds only (pysqlsync's MySQL ``DATETIME``).
    """
    if value is None:
        return None
    if kind == "timestamp":
        assert isinstance(value, datetime), value
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.replace(microsecond=0) if seconds_only else value
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "decimal":
        return Decimal(str(value)).normalize()
    if kind == "uuid":
        if isinstance(value, (bytes, bytearray, memoryview)):
            return str(uuid.UUID(bytes=bytes(value)))
        return str(uuid.UUID(str(value)))
    if kind == "ip":
        return _ip(value)
    if kind == "array" and isinstance(value, str) and value.startswith("{"):
        return _pg_array(value)
    if kind in ("json", "array"):
        return _json(value)
    return value


def compare_table(
    db: Database,
    namespace: str,
    table: str,
    versioned_schema: dict[str, Any],
    expected: list[dict[str, Any]],
    limit: int = 8,
) -> list[str]:
    """Differences between the database table and ``expected`` rows, row by row and column by column."""
    keys, kinds = column_kinds(versioned_schema)
    seconds_only = db.dialect == "mysql"
    actual_rows = db.rows(namespace, table)
    label = f"{db.dialect} {namespace}.{table}"
    problems: list[str] = []

    def key_of(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(normalize(kinds[k], row[k]) for k in keys)

    want = {key_of(r): r for r in expected}
    got: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in actual_rows:
        key = key_of(row)
        if key in got:
            problems.append(f"{label}: key {key} stored twice")
        got[key] = row
    missing = sorted(set(want) - set(got), key=str)
    extra = sorted(set(got) - set(want), key=str)
    if missing:
        problems.append(f"{label}: {len(missing)} rows missing from the database, e.g. keys {missing[:5]}")
    if extra:
        problems.append(f"{label}: {len(extra)} rows in the database that should not exist, e.g. keys {extra[:5]}")
    columns = set(kinds)
    for key in sorted(set(want) & set(got), key=str):
        row = got[key]
        if set(row) != columns:
            problems.append(f"{label} key {key}: columns differ: db-only {set(row) - columns}, schema-only "
                            f"{columns - set(row)}")  # fmt: skip
            break
        for column, kind in kinds.items():
            exp = normalize(kind, want[key].get(column), seconds_only=seconds_only)
            act = normalize(kind, row[column], seconds_only=seconds_only)
            if exp != act:
                problems.append(
                    f"{label} key {key} column {column} ({kind}): expected {exp!r}, database has {act!r}"
                    f" (raw {row[column]!r})"
                )
        if len(problems) >= limit:
            break
    return problems[:limit]
