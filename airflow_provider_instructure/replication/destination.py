"""The destination seam: what a sync needs from wherever it replicates to.

Two families satisfy :class:`Destination`, each in its own modules:

* SQL databases: :class:`~.replicator.TableReplicator` over a DB-API connection, with the
  dialects in :mod:`.dialects` (``kind`` ``postgres``, ``mysql``, ``sqlite``);
* open table formats: ``DeltaDestination`` and ``IcebergDestination`` in :mod:`.lake`
  (``kind`` ``delta``, ``iceberg``), at a :class:`~.lake.storage.StorageLocation`.

The caller (``CD2SyncTableOperator``) builds one of them once and then only speaks this
protocol: it never asks which kind it has. :func:`open_table_format` builds a lake
destination without importing ``deltalake`` or ``pyiceberg`` until one is asked for.

The contract every destination keeps:

* :meth:`~Destination.check_target` runs every check before data moves (reachable, writable,
  an existing table there is ours for the same DAP table) and raises
  :class:`~.errors.ReplicationConfigError` with a clear message;
* :meth:`~Destination.read_state` needs nothing but the destination (no Airflow state);
* a snapshot or an incremental is one commit holding the data **and** the new watermark and
  schema version: a failure leaves the previous state, a rerun of the window gives the same
  result (:mod:`.windows` refuses gaps and stale windows);
* :meth:`~Destination.create_empty` (DAP has no data yet) stores no state, so the next run
  snapshots again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_provider_instructure.replication.errors import ReplicationConfigError

if TYPE_CHECKING:
    from airflow_provider_instructure.replication.lake.storage import StorageLocation
    from airflow_provider_instructure.replication.part_feed import Parts
    from airflow_provider_instructure.replication.result import SyncResult
    from airflow_provider_instructure.replication.state import SyncState

#: ``kind`` of the SQL destinations (the dialects) and of the table formats.
SQL_KINDS = ("postgres", "mysql", "sqlite")
TABLE_FORMATS = ("delta", "iceberg")


@runtime_checkable
class Destination(Protocol):
    """One DAP table's replica, wherever it is.

    ``kind`` is ``postgres``, ``mysql``, ``sqlite``, ``delta`` or ``iceberg``; ``target_name``
    names the replica for people (``schema.table``, a table URI or ``namespace.table``).
    """

    kind: str

    @property
    def target_name(self) -> str:
        """The replica, for messages and the sync's XCom."""
        ...

    def check_target(self, *, empty_table_schema: Callable[[], dict[str, Any]] | None = None) -> None:
        """Every check before data moves.

        :param empty_table_schema: returns the versioned DAP schema; given, an existing replica
            without state is accepted when it is the empty table :meth:`create_empty` leaves.
        :raises ReplicationConfigError: the destination cannot be used, with what to change.
        """
        ...

    def read_state(self) -> SyncState | None:
        """The stored watermark and schema version; None on the first run (snapshot)."""
        ...

    def create_empty(self, versioned_schema: dict[str, Any]) -> bool:
        """Create the replica without rows and without state (DAP has no data yet).

        :returns: False when the replica exists already (it is left as it is).
        """
        ...

    def apply_snapshot(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        at: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Replace the replica with a snapshot and store the watermark ``at``, in one commit.

        :param files: the job's TSV parts (:data:`~.part_feed.Parts`).
        :raises WatermarkError: ``at`` is older than the stored watermark.
        """
        ...

    def apply_incremental(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        since: datetime | str,
        until: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Apply upserts and hard deletes and move the watermark to ``until``, in one commit.

        :raises SnapshotRequired: no state, or its table is gone.
        :raises SchemaChangeRequiresSnapshot: the schema changed in a way that needs a snapshot.
        :raises WatermarkError: the window leaves a gap or ends before the watermark.
        """
        ...

    def close(self) -> None:
        """Release what the destination holds (a database connection, a catalog). Idempotent."""
        ...


def open_table_format(
    table_format: str,
    location: StorageLocation,
    namespace: str,
    table: str,
    *,
    catalog_uri: str | None = None,
    catalog_namespace: str | None = None,
    log: logging.Logger | None = None,
) -> Destination:
    """The lake destination of ``table_format`` for one DAP table.

    Imports ``deltalake`` or ``pyiceberg`` only now (both are optional extras).

    :param table_format: ``delta`` or ``iceberg``.
    :param location: the warehouse directory or object-store URI, with its credentials.
    :param catalog_uri: Iceberg only: SQLAlchemy URL of the SQL catalog (default: a SQLite file
        in a local location; required for object storage).
    :param catalog_namespace: Iceberg only: the catalog namespace (default: the DAP namespace).
    :raises ReplicationConfigError: an unknown format, an Iceberg-only option given for Delta,
        or the format's extra is not installed (the message names the ``pip install``).
    """
    fmt = (table_format or "").lower()
    if fmt == "delta":
        if catalog_uri or catalog_namespace:
            raise ReplicationConfigError(
                "a Delta table needs no catalog: catalog_uri / catalog_namespace are for table_format='iceberg'"
            )
        from airflow_provider_instructure.replication.lake import DeltaDestination

        return DeltaDestination(location, namespace, table, log=log)  # type: ignore[no-any-return]
    if fmt == "iceberg":
        from airflow_provider_instructure.replication.lake import IcebergDestination

        return IcebergDestination(  # type: ignore[no-any-return]
            location, namespace, table, catalog_uri=catalog_uri, catalog_namespace=catalog_namespace, log=log
        )
    raise ReplicationConfigError(f"unknown table format {table_format!r}; use one of: {', '.join(TABLE_FORMATS)}")


__all__ = ["SQL_KINDS", "TABLE_FORMATS", "Destination", "open_table_format"]
