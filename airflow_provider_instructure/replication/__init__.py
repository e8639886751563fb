"""Replicate Canvas Data 2 (DAP) tables into SQL databases.

Snapshot first, then incrementals with upserts and hard deletes; watermark and schema
version stored in the target database in the same transaction as the data; in-place
additive schema changes; atomic snapshot swaps; continuation of databases created by the
official ``dap initdb``. Targets: PostgreSQL, MySQL/MariaDB, SQLite.

Public API:

* :class:`TableReplicator` (``check_target``, ``read_state``, ``apply_snapshot``,
  ``apply_incremental``) and its :class:`SyncResult`;
* :class:`SyncState` (what ``read_state`` returns);
* the errors in :mod:`.errors`.

Modules: :mod:`.replicator` (orchestration), :mod:`.result` (:class:`SyncResult`),
:mod:`.state` (state table layout, ``dap``'s ``table_sync``), :mod:`.types` (per-dialect type
mapping), :mod:`.tsv` (streaming part reader), :mod:`.values` (the bad-value policy shared by
every target) and :mod:`.locate` (where a refused value is), :mod:`.schema_changes` (what can
change in place), :mod:`.dialects` (PostgreSQL, MySQL, SQLite loading and swapping).

The package imports neither Airflow nor an HTTP client: it consumes result files that are
already on disk and a DB-API connection.
"""

from __future__ import annotations

from airflow_provider_instructure.replication.errors import (
    BadValueError,
    ConcurrentReplicationError,
    DataLoadError,
    ReplicationConfigError,
    ReplicationError,
    SchemaChangeRequiresSnapshot,
    SnapshotRequired,
    TsvFormatError,
    WatermarkError,
)
from airflow_provider_instructure.replication.replicator import DUPLICATE_KEY_TABLES, SyncResult, TableReplicator
from airflow_provider_instructure.replication.state import STATE_TABLE, SyncState

__all__ = [
    "DUPLICATE_KEY_TABLES",
    "STATE_TABLE",
    "BadValueError",
    "ConcurrentReplicationError",
    "DataLoadError",
    "ReplicationConfigError",
    "ReplicationError",
    "SchemaChangeRequiresSnapshot",
    "SnapshotRequired",
    "SyncResult",
    "SyncState",
    "TableReplicator",
    "TsvFormatError",
    "WatermarkError",
]
