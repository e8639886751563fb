"""``CD2DownloadOperator``: download a CD2 query job's result files to a directory or object storage.

All HTTP goes through :class:`~airflow_provider_instructure.hooks.instructure.InstructureHook`;
the incremental watermark of a file target lives in :mod:`.file_watermark`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import Context
from airflow_provider_instructure.assets import emit_table_event
from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.hooks.downloads import DEFAULT_CONCURRENCY
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from airflow_provider_instructure.operators.file_watermark import read_watermark, table_dir, write_watermark


class CD2DownloadOperator(CD2QueryOperator):
    """Download every result file of a CD2 query job.

    Either give ``job`` (the XCom of a :class:`CD2QueryOperator`) or ``table`` (plus the query
    arguments), in which case this task runs the query itself (deferring while it runs).
    Files go to ``<target>/<namespace>/<table>/job_<job id>/``; ``target`` is a local directory
    or an ``ObjectStoragePath`` (``s3://``, ``gs://``, ``abfs://``... through their providers).

    With ``incremental=True`` the task continues from the watermark of the last successful
    download of the same table (``<target>/<namespace>/<table>/_cd2_watermark.json``; a snapshot
    when there is none, or when DAP requires a new one) and records the new watermark once every
    file is in place.

    Returned to XCom: the job metadata plus ``target`` (the job directory), ``files`` (per file
    ``object_id``, ``path``, ``size``, ``rows``), ``file_count``, ``bytes`` and ``rows``. An Asset
    event for ``instructure://<namespace>/<table>`` carries the watermark and schema version.

    A retry of a failed try keeps the files already in a local ``target`` whose size and gzip
    trailer check out and downloads only the others (object storage targets are downloaded
    again).

    When DAP answers "There is no data available yet" (a table without rows), the task succeeds
    with no files: ``file_count`` 0, ``no_data`` true, ``watermark`` None; a stored watermark
    (``incremental=True``) is left as it was, and no asset event is emitted. A ``job=`` whose
    metadata says ``no_data`` is handled the same way.

    :param job: a complete job's metadata (from ``CD2QueryOperator``), e.g. ``query.output``.
    :param table: run the query here instead (mutually exclusive with ``job``).
    :param target: where to write.
    :param incremental: continue from the stored watermark (requires ``table``).
    :param concurrency: parallel downloads (default 8, see ``downloads.DEFAULT_CONCURRENCY``).
    :param decompress: gunzip TSV/CSV/JSONL on the fly.
    :param kwargs: the query arguments of :class:`CD2QueryOperator` (``namespace``, ``format``...).
    """

    template_fields: Sequence[str] = (*CD2QueryOperator.template_fields, "job", "target")
    emits_table_assets = True

    def __init__(
        self,
        *,
        target: Any,
        job: dict[str, Any] | None = None,
        table: str | None = None,
        incremental: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        decompress: bool = False,
        **kwargs: Any,
    ) -> None:
        if (job is None) == (table is None):
            raise InstructureConfigError("CD2DownloadOperator needs exactly one of job= (a query's XCom) or table=")
        if incremental and table is None:
            raise InstructureConfigError("incremental=True needs table= (the task then runs the query itself)")
        super().__init__(table=table or "", **kwargs)
        self.job = job
        self.target = target
        self.incremental = incremental
        self.concurrency = concurrency
        self.decompress = decompress

    def execute(self, context: Context) -> Any:
        if self.job is not None:
            meta = self.job
            if not isinstance(meta, dict) or "job_id" not in meta or "objects" not in meta:
                raise InstructureConfigError(
                    f"job= must be the XCom of a CD2QueryOperator (a dict with job_id and objects), got {meta!r}"
                )
            if meta.get("no_data"):
                return self.process_no_data(context, dict(meta))
            return self.process_job(context, dict(meta))
        return super().execute(context)

    def _since(self, context: Context) -> datetime | str | None:
        if not self.incremental:
            return super()._since(context)
        namespace = self.namespace or self.hook.settings.namespace
        state = read_watermark(self.target, namespace, self.table)
        if state is None:
            self.log.info("No earlier download of %s.%s in %s: taking a snapshot", namespace, self.table, self.target)
            return None
        self.log.info(
            "Continuing %s.%s from watermark %s (job %s)", namespace, self.table, state["watermark"], state["job_id"]
        )
        return state["watermark"]

    def process_job(self, context: Context, meta: dict[str, Any]) -> dict[str, Any]:
        directory = table_dir(self.target, meta["namespace"], meta["table"]) / f"job_{meta['job_id']}"
        # A retry keeps the parts an earlier try of this job already put in a local target.
        files = self.hook.download_objects(
            meta["objects"], directory, concurrency=self.concurrency, decompress=self.decompress, reuse=True
        )
        if isinstance(directory, Path):
            for record in directory.glob(".*.done"):  # the reuse records are not part of the output
                record.unlink(missing_ok=True)
        rows = [f["rows"] for f in files]
        result = {
            **meta,
            "target": str(directory),
            "files": files,
            "file_count": len(files),
            "bytes": sum(f["size"] for f in files),
            "rows": sum(rows) if files and all(r is not None for r in rows) else None,
        }
        if self.incremental:
            write_watermark(self.target, meta["namespace"], meta["table"], meta, files)
        self._lineage_note(job=meta, files=files)  # job= skips the query's own note
        emit_table_event(
            context,
            self.outlets,
            meta["namespace"],
            meta["table"],
            {
                "watermark": meta["watermark"],
                "schema_version": meta["schema_version"],
                "kind": meta["kind"],
                "job_id": meta["job_id"],
                "rows": result["rows"],
                "destination": result["target"],
            },
        )
        return result

    def process_no_data(self, context: Context, meta: dict[str, Any]) -> dict[str, Any]:
        directory = table_dir(self.target, meta["namespace"], meta["table"])
        if self.incremental:
            self.log.info(
                "The stored watermark of %s.%s in %s stays as it was", meta["namespace"], meta["table"], directory
            )
        self.log.info("No files to download for %s.%s: DAP has no data for it yet", meta["namespace"], meta["table"])
        self._lineage_note(job=meta, files=[])
        return {**meta, "target": str(directory), "files": [], "file_count": 0, "bytes": 0, "rows": 0}


__all__ = ["CD2DownloadOperator"]
