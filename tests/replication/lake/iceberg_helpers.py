"""Reading Iceberg replicas back the way another engine would: through a catalog of its own on
the same database, then comparing them with the emulator (:mod:`tests.replication.repl_helpers`)."""

from __future__ import annotations

import threading
from typing import Any

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.replication.lake.iceberg import IcebergDestination
from tests.replication.repl_helpers import normalize

_readers: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def reader_catalog(dest: IcebergDestination) -> Any:
    """A pyiceberg SQL catalog of its own on the destination's catalog database (one per
    database and location for the session: opening one is slow)."""
    from pyiceberg.catalog.sql import SqlCatalog

    key = (dest.catalog_uri, repr(dest.location))
    with _lock:
        if key not in _readers:
            _readers[key] = SqlCatalog("dap", uri=dest.catalog_uri, **dest.location.for_pyiceberg())
        return _readers[key]


def load(dest: IcebergDestination) -> Any:
    return reader_catalog(dest).load_table(dest.target_name)


def iceberg_rows(dest: IcebergDestination, versioned_schema: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The table's rows by key, normalized like ``repl_helpers.expected_table``."""
    schema = parse_table_schema(versioned_schema)
    rows = load(dest).scan().to_arrow().to_pylist()
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        record = {c.name: normalize(c, row.get(c.name)) for c in schema.columns}
        key = tuple(record[c.name] for c in schema.key_columns)
        assert key not in out, f"duplicate key {key} in {dest.target_name}"
        out[key] = record
    return out
