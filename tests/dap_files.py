"""Decode downloaded DAP result files (on disk) back into typed records.

A thin adapter over the emulator suite's strict wire decoders (``tests/emulator/dap_wire.py``),
which are written from the spec and independent of the emulator's encoders.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from tests.emulator.dap_wire import TableInfo, decode_part, normalize


def read_records(
    paths: list[Path], fmt: str, versioned_schema: dict, *, incremental: bool | None = None, mode: str = "expanded"
) -> list[dict[str, Any]]:
    """Every record of every part as ``{"action", "ts", "key", "value"}`` (value None for deletes).

    Values are normalized like the emulator's ground truth after JSON (``dap_wire.normalize``),
    so ``{**key, **value}`` compares equal to ``normalize(expected_row)``. Parts may be gzip
    (as DAP serves them) or already decompressed (``decompress=True``). ``incremental`` is read
    from the header when not given.
    """
    info = TableInfo.from_schema(versioned_schema["schema"])
    records: list[dict[str, Any]] = []
    for path in paths:
        data = path.read_bytes()
        if fmt != "parquet" and data[:2] != b"\x1f\x8b":
            data = gzip.compress(data)
        kind = incremental if incremental is not None else _has_action(data, fmt)
        for rec in decode_part(fmt, data, info, mode, kind):
            records.append(
                {
                    "action": rec.action or "U",
                    "ts": rec.ts,
                    "key": normalize(rec.key),
                    "value": None if rec.value is None else normalize(rec.value),
                }
            )
    return records


def _has_action(data: bytes, fmt: str) -> bool:
    if fmt == "parquet":
        import io

        import pyarrow.parquet as pq

        return "meta.action" in pq.read_schema(io.BytesIO(data)).names
    head = gzip.decompress(data)[:4096]
    return b"meta.action" in head or b'"action"' in head
