"""The query, job and object half of :class:`~.instructure.InstructureHook` (a mixin).

Split from ``instructure.py`` to keep modules small; the hook class is the only user, and
every method goes through the hook's one request funnel (``_json``) and settings.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from functools import cached_property
from os import PathLike
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from airflow_provider_instructure._compat import mask_secret
from airflow_provider_instructure.exceptions import (
    DapApiError,
    DapJobTimeout,
    DapNotFoundError,
    InstructureConfigError,
)
from airflow_provider_instructure.hooks.dap_protocol import (
    JobStatus,
    PollSchedule,
    build_query,
    check_name,
    job_expires_within,
    job_failure,
    parse_timestamp,
)
from airflow_provider_instructure.hooks.downloads import DEFAULT_CONCURRENCY, ObjectDownloader, Truncated, UrlExpired
from airflow_provider_instructure.hooks.part_stream import PartStream
from airflow_provider_instructure.hooks.retry import RetryPolicy, raising_rate_limits

#: the sleep of job polling (tests replace it to record the schedule's waits)
_sleep = time.sleep

#: Transport failures worth another attempt (the request may not have reached DAP).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class DapJobsMixin:
    """``start_query``, ``get_job``, ``wait_for_job``, ``poll_job``, ``get_object_urls`` and
    ``download_objects`` of :class:`~.instructure.InstructureHook`."""

    # provided by InstructureHook
    log: Any
    settings: Any
    reuse_expiry_margin: float
    url_batch: int
    url_max_age: float

    def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _namespace(self, namespace: str | None) -> str:
        raise NotImplementedError

    def _explain_missing(self, exc: DapNotFoundError, namespace: str, table: str) -> DapNotFoundError:
        raise NotImplementedError

    def _base_headers(self) -> dict[str, str]:
        raise NotImplementedError

    # -- rate limits ----------------------------------------------------------------------------------

    def raise_on_rate_limit(self) -> AbstractContextManager[None]:
        """A block in which this thread's calls raise on DAP's first 429 instead of waiting.

        Outside it, a 429 is waited on (``Retry-After``) for up to ``rate_limit_wait`` seconds.
        Inside, :class:`~airflow_provider_instructure.exceptions.DapRateLimitError` is raised at
        once, its ``retry_after`` holding the seconds DAP asked for (None when it did not say):
        deferrable operators wrap job creation and table listing in it and wait in the triggerer,
        holding neither a worker nor a pool slot. 5xx and connection errors are retried as usual.

        .. code-block:: python

            with hook.raise_on_rate_limit():
                job = hook.start_query("users")  # DapRateLimitError on 429
        """
        return raising_rate_limits()

    # -- queries and jobs ------------------------------------------------------------------------------

    def start_query(
        self,
        table: str,
        namespace: str | None = None,
        *,
        format: str = "jsonl",
        mode: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> dict[str, Any]:
        """Start (or join) a query job: a snapshot when ``since`` is None, else an incremental.

        ``since``/``until`` take aware datetimes or ISO-8601 strings with a zone. A complete job
        that DAP hands back from an earlier identical query but that expires within
        ``reuse_expiry_margin`` seconds is not used: the hook waits for it to expire and asks
        again, as its objects would vanish mid-download.

        :returns: the job object (``id``, ``status``, ``expires_at`` and, when complete,
            ``objects``, ``schema_version`` and ``at`` or ``since``/``until``).
        :raises InstructureConfigError: bad arguments, before any call.
        """
        ns = self._namespace(namespace)
        tbl = _checked(table, "table")
        try:
            body = build_query(format, mode, since, until)
        except ValueError as exc:
            raise InstructureConfigError(f"Query of {ns}.{tbl}: {exc}") from None
        kind = "incremental" if "since" in body else "snapshot"
        what = f"Start {kind} query of {ns}.{tbl}"
        for _ in range(3):
            try:
                job = self._json("POST", f"/dap/query/{ns}/table/{tbl}/data", what=what, json=body, scoped=True)
            except DapNotFoundError as exc:
                raise self._explain_missing(exc, ns, tbl) from None
            status = JobStatus.of(job)
            if not (status.is_terminal and job_expires_within(job, self.reuse_expiry_margin)):
                break
            wait = max(0.0, min(self.reuse_expiry_margin, _seconds_until(job.get("expires_at")))) + 1.0
            self.log.info(
                "DAP returned job %s from an earlier identical query, expiring at %s; waiting %.0f s for a fresh one",
                job.get("id"),
                job.get("expires_at"),
                wait,
            )
            time.sleep(wait)
        self.log.info("%s: job %s is %s (%s)", what, job.get("id"), job.get("status"), json.dumps(body))
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """The job object of ``job_id`` (404 :class:`DapNotFoundError` once it has expired)."""
        jid = _checked_job_id(job_id)
        return self._json("GET", f"/dap/job/{jid}", what=f"Get job {jid}")

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 30.0,
        timeout: float | None = None,
        schedule: PollSchedule | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is complete (blocking; deferrable operators use the trigger instead).

        The first check is immediate, then after 1, 2, 4, 8... seconds, never more than
        ``poll_interval`` apart (:class:`PollSchedule`): a job done in 2 s is seen within 3 s.

        :param poll_interval: longest wait between two checks, seconds.
        :param timeout: seconds after which :class:`DapJobTimeout` is raised (checked once more
            at the deadline itself); None waits forever.
        :param schedule: a schedule to continue instead of a new one capped at ``poll_interval``.
        :returns: the complete job.
        :raises DapJobFailed: the job failed (message carries its id and DAP error uuid);
            :class:`DapNoDataYetError` when DAP says the table has no data yet.
        :raises DapJobTimeout: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.poll_job(job_id, schedule or PollSchedule(maximum=poll_interval), deadline=deadline)
        if JobStatus.of(job) is JobStatus.FAILED:
            raise job_failure(job_id, job.get("error"))
        return job

    def poll_job(
        self,
        job_id: str,
        schedule: PollSchedule,
        *,
        job: dict[str, Any] | None = None,
        for_seconds: float | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Check a job on ``schedule`` until it is complete or failed, or ``for_seconds`` run out.

        :param schedule: when to check; it advances with every wait, so a caller that defers
            afterwards can hand ``schedule.step`` to the trigger.
        :param job: the job as last seen (e.g. the answer of :meth:`start_query`); without it the
            first check is immediate.
        :param for_seconds: stop before a wait would bring the total of waits past this many
            seconds and return the job as last seen, still waiting or running (deferrable
            operators poll a few seconds in the worker this way, then defer); None: no limit.
        :param deadline: a :func:`time.monotonic` value; the job is checked once more at it.
        :returns: the last job seen: complete or failed, unless ``for_seconds`` ran out.
        :raises DapJobTimeout: the job was neither complete nor failed at ``deadline``.
        """
        if job is None:
            job = self.get_job(job_id)
        waited = 0.0
        while not (status := JobStatus.of(job)).is_terminal:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DapJobTimeout(
                    f"DAP job {job_id} still {status.value} when the wait ran out (timeout/job_timeout); "
                    "give the job more time if the table is large"
                )
            delay = schedule.peek()
            if for_seconds is not None and waited + delay > for_seconds:
                return job
            schedule.next()
            if deadline is not None:
                delay = min(delay, deadline - now)
            self.log.info("Job %s is %s; next check in %.1f s", job_id, status.value, delay)
            _sleep(delay)
            waited += delay
            job = self.get_job(job_id)
        return job

    def get_object_urls(self, object_ids: Sequence[str]) -> dict[str, str]:
        """Trade object ids for pre-signed URLs, ``url_batch`` ids per call.

        The URLs are secrets until they expire: they are registered with the masker and must
        not be logged.
        """
        urls: dict[str, str] = {}
        ids = list(object_ids)
        for start in range(0, len(ids), self.url_batch):
            batch = ids[start : start + self.url_batch]
            body = self._json(
                "POST",
                "/dap/object/url",
                what=f"Get download URLs of {len(batch)} object(s)",
                json=[{"id": oid} for oid in batch],
            )
            for oid, entry in (body.get("urls") or {}).items():
                url = entry.get("url") if isinstance(entry, dict) else entry
                if isinstance(url, str):
                    for secret in url_secrets(url):
                        mask_secret(secret)
                    urls[oid] = url
        missing = [oid for oid in ids if oid not in urls]
        if missing:
            raise DapApiError(f"DAP returned no download URL for {len(missing)} object(s), e.g. {missing[0]!r}")
        return urls

    @cached_property
    def _download_session(self) -> requests.Session:
        # Pre-signed URLs carry their own signature: no Authorization header may go with them.
        session = requests.Session()
        session.headers.update(self._base_headers())
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def download_objects(
        self,
        job: dict[str, Any] | Sequence[str],
        target: Any,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        decompress: bool = False,
        inspect: bool = True,
        reuse: bool = False,
    ) -> list[dict[str, Any]]:
        """Download every result object of a complete job into ``target``.

        :param job: the complete job object (or just its object ids).
        :param target: a local directory, or an ``ObjectStoragePath`` (S3, GCS, Azure... through
            their Airflow providers).
        :param concurrency: parallel downloads (default 8, see ``downloads.DEFAULT_CONCURRENCY``).
        :param decompress: gunzip TSV/CSV/JSONL on the fly (not valid for parquet).
        :param inspect: inflate compressed parts in-stream to count rows and verify the gzip
            trailer; turn off when the consumer reads every byte anyway.
        :param reuse: keep the parts an earlier try of the same job left in a local ``target``
            when their size and gzip trailer check out; download only the others.
        :returns: per file ``{"object_id", "path", "size", "rows"}`` (rows when cheap to know).
        """
        if isinstance(job, dict):
            if JobStatus.of(job) is not JobStatus.COMPLETE:
                raise InstructureConfigError(
                    f"job {job.get('id')} is {job.get('status')}; only complete jobs have files"
                )
            object_ids = [o["id"] if isinstance(o, dict) else str(o) for o in job.get("objects") or []]
        else:
            object_ids = list(job)
        downloader = self._object_downloader(
            concurrency=concurrency, decompress=decompress, inspect=inspect, reuse=reuse
        )
        started = time.monotonic()
        files = downloader.download(object_ids, target)
        total = sum(f.size for f in files)
        self.log.info(
            "Downloaded %d file(s), %d bytes, in %.1f s to %s", len(files), total, time.monotonic() - started, target
        )
        return [f.to_dict() for f in files]

    def stream_objects(
        self,
        object_ids: Sequence[str],
        target: str | PathLike[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        window: int | None = None,
        inspect: bool = True,
        reuse: bool = False,
    ) -> PartStream:
        """Start downloading objects into a local directory in the background; iterate the
        returned :class:`~.part_stream.PartStream` to take them in ``object_ids`` order as they
        land, ``release`` each when done with it (it is deleted), and ``close`` it.

        :param object_ids: the objects, in the order they will be consumed.
        :param target: a local directory.
        :param concurrency: parallel downloads.
        :param window: most parts on disk at once (default: ``concurrency``).
        :param inspect: see :meth:`download_objects`.
        :param reuse: see :meth:`download_objects`.
        """
        downloader = self._object_downloader(concurrency=concurrency, decompress=False, inspect=inspect, reuse=reuse)
        return PartStream(downloader, object_ids, target, window=window or concurrency, log=self.log)

    def _object_downloader(self, *, concurrency: int, decompress: bool, inspect: bool, reuse: bool) -> ObjectDownloader:
        settings = self.settings
        return ObjectDownloader(
            self.get_object_urls,
            self._download_session,
            RetryPolicy(settings, (*TRANSPORT_ERRORS, Truncated, UrlExpired), self.log),
            concurrency=concurrency,
            decompress=decompress,
            inspect=inspect,
            reuse=reuse,
            url_batch=self.url_batch,
            url_max_age=self.url_max_age,
            timeout=(settings.connect_timeout, max(settings.timeout, 300.0)),
            log=self.log,
        )


def _checked(value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise InstructureConfigError(str(exc)) from None


_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def _checked_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise InstructureConfigError(f"{job_id!r} is not a DAP job id")
    return job_id


def _seconds_until(timestamp: str | None) -> float:
    if not timestamp:
        return 0.0
    try:
        return parse_timestamp(timestamp, "expires_at").timestamp() - time.time()
    except ValueError:
        return 0.0


#: Query parameters of pre-signed URLs (S3 SigV4/V2, GCS, Azure SAS) whose values are the secret part.
_SIGNATURE_PARAMS = frozenset(
    {"x-amz-signature", "x-amz-security-token", "signature", "x-goog-signature", "sig", "x-amz-credential"}
)


def url_secrets(url: str) -> list[str]:
    """The values of a pre-signed URL to hand to Airflow's secrets masker.

    Only the signature-like query values, not the whole URL: the masker recompiles one regex of
    every secret it knows on each new one, so registering whole URLs (hundreds of bytes each, a
    new one per part) made masking quadratic in the number of parts a process downloads. The
    rest of the URL (host, path, expiry) is not secret. A URL with none of the known parameters
    has its whole query string masked.
    """
    from urllib.parse import unquote, urlsplit

    query = urlsplit(url).query
    values: list[str] = []
    for pair in query.split("&"):
        key, _, raw = pair.partition("=")
        if raw and unquote(key).lower() in _SIGNATURE_PARAMS:
            # as it stands in the URL, and decoded (a token's %2B/%2F/%3D), whichever a log shows
            values.extend(dict.fromkeys([raw, unquote(raw)]))
    return values or ([query] if query else [url])
