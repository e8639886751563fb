"""Deterministic row values for emulated tables.

A row is a pure function of ``(seed, namespace, table, key, version)``: nothing is stored,
so a table can have millions of rows while the emulator holds none of them. The same
function answers "what did row 42 look like at version 3?" for snapshots, incrementals and
the tests that check what a replica should contain.
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from airflow_provider_instructure.dap_schema import ColumnType, TableSchema, column_type
from airflow_provider_instructure.emulator.encoders import format_timestamp
from airflow_provider_instructure.emulator.quirks import apply_value_quirks, delete_quirks

#: Strings that break naive encoders: every one of them must survive TSV, CSV, JSONL and
#: every database load unchanged.
TRICKY_STRINGS: tuple[str, ...] = (
    'O\'Brien, "Bob"',
    "tab\tseparated",
    "multi\nline\r\nvalue",
    "back\\slash and a literal \\N",
    "\\N",
    "NULL",
    "",
    " padded ",
    "Ünïcödé 漢字 🎓 ça va",
    "form\ffeed\vvertical\bbackspace",
    "comma,semicolon;pipe|",
    "ends with backslash\\",
)

OVERSIZED = "__dap_oversized_truncated__"

_WORDS = (
    "alpha", "biology", "canvas", "delta", "echo", "physics", "history", "algebra",
    "poetry", "chemistry", "studio", "seminar", "lab", "intro", "advanced", "section",
)  # fmt: skip

_EPOCH = datetime(2020, 1, 1, tzinfo=timezone.utc)


def _seed(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


class RowFactory:
    """Builds the key and value of any row of one table at any version.

    :param namespace: the DAP namespace.
    :param table: the table name.
    :param schema: the parsed schema the rows conform to.
    :param seed: the emulator-wide seed.
    :param quirks: returns the emulator's current value quirks (:mod:`.quirks`), read per row.
    """

    def __init__(
        self,
        namespace: str,
        table: str,
        schema: TableSchema,
        seed: int = 0,
        quirks: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self.namespace = namespace
        self._quirks = quirks
        self.table = table
        self.schema = schema
        self._base = _seed(seed, namespace, table)
        self._key_col = schema.key_columns[0]
        # Per value column, what ``value`` needs, resolved once instead of once per cell:
        # (name, nullable, role, type, schema node); role 1 is ``updated_at``, 2 ``created_at``.
        self._plan = tuple(
            (
                col.name,
                col.nullable,
                (1 if col.name == "updated_at" else 2 if col.name == "created_at" else 0)
                if col.type.kind == "timestamp"
                else 0,
                col.type,
                col.schema,
            )
            for col in schema.value_columns
        )

    def key_value(self, k: int) -> Any:
        """The primary-key value for integer key index ``k``."""
        if self._key_col.type.kind == "uuid":
            return str(uuid.UUID(int=(self._base << 64) ^ (k * 0x9E3779B97F4A7C15) & ((1 << 128) - 1), version=4))
        return k

    def key(self, k: int) -> dict[str, Any]:
        return {self._key_col.name: self.key_value(k)}

    def value(
        self,
        k: int,
        version: int,
        ts: datetime,
        hidden: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """The ``value`` section of row ``k`` at ``version``, last committed at ``ts``.

        :param hidden: columns that read as NULL for this row, e.g. a column added by a
            schema change after this version of the row was committed.
        """
        rnd = random.Random(self._base * 1_000_003 + k * 7919 + version)
        draw = rnd.random
        out: dict[str, Any] = {}
        # Per column: NULL for 15% of nullable cells, then the value. The draws and their order
        # define the data (tests compare with it): change nothing here but speed.
        for name, nullable, role, typ, node in self._plan:
            # A hidden column reads NULL without a draw; a nullable one draws for its NULL.
            if (hidden and name in hidden) or (nullable and draw() < 0.15):
                out[name] = None
            elif role == 1:
                out[name] = ts - timedelta(microseconds=rnd.randrange(1, 5_000_000))
            elif role == 2:
                out[name] = _EPOCH + timedelta(seconds=k * 37 % 86_400_000, microseconds=k * 7 % 1_000_000)
            else:
                out[name] = _scalar(rnd, typ, node, k, version)
        quirks = self._quirks() if self._quirks is not None else None
        if quirks:
            # After every draw, so that the values of the cells without a quirk do not move.
            columns = tuple(c for c in self.schema.value_columns if not (hidden and c.name in hidden))
            apply_value_quirks(quirks, self._base, columns, out, k, version)
        return out

    def deleted(self, k: int, ts: datetime) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The key and value sections of a delete record of row ``k`` committed at ``ts``
        (the value is ``None`` unless a delete quirk is on)."""
        key = self.key(k)
        quirks = self._quirks() if self._quirks is not None else None
        if not quirks:
            return key, None
        return delete_quirks(quirks, self._base, key, self.schema.value_columns, k, ts)


