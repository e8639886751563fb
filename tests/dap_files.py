"""Decode downloaded DAP result files back into typed rows, for comparison with the emulator.

Independent of the emulator's encoders on purpose: a bug in an encoder must not be mirrored
by the decoder that checks it.
"""

from __future__ import annotations

import gzip
import io
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from airflow_provider_instructure.dap_schema import Column, TableSchema, parse_table_schema

_TSV_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def unescape_tsv(cell: str) -> str | None:
    if cell == "\\N":
        return None
    if "\\" not in cell:
        return cell
    out = []
    i = 0
    while i < len(cell):
        ch = cell[i]
        if ch == "\\" and i + 1 < len(cell):
            out.append(_TSV_UNESCAPE[cell[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def typed(column: Column, value: Any) -> Any:
    """Convert a decoded cell (text, or a JSON value for JSONL) to the column's Python type."""
    if value is None:
        return None
    kind = column.type.kind
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "decimal":
        return Decimal(str(value))
    if kind == "boolean":
        return value if isinstance(value, bool) else {"true": True, "false": False}[value]
    if kind == "timestamp":
        return value if isinstance(value, datetime) else _timestamp(value)
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(value)
    if kind == "json":
        return json.loads(value) if isinstance(value, str) else value
    return value


def _open_text(path: Path) -> io.TextIOBase:
    raw = path.open("rb")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _assemble(schema: TableSchema, flat: dict[str, Any], present: set[str]) -> tuple[dict, dict | None]:
    """Dotted columns (``key.id``, ``value.settings.hide_final_grade``) to key/value dicts."""
    key = {c.name: typed(c, flat.get(c.header)) for c in schema.key_columns}
    if not present:
        return key, None
    value: dict[str, Any] = {}
    for col in schema.value_columns:
        if col.header in flat:
            value[col.name] = typed(col, flat[col.header])
            continue
        prefix = col.header + "."
        leaves = {h[len(prefix) :]: v for h, v in flat.items() if h.startswith(prefix)}
        if leaves:  # expanded nested object: rebuild it, NULL when every member is NULL
            members = {}
            for name, sub in (col.schema.get("properties") or {}).items():
                cell = leaves.get(name)
                if cell is not None:
                    from airflow_provider_instructure.dap_schema import column_type

                    sub_type = column_type(sub)
                    members[name] = json.loads(cell) if sub_type.kind == "json" else _nested_scalar(sub_type, cell)
            value[col.name] = members or None
        else:
            value[col.name] = None
    return key, value


def _nested_scalar(sub_type: Any, cell: str) -> Any:
    if sub_type.kind == "integer":
        return int(cell)
    if sub_type.kind == "float":
        return float(cell)
    if sub_type.kind == "boolean":
        return cell == "true"
    return cell


def read_records(paths: list[Path], fmt: str, versioned_schema: dict) -> list[dict[str, Any]]:
    """Every record of every part, as ``{"action", "ts", "key", "value"}`` (value None for deletes)."""
    schema = parse_table_schema(versioned_schema)
    records: list[dict[str, Any]] = []
    for path in paths:
        if fmt == "jsonl":
            with _open_text(path) as fh:
                for line in fh:
                    assert line.strip(), f"blank line in {path}"
                    obj = json.loads(line)
                    key = {c.name: typed(c, obj["key"][c.name]) for c in schema.key_columns}
                    value = None
                    if "value" in obj:
                        value = {c.name: typed(c, obj["value"].get(c.name)) for c in schema.value_columns}
                    records.append({"action": obj["meta"].get("action", "U"), "ts": _timestamp(obj["meta"]["ts"]),
                                    "key": key, "value": value})  # fmt: skip
            continue
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for row in table.to_pylist():
                flat = {h: (_arrow_text(v) if v is not None else None) for h, v in row.items()}
                present = {h for h in flat if h.startswith("value.")} if row.get("meta.action", "U") != "D" else set()
                key, value = _assemble(schema, flat, present)
                ts = row["meta.ts"]
                records.append({"action": row.get("meta.action") or "U", "ts": ts, "key": key, "value": value})
            continue
        with _open_text(path) as fh:
            if fmt == "tsv":
                lines = fh.read().split("\n")
                assert lines[-1] == "", f"{path} does not end with a newline"
                header = lines[0].split("\t")
                rows = [[unescape_tsv(c) for c in line.split("\t")] for line in lines[1:-1]]
                for line in lines[1:-1]:
                    assert line, f"blank line in {path}"
            else:
                parsed = parse_csv(fh.read())
                header = [text for text, _ in parsed[0]]
                # unquoted NULL is NULL; "NULL" (quoted) is the string
                rows = [
                    [None if (text == "NULL" and not quoted) else text for text, quoted in row] for row in parsed[1:]
                ]
        for cells in rows:
            assert len(cells) == len(header), f"{path}: {len(cells)} cells for {len(header)} columns"
            flat = dict(zip(header, cells, strict=True))
            action = flat.get("meta.action") or "U"
            present = set() if action == "D" else {h for h in header if h.startswith("value.")}
            key, value = _assemble(schema, flat, present)
            records.append({"action": action, "ts": _timestamp(flat["meta.ts"]), "key": key, "value": value})
    return records


def _arrow_text(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal, date)):
        return str(value)
    return value


def parse_csv(text: str) -> list[list[tuple[str, bool]]]:
    """RFC 4180 records as ``(text, was_quoted)`` fields (the stdlib reader forgets quoting)."""
    rows: list[list[tuple[str, bool]]] = []
    row: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            i += 1
            buf = []
            while True:
                j = text.index('"', i)
                buf.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    buf.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            row.append(("".join(buf), True))
        else:
            j = i
            while j < n and text[j] not in ",\n":
                j += 1
            row.append((text[i:j], False))
            i = j
        if i < n and text[i] == ",":
            i += 1
            if i == n or text[i] == "\n":
                row.append(("", False))
        if i < n and text[i] == "\n":
            rows.append(row)
            row = []
            i += 1
    if row:
        rows.append(row)
    return rows
