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
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.replication.lake.iceberg_data import match_filter

if TYPE_CHECKING:
    import pyarrow as pa


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
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
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
            removed_files.append(task.file)
            removed_keys.append(hit)
            if kept.num_rows:
                added_files += _dataframe_to_data_files(
                    table_metadata=metadata, df=kept, io=io, write_uuid=commit_uuid, counter=counter
                )
    if not removed_files:
        txn.append(upserts, snapshot_properties=summary)
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
        if upserts.num_rows:
            for data_file in _dataframe_to_data_files(
                table_metadata=metadata, df=upserts, io=io, write_uuid=commit_uuid, counter=counter
            ):
                overwrite.append_data_file(data_file)
    return pa.concat_tables(removed_keys)


def replace_all(txn: Any, io: Any, *, rows: pa.RecordBatchReader, summary: dict[str, str]) -> None:
    """Stage, in ``txn``, one overwrite snapshot removing every data file of the table and adding
    ``rows`` (streamed into data files as they are read): a snapshot rebuild of an existing
    table, with no empty intermediate snapshot.

    :param rows: the snapshot's rows in the table's (possibly just replaced) schema.
    """
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import _dataframe_to_data_files
    from pyiceberg.table import DataScan

    metadata = txn.table_metadata
    with txn.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
        if metadata.current_snapshot() is not None:
            overwrite.delete_by_predicate(AlwaysTrue())
            for task in DataScan(table_metadata=metadata, io=io).plan_files():
                overwrite.delete_data_file(task.file)
        for data_file in _dataframe_to_data_files(
            table_metadata=metadata, df=rows, io=io, write_uuid=overwrite.commit_uuid
        ):
            overwrite.append_data_file(data_file)


__all__ = ["merge", "replace_all"]