def _scalar(rnd: random.Random, typ: ColumnType, node: dict[str, Any], k: int, version: int) -> Any:
    kind = typ.kind
    if kind == "integer":
        if typ.values:
            return rnd.choice(typ.values)
        if typ.bits == 16:
            return rnd.choice((rnd.randrange(0, 100), -(2**15), 2**15 - 1))
        if typ.bits == 32:
            roll = rnd.random()
            if roll < 0.03:
                return rnd.choice((-(2**31), 2**31 - 1))
            return rnd.randrange(0, 100_000)
        roll = rnd.random()
        if roll < 0.02:
            return rnd.choice((-(2**63), 2**63 - 1))
        if roll < 0.2:
            # Canvas shard-qualified ids are ~10**13.
            return 10_000_000_000_000 + rnd.randrange(0, 10**9)
        return rnd.randrange(1, 5_000)
    if kind == "float":
        roll = rnd.random()
        if roll < 0.05:
            return rnd.choice((0.1, 1e-7, 123456789.125, -2.5))
        return round(rnd.uniform(0, 100), rnd.choice((0, 1, 2, 6)))
    if kind == "decimal":
        limit = 10 ** (typ.precision) - 1
        return Decimal(rnd.randrange(-limit, limit + 1)).scaleb(-typ.scale)
    if kind == "boolean":
        return rnd.random() < 0.5
    if kind == "timestamp":
        return _EPOCH + timedelta(
            seconds=rnd.randrange(0, 6 * 365 * 86_400),
            microseconds=rnd.choice((0, 500_000, rnd.randrange(0, 1_000_000))),
        )
    if kind == "date":
        return date(2020, 1, 1) + timedelta(days=rnd.randrange(0, 6 * 365))
    if kind == "time":
        return f"{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}"
    if kind == "uuid":
        return str(uuid.UUID(int=rnd.getrandbits(128), version=4))
    if kind == "ip":
        if rnd.random() < 0.8:
            return ".".join(str(rnd.randrange(1, 255)) for _ in range(4))
        return f"2001:db8::{rnd.randrange(1, 0xFFFF):x}:{rnd.randrange(1, 0xFFFF):x}"
    if kind == "enum":
        return rnd.choice(typ.values)
    if kind == "string":
        if typ.oversized and rnd.random() < 0.05:
            return OVERSIZED
        roll = rnd.random()
        text = rnd.choice(TRICKY_STRINGS) if roll < 0.12 else f"{rnd.choice(_WORDS)} {rnd.choice(_WORDS)} {k}.{version}"
        if typ.max_length is not None:
            text = text[: typ.max_length]
        return text
    return _json_value(rnd, node, k, version)


def _json_value(rnd: random.Random, node: dict[str, Any], k: int, version: int) -> Any:
    if node.get("type") == "array":
        item = node.get("items") or {"type": "string"}
        item_type = column_type(item)
        return [_scalar(rnd, item_type, item, k, version) for _ in range(rnd.randrange(0, 4))]
    if node.get("type") == "object" and node.get("properties"):
        required = set(node.get("required") or [])
        out: dict[str, Any] = {}
        for name, sub in node["properties"].items():
            if name not in required and rnd.random() < 0.25:
                continue
            value = _scalar(rnd, column_type(sub), sub, k, version)
            # JSON has no datetime/decimal: carry them as the text the file formats use.
            if isinstance(value, datetime):
                value = format_timestamp(value)
            elif isinstance(value, (date, Decimal)):
                value = str(value)
            out[name] = value
        # An object whose members are all absent is NULL on the wire, never {}.
        return out or None
    return {"k": k, "v": version, "note": rnd.choice(TRICKY_STRINGS)}
