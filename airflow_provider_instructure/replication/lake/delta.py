"""A DAP table replicated into a Delta Lake table (``deltalake``, the delta-rs Python binding).

The table lives at ``<location>/<namespace>/<table>`` (:meth:`StorageLocation.table_uri`),
unpartitioned, its data files plain Parquet. Every sync is **one Delta commit** holding the
data and the replication state (:mod:`.metadata` keys in the commit's ``commitInfo``):

* **snapshot**: ``write_deltalake(mode="overwrite", schema_mode="overwrite")`` streamed from a
  RecordBatchReader over the parts (never a whole table in memory). Over an existing table it
  replaces the rows and the schema in that one commit; readers of older versions keep them.
* **incremental**: one ``MERGE`` on the key from a reader whose extra column ``_dap_op`` says
  ``U`` (update or insert) or ``D`` (delete); ``_dap_op`` is not stored. A new nullable column
  is added by that commit (``merge_schema``); new enum members need nothing (enums are
  strings); any other change raises :class:`~..errors.SchemaChangeRequiresSnapshot`. A merge
  that changes no row writes no commit in delta-rs, so an empty append commits the metadata
  instead, and the watermark still moves.
* **state**: the ``commitInfo`` of the newest commit of ours (walking back past OPTIMIZE,
  VACUUM and other writers' commits); nothing outside the table.

**Memory**: delta-rs keeps each data file it writes in memory until the file is complete,
and its Parquet row groups default to about a million rows; both are bounded here
(:data:`TARGET_FILE_BYTES`, :data:`ROW_GROUP_ROWS`; the table's ``delta.targetFileSize`` for
the MERGE, which rewrites every data file holding a touched key, copy-on-write). The MERGE's
own DataFusion plan still peaks higher than the snapshot (measured: ``max_spill_size`` and
``streamed_exec=False`` did not lower it).

A failure before the commit (while reading parts, writing Parquet files, or a lost commit
race) leaves the table at its previous version: the files already written are unreferenced
and ``VACUUM`` removes them. A rerun of the same window converges to the same rows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import pyarrow as pa

from airflow_provider_instructure.dap_schema import TableSchema, parse_table_schema
from airflow_provider_instructure.replication.errors import ReplicationConfigError, SchemaChangeRequiresSnapshot
from airflow_provider_instructure.replication.lake import delta_log
from airflow_provider_instructure.replication.lake import metadata as meta
from airflow_provider_instructure.replication.lake.arrow import OP_COLUMN, RowCounter, arrow_schema, record_batches
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.replication.part_feed import Parts, read_parts
from airflow_provider_instructure.replication.replicator import DUPLICATE_KEY_TABLES
from airflow_provider_instructure.replication.result import SyncResult
from airflow_provider_instructure.replication.schema_changes import diff_schemas
from airflow_provider_instructure.replication.state import SyncState
from airflow_provider_instructure.replication.values import ValueTally
from airflow_provider_instructure.replication.windows import aware_utc, check_incremental_window, check_snapshot_at

_log = logging.getLogger(__name__)

#: One delta-rs operation at a time per process. delta-rs runs every operation on one shared
#: tokio runtime and some calls wait on it while holding the GIL; a write pulling its rows from
#: a Python RecordBatchReader needs the GIL on a runtime worker. Two syncs on two threads then
#: deadlock (measured with deltalake 1.6.6 on S3: both threads idle, no request in flight).
#: Airflow runs each task in its own process, so this costs nothing there.
_LOCK = threading.RLock()

_F = TypeVar("_F", bound=Callable[..., Any])

#: Bytes of a data file written by a sync (delta-rs' ``target_file_size``; its default is
#: about 100 MiB, all of it buffered in memory before the upload). 32 MiB of snappy Parquet is
#: some 150k ``submissions`` rows: still a reasonable file for readers.
TARGET_FILE_BYTES = 32 * 1024 * 1024
#: Rows of a Parquet row group (delta-rs' default is 1,048,576, encoded in memory at once).
ROW_GROUP_ROWS = 64 * 1024


def _writer_properties() -> Any:
    from deltalake import WriterProperties

    return WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="SNAPPY")  # delta-rs' own default


def _serialized(method: _F) -> _F:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]


def _quote(name: str) -> str:
    """A column name in a delta-rs (DataFusion SQL) expression."""
    return "`" + name.replace("`", "``") + "`"


class _Counter(RowCounter):
    """A :class:`~.arrow.RowCounter` that also keeps the exception the batches raised: delta-rs
    wraps it in a generic ``DeltaError``, and the caller must see the
    :class:`~..errors.BadValueError` (or other error) itself."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def wrap(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            yield from self.count(batches)
        except BaseException as exc:
            self.error = exc
            raise

    @contextlib.contextmanager
    def reraise(self) -> Iterator[None]:
        """Raise the batches' own exception instead of the writer's wrapper around it."""
        try:
            yield
        except Exception as exc:
            if self.error is not None and self.error is not exc:
                raise self.error from exc
            raise


