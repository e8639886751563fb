"""Query jobs: de-duplication, the waiting/running/complete/failed lifecycle, and result files."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.dataset import Dataset, RowState, Table
from airflow_provider_instructure.emulator.encoders import (
    EXTENSIONS,
    Layout,
    Record,
    format_timestamp,
    write_parquet_part,
    write_text_part,
)
from airflow_provider_instructure.emulator.generator import RowFactory
from airflow_provider_instructure.timestamps import parse_timestamp


@dataclass(frozen=True)
class Query:
    """A validated query: ``since is None`` means snapshot."""

    namespace: str
    table: str
    format: str
    mode: str
    since: datetime | None
    until: datetime  # resolved: the snapshot's ``at`` or the incremental's end
    scope: str | None = None

    @property
    def incremental(self) -> bool:
        return self.since is not None

    def dedup_key(self) -> str:
        # The resolved ``until`` is part of the key: once new data is committed an
        # identical request body gets a new job [INF; the docs only say "same parameters"].
        return json.dumps(
            [self.namespace, self.table, self.format, self.mode, self.since and self.since.isoformat(),
             self.until.isoformat(), self.scope]
        )  # fmt: skip


@dataclass
class Job:
    id: str
    query: Query
    created: float  # time.time()
    expires: float
    fail: bool = False
    polls: int = 0
    schema_version: int = 0
    objects: list[str] = field(default_factory=list)
    error: dict[str, str] | None = None
    rows: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    directory: Path | None = None
    dedup_key: str = ""
    fail_message: str | None = None

    @property
    def expires_at(self) -> str:
        return format_timestamp(datetime.fromtimestamp(self.expires, timezone.utc).replace(microsecond=0))

    def status(self, config: EmulatorConfig, now: float) -> str:
        if config.job_progress == "polls":
            stage = self.polls
            if stage < 1:
                return "waiting"
            if stage < 2 or not self.ready.is_set():
                return "running"
        else:
            elapsed = now - self.created
            if elapsed < config.job_waiting_seconds:
                return "waiting"
            if elapsed < config.job_waiting_seconds + config.job_running_seconds or not self.ready.is_set():
                return "running"
        return "failed" if self.error else "complete"

    def body(self, status: str) -> dict[str, Any]:
        """The job JSON, with exactly the keys the OpenAPI schema allows for ``status``."""
        out: dict[str, Any] = {"id": self.id, "status": status, "expires_at": self.expires_at}
        if status == "failed":
            out["error"] = self.error
        elif status == "complete":
            out["objects"] = [{"id": oid} for oid in self.objects]
            out["schema_version"] = self.schema_version
            if self.query.incremental:
                out["since"] = format_timestamp(self.query.since)  # type: ignore[arg-type]
                out["until"] = format_timestamp(self.query.until)
            else:
                out["at"] = format_timestamp(self.query.until)
        return out


class JobStore:
    """Holds jobs and their files; writes result files on a small worker pool."""

    def __init__(self, dataset: Dataset, config: EmulatorConfig, workdir: Path | None = None) -> None:
        self.dataset = dataset
        self.config = config
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._by_query: dict[str, str] = {}
        self._objects: dict[str, tuple[str, Path]] = {}
        self._owned_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="dap-emulator-"))
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dap-emulator-job")
        self.created_count = 0
        #: the query of every job created, oldest first (tests read ``since`` from it)
        self.history: list[Query] = []

    # -- lifecycle ------------------------------------------------------------------------

    def submit(self, query: Query, fail: bool = False, fail_message: str | None = None) -> tuple[Job, bool]:
        """Return the job for ``query``, creating it unless an identical live one exists.

        :param fail: the new job fails (``ProcessingError``) instead of producing files.
        :param fail_message: the failed job's error message (a generic one when None).
        :returns: ``(job, created)``.
        """
        fail = fail or fail_message is not None
        self.expire()
        # A schema change (which commits no rows) must not hand out a job of the old version.
        key = f"{query.dedup_key()}#v{self.dataset.table(query.namespace, query.table).schema_version}"
        with self._lock:
            existing = self._by_query.get(key)
            # A "no data yet" job is not handed out again: the table may have data by the next query.
            if existing and existing in self._jobs and not fail and self._jobs[existing].fail_message is None:
                return self._jobs[existing], False
            now = time.time()
            job = Job(id=str(uuid.uuid4()), query=query, created=now, expires=now + self.config.job_ttl, fail=fail)
            job.dedup_key = key
            job.fail_message = fail_message
            self._jobs[job.id] = job
            self._by_query[key] = job.id
            self.created_count += 1
            self.history.append(query)
        self._pool.submit(self._produce, job)
        return job, True

    def get(self, job_id: str) -> Job | None:
        self.expire()
        with self._lock:
            return self._jobs.get(job_id)

    def object_path(self, object_id: str) -> Path | None:
        self.expire()
        with self._lock:
            entry = self._objects.get(object_id)
        return entry[1] if entry else None

    def expire(self) -> None:
        now = time.time()
        with self._lock:
            gone = [job for job in self._jobs.values() if job.expires <= now]
            for job in gone:
                del self._jobs[job.id]
                if self._by_query.get(job.dedup_key) == job.id:  # a newer job may own the key
                    del self._by_query[job.dedup_key]
                for oid in job.objects:
                    self._objects.pop(oid, None)
        for job in gone:
            if job.directory is not None:
                shutil.rmtree(job.directory, ignore_errors=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- result files ---------------------------------------------------------------------

    def _produce(self, job: Job) -> None:
        try:
            if job.fail:
                job.error = {
                    "type": "ProcessingError",
                    "uuid": str(uuid.uuid4()),
                    "message": job.fail_message or "The query could not be processed (fault injected by the emulator).",
                }
                return
            self._write(job)
        except Exception as exc:  # a bug here must fail the job visibly, not hang it
            job.error = {"type": "ProcessingError", "uuid": str(uuid.uuid4()), "message": f"emulator error: {exc!r}"}
        finally:
            job.ready.set()

    def _write(self, job: Job) -> None:
        query = job.query
        table = self.dataset.table(query.namespace, query.table)
        with self.dataset.lock:
            schema = table.schema
            factory = table.factory  # pinned: a concurrent schema change must not mix versions in one job
            job.schema_version = schema.version
            if query.incremental:
                total, states = table.changes(query.since, query.until)  # type: ignore[arg-type]
            else:
                total, states = table.snapshot(query.until)
        job.rows = total
        per_part = max(1, min(self.config.rows_per_part, math.ceil(total / max(1, self.config.parts))))
        # ``parts`` is a minimum: small results still come as that many (possibly header-only) parts.
        n_parts = max(1, self.config.parts, math.ceil(total / per_part))
        directory = self.workdir / job.id
        directory.mkdir(parents=True, exist_ok=True)
        job.directory = directory
        layout = Layout(schema, query.mode, query.incremental)
        objects: list[tuple[str, Path]] = []
        run = uuid.uuid4()
        for part in range(n_parts):
            chunk = itertools.islice(states, per_part)
            name = f"part-{part:05d}-{run}-c000.{EXTENSIONS[query.format]}"
            path = directory / name
            records = _records(table, chunk, factory)
            if query.format == "parquet":
                write_parquet_part(path, layout, records)
            else:
                write_text_part(path, query.format, layout, records)
            objects.append((f"{job.id}/{name}", path))
        with self._lock:
            job.objects = [oid for oid, _ in objects]
            for oid, path in objects:
                self._objects[oid] = (job.id, path)


def _records(table: Table, states: Iterable[RowState], factory: RowFactory | None = None) -> Iterator[Record]:
    factory = factory or table.factory
    for state in states:
        if state.deleted:
            yield Record(state.ts, *factory.deleted(state.k, state.ts), "D")  # delete quirks may touch both
        else:
            key = factory.key(state.k)
            hidden = table.hidden_columns(state.ts)
            yield Record(state.ts, key, factory.value(state.k, state.version, state.ts, hidden), "U")  # type: ignore[arg-type]


def expected_rows(dataset: Dataset, namespace: str, table: str, at: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The emulator's contents of a table at ``at`` as flat ``{column: value}`` dicts.

    This is the ground truth replicas are compared with: Python values (int, float,
    Decimal, bool, datetime, date, str, list/dict for JSON columns, None).
    """
    tbl = dataset.table(namespace, table)
    at = at or tbl.latest_ts
    with dataset.lock:
        _, states = tbl.snapshot(at)
    for record in _records(tbl, states):
        yield {**record.key, **(record.value or {})}


def utc_parse(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that must carry a zone designator, to UTC.

    :raises ValueError: when ``text`` is not one or has no zone (see :func:`parse_timestamp`).
    """
    return parse_timestamp(text)
