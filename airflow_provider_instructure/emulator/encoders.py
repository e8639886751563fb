"""Write query results in the DAP file formats, byte for byte as dap-api.md section 7 describes.

* TSV: header row, PostgreSQL-COPY escapes (``\\N`` NULL, ``\\t``, ``\\n``...), ``true``/``false``.
* CSV: RFC 4180; NULL is the unquoted literal ``NULL``, an absent value (the value columns
  of a delete) is an empty field, an empty string is ``""`` and a string reading ``NULL`` is quoted.
* JSONL: one object per line with ``meta``/``key``/``value``; null properties are omitted and
  deletes carry no ``value``.
* Parquet (when pyarrow is installed): flat dotted columns, not gzip-wrapped.

No format ever contains a blank line: the official reader stops at the first one.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_instructure.dap_schema import Column, TableSchema, expanded_paths

FORMATS = ("tsv", "csv", "jsonl", "parquet")
MODES = ("expanded", "condensed")
EXTENSIONS = {"tsv": "tsv.gz", "csv": "csv.gz", "jsonl": "json.gz", "parquet": "snappy.parquet"}


@dataclass(frozen=True)
class Record:
    """One output record: ``value`` is ``None`` for a hard delete."""

    ts: datetime
    key: dict[str, Any]
    value: dict[str, Any] | None
    action: str = "U"


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; the fraction only when non-zero, trailing zeros trimmed."""
    if type(value) is datetime and value.year >= 1000:  # the strftime's text, several times faster
        text = value.isoformat(timespec="seconds")[:19]
    else:
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


#: What ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)``
#: builds on every call, built once.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)


def json_text(value: Any) -> str:
    return _JSON.encode(value)


def plain_text(value: Any) -> str:
    """Render a non-null scalar the way every text format spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json_text(value)
    return str(value)


_TSV_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"}
)


class Layout:
    """Which cells a record becomes, for one schema, mode and query kind."""

    def __init__(self, schema: TableSchema, mode: str, incremental: bool) -> None:
        self.schema = schema
        self.incremental = incremental
        self.key_columns = schema.key_columns
        self.value_paths: list[tuple[Column, tuple[str, ...]]] = []
        for col in schema.value_columns:
            paths = expanded_paths(col) if mode == "expanded" else [(col.name,)]
            self.value_paths.extend((col, path) for path in paths)

    @property
    def header(self) -> list[str]:
        head = ["meta.ts"]
        if self.incremental:
            head.append("meta.action")
        head += [c.header for c in self.key_columns]
        head += ["value." + ".".join(path) for _, path in self.value_paths]
        return head

    def cells(self, record: Record) -> Iterator[tuple[bool, Any]]:
        """Yield ``(present, value)`` per column; ``present`` is False for a delete's value columns."""
        yield True, record.ts
        if self.incremental:
            yield True, record.action
        for col in self.key_columns:
            yield True, record.key[col.name]
        value = record.value
        for _col, path in self.value_paths:
            if value is None:
                yield False, None
                continue
            cell = value.get(path[0])
            if len(path) > 1:
                cell = cell.get(path[1]) if isinstance(cell, dict) else None
            yield True, cell


def _tsv_cell(value: Any) -> str:
    # The common types first; everything else as plain_text spells it. Only text can hold
    # a character that needs escaping (ints, timestamps... never do).
    kind = type(value)
    if kind is str:
        # isprintable() is False for every character _TSV_ESCAPES maps except the backslash.
        return value if value.isprintable() and "\\" not in value else value.translate(_TSV_ESCAPES)
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    return plain_text(value).translate(_TSV_ESCAPES)


