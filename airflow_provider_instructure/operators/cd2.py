"""Operators for Canvas Data 2 tables: list them, read their schema, query and download them.

They are thin: all HTTP goes through :class:`~airflow_provider_instructure.hooks.instructure.InstructureHook`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from airflow_provider_instructure._compat import BaseOperator, Context, conf
from airflow_provider_instructure.assets import with_alias
from airflow_provider_instructure.exceptions import (
    DapJobTimeout,
    DapNoDataYetError,
    DapNotFoundError,
    DapOutOfRangeError,
    DapSnapshotRequiredError,
    InstructureConfigError,
    InstructureError,
)
from airflow_provider_instructure.fileio import write_atomically
from airflow_provider_instructure.hooks.dap_protocol import (
    DEFAULT_DEFER_AFTER,
    DEFAULT_TRIGGER_FIRST_DELAY,
    JobStatus,
    PollSchedule,
    build_query,
    job_failure,
)
from airflow_provider_instructure.hooks.instructure import InstructureHook
from airflow_provider_instructure.operators.cd2_jobs import JOB_STATE_KEY as JOB_STATE_KEY  # re-exported
from airflow_provider_instructure.operators.cd2_jobs import (
    _JobMemory,
    job_metadata,
    no_data_metadata,
)
from airflow_provider_instructure.operators.lineage import OpenLineageMixin
from airflow_provider_instructure.operators.rate_limit import RateLimitDeferral
from airflow_provider_instructure.triggers.cd2 import CD2JobTrigger


def _patterns(value: str | Sequence[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not all(isinstance(p, str) for p in value):
        raise InstructureConfigError(f"{name} must be a glob string or a list of glob strings, got {value!r}")
    return list(value)


def filter_tables(tables: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Tables matching any ``include`` glob (all when empty) and no ``exclude`` glob, sorted."""
    chosen = [t for t in tables if not include or any(fnmatch.fnmatchcase(t, p) for p in include)]
    return sorted(t for t in chosen if not any(fnmatch.fnmatchcase(t, p) for p in exclude))


class _InstructureOperator(BaseOperator):
    """Holds the connection id and builds the hook lazily (never at DAG-parse time).

    Operators that record table asset events (``emits_table_assets = True``) get the provider's
    :class:`AssetAlias` among their outlets, mapped or not. For ``.partial().expand()`` this must
    happen in ``partial()``: a mapped task's ``__init__`` only runs on the worker, so an alias
    added there is missing from the serialized DAG, the dag-processor never creates its row,
    and the first tasks to finish together race to insert it (``idx_asset_alias_name_unique``).
    """

    #: Whether this operator emits ``instructure://<namespace>/<table>`` events through the alias.
    emits_table_assets: ClassVar[bool] = False

    def __init__(self, *, instructure_conn_id: str = InstructureHook.default_conn_name, **kwargs: Any) -> None:
        if self.emits_table_assets:
            kwargs["outlets"] = with_alias(kwargs.get("outlets"))
        super().__init__(**kwargs)
        self.instructure_conn_id = instructure_conn_id

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        """:meth:`BaseOperator.partial`, with the asset alias declared where the DAG is serialized."""
        if cls.emits_table_assets:
            kwargs["outlets"] = with_alias(kwargs.get("outlets"))
        return super().partial(**kwargs)

    @cached_property
    def hook(self) -> InstructureHook:
        return InstructureHook(self.instructure_conn_id)


