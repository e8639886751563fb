"""Tables DAP has no data for yet: create them empty, and recognise them on the next run.

DAP answers ``ProcessingError`` "There is no data available yet" for a table without rows.
The sync then creates the replica empty from the DAP schema, so that downstream SQL finds it,
but stores **no state row**: there is no watermark to continue from, and the next run must
try a snapshot again. That next run finds a table without a state row, which
:meth:`~.replicator.TableReplicator.check_target` otherwise refuses as "not managed". It
accepts it when :func:`is_empty_replica` holds: the table has no row and exactly the columns
of the table's DAP schema, so replacing it with the snapshot loses nothing.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.dialects.base import Dialect, Target


def is_empty_replica(dialect: Dialect, cur: Any, target: Target, schema: TableSchema) -> bool:
    """Whether ``target`` holds no row and has exactly the columns of ``schema``.

    Such a table is what :func:`create_empty_table` leaves (or an equally empty one): a
    snapshot may replace it. A table with rows or with other columns is never taken over.

    :param schema: the table's DAP schema with the target's column names
        (:func:`~.identifiers.mapped_schema`).
    """
    columns = {c.name for c in schema.columns}
    if set(dialect.live_columns(cur, target)) != columns:
        return False
    return dialect.fetch_one(cur, f"SELECT 1 FROM {dialect.qualified(target)} LIMIT 1") is None


def create_empty_table(dialect: Dialect, target: Target, schema: TableSchema, types: dict[str, str]) -> bool:
    """Create ``target`` without rows from the DAP schema, unless a table of that name exists.

    Holds the target's replication lock, so a concurrent sync cannot be half-way through a
    snapshot of the same table. No state row is written.

    :param schema: the table's DAP schema with the target's column names
        (:func:`~.identifiers.mapped_schema`).
    :param types: SQL type per column (the replicator's type mapping for this dialect).
    :returns: True if the table was created, False if it existed already.
    :raises ConcurrentReplicationError: another sync of the target is running.
    """
    with dialect.exclusive(target), dialect.transaction() as cur:
        if dialect.table_kind(cur, target.schema, target.table) is not None:
            return False
        dialect.ensure_schema(cur, target)
        cur.execute(dialect.create_table_sql(target, target.table, schema.columns, types))
    return True
