"""A sync's row changes as ONE Iceberg ``overwrite`` snapshot (incremental merge, snapshot replace).

pyiceberg's ``Transaction.delete`` + ``append`` would stage two or three snapshots (a delete,
an overwrite for the files it must rewrite, an append) in the sync's commit: correct, since the
catalog commit is still one, but the intermediate snapshots are states no reader should time
travel to (deletes applied, upserts not yet) and each costs manifests and metadata. Here one
snapshot producer does both, the way pyiceberg's own delete rewrites files (copy-on-write):

* every data file that may hold a touched key (pruned with the key filter and the files'
  column statistics) is read, its rows without the touched keys are written to a new data
  file, and the old file is removed;
* the ``U`` rows are written as new data files;
* the snapshot summary carries the sync's ``dap.*`` properties.

It uses pyiceberg's data-file writer (``_dataframe_to_data_files``, the function behind
``append``/``overwrite``) and ``ArrowScan`` (what ``delete`` reads files with).

**Memory.** pyiceberg 0.12 hands its writer's tasks to ``ThreadPoolExecutor.map``, which
submits them all at once: a ``RecordBatchReader`` passed to ``append`` or
``_dataframe_to_data_files`` is read to the end, every bin of
``write.target-file-size-bytes`` (512 MiB of Arrow by default) queued in memory, before the
first file is finished (measured: peak RSS grew with the table, 1 GB at 1M ``submissions``
rows). :func:`write_data_files` instead cuts the stream into groups of at most
:data:`TARGET_ARROW_BYTES` and writes each group's file before it reads the next, so a sync
holds one group (plus the Parquet writer's buffers) whatever the table's size; an incremental
holds its change set and one touched data file (files we write are bounded the same way).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.replication.lake.iceberg_data import match_filter

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import pyarrow as pa

#: Arrow bytes (uncompressed, ``RecordBatch.nbytes``) per data file written: the rows one file
#: holds in memory while it is written. Zstd Parquet files come out several times smaller
#: (about 10-15 MB for ``submissions``); big enough for readers, small enough that a touched
#: file rewritten by an incremental costs little memory.
TARGET_ARROW_BYTES = 64 * 1024 * 1024


def write_data_files(
    metadata: Any,
    io: Any,
    rows: pa.RecordBatchReader | pa.Table | Iterable[pa.RecordBatch],
    *,
    write_uuid: Any,
    counter: Iterator[int],
    target_bytes: int = TARGET_ARROW_BYTES,
) -> Iterator[Any]:
    """Write ``rows`` into data files of at most about ``target_bytes`` Arrow bytes each, one
    file at a time (the next group is read only once the previous file is written).

    :param metadata: the table metadata the files are written for (the transaction's).
    :param io: the table's FileIO.
    :param rows: the rows, in the table's Arrow schema; read once.
    :param write_uuid: the snapshot's commit UUID (file names ``<uuid>-<n>``).
    :param counter: file numbers, shared by every write of the snapshot.
    :returns: the pyiceberg ``DataFile`` of each file written, as it is written.
    """
    import pyarrow as pa
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    schema = rows.schema if isinstance(rows, (pa.RecordBatchReader, pa.Table)) else None
    batches = rows.to_batches() if isinstance(rows, pa.Table) else rows
    group: list[pa.RecordBatch] = []
    size = 0

    def flush() -> list[Any]:
        # A pa.Table of one group: pyiceberg bin-packs it into one file (it is under the
        # target) and list() waits for that file before the caller reads more rows.
        table = pa.Table.from_batches(group, schema=schema)
        return list(
            _dataframe_to_data_files(table_metadata=metadata, df=table, io=io, write_uuid=write_uuid, counter=counter)
        )

    for batch in batches:
        if schema is None:
            schema = batch.schema
        if not batch.num_rows:
            continue
        group.append(batch)
        size += batch.nbytes
        if size >= target_bytes:
            yield from flush()
            group, size = [], 0
    if group:
        yield from flush()


def merge(
    txn: Any, io: Any, *, touched: pa.Table, keys: list[str], upserts: pa.Table, summary: dict[str, str]
) -> pa.Table:
    """Stage, in ``txn``, the removal of every row whose key is in ``touched`` and the addition
    of ``upserts``, as one snapshot: an ``overwrite`` when rows were removed, else an ``append``
    (even an empty one: it carries the new watermark).

    The data files that may hold a touched key are read once: their rows without those keys are
    written to new files right away (only the new files' metadata is kept, not their rows), and
    the keys removed are returned for the counts.

    :param txn: the sync's transaction (schema changes already staged in it).
    :param io: the table's FileIO.
    :param touched: the key columns of every record of the result (``U`` and ``D``).
    :param upserts: the rows to add, the table's columns.
    :param summary: snapshot summary properties.
    :returns: the key columns of the rows removed (the keys the table held).
    """
    import uuid

    import pyarrow as pa
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.table import DataScan

    metadata = txn.table_metadata  # read once: every access re-applies the staged updates
    commit_uuid = uuid.uuid4()
    counter = itertools.count(0)  # file names: <commit uuid>-<n>; shared by every write below
    removed_files: list[Any] = []
    added_files: list[Any] = []
    removed_keys: list[pa.Table] = []
    where = None
    if touched.num_rows and metadata.current_snapshot() is not None:
        distinct = touched.group_by(keys).aggregate([])
        where = match_filter(distinct, keys)
        for task in DataScan(table_metadata=metadata, io=io, row_filter=where).plan_files():
            rows = ArrowScan(
                table_metadata=metadata, io=io, projected_schema=metadata.schema(), row_filter=AlwaysTrue()
            ).to_table(tasks=[task])
            hit = rows.select(keys).join(distinct.cast(rows.select(keys).schema), keys, join_type="left semi")
            if hit.num_rows == 0:
                continue  # the statistics could not rule the file out, but no touched key is in it
            kept = rows.join(distinct.cast(rows.select(keys).schema), keys, join_type="left anti")
            del rows  # one touched file in memory at a time
            removed_files.append(task.file)
            removed_keys.append(hit)
            if kept.num_rows:
                added_files += write_data_files(metadata, io, kept, write_uuid=commit_uuid, counter=counter)
            del kept
    if not removed_files:
        with txn.update_snapshot(snapshot_properties=summary).fast_append() as append:
            append.commit_uuid = commit_uuid
            for data_file in write_data_files(metadata, io, upserts, write_uuid=commit_uuid, counter=counter):
                append.append_data_file(data_file)
        return touched.slice(0, 0)
    with txn.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
        overwrite.commit_uuid = commit_uuid  # as pyiceberg's delete does: the files above carry it
        # As in pyiceberg's delete: the predicate selects the manifests to look in; only the
        # files passed to delete_data_file are removed from them.
        overwrite.delete_by_predicate(where)
        for data_file in removed_files:
            overwrite.delete_data_file(data_file)
        for data_file in added_files:
            overwrite.append_data_file(data_file)
        for data_file in write_data_files(metadata, io, upserts, write_uuid=commit_uuid, counter=counter):
            overwrite.append_data_file(data_file)
    return pa.concat_tables(removed_keys)


def replace_all(txn: Any, io: Any, *, rows: pa.RecordBatchReader, summary: dict[str, str]) -> None:
    """Stage, in ``txn``, one overwrite snapshot removing every data file of the table and adding
    ``rows`` (streamed into data files as they are read): a snapshot rebuild of an existing
    table, with no empty intermediate snapshot.

    :param rows: the snapshot's rows in the table's (possibly just replaced) schema.
    """
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.table import DataScan

    metadata = txn.table_metadata
    with txn.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
        if metadata.current_snapshot() is not None:
            overwrite.delete_by_predicate(AlwaysTrue())
            for task in DataScan(table_metadata=metadata, io=io).plan_files():
                overwrite.delete_data_file(task.file)
        for data_file in write_data_files(
            metadata, io, rows, write_uuid=overwrite.commit_uuid, counter=itertools.count(0)
        ):
            overwrite.append_data_file(data_file)


def append_all(txn: Any, io: Any, *, rows: pa.RecordBatchReader, summary: dict[str, str]) -> None:
    """Stage, in ``txn``, one append snapshot of ``rows`` (streamed into bounded data files):
    the snapshot of a new or never-filled table. ``Transaction.append`` would read the whole
    stream before writing (see the module docstring).

    :param rows: the snapshot's rows in the table's schema.
    """
    metadata = txn.table_metadata
    with txn.update_snapshot(snapshot_properties=summary).fast_append() as append:
        for data_file in write_data_files(
            metadata, io, rows, write_uuid=append.commit_uuid, counter=itertools.count(0)
        ):
            append.append_data_file(data_file)


__all__ = ["TARGET_ARROW_BYTES", "append_all", "merge", "replace_all", "write_data_files"]