class ListCD2TablesOperator(OpenLineageMixin, RateLimitDeferral, _InstructureOperator):
    """List the tables of a DAP namespace and push the sorted names to XCom.

    The result is a plain list of names, ready for dynamic task mapping::

        tables = ListCD2TablesOperator(task_id="tables", include=["course*", "users"])
        CD2QueryOperator.partial(task_id="query").expand(table=tables.output)

    DAP allows a few table listings per minute: when it answers 429, a deferrable task waits in
    the triggerer until ``Retry-After`` (see :mod:`.rate_limit`), others wait in the worker.

    :param namespace: DAP namespace (``canvas``, ``canvas_logs``...); the connection's default when None.
    :param include: glob pattern(s) a table must match (all tables when empty).
    :param exclude: glob pattern(s) that drop a table.
    :param deferrable: wait out rate limits in the triggerer (default: ``[operators] default_deferrable``).
    :param trigger_first_delay: deferrable only: shortest rate-limit deferral, seconds (default 10,
        as :class:`CD2QueryOperator`'s).
    :param instructure_conn_id: the ``instructure`` connection.
    """

    template_fields: Sequence[str] = ("namespace", "include", "exclude")

    def __init__(
        self,
        *,
        namespace: str | None = "canvas",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        trigger_first_delay: float = DEFAULT_TRIGGER_FIRST_DELAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.include = include
        self.exclude = exclude
        self.deferrable = deferrable
        self.trigger_first_delay = trigger_first_delay

    def execute(self, context: Context) -> list[str]:
        include = _patterns(self.include, "include")
        exclude = _patterns(self.exclude, "exclude")
        self.trigger_first_delay = _seconds(self.trigger_first_delay, "trigger_first_delay")
        namespace = self.namespace or self.hook.settings.namespace
        tables = self._rate_limited(f"table listing of {namespace!r}", lambda: self.hook.list_tables(namespace))
        chosen = filter_tables(tables, include, exclude)
        if not chosen:
            self.log.warning(
                "No table of %d in namespace %r matches include=%s exclude=%s",
                len(tables),
                self.namespace,
                include,
                exclude,
            )
        self.log.info("%d of %d tables selected: %s", len(chosen), len(tables), ", ".join(chosen))
        self._lineage_note(namespace=namespace, tables=chosen)
        return chosen


class GetCD2TableSchemaOperator(OpenLineageMixin, _InstructureOperator):
    """Fetch the versioned JSON schema of a table (``{"schema": ..., "version": N}``) to XCom.

    :param table: table name, e.g. ``users``.
    :param namespace: DAP namespace; the connection's default when None.
    :param output_path: optionally also write the schema there (a file, or a directory in
        which ``<table>_schema_version_<N>.json`` is created, like ``dap schema``). The file
        is written atomically.
    :param instructure_conn_id: the ``instructure`` connection.
    """

    template_fields: Sequence[str] = ("table", "namespace", "output_path")

    def __init__(
        self,
        *,
        table: str,
        namespace: str | None = "canvas",
        output_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.namespace = namespace
        self.output_path = output_path

    def execute(self, context: Context) -> dict[str, Any]:
        schema = self.hook.get_table_schema(self.table, self.namespace)
        self.log.info("Schema of %s.%s is version %d", self.namespace, self.table, schema["version"])
        self._lineage_note(namespace=self.namespace or self.hook.settings.namespace, schema=schema)
        if self.output_path:
            path = Path(self.output_path)
            if path.is_dir() or str(self.output_path).endswith(os.sep):
                path = path / f"{self.table}_schema_version_{schema['version']}.json"
            write_atomically(path, json.dumps(schema, indent=4).encode("utf-8"))
            self._lineage_note(files=[{"path": str(path), "size": path.stat().st_size, "rows": None}])
            self.log.info("Wrote the schema to %s", path)
        return schema


# -- queries -------------------------------------------------------------------------------------


class CD2QueryOperator(OpenLineageMixin, RateLimitDeferral, _InstructureOperator):
    """Run a snapshot or incremental query job on a CD2 table and return the job's metadata.

    The job starts on a worker; its status is checked once, then the task waits by deferring
    to :class:`~airflow_provider_instructure.triggers.cd2.CD2JobTrigger` (the worker slot is
    free meanwhile) or, when not deferrable, by polling. The job id is remembered in the task
    instance's state store (Airflow 3.3+), so a retry of the same task instance resumes the same
    job instead of starting a new one.

    DAP allows a few job creations per minute: when it answers 429, a deferrable task defers to
    :class:`~airflow_provider_instructure.triggers.create_job.CD2CreateJobTrigger`, which creates
    the job in the triggerer as soon as the account's limit allows (the throttled tables queue
    there in order) and waits for it; no worker or pool slot is held meanwhile, and the
    connection's ``rate_limit_wait`` caps the wait (see :mod:`.rate_limit`). A non-deferrable
    task waits in the worker.

    Returned to XCom: ``job_id``, ``namespace``, ``table``, ``kind`` (``snapshot`` or
    ``incremental``), ``at`` or ``since``/``until``, ``watermark`` (the next ``since``),
    ``schema_version``, ``objects`` (ids), ``format``, ``mode``, ``expires_at``.

    :param table: table name.
    :param namespace: DAP namespace.
    :param format: ``jsonl`` (default), ``tsv``, ``csv`` or ``parquet``.
    :param mode: ``expanded`` or ``condensed`` (DAP's default when None).
    :param since: start of an incremental window (aware datetime or ISO-8601 with zone); a
        snapshot when None.
    :param until: end of the window (DAP's latest commit when None).
    :param snapshot_fallback: when DAP answers ``SnapshotRequiredError``/``OutOfRangeError`` to an
        incremental query, take a snapshot instead (``kind`` says so) rather than fail.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param poll_interval: longest wait between two job status checks, seconds (templated). Checks
        come after 1, 2, 4, 8... seconds, doubling up to this (:class:`PollSchedule`).
    :param defer_after: deferrable only: seconds of checks in the worker before deferring
        (templated; default 7: the checks at 1, 3 and 7 s), so a quick job never reaches the
        triggerer; 0 defers right after the job started.
    :param trigger_first_delay: deferrable only: seconds from the deferral to the trigger's first
        check, and the least time to a rate-limited creation's event (templated; default 10,
        chosen by us: an earlier event can leave the task ``up_for_retry`` on Airflow 3.3,
        apache/airflow issues 66374 and 72716).
    :param job_timeout: seconds to wait for the job before failing (None: no limit); it counts
        from the job's start, in the worker and in the triggerer.
    :param instructure_conn_id: the ``instructure`` connection.
    """

    template_fields: Sequence[str] = (
        "table", "namespace", "format", "mode", "since", "until", "poll_interval", "defer_after", "trigger_first_delay",
    )  # fmt: skip

    def __init__(
        self,
        *,
        table: str,
        namespace: str | None = "canvas",
        format: str = "jsonl",
        mode: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        snapshot_fallback: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        job_timeout: float | None = None,
        defer_after: float = DEFAULT_DEFER_AFTER,
        trigger_first_delay: float = DEFAULT_TRIGGER_FIRST_DELAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.namespace = namespace
        self.format = format
        self.mode = mode
        self.since = since
        self.until = until
        self.snapshot_fallback = snapshot_fallback
        self.deferrable = deferrable
        self.poll_interval = poll_interval  # templated, so it may arrive as a string
        self.job_timeout = job_timeout
        self.defer_after = defer_after
        self.trigger_first_delay = trigger_first_delay

    # -- the query --------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        return self._run_query(context, self._since(context))

    def _since(self, context: Context) -> datetime | str | None:
        """The incremental start; subclasses may look it up (e.g. a stored watermark)."""
        return _blank_to_none(self.since)

    def _request(self, since: datetime | str | None) -> dict[str, Any]:
        namespace = self.namespace or self.hook.settings.namespace
        try:
            body = build_query(self.format, self.mode, since, _blank_to_none(self.until))
        except ValueError as exc:
            raise InstructureConfigError(f"Task {self.task_id!r}: {exc}") from None
        return {"namespace": namespace, "table": self.table, **body}

    def _run_query(self, context: Context, since: datetime | str | None) -> Any:
        # Templated, so they may arrive as strings.
        self.poll_interval = _seconds(self.poll_interval, "poll_interval", positive=True)
        self.defer_after = _seconds(self.defer_after, "defer_after")
        self.trigger_first_delay = _seconds(self.trigger_first_delay, "trigger_first_delay")
        carried = self._take_carried("query")
        if carried is not None:
            # The triggerer could not create the job (CD2CreateJobTrigger's create_in_worker): ask
            # for what it was creating (e.g. the snapshot a sync fell back to), whatever this run
            # of execute() would have chosen.
            since = carried.get("since")
        request = self._request(since)
        try:
            job, request = self._start_or_resume(context, request, (carried or {}).get("effective"))
        except DapNoDataYetError as exc:  # the POST's answer; a failed job is handled in _complete
            return self._no_data(context, request, exc)
        deadline = None if self.job_timeout is None else time.monotonic() + float(self.job_timeout)
        schedule = PollSchedule(maximum=self.poll_interval)
        if self.deferrable:
            # A quick job finishes here: deferring costs a triggerer round trip and, on Airflow
            # 3.3, a trigger firing right after the deferral can leave the task up_for_retry.
            job = self.hook.poll_job(job["id"], schedule, job=job, for_seconds=self.defer_after, deadline=deadline)
            if not JobStatus.of(job).is_terminal:
                self._defer_wait(job, schedule, deadline, request)  # raises TaskDeferred
        else:
            job = self.hook.poll_job(job["id"], schedule, job=job, deadline=deadline)
        return self._complete(context, job, request)

    def _defer_wait(
        self, job: dict[str, Any], schedule: PollSchedule, deadline: float | None, request: dict[str, Any]
    ) -> None:
        """Hand the wait to the triggerer, the schedule continuing where the worker left it."""
        first = max(self.trigger_first_delay, schedule.peek())  # what CD2JobTrigger.run waits first
        self.log.info(
            "Job %s is still %s; deferring: next check in %.0f s, then doubling up to %.0f s",
            job["id"],
            job.get("status"),
            first,
            self.poll_interval,
        )
        self.defer(
            trigger=CD2JobTrigger(
                job_id=job["id"],
                instructure_conn_id=self.instructure_conn_id,
                poll_interval=self.poll_interval,
                end_time=None if deadline is None else time.time() + (deadline - time.monotonic()),
                first_delay=self.trigger_first_delay,
                poll_step=schedule.step,
            ),
            method_name="execute_complete",
            kwargs={"request": request},
        )

    def execute_complete(self, context: Context, event: dict[str, Any], request: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger (:class:`CD2JobTrigger`, or :class:`CD2CreateJobTrigger` when job
        creation was rate limited): turn its event into a result or an error."""
        if "created" in event:  # CD2CreateJobTrigger: the job was created in the triggerer, or is created here
            created, outcome = self._after_creation(context, event)
            if not created:
                return outcome
            request = outcome
        status = event.get("status")
        if status == "complete":
            return self._complete(context, event["job"], request or self._recall_request(context, event))
        if status == "failed":
            _JobMemory(context, self.log).forget()
            error = job_failure(event["job_id"], (event.get("job") or {}).get("error"))
            if isinstance(error, DapNoDataYetError):
                return self._no_data(context, request or self._recall_request(context, event), error)
            raise error
        if status == "timeout":
            raise DapJobTimeout(event.get("message", "DAP job timed out"))
        # An error while waiting: fail this try; the retry resumes the same job id.
        raise InstructureError(f"Waiting for DAP job {event.get('job_id')} failed: {event.get('message')}")

    def _recall_request(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        # dag.test() resumes with the event only (no defer kwargs): use the state store, else
        # rebuild what the operator asked for.
        saved = _JobMemory(context, self.log).recall()
        if isinstance(saved, dict) and saved.get("job_id") == event.get("job_id"):
            return {**saved["request"], **saved.get("effective", {})}
        return {
            "namespace": self.namespace or self.hook.settings.namespace,
            "table": self.table,
            "format": self.format,
            "mode": self.mode,
        }

    def _start_or_resume(
        self, context: Context, request: dict[str, Any], effective: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job of an earlier try (task state store), or a new one; ``effective`` says how the
        query differs from what was asked (``fallback_reason``)."""
        memory = _JobMemory(context, self.log)
        saved = memory.recall()
        if isinstance(saved, dict) and saved.get("request") == request:
            try:
                job = self.hook.get_job(saved["job_id"])
            except DapNotFoundError:
                self.log.info("Job %s from an earlier try has expired; starting a new one", saved["job_id"])
            else:
                if JobStatus.of(job) is not JobStatus.FAILED:
                    self.log.info("Resuming job %s started by an earlier try of this task", saved["job_id"])
                    return job, {**request, **saved.get("effective", {})}
        effective = dict(effective or {})
        body = {k: v for k, v in request.items() if k in ("format", "mode", "since", "until")}
        try:
            job = self._create_job(request, body, effective)  # may defer to CD2CreateJobTrigger on a 429
        except (DapSnapshotRequiredError, DapOutOfRangeError) as exc:
            if "since" not in request or not self.snapshot_fallback:
                raise
            self.log.warning(
                "DAP cannot serve %s.%s since %s (%s); taking a new snapshot instead",
                request["namespace"],
                self.table,
                request["since"],
                exc.error_type,
            )
            effective = {"fallback_reason": exc.error_type or type(exc).__name__}
            job = self._create_job(request, {k: v for k, v in body.items() if k in ("format", "mode")}, effective)
        memory.remember({"job_id": job["id"], "request": request, "effective": effective})
        return job, {**request, **effective}

    def _complete(self, context: Context, job: dict[str, Any], request: dict[str, Any]) -> Any:
        if JobStatus.of(job) is JobStatus.FAILED:
            _JobMemory(context, self.log).forget()
            error = job_failure(job["id"], job.get("error"))
            if isinstance(error, DapNoDataYetError):
                return self._no_data(context, request, error)
            raise error
        meta = job_metadata(job, request["namespace"], self.table, request["format"], request.get("mode"))
        if request.get("fallback_reason"):
            meta["fallback_reason"] = request["fallback_reason"]
        self.log.info(
            "Job %s complete: %s of %s.%s, %d object(s), schema version %s, watermark %s",
            meta["job_id"],
            meta["kind"],
            meta["namespace"],
            meta["table"],
            len(meta["objects"]),
            meta["schema_version"],
            meta["watermark"],
        )
        self._lineage_note(job=meta)
        result = self.process_job(context, meta)
        _JobMemory(context, self.log).forget()
        return result

    def process_job(self, context: Context, meta: dict[str, Any]) -> Any:
        """What to do with a complete job; the query operator just returns its metadata."""
        return meta

    def _no_data(self, context: Context, request: dict[str, Any], exc: DapNoDataYetError) -> Any:
        _JobMemory(context, self.log).forget()  # the next try asks DAP again
        meta = no_data_metadata(request, self.table, exc)
        self._lineage_note(job=meta)
        self.log.warning(
            "DAP has no data for %s.%s yet (%s%s); nothing to %s, and no watermark: the next run asks again",
            meta["namespace"],
            meta["table"],
            exc.error_message or exc,
            f", job {exc.job_id}" if exc.job_id else "",
            "load" if meta["kind"] == "snapshot" else "apply",
        )
        return self.process_no_data(context, meta)

    def process_no_data(self, context: Context, meta: dict[str, Any]) -> Any:
        """What to do when DAP answers "There is no data available yet" (see :func:`no_data_metadata`);
        the query operator returns the metadata (no objects, ``no_data: true``, ``watermark: None``)."""
        return meta


def _seconds(value: Any, name: str, *, positive: bool = False) -> float:
    """A templated number of seconds as a float, or a config error naming the argument."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (seconds > 0 if positive else seconds >= 0):
        raise InstructureConfigError(
            f"{name} must be a {'positive' if positive else 'non-negative'} number of seconds, got {value!r}"
        )
    return seconds


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def __getattr__(name: str) -> Any:
    # CD2DownloadOperator lives in cd2_download (which imports this module); importing it
    # lazily keeps ``from airflow_provider_instructure.operators.cd2 import CD2DownloadOperator``.
    if name == "CD2DownloadOperator":
        from airflow_provider_instructure.operators.cd2_download import CD2DownloadOperator

        return CD2DownloadOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
