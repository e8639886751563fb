"""DAP tables as Arrow: the schema of a lake table, and TSV parts read as RecordBatches.

Both lake formats write Arrow data, so the type mapping and the reader live here, shared:

=============================  ================================================
DAP column                     Arrow type (Delta / Iceberg type)
=============================  ================================================
integer int16 / int32 / int64  int16 / int32 / int64 (Delta short/integer/long)
integer enum                   by width, as above
number float32 / float64       float64 (the wire carries decimal text; a 4-byte
                               float would round it, as on the SQL targets)
number + multipleOf            decimal128(precision, scale) (string past 38
                               digits, which neither format stores)
boolean                        bool
date-time                      timestamp("us", tz="UTC")
date                           date32
time, uuid, ip, string         string (the text DAP sent)
string enum                    string (a new member needs no schema change)
nested object, array, free     string holding the JSON text
=============================  ================================================

Key columns are non-nullable, every value column nullable (as on the SQL targets, so
"column became nullable" needs no schema change).

The reader (:func:`record_batches`, :func:`batch_reader`) streams: it holds one batch of at
most ``batch_rows`` rows (and never more than one part's worth) at a time. It applies the
bad-value policy of :mod:`..values` with Python ``datetime``'s range (0001-9999, as on
SQLite), then converts each column with one vectorized Arrow cast; a value the cast refuses
raises :class:`~..errors.BadValueError` naming the table, part, line, column, key and value.
Incremental batches carry an extra column :data:`OP_COLUMN` (``"U"``/``"D"``); a delete
carries only its key. With ``dedupe`` (``canvas_logs.web_logs``, whose results may repeat a
key) only the last occurrence of each key is kept: the batches are spooled to a local Arrow
file while the keys are collected, then read back filtered (memory: the key columns only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.errors import BadValueError, ReplicationConfigError, TsvFormatError
from airflow_provider_instructure.replication.tsv import META_ACTION, Part, iter_numbered_rows
from airflow_provider_instructure.replication.values import (
    PYTHON_RANGE,
    FieldFixer,
    ValueTally,
    cut,
    role_of,
    shorten,
)

#: The incremental batches' operation column: ``U`` (upsert) or ``D`` (delete); never stored.
OP_COLUMN = "_dap_op"
#: Rows per RecordBatch (bounded memory; large enough for vectorized casts to pay off). The
#: rows of a batch are Python lists of str until the batch is built, about 4.5 KB a row for
#: ``submissions``: 65,536 rows peaked at 300 MB over the imports, 16,384 at 90 MB, for the
#: same CPU time (measured on 200k rows).
BATCH_ROWS = 16384
#: Decimal digits Arrow's decimal128 (and Delta/Iceberg decimals) can hold.
MAX_DECIMAL_PRECISION = 38

_INTS = {16: pa.int16(), 32: pa.int32(), 64: pa.int64()}
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


def arrow_type(column: Column) -> pa.DataType:
    """The Arrow type of a DAP column in a lake table (module docstring)."""
    typ = column.type
    kind = typ.kind
    if kind == "integer":
        return _INTS.get(typ.bits, pa.int64())
    if kind == "float":
        return pa.float64()
    if kind == "decimal":
        if 0 < typ.precision <= MAX_DECIMAL_PRECISION:
            return pa.decimal128(typ.precision, typ.scale)
        return pa.string()
    if kind == "boolean":
        return pa.bool_()
    if kind == "timestamp":
        return TIMESTAMP_TYPE
    if kind == "date":
        return pa.date32()
    return pa.string()  # string, enum, uuid, ip, time, json


def arrow_field(column: Column) -> pa.Field:
    """The column as an Arrow field: keys non-nullable, values nullable."""
    return pa.field(column.name, arrow_type(column), nullable=not column.is_key)


def arrow_schema(schema: TableSchema, *, with_op: bool = False) -> pa.Schema:
    """The Arrow schema of the lake table for ``schema`` (keys first, in schema order).

    :param with_op: add :data:`OP_COLUMN` (non-nullable string) last, for incremental batches.
    :raises ReplicationConfigError: a DAP column is named :data:`OP_COLUMN` (the incremental's
        MERGE source would hold two such columns: delta-rs panics); refused on the snapshot too,
        so that a table whose incrementals cannot work is never started.
    """
    if any(c.name == OP_COLUMN for c in schema.columns):
        raise ReplicationConfigError(
            f"the DAP table has a column named {OP_COLUMN!r} (schema version {schema.version}), the name the "
            "Delta and Iceberg destinations reserve for the change type of incremental rows; replicate this "
            "table to a SQL destination (destination_conn_id)"
        )
    fields = [arrow_field(c) for c in schema.columns]
    if with_op:
        fields.append(pa.field(OP_COLUMN, pa.string(), nullable=False))
    return pa.schema(fields)


# -- the reader ---------------------------------------------------------------------------------


class _PartReader:
    """Turns the records of one part into RecordBatches of the table's schema."""

    def __init__(
        self,
        part: Part,
        schema: TableSchema,
        target: pa.Schema,
        *,
        where: str,
        incremental: bool,
        tally: ValueTally,
        batch_rows: int,
    ) -> None:
        self.part = part
        self.schema = schema
        self.target = target
        self.incremental = incremental
        self.batch_rows = batch_rows
        self.fixer = FieldFixer(
            where=where,
            part=part.path.name,
            names=[None if f.is_meta else f.name for f in part.fields],
            roles=[None if f.column is None else role_of(f.column) for f in part.fields],
            keys=[i for i, f in enumerate(part.fields) if f.column is not None and f.column.is_key],
            action=next((i for i, f in enumerate(part.fields) if f.label == META_ACTION), None),
            timestamps=PYTHON_RANGE,
            tally=tally,
            null=None,
        )
        by_name = {f.name: i for i, f in enumerate(part.fields) if f.column is not None}
        #: header index of each table column (None: the part lacks it, stored as NULL)
        self.sources = [by_name.get(c.name) for c in schema.columns]
        self.action = self.fixer.action
        if incremental and self.action is None:
            raise TsvFormatError(f"{part.path.name}: an incremental part needs a 'meta.action' column")

    def batches(self) -> Iterator[pa.RecordBatch]:
        fixer = self.fixer
        rows: list[list[str | None]] = []
        lines: list[int] = []
        for line, fields in iter_numbered_rows(self.part):
            fixed = fixer.fix(fields, line)
            if fixed is None:
                continue  # a delete without a key: counted by the fixer
            fixer.count_text_placeholders(fixed)
            if self.action is not None and fixed[self.action] not in ("U", "D"):
                raise fixer.error(line, self.action, fixed[self.action], fixed, "is not an action (U or D)")
            rows.append(fixed)
            lines.append(line)
            if len(rows) >= self.batch_rows:
                yield self._batch(rows, lines)
                rows, lines = [], []
        if rows:
            yield self._batch(rows, lines)

    def _batch(self, rows: list[list[str | None]], lines: list[int]) -> pa.RecordBatch:
        arrays: list[pa.Array] = []
        for column, source, field in zip(self.schema.columns, self.sources, self.target, strict=False):
            if source is None:
                arrays.append(pa.nulls(len(rows), field.type))
                continue
            text = pa.array([r[source] for r in rows], pa.string())
            arrays.append(self._convert(text, column, source, field.type, rows, lines))
        if self.incremental:
            arrays.append(pa.array([r[self.action] for r in rows], pa.string()))  # type: ignore[index]
        return pa.RecordBatch.from_arrays(arrays, schema=self.target)

    def _convert(
        self,
        text: pa.Array,
        column: Column,
        source: int,
        typ: pa.DataType,
        rows: list[list[str | None]],
        lines: list[int],
    ) -> pa.Array:
        if pa.types.is_string(typ):
            return text
        try:
            return text.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            first_error = exc
        if typ == TIMESTAMP_TYPE:
            # Arrow's cast wants a zone designator; DAP always sends one, but accept naive UTC text.
            try:
                return pc.assume_timezone(text.cast(pa.timestamp("us")), "UTC")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        for i, value in enumerate(text.to_pylist()):
            if value is None:
                continue
            try:
                pa.array([value], pa.string()).cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise self._bad_value(rows[i], lines[i], source, value, f"cannot be loaded as {typ}: {exc}") from exc
        raise self._bad_value(rows[0], lines[0], source, rows[0][source], str(first_error))  # pragma: no cover

    def _bad_value(
        self, fields: list[str | None], line: int, column: int, value: str | None, why: str
    ) -> BadValueError:
        return self.fixer.error(line, column, value, fields, shorten(why, value))


