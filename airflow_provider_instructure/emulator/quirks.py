"""Value quirks real Canvas Data 2 results carry, switchable per emulator, all off by default.

Each quirk is a rate (0 to 1): the fraction of the eligible cells (or delete records) that get
it. Which cells is a pure function of the table, the row, its version and the column, so the
ground truth (:meth:`Emulator.expected_rows`) shows the same raw values as the files. Quirk
values are the text DAP sends (``"+10000-01-01T00:00:00Z"``, ``""``...), not Python values.
They are meant for the text formats (TSV, CSV, JSONL); a Parquet job with quirks fails.

=========================  ===============================================================
quirk                      what DAP sends
=========================  ===============================================================
``timestamp_after_9999``   ``+10000-01-01T00:00:00Z`` in a timestamp column
``timestamp_before_0001``  ``-0001-01-01T00:00:00Z`` (2 BC) in a timestamp column
``placeholder_text``       ``__dap_oversized_truncated__`` in a text column that can hold it
``placeholder_json``       the placeholder, raw (not a JSON string), in a JSON column
``placeholder_typed``      the placeholder in an integer, float, boolean, timestamp, enum... column
``empty_typed``            an empty field (not ``\\N``) in a nullable integer, boolean or
                           timestamp column
``delete_empty_fields``    a delete record whose value fields are empty instead of ``\\N``
``delete_empty_key``       a delete record whose key is empty (it can delete nothing)
=========================  ===============================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from airflow_provider_instructure.dap_schema import Column

QUIRKS = (
    "timestamp_after_9999",
    "timestamp_before_0001",
    "placeholder_text",
    "placeholder_json",
    "placeholder_typed",
    "empty_typed",
    "delete_empty_fields",
    "delete_empty_key",
)
AFTER_9999 = "+10000-01-01T00:00:00Z"
BEFORE_0001 = "-0001-01-01T00:00:00Z"
PLACEHOLDER = "__dap_oversized_truncated__"

_TYPED = ("integer", "float", "decimal", "boolean", "timestamp", "date", "time", "uuid", "ip", "enum")


def check_quirks(quirks: Mapping[str, Any]) -> dict[str, float]:
    """Validated ``{quirk: rate}``.

    :raises ValueError: an unknown quirk name or a rate outside 0..1.
    """
    unknown = sorted(set(quirks) - set(QUIRKS))
    if unknown:
        raise ValueError(f"unknown quirk(s) {unknown}; quirks are {list(QUIRKS)}")
    out = {name: float(rate) for name, rate in quirks.items()}
    bad = [name for name, rate in out.items() if not 0.0 <= rate <= 1.0]
    if bad:
        raise ValueError(f"quirk rates must be between 0 and 1: {bad}")
    return out


def hit(quirks: Mapping[str, float], quirk: str, salt: int, *parts: object) -> bool:
    """Whether the cell (or record) named by ``parts`` gets ``quirk``; deterministic."""
    rate = quirks.get(quirk, 0.0)
    if rate <= 0.0:
        return False
    digest = zlib.crc32("\x1f".join(map(str, (quirk, salt, *parts))).encode())
    return digest % 100_000 < rate * 100_000


def value_quirk(quirks: Mapping[str, float], salt: int, column: Column, k: int, version: int) -> str | None:
    """The raw text a value cell carries instead of its generated value, if any."""
    kind = column.type.kind
    name = column.name
    if kind == "timestamp":
        if hit(quirks, "timestamp_after_9999", salt, k, version, name):
            return AFTER_9999
        if hit(quirks, "timestamp_before_0001", salt, k, version, name):
            return BEFORE_0001
    if kind == "string":
        fits = column.type.oversized or column.type.max_length is None or column.type.max_length >= len(PLACEHOLDER)
        if fits and hit(quirks, "placeholder_text", salt, k, version, name):
            return PLACEHOLDER
    elif kind == "json":
        if hit(quirks, "placeholder_json", salt, k, version, name):
            return PLACEHOLDER
    elif kind in _TYPED and hit(quirks, "placeholder_typed", salt, k, version, name):
        return PLACEHOLDER
    if (
        column.nullable
        and kind in ("integer", "boolean", "timestamp")
        and hit(quirks, "empty_typed", salt, k, version, name)
    ):
        return ""
    return None


def apply_value_quirks(
    quirks: Mapping[str, float], salt: int, columns: tuple[Column, ...], out: dict[str, Any], k: int, version: int
) -> None:
    """Replace cells of the generated ``out`` (a row's value section) by their quirk, in place."""
    for column in columns:
        raw = value_quirk(quirks, salt, column, k, version)
        if raw is not None:
            out[column.name] = raw


def delete_quirks(
    quirks: Mapping[str, float], salt: int, key: dict[str, Any], columns: tuple[Column, ...], k: int, ts: object
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The key and value sections of a delete record of row ``k`` at ``ts``: normally
    ``(key, None)``; with the delete quirks an empty key and/or empty value fields."""
    if hit(quirks, "delete_empty_key", salt, k, ts):
        key = dict.fromkeys(key, "")
    value = {c.name: "" for c in columns} if hit(quirks, "delete_empty_fields", salt, k, ts) else None
    return key, value