def tsv_lines(layout: Layout, records: Iterable[Record]) -> Iterator[str]:
    yield "\t".join(layout.header) + "\n"
    # Layout.cells, unrolled: the same cells in the same order, without a generator per record.
    incremental = layout.incremental
    key_names = [c.name for c in layout.key_columns]
    paths = [(path[0], path[1] if len(path) > 1 else None) for _col, path in layout.value_paths]
    absent = ["\\N"] * len(paths)  # a delete's value columns
    cell = _tsv_cell
    for record in records:
        parts = [cell(record.ts)]
        if incremental:
            parts.append(cell(record.action))
        key = record.key
        for name in key_names:
            parts.append(cell(key[name]))
        value = record.value
        if value is None:
            parts += absent
        else:
            for first, second in paths:
                item = value.get(first)
                if second is not None:
                    item = item.get(second) if isinstance(item, dict) else None
                parts.append(cell(item))
        yield "\t".join(parts) + "\n"


def _csv_quote(text: str) -> str:
    if text == "" or text == "NULL" or any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_lines(layout: Layout, records: Iterable[Record]) -> Iterator[str]:
    yield ",".join(layout.header) + "\n"
    for record in records:
        parts = []
        for present, value in layout.cells(record):
            if not present:
                parts.append("")
            elif value is None:
                parts.append("NULL")
            else:
                parts.append(_csv_quote(plain_text(value)))
        yield ",".join(parts) + "\n"


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        # Recurse into dicts only: one call per nested object instead of one per value.
        return {k: _drop_nulls(v) if isinstance(v, dict) else v for k, v in value.items() if v is not None}
    return value


def jsonl_lines(layout: Layout, records: Iterable[Record]) -> Iterator[str]:
    for record in records:
        meta: dict[str, Any] = {"ts": record.ts}
        if layout.incremental:
            meta = {"action": record.action, "ts": record.ts}
        obj: dict[str, Any] = {"meta": meta, "key": record.key}
        if record.value is not None:
            obj["value"] = _drop_nulls(record.value)
        yield json_text(obj) + "\n"


_LINE_WRITERS = {"tsv": tsv_lines, "csv": csv_lines, "jsonl": jsonl_lines}


def write_text_part(path: Path, fmt: str, layout: Layout, records: Iterable[Record]) -> None:
    """Write one gzip-compressed TSV, CSV or JSONL part."""
    lines = _LINE_WRITERS[fmt](layout, records)
    buffer: list[str] = []
    with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=1) as fh:
        for line in lines:
            buffer.append(line)
            if len(buffer) >= 4096:
                fh.write("".join(buffer))
                buffer.clear()
        fh.write("".join(buffer))


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet_part(path: Path, layout: Layout, records: Iterable[Record]) -> None:
    """Write one Parquet part (snappy, flat dotted column names)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header = layout.header
    types = _parquet_types(layout)
    columns: list[list[Any]] = [[] for _ in header]
    for record in records:
        for i, (_present, value) in enumerate(layout.cells(record)):
            if value is not None and types[i] == pa.string() and not isinstance(value, str):
                value = plain_text(value)
            columns[i].append(value)
    table = pa.table({name: pa.array(col, type=typ) for name, col, typ in zip(header, columns, types, strict=False)})
    pq.write_table(table, path, compression="snappy")


def _parquet_types(layout: Layout) -> list[Any]:
    import pyarrow as pa

    types: list[Any] = [pa.timestamp("us", tz="UTC")]
    if layout.incremental:
        types.append(pa.string())

    def arrow(col: Column, leaf: bool) -> Any:
        t = col.type
        if leaf:
            return pa.string()
        if t.kind == "integer":
            return {16: pa.int16(), 32: pa.int32()}.get(t.bits, pa.int64())
        if t.kind == "float":
            return pa.float32() if t.bits == 32 else pa.float64()
        if t.kind == "decimal":
            return pa.decimal128(t.precision, t.scale)
        if t.kind == "boolean":
            return pa.bool_()
        if t.kind == "timestamp":
            return pa.timestamp("us", tz="UTC")
        if t.kind == "date":
            return pa.date32()
        return pa.string()

    types += [arrow(c, False) for c in layout.key_columns]
    types += [arrow(col, len(path) > 1) for col, path in layout.value_paths]
    return types
