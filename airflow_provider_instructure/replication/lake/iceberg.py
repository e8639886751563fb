"""Replicate one DAP table into an Apache Iceberg table (pyiceberg, SQL catalog).

Usage (the operator does this)::

    destination = IcebergDestination(
        StorageLocation("s3://bucket/lake", {...}), "canvas", "accounts",
        catalog_uri="postgresql+psycopg2://user:password@host/db",
    )
    destination.check_target()
    state = destination.read_state()          # None: first run -> apply_snapshot
    result = destination.apply_incremental(parts, versioned_schema=schema, since=state.watermark, until=...)

The table is ``<catalog_namespace>.<table>`` in the SQL catalog (:mod:`.iceberg_catalog`), its
files under ``<location>/<catalog_namespace>/<table>`` (``data/`` Parquet, ``metadata/``).

Guarantees (the same as the SQL targets'):

* **One catalog commit per sync.** Everything a sync changes is staged in one pyiceberg
  transaction: the schema (a rebuild replaces it, an incremental adds columns), the deletes,
  the appended rows, the table properties and the snapshot summary carrying the new watermark
  (:mod:`.iceberg_schema` says which key goes where and why). Data and manifest files are
  written first; the commit is the single swap of the table's metadata pointer in the catalog.
  A failure before it leaves the table at its previous snapshot (the files written are orphans
  that no snapshot references); a rerun of the same window converges.
* **Snapshot:** a new table is created and filled in one commit (pyiceberg's create-table
  transaction); an existing one gets the new schema if it changed and one ``overwrite``
  snapshot (every old data file out, the new ones in). Readers see the old rows until the
  commit and the new ones after it.
* **Incremental:** one ``overwrite`` snapshot (:mod:`.iceberg_merge`): each data file holding a
  key the result touches (``D`` and ``U`` keys) is rewritten without it (copy-on-write, no
  delete files), and the ``U`` rows are added; additive schema changes evolve the schema in the
  same commit. Other changes raise :class:`~..errors.SchemaChangeRequiresSnapshot`.
* **Concurrency:** the commit is optimistic (the catalog row is updated only if it still points
  at the metadata the sync started from): a concurrent writer makes the second commit fail with
  :class:`~..errors.ConcurrentReplicationError`, nothing half-applied.

No Airflow, no HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.dap_schema import TableSchema, parse_table_schema
from airflow_provider_instructure.replication.dialects.base import PhaseTimer
from airflow_provider_instructure.replication.errors import (
    ConcurrentReplicationError,
    ReplicationConfigError,
    SchemaChangeRequiresSnapshot,
)
from airflow_provider_instructure.replication.lake import iceberg_data as data
from airflow_provider_instructure.replication.lake import metadata as meta
from airflow_provider_instructure.replication.lake.iceberg_catalog import (
    check_location_free,
    default_catalog_uri,
    first_line,
    masked_url,
    namespace_exists,
    open_catalog,
    probe_writable,
    release,
    same_place,
)
from airflow_provider_instructure.replication.lake.iceberg_merge import append_all, merge, replace_all
from airflow_provider_instructure.replication.lake.iceberg_schema import (
    SYNC_PROPERTIES,
    TABLE_PROPERTIES,
    dap_snapshot,
    evolve_schema,
    iceberg_schema,
    same_columns,
    split_metadata,
    stage_schema,
    summary_properties,
)
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.replication.part_feed import Parts, read_parts
from airflow_provider_instructure.replication.replicator import DUPLICATE_KEY_TABLES
from airflow_provider_instructure.replication.result import SyncResult
from airflow_provider_instructure.replication.schema_changes import diff_schemas
from airflow_provider_instructure.replication.state import SyncState
from airflow_provider_instructure.replication.values import ValueTally
from airflow_provider_instructure.replication.windows import aware_utc, check_incremental_window, check_snapshot_at

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table, Transaction


class IcebergDestination:
    """Keeps one Iceberg table equal to one DAP table.

    :param location: the warehouse: a local directory or an ``s3://``, ``gs://``, ``abfss://``
        URI with its credentials; the table's files go to ``<location>/<catalog_namespace>/<table>``.
    :param namespace: DAP namespace (``canvas``).
    :param table: DAP table (``accounts``); also the Iceberg table's name.
    :param catalog_uri: SQLAlchemy URL of the SQL catalog database (``sqlite:///...``,
        ``postgresql+psycopg2://...``). Default: ``<location>/iceberg_catalog.db`` (SQLite) when
        the location is local; required for object storage.
    :param catalog_namespace: the Iceberg namespace (default: the DAP namespace).
    :param log: logger; this module's by default.
    :raises ReplicationConfigError: object storage without ``catalog_uri``, or a name that
        cannot be a path segment.
    """

    kind = "iceberg"

    def __init__(
        self,
        location: StorageLocation,
        namespace: str,
        table: str,
        *,
        catalog_uri: str | None = None,
        catalog_namespace: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.log = log or logging.getLogger(__name__)
        self.location = location
        self.namespace = namespace
        self.table = table
        self.catalog_namespace = catalog_namespace or namespace
        self.catalog_uri = catalog_uri or default_catalog_uri(location)
        self.table_location = location.table_uri(self.catalog_namespace, table)
        self._catalog: SqlCatalog | None = None
        self._checked = False

    @property
    def target_name(self) -> str:
        """The Iceberg table identifier, ``<catalog_namespace>.<table>``."""
        return f"{self.catalog_namespace}.{self.table}"

    def __repr__(self) -> str:
        return (
            f"IcebergDestination({self.target_name!r}, location={self.location!r}, "
            f"catalog_uri={masked_url(self.catalog_uri)!r})"
        )

    # -- checks and state -----------------------------------------------------------------

    def check_target(self, *, empty_table_schema: Callable[[], dict[str, Any]] | None = None) -> None:
        """Fail early with :class:`ReplicationConfigError` if the table cannot be used.

        Opens the catalog (creating its tables if the database has none, which proves write
        access to it), creates the Iceberg namespace, refuses an existing table that is not
        ours for this DAP table (no or other ``dap.namespace``/``dap.table`` properties) or that
        lives outside the configured location, writes and deletes a probe file where the
        table's files go, and for a table not in the catalog refuses a location holding anything
        but what an interrupted first sync leaves (a Delta table, other files, another catalog's
        Iceberg metadata). Moves no data.

        :param empty_table_schema: accepted for the :class:`~..destination.Destination`
            protocol; not needed here, since an empty table of ours carries its owner in its
            properties (:meth:`create_empty`).
        """
        catalog = self._open()
        self._ensure_namespace(catalog)
        existing = self._load()
        where = self.table_location
        if existing is not None:
            props = existing.properties
            meta.check_owner(props, self.namespace, self.table, self.target_name)
            if meta.owner(props) is None:
                raise ReplicationConfigError(
                    f"Iceberg table {self.target_name} exists in the catalog but was not written by this provider "
                    "(no dap.namespace/dap.table properties); refusing to overwrite it. Drop it, or choose another "
                    "catalog_namespace"
                )
            where = existing.location()
            if not same_place(where, self.table_location):
                raise ReplicationConfigError(
                    f"Iceberg table {self.target_name} is at {where}, not under the destination path "
                    f"{self.location.uri}; use the destination path it was created with, or drop the table"
                )
        probe_writable(catalog, where)
        if existing is None:
            # A Delta table, user files or another catalog's table there would share files with ours.
            check_location_free(catalog, where, self.catalog_uri, self.target_name)
        self._checked = True

    def read_state(self) -> SyncState | None:
        """The state recorded by the newest sync: ``dap.watermark`` & co. from the newest snapshot
        of ours in the current snapshot's ancestry, the DAP schema from the table properties.
        ``None`` when there is no table, or it has no such snapshot (created empty).

        :raises ReplicationConfigError: the table replicates another DAP table.
        """
        return self._state_of(self._load())

    def _state_of(self, table: Table | None) -> SyncState | None:
        if table is None:
            return None
        props = dict(table.properties)
        meta.check_owner(props, self.namespace, self.table, self.target_name)
        snapshot = dap_snapshot(table)
        if snapshot is None:
            return None
        # The table properties describe the table's current columns (schema, its version): they
        # win over the snapshot's copy, which a rollback may have made older.
        pairs = {**summary_properties(snapshot), **props}
        committed = datetime.fromtimestamp(snapshot.timestamp_ms / 1000, timezone.utc)
        return meta.state_from_metadata(
            pairs, namespace=self.namespace, table=self.table, target=self.target_name, updated_at=committed
        )

    def create_empty(self, versioned_schema: dict[str, Any]) -> bool:
        """Create the table without rows and without state (DAP has no data yet): its properties
        name the DAP table and schema, and it has no snapshot, so :meth:`read_state` is ``None``
        and the next run loads a snapshot into it.

        :returns: False when the table exists already.
        """
        from pyiceberg.exceptions import TableAlreadyExistsError

        self._ensure_checked()
        if self._load() is not None:
            return False
        schema = parse_table_schema(versioned_schema)
        arrow = data.table_arrow_schema(schema)
        pairs = meta.commit_metadata(
            namespace=self.namespace, table=self.table, versioned_schema=versioned_schema, mode="empty", watermark=None
        )
        props, _ = split_metadata(pairs)
        try:
            self._open().create_table(
                (self.catalog_namespace, self.table),
                schema=iceberg_schema(arrow, _keys(schema)),
                location=self.table_location,
                properties={**TABLE_PROPERTIES, **props},
            )
        except TableAlreadyExistsError:
            return False
        self.log.info("created the empty Iceberg table %s (DAP has no data yet)", self.target_name)
        return True

    # -- snapshot -------------------------------------------------------------------------

    def apply_snapshot(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        at: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Replace the table's rows (and schema) with a snapshot, watermark ``at``, in one commit.

        :param files: the snapshot's TSV parts, their directory, or streamed parts
            (:class:`~..part_feed.StreamedParts`: each part is released once its rows are read).
        :param versioned_schema: ``{"schema": ..., "version": N}`` of the job's schema version.
        :param at: the job's ``at``.
        :param job_id: the DAP job id, recorded in the snapshot summary.
        :raises WatermarkError: ``at`` is older than the table's watermark.
        :raises BadValueError: a value the bad-value policy cannot store (nothing committed).
        :raises ConcurrentReplicationError: another writer committed to the table meanwhile.
        """
        at = aware_utc(at, "at")
        self._ensure_checked()
        timer = PhaseTimer()
        schema = parse_table_schema(versioned_schema)
        with timer.phase("prepare"):
            table = self._load()
            check_snapshot_at(self._state_of(table), at, self.target_name)
            parts = read_parts(files, schema, schema, incremental=False)
        props, summary = self._metadata(versioned_schema, "snapshot", at, job_id)
        tally = ValueTally()
        counter = data.RowCounter()
        reader = data.snapshot_reader(schema, parts, tally, self._label(), dedupe=self._dedupe, counter=counter)
        self.log.info(
            "snapshot of %s.%s into Iceberg %s: %d part(s), at %s%s",
            self.namespace,
            self.table,
            self.target_name,
            len(parts),
            at.isoformat(),
            " (replacing the current rows)" if table is not None else "",
        )
        ddl: list[str] = []
        with timer.phase("load"):
            if table is None:
                txn: Transaction = self._open().create_table_transaction(
                    (self.catalog_namespace, self.table),
                    schema=iceberg_schema(reader.schema, _keys(schema)),
                    location=self.table_location,
                    properties={**TABLE_PROPERTIES, **props},
                )
            else:
                txn = table.transaction()
                new = iceberg_schema(reader.schema, _keys(schema), table.schema(), table.metadata.last_column_id)
                if not same_columns(new, table.schema()):
                    stage_schema(txn, new)
                    ddl.append(f"replace schema (v{schema.version})")
                txn.set_properties({**props, **SYNC_PROPERTIES})
            if table is None or table.current_snapshot() is None:
                append_all(txn, txn._table.io, rows=reader, summary=summary)  # bounded files, one at a time
            else:
                replace_all(txn, table.io, rows=reader, summary=summary)  # one snapshot: old files out, new in
        self._commit(txn, timer)
        return self._result("snapshot", counter.rows, 0, 0, parts, timer, at, schema, job_id, ddl, tally, counter)

    # -- incremental ----------------------------------------------------------------------

    def apply_incremental(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        since: datetime | str,
        until: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Apply upserts (``U``) and hard deletes (``D``) and move the watermark to ``until``,
        in one commit; additive schema changes are applied in the same commit.

        :param files: the incremental's TSV parts or their directory; none just moves the watermark.
        :raises SnapshotRequired: the table has no state (first run, or created empty).
        :raises SchemaChangeRequiresSnapshot: the schema changed in a way that needs a snapshot.
        :raises WatermarkError: the window leaves a gap after the watermark, or ends before it.
        :raises ConcurrentReplicationError: another writer committed to the table meanwhile.
        """
        since = aware_utc(since, "since")
        until = aware_utc(until, "until")
        if until < since:
            raise ValueError(f"until {until.isoformat()} is before since {since.isoformat()}")
        self._ensure_checked()
        timer = PhaseTimer()
        schema = parse_table_schema(versioned_schema)
        with timer.phase("prepare"):
            table = self._load()
            state = check_incremental_window(self._state_of(table), since, until, self.target_name)
            change = diff_schemas(state.schema(), schema)
            if not change.in_place:
                raise SchemaChangeRequiresSnapshot(
                    f"schema of {self.namespace}.{self.table} changed from version {change.old_version} to "
                    f"{change.new_version} in a way that needs a new snapshot: {'; '.join(change.blocking)}",
                    old_version=change.old_version,
                    new_version=change.new_version,
                    reasons=change.blocking,
                )
            parts = read_parts(files, schema, schema, incremental=True)
        props, summary = self._metadata(versioned_schema, "incremental", until, job_id)
        tally = ValueTally()
        counter = data.RowCounter()
        with timer.phase("load"):
            changes = data.read_changes(schema, parts, tally, self._label(), dedupe=self._dedupe, counter=counter)
        assert table is not None  # check_incremental_window refuses a missing table
        keys = _keys(schema)
        with timer.phase("merge"):
            txn = table.transaction()
            desired = iceberg_schema(changes.upserts.schema, keys, table.schema(), table.metadata.last_column_id)
            ddl = evolve_schema(txn, desired)
            txn.set_properties({**props, **SYNC_PROPERTIES})
            # One snapshot: files holding touched keys rewritten without them, plus the upserts.
            existing = merge(
                txn, table.io, touched=changes.touched, keys=keys, upserts=changes.upserts, summary=summary
            )
        self._commit(txn, timer)
        updated = data.count_in(changes.upserts, existing, keys)
        deleted = data.count_in(changes.deletes, existing, keys)
        return self._result(
            "incremental",
            changes.upserts.num_rows - updated,
            updated,
            deleted,
            parts,
            timer,
            until,
            schema,
            job_id,
            ddl,
            tally,
            counter,
        )

    def close(self) -> None:
        """Release the catalog's database connections."""
        catalog, self._catalog = self._catalog, None
        if catalog is not None:
            release(catalog)

    # -- internals ------------------------------------------------------------------------

    def _open(self) -> SqlCatalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.location, self.catalog_uri)
        return self._catalog

    def _ensure_namespace(self, catalog: SqlCatalog) -> None:
        try:
            catalog.create_namespace_if_not_exists(self.catalog_namespace)
        except Exception as exc:
            # A concurrent sync may have created it between pyiceberg's check and its insert.
            if namespace_exists(catalog, self.catalog_namespace):
                return
            raise ReplicationConfigError(
                f"cannot create the Iceberg namespace {self.catalog_namespace!r} in the catalog at "
                f"{masked_url(self.catalog_uri)}: {type(exc).__name__}: {first_line(exc)}"
            ) from None

    def _load(self) -> Table | None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self._open().load_table((self.catalog_namespace, self.table))
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def _ensure_checked(self) -> None:
        if not self._checked:
            self.check_target()

    @property
    def _dedupe(self) -> bool:
        return (self.namespace, self.table) in DUPLICATE_KEY_TABLES

    def _label(self) -> str:
        return f"{self.namespace}.{self.table} -> {self.target_name}"

    def _metadata(
        self, versioned_schema: dict[str, Any], mode: str, watermark: datetime, job_id: str | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        pairs = meta.commit_metadata(
            namespace=self.namespace,
            table=self.table,
            versioned_schema=versioned_schema,
            mode=mode,
            watermark=watermark,
            job_id=job_id,
        )
        return split_metadata(pairs)

    def _commit(self, txn: Transaction, timer: PhaseTimer) -> None:
        """The sync's single catalog commit."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError

        with timer.phase("commit"):
            try:
                txn.commit_transaction()
            except (CommitFailedException, TableAlreadyExistsError) as exc:
                raise ConcurrentReplicationError(
                    f"another writer committed to Iceberg table {self.target_name} during this sync ({exc}); "
                    "nothing was applied: retry"
                ) from exc

    def _result(
        self,
        mode: str,
        inserted: int,
        updated: int,
        deleted: int,
        parts: Any,
        timer: PhaseTimer,
        watermark: datetime,
        schema: TableSchema,
        job_id: str | None,
        ddl: list[str],
        tally: ValueTally,
        counter: data.RowCounter,
    ) -> SyncResult:
        consumed = list(parts)
        result = SyncResult(
            mode=mode,
            target=self.target_name,
            dialect=self.kind,
            rows_inserted=inserted,
            rows_updated=updated,
            rows_deleted=deleted,
            watermark=watermark,
            schema_version=schema.version,
            bytes_read=sum(p.size for p in consumed),
            bytes_loaded=counter.bytes,
            seconds=dict(timer.seconds),
            files=len(consumed),
            job_id=job_id,
            schema_changes=tuple(ddl),
            coerced_values=dict(sorted(tally.coerced.items())),
            oversized_values=dict(sorted(tally.oversized.items())),
            skipped_deletes=tally.skipped_deletes,
        )
        result.log_summary(self.log, f"{self.namespace}.{self.table}", tally)
        return result


def _keys(schema: TableSchema) -> list[str]:
    return [c.name for c in schema.key_columns]


__all__ = ["IcebergDestination"]