class DeltaDestination:
    """One DAP table's Delta Lake replica (:class:`~..destination.Destination`).

    :param location: the lake root (local directory or ``s3://``/``gs://``/``abfss://`` URI).
    :param namespace: DAP namespace (``canvas``).
    :param table: DAP table (``accounts``).
    :param log: where summaries and bad-value warnings go.
    """

    kind = "delta"

    def __init__(
        self, location: StorageLocation, namespace: str, table: str, *, log: logging.Logger | None = None
    ) -> None:
        self.location = location
        self.namespace = namespace
        self.table = table
        self.log = log or _log
        self.uri = location.table_uri(namespace, table)
        self._options = location.for_deltalake()

    @property
    def target_name(self) -> str:
        """The table URI."""
        return self.uri

    @property
    def _table_name(self) -> str:
        """The Delta table's ``name`` metadata: ``dap:<namespace>.<table>``."""
        return f"dap:{self.namespace}.{self.table}"

    @property
    def _where(self) -> str:
        return f"{self.namespace}.{self.table} -> {self.uri}"

    # -- reading ----------------------------------------------------------------------------

    def _open(self) -> Any | None:
        """The ``DeltaTable`` at the location, or ``None`` when there is none."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri, storage_options=self._options)
        except TableNotFoundError:
            return None
        except Exception as exc:  # delta-rs raises its own, unrelated exception types per backend
            raise delta_log.storage_error(self.uri, exc) from exc

    def _our_commit(self, dt: Any) -> tuple[dict[str, Any], datetime | None] | None:
        found = delta_log.latest_dap_commit(dt)
        if found is None:
            # Written by someone else: is it named after another DAP table?
            name = dt.metadata().name or ""
            if name.startswith("dap:") and name != self._table_name:
                raise ReplicationConfigError(
                    f"{self.uri} already replicates {name[4:]}, not {self.namespace}.{self.table}; choose another "
                    "destination_path"
                )
            return None
        meta.check_owner(found[0], self.namespace, self.table, self.uri)
        return found

    def read_state(self) -> SyncState | None:
        """The state recorded by the newest commit of ours; ``None`` on the first run or when
        that commit is an empty table's (:meth:`create_empty`).

        :raises ReplicationConfigError: the table belongs to another DAP table, or the storage fails.
        """
        with _LOCK:
            return self._state(self._open())

    def _state(self, dt: Any | None) -> SyncState | None:
        if dt is None:
            return None
        found = self._our_commit(dt)
        if found is None:
            return None
        return meta.state_from_metadata(
            found[0], namespace=self.namespace, table=self.table, target=self.uri, updated_at=found[1]
        )

    # -- checks -----------------------------------------------------------------------------

    @_serialized
    def check_target(self, *, empty_table_schema: Callable[[], dict[str, Any]] | None = None) -> None:
        """The location is reachable and writable, and what is there is ours or nothing.

        Refuses a Delta table whose metadata names another DAP table, a Delta table written by
        others (no ``dap.*`` commit) unless it is an empty table with exactly the schema's
        columns, and a non-empty directory that is not a Delta table.

        :raises ReplicationConfigError: with what to change.
        """
        names = delta_log.listing(self.location, self.uri)
        dt = self._open() if names and "_delta_log" in names else None
        if dt is None and names:
            raise ReplicationConfigError(
                f"{self.uri} is not empty and is not a Delta table (found {', '.join(names[:5])}); refusing to write "
                "there. Empty it or choose another destination_path"
            )
        if dt is not None and self._our_commit(dt) is None:
            foreign_ok = empty_table_schema is not None and self._is_empty_replica(dt, empty_table_schema())
            if not foreign_ok:
                raise ReplicationConfigError(
                    f"{self.uri} is a Delta table not written by this provider (no commit carries dap.namespace), "
                    "and it is not an empty table with exactly the DAP schema's columns; refusing to overwrite it. "
                    "Remove it or choose another destination_path"
                )
        delta_log.probe_writable(self.location, self.uri)

    def _is_empty_replica(self, dt: Any, versioned_schema: dict[str, Any]) -> bool:
        schema = parse_table_schema(versioned_schema)
        live = {f.name for f in pa.schema(dt.schema().to_arrow())}
        return live == {c.name for c in schema.columns} and dt.count() == 0

    # -- writing ----------------------------------------------------------------------------

    @_serialized
    def create_empty(self, versioned_schema: dict[str, Any]) -> bool:
        """Create the table without rows: the schema and ``dap.*`` ownership, no ``dap.watermark``.

        :returns: False when a table exists at the location already (left as it is).
        """
        from deltalake import CommitProperties, DeltaTable

        if self._open() is not None:
            return False
        schema = parse_table_schema(versioned_schema)
        custom = meta.commit_metadata(
            namespace=self.namespace, table=self.table, versioned_schema=versioned_schema, mode="empty", watermark=None
        )
        try:
            DeltaTable.create(
                self.uri,
                arrow_schema(schema),
                mode="error",
                name=self._table_name,
                storage_options=self._options,
                commit_properties=CommitProperties(custom_metadata=custom),
            )
        except Exception as exc:
            if "already exists" in str(exc).lower():
                return False
            raise
        return True

    @_serialized
    def apply_snapshot(
        self, files: Parts, *, versioned_schema: dict[str, Any], at: datetime | str, job_id: str | None = None
    ) -> SyncResult:
        """Replace the table with the snapshot's rows and record ``at``, in one commit.

        :raises WatermarkError: ``at`` is older than the table's watermark.
        :raises BadValueError: a value the bad-value policy cannot store (nothing committed).
        """
        from deltalake import CommitProperties, write_deltalake

        started = time.monotonic()
        moment = aware_utc(at, "at")
        dt = self._open()
        previous = self._state(dt)
        check_snapshot_at(previous, moment, self.uri)
        schema = parse_table_schema(versioned_schema)
        parts = read_parts(files, schema, schema, incremental=False)
        tally = ValueTally()
        counter = _Counter()
        batches = record_batches(
            parts,
            schema,
            where=self._where,
            incremental=False,
            tally=tally,
            dedupe=(self.namespace, self.table) in DUPLICATE_KEY_TABLES,
        )
        reader = pa.RecordBatchReader.from_batches(arrow_schema(schema), counter.wrap(batches))
        custom = meta.commit_metadata(
            namespace=self.namespace,
            table=self.table,
            versioned_schema=versioned_schema,
            mode="snapshot",
            watermark=moment,
            job_id=job_id,
        )
        with counter.reraise():
            write_deltalake(
                self.uri if dt is None else dt,
                reader,
                mode="overwrite",
                schema_mode="overwrite",
                name=self._table_name,
                storage_options=self._options,
                target_file_size=TARGET_FILE_BYTES,
                # The table's own target, which MERGE (no target_file_size argument) follows.
                configuration={"delta.targetFileSize": str(TARGET_FILE_BYTES)},
                writer_properties=_writer_properties(),
                commit_properties=CommitProperties(custom_metadata=custom),
            )
        return self._result(
            "snapshot", counter.rows, 0, 0, counter, list(parts), moment, schema, job_id, tally, (), started
        )

    @_serialized
    def apply_incremental(
        self,
        files: Parts,
        *,
        versioned_schema: dict[str, Any],
        since: datetime | str,
        until: datetime | str,
        job_id: str | None = None,
    ) -> SyncResult:
        """Upserts and deletes, and the watermark ``until``, in one commit (a MERGE).

        :raises SnapshotRequired: no state (first run, or an empty table).
        :raises SchemaChangeRequiresSnapshot: the schema changed beyond new nullable columns
            and enum members.
        :raises WatermarkError: the window leaves a gap or ends before the watermark.
        """
        from deltalake import CommitProperties, write_deltalake

        started = time.monotonic()
        start, end = aware_utc(since, "since"), aware_utc(until, "until")
        dt = self._open()
        state = check_incremental_window(self._state(dt), start, end, self.uri)
        schema = parse_table_schema(versioned_schema)
        change = diff_schemas(state.schema(), schema)
        if change.blocking:
            raise SchemaChangeRequiresSnapshot(
                f"{self.uri}: schema v{change.old_version} -> v{change.new_version} cannot be applied in place: "
                + "; ".join(change.blocking),
                old_version=change.old_version,
                new_version=change.new_version,
                reasons=change.blocking,
            )
        live = {f.name for f in pa.schema(dt.schema().to_arrow())}
        evolve = any(c.name not in live for c in schema.columns)
        parts = read_parts(files, schema, schema, incremental=True)
        tally = ValueTally()
        counter = _Counter()
        batches = record_batches(
            parts,
            schema,
            where=self._where,
            incremental=True,
            tally=tally,
            dedupe=(self.namespace, self.table) in DUPLICATE_KEY_TABLES,
        )
        custom = meta.commit_metadata(
            namespace=self.namespace,
            table=self.table,
            versioned_schema=versioned_schema,
            mode="incremental",
            watermark=end,
            job_id=job_id,
        )
        commit = CommitProperties(custom_metadata=custom)
        source_schema = arrow_schema(schema, with_op=True)
        reader = pa.RecordBatchReader.from_batches(source_schema, counter.wrap(batches))
        keys = [c.name for c in schema.key_columns]
        values = [c.name for c in schema.value_columns]
        on = " AND ".join(f"t.{_quote(k)} = s.{_quote(k)}" for k in keys)
        upsert, delete = f"s.{_quote(OP_COLUMN)} = 'U'", f"s.{_quote(OP_COLUMN)} = 'D'"
        merger = dt.merge(
            reader,
            on,
            source_alias="s",
            target_alias="t",
            merge_schema=evolve,
            writer_properties=_writer_properties(),
            commit_properties=commit,
        ).when_matched_delete(delete)
        if values:
            merger = merger.when_matched_update({v: f"s.{_quote(v)}" for v in values}, upsert)
        merger = merger.when_not_matched_insert({c.name: f"s.{_quote(c.name)}" for c in schema.columns}, upsert)
        with counter.reraise():
            metrics = merger.execute()
        if not (metrics.get("num_target_files_added") or metrics.get("num_target_files_removed")):
            # delta-rs writes no commit for a merge that adds and removes no file (nothing
            # changed); the watermark must still move, so commit the metadata (and a new
            # nullable column) with no rows. Judged from the merge's own metrics, not the table
            # version, which another writer (OPTIMIZE...) may have moved meanwhile.
            dt.update_incremental()
            empty = pa.Table.from_batches([], schema=arrow_schema(schema))
            write_deltalake(
                dt,
                empty,
                mode="append",
                schema_mode="merge" if evolve else None,
                storage_options=self._options,
                commit_properties=commit,
            )
        return self._result(
            "incremental",
            int(metrics.get("num_target_rows_inserted", 0)),
            int(metrics.get("num_target_rows_updated", 0)),
            int(metrics.get("num_target_rows_deleted", 0)),
            counter,
            list(parts),
            end,
            schema,
            job_id,
            tally,
            change.describe(),
            started,
        )

    def _result(
        self,
        mode: str,
        inserted: int,
        updated: int,
        deleted: int,
        counter: _Counter,
        parts: list[Any],
        watermark: datetime,
        schema: TableSchema,
        job_id: str | None,
        tally: ValueTally,
        changes: tuple[str, ...],
        started: float,
    ) -> SyncResult:
        result = SyncResult(
            mode=mode,
            target=self.uri,
            dialect=self.kind,
            rows_inserted=inserted,
            rows_updated=updated,
            rows_deleted=deleted,
            watermark=watermark,
            schema_version=schema.version,
            bytes_read=sum(p.size for p in parts),
            bytes_loaded=counter.bytes,
            seconds={"load": time.monotonic() - started},
            files=len(parts),
            job_id=job_id,
            schema_changes=changes,
            coerced_values=dict(sorted(tally.coerced.items())),
            oversized_values=dict(sorted(tally.oversized.items())),
            skipped_deletes=tally.skipped_deletes,
        )
        result.log_summary(self.log, f"{self.namespace}.{self.table}", tally)
        return result

    def close(self) -> None:
        """Nothing to release: every call opens the table afresh. Idempotent."""


__all__ = ["DeltaDestination"]