def record_batches(
    parts: Iterable[Part],
    schema: TableSchema,
    *,
    where: str,
    incremental: bool,
    tally: ValueTally,
    dedupe: bool = False,
    batch_rows: int = BATCH_ROWS,
    spool_dir: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The records of ``parts`` as RecordBatches of :func:`arrow_schema` (``with_op=incremental``).

    :param parts: the parts in load order (a :class:`~..part_feed.PartFeed` is iterated once,
        releasing each part when the next is asked for).
    :param where: ``namespace.table -> target``, for messages.
    :param incremental: parts have ``meta.action``; batches carry :data:`OP_COLUMN`.
    :param tally: the bad-value policy's counts go here.
    :param dedupe: keep only the last occurrence of a key (spools to ``spool_dir``).
    :param batch_rows: at most this many rows per batch.
    :raises BadValueError: a value the policy and the cast cannot store.
    :raises TsvFormatError: a malformed part.
    """
    target = arrow_schema(schema, with_op=incremental)

    def raw() -> Iterator[pa.RecordBatch]:
        for part in parts:
            reader = _PartReader(
                part, schema, target, where=where, incremental=incremental, tally=tally, batch_rows=batch_rows
            )
            yield from reader.batches()

    if not dedupe:
        yield from raw()
        return
    yield from _last_occurrences(raw(), target, [c.name for c in schema.key_columns], spool_dir)


def _last_occurrences(
    batches: Iterator[pa.RecordBatch], target: pa.Schema, keys: list[str], spool_dir: str | None
) -> Iterator[pa.RecordBatch]:
    """``batches`` without the earlier occurrences of a repeated key (the last one wins)."""
    fd, path = tempfile.mkstemp(prefix="dap-lake-spool-", suffix=".arrow", dir=spool_dir)
    os.close(fd)
    try:
        key_batches: list[pa.RecordBatch] = []
        offset = 0
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, target) as writer:
            for batch in batches:
                writer.write_batch(batch)
                numbers = pa.array(range(offset, offset + batch.num_rows), pa.int64())
                key_batches.append(
                    pa.RecordBatch.from_arrays([batch.column(k) for k in keys] + [numbers], [*keys, "__row"])
                )
                offset += batch.num_rows
        if not offset:
            return
        key_table = pa.Table.from_batches(key_batches)
        last = key_table.group_by(keys, use_threads=False).aggregate([("__row", "max")]).column("__row_max")
        keep = pc.is_in(pa.array(range(offset), pa.int64()), value_set=last)
        del key_table, key_batches, last
        # OSFile, not memory_map: the batches read own their buffers and outlive the file.
        with pa.OSFile(path, "rb") as source:
            reader = pa.ipc.open_file(source)
            start = 0
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                mask = keep.slice(start, batch.num_rows)
                start += batch.num_rows
                kept = batch.filter(mask)
                if kept.num_rows:
                    yield kept
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def batch_reader(
    parts: Iterable[Part],
    schema: TableSchema,
    *,
    where: str,
    incremental: bool,
    tally: ValueTally,
    dedupe: bool = False,
    batch_rows: int = BATCH_ROWS,
    spool_dir: str | None = None,
) -> pa.RecordBatchReader:
    """:func:`record_batches` as a :class:`pyarrow.RecordBatchReader` (what the writers stream from)."""
    return pa.RecordBatchReader.from_batches(
        arrow_schema(schema, with_op=incremental),
        record_batches(
            parts,
            schema,
            where=where,
            incremental=incremental,
            tally=tally,
            dedupe=dedupe,
            batch_rows=batch_rows,
            spool_dir=spool_dir,
        ),
    )


def key_text(values: dict[str, Any]) -> str:
    """``name=value, ...`` of a key, values cut like the policy's messages."""
    return ", ".join(f"{k}={cut(None if v is None else str(v), 40)}" for k, v in values.items())


class RowCounter:
    """Rows and uncompressed Arrow bytes of the batches a writer consumed (``bytes_loaded``)."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0

    def count(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            self.rows += batch.num_rows
            self.bytes += batch.nbytes
            yield batch


__all__ = [
    "BATCH_ROWS",
    "OP_COLUMN",
    "TIMESTAMP_TYPE",
    "RowCounter",
    "arrow_field",
    "arrow_schema",
    "arrow_type",
    "batch_reader",
    "record_batches",
]
