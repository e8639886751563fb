"""The rows of a sync as Arrow data for the Iceberg destination.

The parts are read by :mod:`.arrow` (types, the bad-value policy, ``_dap_op`` for incrementals).
Here: a snapshot's batches as a stream (bounded memory; pyiceberg writes them into Parquet
data files as they come), an incremental's records as upserts and deletes with one record per
key (the last occurrence wins, as in ``dap``), and the key filters the merge needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.lake import arrow as lake_arrow
from airflow_provider_instructure.replication.values import ValueTally

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.expressions import BooleanExpression

#: The operation column of incremental batches (:mod:`.arrow`).
OP = lake_arrow.OP_COLUMN


#: Rows and Arrow bytes read from the parts: the counter both lake formats use.
RowCounter = lake_arrow.RowCounter


@dataclass(frozen=True)
class Changes:
    """An incremental's records, one per key.

    :param upserts: the ``U`` rows, every column of the table.
    :param deletes: the keys of the ``D`` records.
    :param touched: every key the result carries (``U`` and ``D``): their old rows go.
    """

    upserts: pa.Table
    deletes: pa.Table
    touched: pa.Table


def table_arrow_schema(schema: TableSchema) -> pa.Schema:
    """The Arrow schema of the table's rows (no ``_dap_op``)."""
    return lake_arrow.arrow_schema(schema)


def snapshot_reader(
    schema: TableSchema, parts: Any, tally: ValueTally, where: str, *, dedupe: bool, counter: RowCounter
) -> pa.RecordBatchReader:
    """A snapshot's rows as a one-pass stream (streamed parts are released as they are read).

    :param where: ``namespace.table -> target``, for messages.
    :param dedupe: the table may repeat a key (``web_logs``): keep the last occurrence.
    """
    import pyarrow as pa

    batches = lake_arrow.record_batches(parts, schema, where=where, incremental=False, tally=tally, dedupe=dedupe)
    return pa.RecordBatchReader.from_batches(table_arrow_schema(schema), counter.count(batches))


def read_changes(
    schema: TableSchema, parts: Any, tally: ValueTally, where: str, *, dedupe: bool, counter: RowCounter
) -> Changes:
    """An incremental's records as upserts and deletes, the last occurrence of a key winning."""
    import pyarrow as pa
    import pyarrow.compute as pc

    target = table_arrow_schema(schema)
    keys = [c.name for c in schema.key_columns]
    batches = lake_arrow.record_batches(parts, schema, where=where, incremental=True, tally=tally, dedupe=dedupe)
    records = pa.Table.from_batches(list(counter.count(batches)), schema=lake_arrow.arrow_schema(schema, with_op=True))
    # A key repeated outside web_logs would otherwise be appended twice: keep its last record.
    records = last_per_key(records, keys)
    is_upsert = pc.equal(records[OP], "U")
    upserts = records.filter(is_upsert).drop_columns([OP]).select(target.names).cast(target)
    deletes = records.filter(pc.invert(is_upsert)).select(keys)
    return Changes(upserts=upserts, deletes=deletes, touched=records.select(keys))


def last_per_key(records: pa.Table, keys: list[str]) -> pa.Table:
    """One row per key: its last occurrence (parts are read in name order, rows in file order)."""
    import pyarrow as pa

    if records.num_rows < 2:
        return records
    if records.select(keys).group_by(keys).aggregate([]).num_rows == records.num_rows:
        return records  # no repeated key (every table but web_logs, normally)
    position = "__dap_position"
    numbered = records.append_column(position, pa.array(range(records.num_rows), pa.int64()))
    last = numbered.group_by(keys, use_threads=False).aggregate([(position, "max")])
    return records.take(last[f"{position}_max"].combine_chunks().sort())


def match_filter(key_rows: pa.Table, keys: list[str]) -> BooleanExpression:
    """An Iceberg expression matching the rows whose key is one of ``key_rows``."""
    from pyiceberg.expressions import AlwaysFalse, And, EqualTo, In, Or

    if key_rows.num_rows == 0:
        return AlwaysFalse()
    if len(keys) == 1:
        return In(keys[0], set(key_rows[keys[0]].to_pylist()))
    rows = key_rows.to_pylist()
    terms = [
        And(*[EqualTo(k, row[k]) for k in keys]) if len(keys) > 1 else EqualTo(keys[0], row[keys[0]]) for row in rows
    ]
    return terms[0] if len(terms) == 1 else Or(*terms)


def count_in(rows: pa.Table, existing: pa.Table, keys: list[str]) -> int:
    """How many of ``rows``' keys are among ``existing``'s."""
    if rows.num_rows == 0 or existing.num_rows == 0:
        return 0
    theirs = existing.select(keys).group_by(keys).aggregate([]).cast(rows.select(keys).schema)
    joined = rows.select(keys).join(theirs, keys, join_type="inner")
    return joined.num_rows


__all__ = [
    "OP",
    "Changes",
    "RowCounter",
    "count_in",
    "last_per_key",
    "match_filter",
    "read_changes",
    "snapshot_reader",
    "table_arrow_schema",
]
