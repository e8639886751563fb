"""``CD2SyncTableOperator``: keep one SQL table equal to one Canvas Data 2 table.

The operator orchestrates; the replication itself (bulk load, merge, state table, schema
changes, swaps) lives in :mod:`airflow_provider_instructure.replication`, which speaks no
HTTP, and all DAP calls go through the hook.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import AirflowNotFoundException, Asset, BaseHook, Context
from airflow_provider_instructure.assets import ALIAS_NAME, AssetAlias, emit_table_event
from airflow_provider_instructure.exceptions import (
    DestinationUnavailableError,
    InstructureConfigError,
    InstructureError,
)
from airflow_provider_instructure.hooks.downloads import DEFAULT_CONCURRENCY, safe_name
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from airflow_provider_instructure.operators.lineage import sql_table_naming
from airflow_provider_instructure.operators.sync_workdir import (
    JobDirClaim,
    job_parts_dir,
    remove_job,
    remove_other_jobs,
    table_parts_dir,
)
from airflow_provider_instructure.replication import (
    ReplicationConfigError,
    SnapshotRequired,
    TableReplicator,
    WatermarkError,
)
from airflow_provider_instructure.replication.part_feed import StreamedParts


class _NeedSnapshot(Exception):
    """The incremental cannot be applied in place; the table must be rebuilt from a snapshot."""


#: Airflow connection types and the replication dialect that serves them.
DIALECTS = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite"}


class CD2SyncTableOperator(CD2QueryOperator):
    """Replicate one CD2 table into a PostgreSQL, MySQL/MariaDB or SQLite database.

    * First run (no table or no watermark in the target): snapshot into a new table and record
      the watermark (``at``) and schema version in the target's state table, in the same
      transaction as the data.
    * Later runs: an incremental from the stored watermark (never the wall clock); upserts and
      hard deletes plus the new watermark (``until``) in one transaction, so a failed run leaves
      the previous state and the rerun repeats the same window with the same result.
    * ``SnapshotRequiredError``/``OutOfRangeError`` from DAP, or a schema change that cannot be
      applied in place: a fresh snapshot is built beside the live table and swapped in
      atomically. Additive changes (new nullable column, new enum value) are applied in place.
    * A database created by the official ``dap initdb`` (PostgreSQL, MySQL) is continued
      where ``dap syncdb`` left it.

    The query is deferrable like :class:`CD2QueryOperator`'s; the parts are downloaded to
    ``workdir``, kept there for a retry of a failed try and removed once the sync has committed.
    Returned to XCom (and logged): rows inserted, updated and deleted, the new watermark, schema
    version, bytes downloaded and seconds per phase. An Asset event is emitted for
    ``instructure://<namespace>/<table>`` and for the destination table.

    When DAP has no data for the table yet ("There is no data available yet"), the run succeeds
    with 0 rows and ``no_data: true``: see :meth:`process_no_data`.

    :param table: DAP table name.
    :param namespace: DAP namespace.
    :param destination_conn_id: a ``postgres``, ``mysql`` or ``sqlite`` Airflow connection.
    :param destination_schema: PostgreSQL schema (default: the namespace), MySQL database
        (default: the connection's) or SQLite attached database.
    :param table_prefix: prepended to the table name (default: none on PostgreSQL,
        ``<namespace>__`` on MySQL and SQLite, as ``dap`` names tables there).
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
        "poll_interval",
    )

    def __init__(
        self,
        *,
        table: str,
        destination_conn_id: str,
        namespace: str | None = "canvas",
        destination_schema: str | None = None,
        table_prefix: str | None = None,
        download_concurrency: int = DEFAULT_CONCURRENCY,
        workdir: str | None = None,
        **kwargs: Any,
    ) -> None:
        for fixed in ("format", "mode", "since", "until"):
            if fixed in kwargs:
                raise InstructureConfigError(
                    f"CD2SyncTableOperator chooses {fixed!r} itself (TSV, condensed, from the stored watermark)"
                )
        super().__init__(table=table, namespace=namespace, format="tsv", mode="condensed", **kwargs)
        self.destination_conn_id = destination_conn_id
        self.destination_schema = destination_schema
        self.table_prefix = table_prefix
        self.download_concurrency = download_concurrency
        self.workdir = workdir

    # -- destination -------------------------------------------------------------------------------

    def _destination(self) -> tuple[Any, str, Any]:
        """``(connection, dialect, db_hook)`` for the destination, with clear errors."""
        try:
            conn = BaseHook.get_connection(self.destination_conn_id)
        except AirflowNotFoundException:
            raise InstructureConfigError(
                f"Destination connection {self.destination_conn_id!r} is not defined; create a postgres, mysql "
                "or sqlite connection with that id"
            ) from None
        dialect = DIALECTS.get((conn.conn_type or "").lower())
        if dialect is None:
            raise InstructureConfigError(
                f"Destination connection {self.destination_conn_id!r} has type {conn.conn_type!r}; "
                f"supported types are {', '.join(sorted(set(DIALECTS)))}"
            )
        hook = conn.get_hook(hook_params={"local_infile": True} if dialect == "mysql" else None)
        return conn, dialect, hook

    def _replicator(self) -> TableReplicator:
        conn, dialect, hook = self._destination()
        try:
            db = hook.get_conn()
        except Exception as exc:  # driver errors name host/port; the password is not in them
            # Transient more often than not (too many clients, a restart, a failover): let retries run.
            raise DestinationUnavailableError(
                f"Cannot connect to destination {self.destination_conn_id!r} ({conn.conn_type}://{conn.host or ''}"
                f"{':' + str(conn.port) if conn.port else ''}/{conn.schema or ''}): {type(exc).__name__}: {exc}"
            ) from None
        namespace = self.namespace or self.hook.settings.namespace
        try:
            replicator = TableReplicator(
                db,
                dialect,
                namespace,
                self.table,
                target_schema=self.destination_schema or None,
                table_prefix=self.table_prefix,
                log=self.log,
            )
            # An empty table without a state row is what a run that found no data in DAP leaves.
            replicator.check_target(empty_table_schema=lambda: self.hook.get_table_schema(self.table, namespace))
        except ReplicationConfigError as exc:
            db.close()
            raise InstructureConfigError(f"Destination {self.destination_conn_id!r}: {exc}") from None
        target = replicator.target  # the lineage output, known before any data moves
        self._lineage_note(
            dialect=dialect,
            destination=sql_table_naming(dialect, conn.host, conn.port, conn.schema, target.schema, target.table),
        )
        self._db = db
        return replicator

    # -- the run ------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._started = time.monotonic()
        replicator = self._replicator()  # every check before any data moves
        try:
            state = replicator.read_state()
        finally:
            self._db.close()
        self._state = state
        since = None
        if state is None:
            self.log.info("%s has no replica in %s yet: taking a snapshot", self.table, replicator.target_name)
        else:
            since = state.watermark
            self.log.info(
                "Continuing %s from watermark %s (schema version %s%s)",
                replicator.target_name,
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
                result, destination, files, download, waited = self._pipelined_snapshot(meta, workdir)
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
                replicator = self._replicator()
                try:
                    result = self._apply(replicator, meta, workdir, schema)
                    destination = self._destination_uri(replicator)
                finally:
                    self._db.close()
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
            destination,
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
            result.target,
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
    ) -> tuple[Any, str, list[dict[str, Any]], float, float]:
        """Load a snapshot while its parts download: part ``k`` loads while ``k+1...`` download,
        at most ``download_concurrency`` parts on disk at once, each deleted once its rows are in
        the table being built (nothing is visible before the whole table commits).

        :returns: the replication result, the destination URI, the parts (as download_objects
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
            replicator = self._replicator()
            try:
                result = self._apply(replicator, meta, parts, schema)
                destination = self._destination_uri(replicator)
            finally:
                self._db.close()
        seconds = stream.download_seconds
        files = [f.to_dict() for f in stream.files]
        return result, destination, files, seconds if seconds is not None else 0.0, stream.wait_seconds

    def _parts_dir(self, meta: dict[str, Any]) -> Path:
        # What the connection points at, not its id: two deployments on one host may both call
        # their (different) warehouses "cd2_warehouse" and must never share or remove parts.
        conn = BaseHook.get_connection(self.destination_conn_id)
        destination = [
            conn.conn_type,
            conn.host,
            conn.port,
            conn.schema,
            conn.login,
            self.destination_schema,
            self.table_prefix,
        ]
        return job_parts_dir(
            table_parts_dir(self.workdir, destination, meta["namespace"], meta["table"]), meta["job_id"]
        )

    def process_no_data(self, context: Context, meta: dict[str, Any]) -> dict[str, Any]:
        """DAP has no data for the table yet: 0 rows, and no watermark stored.

        A snapshot (no state yet) creates the target table empty from the DAP schema, so that
        downstream SQL finds it, and stores no state row: the next run tries a snapshot again.
        On an incremental (DAP should not say this once a snapshot had data) nothing changes and
        the stored watermark stays, so the next run asks for the same window again.
        """
        state = getattr(self, "_state", None)
        replicator = self._replicator()
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
            destination = self._destination_uri(replicator)
        finally:
            self._db.close()
        record = {
            "mode": meta["kind"],
            "target": replicator.target_name,
            "dialect": replicator.dialect,
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
            **self._summary(record, meta, destination, bytes_downloaded=0, seconds={}, no_data=True),
            "no_data_reason": meta.get("no_data_reason"),
        }

    def _summary(
        self,
        record: dict[str, Any],
        meta: dict[str, Any],
        destination: Any,
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
            "destination": destination,
            "bytes_downloaded": bytes_downloaded,
            "seconds": seconds,
            "no_data": no_data,
        }

    def _apply(
        self, replicator: TableReplicator, meta: dict[str, Any], parts: Path | StreamedParts, schema: dict[str, Any]
    ) -> Any:
        if meta["kind"] == "snapshot":
            return replicator.apply_snapshot(parts, versioned_schema=schema, at=meta["at"], job_id=meta["job_id"])
        try:
            return replicator.apply_incremental(
                parts, versioned_schema=schema, since=meta["since"], until=meta["until"], job_id=meta["job_id"]
            )
        except SnapshotRequired as exc:
            self.log.warning("%s; taking a new snapshot of %s", exc, replicator.target_name)
            raise _NeedSnapshot from exc
        except WatermarkError as exc:
            raise InstructureError(f"{replicator.target_name}: {exc}") from None

    def _destination_uri(self, replicator: TableReplicator) -> str:
        """The replica as an asset URI (the forms Airflow's postgres/mysql providers use)."""
        conn = BaseHook.get_connection(self.destination_conn_id)
        target = replicator.target
        if replicator.dialect == "postgres":
            return f"postgres://{conn.host}:{conn.port or 5432}/{conn.schema}/{target.schema}/{target.table}"
        if replicator.dialect == "mysql":
            return f"mysql://{conn.host}:{conn.port or 3306}/{target.schema}/{target.table}"
        return f"sqlite:///{Path(conn.host or '').resolve()}/{target.table}"

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


__all__ = ["CD2SyncTableOperator"]
