"""Read a DAP versioned table schema into typed columns.

The schema endpoint returns a JSON Schema wrapped as ``meta``/``key``/``value``
(dap-api.md section 8). Both the emulator (to generate and encode rows) and the
replication package (to create and load tables) need the same reading of it, so it lives
here, free of Airflow and HTTP imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: Both spellings of the oversized-value placeholder appear in Instructure's sources.
OVERSIZED_PLACEHOLDERS = ("__dap_oversized_truncated__", "__cd2_oversized_truncated__")

_INT_BITS = {"int16": 16, "int32": 32, "int64": 64}


@dataclass(frozen=True)
class ColumnType:
    """The logical type of one column.

    :param kind: one of ``integer``, ``float``, ``decimal``, ``boolean``, ``timestamp``,
        ``date``, ``time``, ``uuid``, ``ip``, ``enum``, ``string``, ``json``.
    :param bits: integer width (16/32/64) for ``integer``; 32/64 for ``float``.
    :param precision: total digits for ``decimal``.
    :param scale: digits after the point for ``decimal``.
    :param max_length: ``maxLength`` of a ``string``, if declared.
    :param values: members of an ``enum`` (strings) or of an integer enum.
    :param oversized: the column may carry the oversized-value placeholder.
    """

    kind: str
    bits: int = 0
    precision: int = 0
    scale: int = 0
    max_length: int | None = None
    values: tuple[Any, ...] = ()
    oversized: bool = False


@dataclass(frozen=True)
class Column:
    """One column of a DAP table as it appears in condensed output.

    :param name: the column name (``id``, ``workflow_state``, ``settings``...).
    :param section: ``key`` or ``value``.
    :param type: the logical type.
    :param nullable: ``True`` when the column is absent from ``required``.
    :param schema: the raw JSON-Schema node (nested objects need it to expand).
    """

    name: str
    section: str
    type: ColumnType
    nullable: bool
    schema: dict[str, Any] = field(repr=False, compare=False, hash=False, default_factory=dict)

    @property
    def header(self) -> str:
        """The dotted header name used in TSV/CSV output (``key.id``, ``value.name``)."""
        return f"{self.section}.{self.name}"

    @property
    def is_key(self) -> bool:
        return self.section == "key"


@dataclass(frozen=True)
class TableSchema:
    """A parsed DAP table schema.

    :param version: the integer schema version.
    :param columns: key columns first, then value columns, in schema order.
    :param raw: the whole wrapped JSON Schema.
    """

    version: int
    columns: tuple[Column, ...]
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.is_key)

    @property
    def value_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.is_key)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return definitions[ref.rsplit("/", 1)[-1]]
    return node


def _decimal_digits(node: dict[str, Any]) -> tuple[int, int]:
    step = Decimal(str(node.get("multipleOf", 1)))
    scale = max(0, -step.as_tuple().exponent)  # type: ignore[operator]
    bound = max(
        abs(Decimal(str(node.get("exclusiveMaximum", node.get("maximum", 10**18))))),
        abs(Decimal(str(node.get("exclusiveMinimum", node.get("minimum", 0))))),
    )
    whole = len(str(int(bound))) if bound >= 1 else 1
    if "exclusiveMaximum" in node and bound == 10 ** (whole - 1):
        # exclusiveMaximum 1000 allows at most 999.99: three whole digits, not four.
        whole -= 1
    return whole + scale, scale


def column_type(node: dict[str, Any], definitions: dict[str, Any] | None = None) -> ColumnType:
    """Map one JSON-Schema property node to a :class:`ColumnType`."""
    definitions = definitions or {}
    node = _resolve(node, definitions)
    if "oneOf" in node:
        options = [_resolve(opt, definitions) for opt in node["oneOf"]]
        consts = [opt.get("const") for opt in options if "const" in opt]
        if consts and all(c in OVERSIZED_PLACEHOLDERS for c in consts):
            rest = [opt for opt in options if "const" not in opt]
            inner = column_type(rest[0], definitions) if rest else ColumnType("string")
            return ColumnType(inner.kind, max_length=inner.max_length, oversized=True)
        formats = {opt.get("format") for opt in options}
        if formats <= {"ipv4", "ipv6"}:
            return ColumnType("ip")
        return ColumnType("json")
    typ = node.get("type")
    fmt = node.get("format")
    if typ == "integer":
        if "enum" in node:
            values = tuple(node["enum"])
            bits = 16 if max(abs(v) for v in values) < 2**15 else 32
            return ColumnType("integer", bits=bits, values=values)
        return ColumnType("integer", bits=_INT_BITS.get(fmt or "", 64))
    if typ == "number":
        if fmt in ("float32", "float64"):
            return ColumnType("float", bits=32 if fmt == "float32" else 64)
        if "multipleOf" in node:
            precision, scale = _decimal_digits(node)
            return ColumnType("decimal", precision=precision, scale=scale)
        return ColumnType("float", bits=64)
    if typ == "boolean":
        return ColumnType("boolean")
    if typ == "string":
        if "enum" in node:
            return ColumnType("enum", values=tuple(node["enum"]))
        if fmt == "date-time":
            return ColumnType("timestamp")
        if fmt in ("date", "time", "uuid"):
            return ColumnType(fmt)
        if fmt in ("ipv4", "ipv6"):
            return ColumnType("ip")
        return ColumnType("string", max_length=node.get("maxLength"))
    # arrays, nested objects and anything free-form travel as JSON text
    return ColumnType("json")


def parse_table_schema(versioned: dict[str, Any]) -> TableSchema:
    """Parse the ``{"schema": ..., "version": ...}`` object of the schema endpoint.

    :raises ValueError: if the schema lacks the ``key`` section; the message names what is missing.
    """
    schema = versioned.get("schema", versioned)
    version = int(versioned.get("version", 0) or 0)
    props = schema.get("properties") or {}
    if "key" not in props:
        raise ValueError("DAP schema has no 'key' section; is this the wrapped schema from the schema endpoint?")
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    columns: list[Column] = []
    for section in ("key", "value"):
        part = props.get(section) or {}
        required = set(part.get("required") or [])
        for name, node in (part.get("properties") or {}).items():
            columns.append(
                Column(
                    name=name,
                    section=section,
                    type=column_type(node, definitions),
                    nullable=section != "key" and name not in required,
                    schema=_resolve(node, definitions),
                )
            )
    return TableSchema(version=version, columns=tuple(columns), raw=schema)


def expanded_paths(column: Column) -> list[tuple[str, ...]]:
    """The leaf paths of a column in ``expanded`` mode.

    Fixed-cardinality nested objects (``properties`` declared) expand into one column per
    leaf; arrays and free-form values stay one JSON column (dap-api.md section 7.3).
    """
    node = column.schema
    if node.get("type") == "object" and node.get("properties"):
        return [(column.name, sub) for sub in node["properties"]]
    return [(column.name,)]


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_plain_identifier(name: str) -> bool:
    """True for names that need no quoting in any SQL dialect we target."""
    return bool(_IDENT.match(name))
