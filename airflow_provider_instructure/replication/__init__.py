"""Replicate Canvas Data 2 (DAP) tables into SQL databases and open table formats.

Snapshot first, then incrementals with upserts and hard deletes; watermark and schema
version stored with the data in the same transaction (SQL) or commit (Delta, Iceberg);
in-place additive schema changes; atomic snapshot swaps; continuation of databases created
by the official ``dap initdb``. Targets: PostgreSQL, MySQL/MariaDB, SQLite (:mod:`.dialects`),
Delta Lake and Apache Iceberg (:mod:`.lake`, optional extras), all behind one
:class:`~.destination.Destination` protocol (:mod:`.destination`).

Public API:

* :class:`Destination` (``check_target``, ``read_state``, ``create_empty``, ``apply_snapshot``,
  ``apply_incremental``, ``close``), satisfied by :class:`TableReplicator` (SQL) and the lake
  destinations (:func:`open_table_format`), and its :class:`SyncResult`;
* :class:`SyncState` (what ``read_state`` returns);
* the errors in :mod:`.errors`.

Modules: :mod:`.destination` (the seam), :mod:`.replicator` (SQL orchestration), :mod:`.result` (:class:`SyncResult`),
:mod:`.state` (state table layout, ``dap``'s ``table_sync``), :mod:`.types` (per-dialect type
mapping), :mod:`.tsv` (streaming part reader), :mod:`.values` (the bad-value policy shared by
every target) and :mod:`.locate` (where a refused value is), :mod:`.schema_changes` (what can
change in place), :mod:`.dialects` (PostgreSQL, MySQL, SQLite loading and swapping),
:mod:`.lake` (Delta Lake and Iceberg tables on a local path or object storage).

The package imports neither Airflow nor an HTTP client: it consumes result files that are
already on disk and a DB-API connection or a storage location.
"""

from __future__ import annotations

from airflow_provider_instructure.replication.destination import TABLE_FORMATS, Destination, open_table_format
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
    "TABLE_FORMATS",
    "BadValueError",
    "ConcurrentReplicationError",
    "DataLoadError",
    "Destination",
    "ReplicationConfigError",
    "ReplicationError",
    "SchemaChangeRequiresSnapshot",
    "SnapshotRequired",
    "SyncResult",
    "SyncState",
    "TableReplicator",
    "TsvFormatError",
    "WatermarkError",
    "open_table_format",
]
