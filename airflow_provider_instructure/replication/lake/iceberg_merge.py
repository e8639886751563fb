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
    txn: Any, io: Any, *, touched_existing: pa.Table, keys: list[str], upserts: pa.Table, summary: dict[str, str]
) -> int:
    """Stage, in ``txn``, one overwrite snapshot removing every row whose key is in
    ``touched_existing`` and adding ``upserts``.

    :param txn: the sync's transaction (schema changes already staged in it).
    :param io: the table's FileIO.
    :param touched_existing: the key columns of the rows to remove (keys the table holds).
    :param upserts: the rows to add, the table's columns.
    :param summary: snapshot summary properties.
    :returns: how many data files were rewritten.
    """
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
    from pyiceberg.table import DataScan

    metadata = txn.table_metadata  # read once: every access re-applies the staged updates
    counter = itertools.count(0)  # file names: <commit uuid>-<n>; shared by every write below
    rewritten = 0
    with txn.update_snapshot(snapshot_properties=summary).overwrite() as overwrite:
        if touched_existing.num_rows:
            distinct = touched_existing.group_by(keys).aggregate([])
            where = match_filter(distinct, keys)
            # As in pyiceberg's delete: the predicate selects the manifests to look in; only the
            # files passed to delete_data_file are removed from them.
            overwrite.delete_by_predicate(where)
            tasks = DataScan(table_metadata=metadata, io=io, row_filter=where).plan_files()
            for task in tasks:
                rows = ArrowScan(
                    table_metadata=metadata, io=io, projected_schema=metadata.schema(), row_filter=AlwaysTrue()
                ).to_table(tasks=[task])
                kept = rows.join(distinct.cast(rows.select(keys).schema), keys, join_type="left anti")
                if kept.num_rows == rows.num_rows:
                    continue  # the statistics could not rule the file out, but no key is in it
                overwrite.delete_data_file(task.file)
                rewritten += 1
                if kept.num_rows:
                    for data_file in _dataframe_to_data_files(
                        table_metadata=metadata, df=kept, io=io, write_uuid=overwrite.commit_uuid, counter=counter
                    ):
                        overwrite.append_data_file(data_file)
        if upserts.num_rows:
            for data_file in _dataframe_to_data_files(
                table_metadata=metadata, df=upserts, io=io, write_uuid=overwrite.commit_uuid, counter=counter
            ):
                overwrite.append_data_file(data_file)
    return rewritten


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
