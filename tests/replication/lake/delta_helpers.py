"""Reading a Delta replica back for comparisons with the emulator (:mod:`..repl_helpers`)."""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from tests.replication.repl_helpers import normalize


def delta_table(dest: DeltaDestination) -> Any:
    """The replica as a ``DeltaTable`` (log and metadata only; read rows with :func:`read_delta`)."""
    from deltalake import DeltaTable

    return DeltaTable(dest.uri, storage_options=dest.location.for_deltalake())


def read_delta(table: Any) -> Any:
    """Every row of ``table`` (a ``DeltaTable``) as a ``pyarrow.Table``, read by delta-rs' own
    engine (``QueryBuilder``), not ``to_pyarrow_table``/``to_pyarrow_dataset``: those read
    through pyarrow's ``PyFileSystem(DeltaStorageHandler)``, which on object storage can abort
    the interpreter at exit (delta-rs issue #2184, exit -6 about one run in twelve)."""
    import pyarrow as pa
    from deltalake import QueryBuilder

    stream = QueryBuilder().register("t", table).execute("SELECT * FROM t")
    return pa.RecordBatchReader.from_stream(stream).read_all()


def delta_rows(dest: DeltaDestination, versioned_schema: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The replica's rows by key, normalized like :func:`~tests.replication.repl_helpers.expected_table`."""
    schema = parse_table_schema(versioned_schema)
    table = read_delta(delta_table(dest))
    assert "_dap_op" not in table.column_names, f"{dest.uri}: the operation column was stored"
    out: dict[Any, dict[str, Any]] = {}
    for row in table.to_pylist():
        record = {c.name: normalize(c, row.get(c.name)) for c in schema.columns}
        key = tuple(record[c.name] for c in schema.key_columns)
        assert key not in out, f"duplicate key {key} in {dest.uri}"
        out[key] = record
    return out
