"""``CD2SyncTableOperator``: keep one SQL, Delta Lake or Iceberg table equal to one Canvas Data 2 table.

The operator orchestrates; the replication itself (bulk load, merge, state, schema changes,
swaps and commits) lives in :mod:`airflow_provider_instructure.replication`, which speaks no
HTTP, behind its :class:`~airflow_provider_instructure.replication.destination.Destination`
protocol; which destination the arguments name is decided in :mod:`.sync_destination`. All DAP
calls go through the hook.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import Asset, Context
from airflow_provider_instructure.assets import ALIAS_NAME, AssetAlias, emit_table_event
from airflow_provider_instructure.exceptions import InstructureConfigError, InstructureError
from airflow_provider_instructure.hooks.downloads import DEFAULT_CONCURRENCY, safe_name
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from airflow_provider_instructure.operators.sync_destination import (
    DIALECTS,
    OpenedDestination,
    check_destination_args,
    normalise_table_format,
    open_destination,
    parts_key,
)
from airflow_provider_instructure.operators.sync_workdir import (
    JobDirClaim,
    job_parts_dir,
    remove_job,
    remove_other_jobs,
    table_parts_dir,
)
from airflow_provider_instructure.replication import Destination, SnapshotRequired, WatermarkError
from airflow_provider_instructure.replication.part_feed import StreamedParts


class _NeedSnapshot(Exception):
    """The incremental cannot be applied in place; the table must be rebuilt from a snapshot."""


class CD2SyncTableOperator(CD2QueryOperator):
    """Replicate one CD2 table into a PostgreSQL, MySQL/MariaDB or SQLite database, or into a
    Delta Lake or Apache Iceberg table on a local path or object storage.

    * First run (no table or no watermark in the target): snapshot into a new table and record
      the watermark (``at``) and schema version with the data: in the target's state table, in
      the same transaction (SQL), or in the same commit's metadata (Delta, Iceberg).
    * Later runs: an incremental from the stored watermark (never the wall clock); upserts and
      hard deletes plus the new watermark (``until``) in one transaction or commit, so a failed
      run leaves the previous state and the rerun repeats the same window with the same result.
    * ``SnapshotRequiredError``/``OutOfRangeError`` from DAP, or a schema change that cannot be
      applied in place: a fresh snapshot is built beside the live table and swapped in
      atomically. Additive changes (new nullable column, new enum value) are applied in place.
    * A database created by the official ``dap initdb`` (PostgreSQL, MySQL) is continued
      where ``dap syncdb`` left it.

    The query is deferrable like :class:`CD2QueryOperator`'s; the parts are downloaded to
    ``workdir``, kept there for a retry of a failed try and removed once the sync has committed.
    Returned to XCom (and logged): rows inserted, updated and deleted, the new watermark, schema
    version, bytes downloaded and seconds per phase. An Asset event is emitted for
    ``instructure://<namespace>/<table>`` and for the destination table (a lake table: its
    location, ``file:///...`` or ``s3://...``; see :mod:`.sync_destination`).

    Exactly one destination: ``destination_conn_id``, or ``table_format`` with
    ``destination_path``; checked when the operator is created.

    When DAP has no data for the table yet ("There is no data available yet"), the run succeeds
    with 0 rows and ``no_data: true``: see :meth:`process_no_data`.

    :param table: DAP table name.
    :param namespace: DAP namespace.
    :param destination_conn_id: a ``postgres``, ``mysql`` or ``sqlite`` Airflow connection.
    :param destination_schema: PostgreSQL schema (default: the namespace), MySQL database
        (default: the connection's), SQLite attached database; for Iceberg the catalog namespace
        and for Delta the directory under ``destination_path`` (default: the DAP namespace).
    :param table_prefix: prepended to the table name (default: none on PostgreSQL,
        ``<namespace>__`` on MySQL and SQLite, as ``dap`` names tables there). SQL only.
    :param table_format: ``delta`` or ``iceberg`` (needs the ``[delta]`` / ``[iceberg]`` extra):
        replicate into an open table format at ``destination_path`` instead of a database.
    :param destination_path: where lake tables go: an absolute local directory, or
        ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``abfss://container@account.dfs.core.windows.net/prefix``.
        The table is ``<destination_path>/<namespace>/<table>``.
    :param storage_conn_id: the ``aws``, ``google_cloud_platform``, ``wasb`` or ``adls`` connection
        whose credentials reach ``destination_path`` (:mod:`~..hooks.storage`); unset: the
        environment's credentials.
    :param catalog_conn_id: Iceberg only: a ``postgres`` or ``sqlite`` connection holding the SQL
        catalog (default: ``iceberg_catalog.db`` in a local ``destination_path``; required on
        object storage).
    :param download_concurrency: parallel downloads of result parts (default 8: see
        ``DEFAULT_CONCURRENCY`` in :mod:`~..hooks.downloads` for the measurement). A snapshot is pipelined:
        part ``k`` loads while the next ones download, with at most this many parts on disk at
        once (each deleted as soon as its rows are in the table being built), so its wall time
        tends to the longer of download and load rather than their sum.
    :param workdir: where downloaded parts go, in ``<workdir>/<namespace>.<table>-<key>/job_<id>/``
        (default: ``airflow-cd2-sync`` in the system temporary directory; see :mod:`.sync_workdir`).
        A failed try keeps its job's parts there and the retry reuses those that check out (size
        and gzip trailer); a finished sync removes them, and a new job removes an older one's.
    :param kwargs: :class:`CD2QueryOperator` arguments (``deferrable``, ``poll_interval``,
        ``job_timeout``, ``instructure_conn_id``...). ``format``/``mode``/``since``/``until``
        are chosen by the operator (TSV, condensed, from the stored watermark).
    """

    emits_table_assets = True
    template_fields: Sequence[str] = (
        "table",
        "namespace",
        "destination_conn_id",
        "destination_schema",
        "table_prefix",
        "table_format",
        "destination_path",
        "storage_conn_id",
        "catalog_conn_id",
        "poll_interval",
    )

    def __init__(
        self,
        *,
        table: str,
        destination_conn_id: str | None = None,
        namespace: str | None = "canvas",
        destination_schema: str | None = None,
        table_prefix: str | None = None,
        table_format: str | None = None,
        destination_path: str | None = None,
        storage_conn_id: str | None = None,
        catalog_conn_id: str | None = None,
        download_concurrency: int = DEFAULT_CONCURRENCY,
        workdir: str | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("format", "mode", "since", "until"):
            if fixed in kwargs:
                raise InstructureConfigError(
                    f"CD2SyncTableOperator chooses {fixed!r} itself (TSV, condensed, from the stored watermark)"
                )
        check_destination_args(
            destination_conn_id=destination_conn_id,
            table_format=table_format,
            destination_path=destination_path,
            storage_conn_id=storage_conn_id,
            catalog_conn_id=catalog_conn_id,
            table_prefix=table_prefix,
        )
        super().__init__(table=table, namespace=namespace, format="tsv", mode="condensed", **kwargs)
        self.destination_conn_id = destination_conn_id
        self.destination_schema = destination_schema
        self.table_prefix = table_prefix
        self.table_format = normalise_table_format(table_format)  # "Delta" is "delta" in XCom and logs
        self.destination_path = destination_path
        self.storage_conn_id = storage_conn_id
        self.catalog_conn_id = catalog_conn_id
        self.download_concurrency = download_concurrency
        self.workdir = workdir

    # -- destination -------------------------------------------------------------------------------

    def _open(self) -> Destination:
        """The destination, checked before any data moves (:func:`~.sync_destination.open_destination`);
        its asset URI and lineage dataset are noted. The caller closes it."""
        namespace = self.namespace or self.hook.settings.namespace
        opened: OpenedDestination = open_destination(
            self, namespace, lambda: self.hook.get_table_schema(self.table, namespace), self.log
        )
        self._asset_uri = opened.asset_uri
        self._lineage_note(dialect=opened.destination.kind, destination=opened.lineage)  # known before data moves
        return opened.destination

    def _where(self, target: str) -> str:
        """``target`` as logged: an Iceberg identifier (``canvas.accounts``, no ``/``) says nothing
        of which catalog and directory, so its location (the asset URI) is added."""
        uri = getattr(self, "_asset_uri", None)
        return f"{target} at {uri}" if uri and "/" not in target else target

    # -- the run ------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._started = time.monotonic()
        destination = self._open()  # every check before any data moves
        try:
            state = destination.read_state()
        finally:
            destination.close()
        self._state = state
        since = None
        if state is None:
            self.log.info(
                "%s has no replica in %s yet: taking a snapshot", self.table, self._where(destination.target_name)
            )
        else:
            since = state.watermark
            self.log.info(
                "Continuing %s from watermark %s (schema version %s%s)",
                destination.target_name,
                state.watermark.isoformat(),
                state.schema_version,
                ", a database of the dap CLI" if state.from_dap_cli else "",
            )
        return self._run_query(context, since)

    def process_job(self, context: Context, meta: dict[str, Any]) -> dict[str, Any]:
        started = getattr(self, "_started", None)
        phases: dict[str, float] = {}
        if started is not None:
            phases["query"] = time.monotonic() - started
        workdir = self._parts_dir(meta)
        claim = JobDirClaim(workdir)  # fails fast if another sync on this machine uses the directory
        done = False
        try:
            remove_other_jobs(workdir, self.log)
            clock = time.monotonic()
            if meta["kind"] == "snapshot":
                result, files, download, waited = self._pipelined_snapshot(meta, workdir)
                # Overlapping phases: "download" runs until the last part landed; "load" includes
                # "waiting_for_parts", the time the load sat idle until the next part landed.
                phases["download"] = download
                phases["waiting_for_parts"] = waited
            else:
                # An incremental stages every part's header before its first row, so its parts
                # are all downloaded first (they are small next to a snapshot's).
                # The load reads (and so verifies) every byte: no need to inflate the parts twice.
                # Parts an earlier try of this job left behind are reused when they check out.
                files = self.hook.download_objects(
                    meta["objects"], workdir, concurrency=self.download_concurrency, inspect=False, reuse=True
                )
                phases["download"] = time.monotonic() - clock
                schema = self._job_schema(meta)
                result = self._apply(meta, workdir, schema)
            done = True
        except _NeedSnapshot:
            # Rebuild from a snapshot, swapped in atomically by the replicator. This may defer;
            # the snapshot then comes back through process_job. The incremental's parts are done with.
            done = True
            remove_job(claim)
            return self._run_query(context, None)
        finally:
            if done:
                remove_job(claim)
            else:
                claim.release()
                if workdir.is_dir():
                    # Kept for the retry, which resumes the same DAP job and reuses what checks out.
                    self.log.info("Keeping the downloaded parts of job %s in %s for a retry", meta["job_id"], workdir)
        record = result.to_dict()
        summary = self._summary(
            record,
            meta,
            bytes_downloaded=sum(f["size"] for f in files),
            seconds={**{k: round(v, 3) for k, v in phases.items()}, **record["seconds"]},
            no_data=False,
        )
        if meta.get("fallback_reason"):
            summary["fallback_reason"] = meta["fallback_reason"]
        self.log.info(
            "%s %s -> %s: %d inserted, %d updated, %d deleted; watermark %s; schema version %s; %d bytes; %s",
            result.mode,
            f"{meta['namespace']}.{meta['table']}",
            self._where(result.target),
            result.rows_inserted,
            result.rows_updated,
            result.rows_deleted,
            summary["watermark"],
            result.schema_version,
            summary["bytes_downloaded"],
            ", ".join(f"{k} {v:.2f}s" for k, v in summary["seconds"].items()),
        )
        self._emit(context, meta, summary)
        return summary

    def _job_schema(self, meta: dict[str, Any]) -> dict[str, Any]:
        schema = self.hook.get_table_schema(meta["table"], meta["namespace"])
        if schema["version"] != meta["schema_version"]:
            raise InstructureError(
                f"The schema of {meta['namespace']}.{meta['table']} moved from version {meta['schema_version']} "
                f"to {schema['version']} while the job ran; the retry will query again"
            )
        self._lineage_note(schema=schema)
        return schema

    def _pipelined_snapshot(
        self, meta: dict[str, Any], workdir: Path
    ) -> tuple[Any, list[dict[str, Any]], float, float]:
        """Load a snapshot while its parts download: part ``k`` loads while ``k+1...`` download,
        at most ``download_concurrency`` parts on disk at once, each deleted once its rows are in
        the table being built (nothing is visible before the whole table commits).

        :returns: the replication result, the parts (as download_objects
            lists them), the seconds until the last part had landed and the seconds the load
            waited for parts.
        """
        # The loader takes parts in name order (part-00000 first); download them in that order.
        object_ids = sorted((o["id"] if isinstance(o, dict) else str(o) for o in meta["objects"]), key=safe_name)
        # The load reads (and so verifies) every byte: no need to inflate the parts twice.
        # Parts an earlier try of this job left behind are reused when they check out.
        with self.hook.stream_objects(
            object_ids, workdir, concurrency=self.download_concurrency, inspect=False, reuse=True
        ) as stream:
            schema = self._job_schema(meta)  # while the first parts download
            parts = StreamedParts((f.path for f in stream), total=len(object_ids), loaded=stream.release)
            result = self._apply(meta, parts, schema)
        seconds = stream.download_seconds
        files = [f.to_dict() for f in stream.files]
        return result, files, seconds if seconds is not None else 0.0, stream.wait_seconds

    def _parts_dir(self, meta: dict[str, Any]) -> Path:
        # What the destination points at (sync_destination.parts_key), not a connection id.
        return job_parts_dir(
            table_parts_dir(self.workdir, parts_key(self), meta["namespace"], meta["table"]), meta["job_id"]
        )

    def process_no_data(self, context: Context, meta: dict[str, Any]) -> dict[str, Any]:
        """DAP has no data for the table yet: 0 rows, and no watermark stored.

        A snapshot (no state yet) creates the target table empty from the DAP schema, so that
        downstream SQL finds it, and stores no state row: the next run tries a snapshot again.
        On an incremental (DAP should not say this once a snapshot had data) nothing changes and
        the stored watermark stays, so the next run asks for the same window again.
        """
        state = getattr(self, "_state", None)
        replicator = self._open()
        try:
            if meta["kind"] == "snapshot":
                schema = self.hook.get_table_schema(meta["table"], meta["namespace"])
                self._lineage_note(schema=schema)
                created = replicator.create_empty(schema)
                self.log.warning(
                    "%s.%s has no data in DAP yet: %s; no watermark stored, the next run takes a snapshot",
                    meta["namespace"],
                    meta["table"],
                    f"created {replicator.target_name} empty (schema version {schema['version']})"
                    if created
                    else f"{replicator.target_name} exists already and is left as it is",
                )
                schema_version = schema["version"]
            else:
                self.log.warning(
                    "DAP answered 'no data available yet' to the incremental of %s.%s since %s: applying no change; "
                    "the watermark stays",
                    meta["namespace"],
                    meta["table"],
                    meta.get("since"),
                )
                schema_version = state.schema_version if state is not None else None
        finally:
            replicator.close()
        record = {
            "mode": meta["kind"],
            "target": replicator.target_name,
            "dialect": replicator.kind,
            "rows_inserted": 0,
            "rows_updated": 0,
            "rows_deleted": 0,
            "watermark": state.watermark.isoformat() if state is not None and meta["kind"] != "snapshot" else None,
            "schema_version": schema_version,
            "bytes_read": 0,
            "bytes_loaded": 0,
            "files": 0,
            "job_id": meta["job_id"],
            "schema_changes": [],
            "continued_from_dap": bool(state is not None and state.from_dap_cli),
            "coerced_values": {},
            "oversized_values": {},
            "skipped_deletes": 0,
        }
        return {
            **self._summary(record, meta, bytes_downloaded=0, seconds={}, no_data=True),
            "no_data_reason": meta.get("no_data_reason"),
        }

    def _summary(
        self,
        record: dict[str, Any],
        meta: dict[str, Any],
        *,
        bytes_downloaded: int,
        seconds: dict[str, float],
        no_data: bool,
    ) -> dict[str, Any]:
        """The XCom of a sync: the replication record plus what the operator knows (one set of keys
        whether DAP had data or not)."""
        self._lineage_note(summary=record)
        return {
            **record,
            "namespace": meta["namespace"],
            "table": meta["table"],
            "job_id": meta["job_id"],
            "kind": meta["kind"],
            "destination_conn_id": self.destination_conn_id,
            "table_format": self.table_format,
            "destination": self._asset_uri,
            "bytes_downloaded": bytes_downloaded,
            "seconds": seconds,
            "no_data": no_data,
        }

    def _apply(self, meta: dict[str, Any], parts: Path | StreamedParts, schema: dict[str, Any]) -> Any:
        """Open the destination (checked again: time passed since ``execute``), apply the job, close it."""
        destination = self._open()
        try:
            if meta["kind"] == "snapshot":
                return destination.apply_snapshot(parts, versioned_schema=schema, at=meta["at"], job_id=meta["job_id"])
            try:
                return destination.apply_incremental(
                    parts, versioned_schema=schema, since=meta["since"], until=meta["until"], job_id=meta["job_id"]
                )
            except SnapshotRequired as exc:
                self.log.warning("%s; taking a new snapshot of %s", exc, destination.target_name)
                raise _NeedSnapshot from exc
            except WatermarkError as exc:
                raise InstructureError(f"{destination.target_name}: {exc}") from None
        finally:
            destination.close()

    def _emit(self, context: Context, meta: dict[str, Any], summary: dict[str, Any]) -> None:
        extra = {
            "watermark": summary["watermark"],
            "schema_version": summary["schema_version"],
            "kind": meta["kind"],
            "job_id": meta["job_id"],
            "rows_inserted": summary["rows_inserted"],
            "rows_updated": summary["rows_updated"],
            "rows_deleted": summary["rows_deleted"],
            "destination": summary["destination"],
        }
        emit_table_event(context, self.outlets, meta["namespace"], meta["table"], extra)
        events = context.get("outlet_events") if hasattr(context, "get") else None
        if events is None:
            return
        try:
            events[AssetAlias(ALIAS_NAME)].add(Asset(summary["destination"]), extra=extra)
        except Exception as exc:  # lineage must never fail a sync that has committed
            self.log.warning("Could not record the destination asset event: %s", exc)


__all__ = ["DIALECTS", "CD2SyncTableOperator"]
