"""What the query operators keep about a DAP job: its XCom form, and its id across retries.

Split from :mod:`.cd2` (which re-exports these names) to keep that module small.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure._compat import AIRFLOW_VERSION, Context, task_state_store, try_number
from airflow_provider_instructure.exceptions import DapNoDataYetError

#: task_state_store key that carries a started job across retries of the same task instance.
JOB_STATE_KEY = "instructure_cd2_job"


def job_metadata(job: dict[str, Any], namespace: str, table: str, fmt: str, mode: str | None) -> dict[str, Any]:
    """The XCom form of a complete job: what downstream tasks need, no secrets."""
    meta: dict[str, Any] = {
        "job_id": job["id"],
        "namespace": namespace,
        "table": table,
        "format": fmt,
        "mode": mode,
        "schema_version": job.get("schema_version"),
        "objects": [o["id"] if isinstance(o, dict) else str(o) for o in job.get("objects") or []],
        "expires_at": job.get("expires_at"),
    }
    if job.get("since") is not None:
        meta.update(kind="incremental", since=job["since"], until=job.get("until"), watermark=job.get("until"))
    else:
        meta.update(kind="snapshot", at=job.get("at"), watermark=job.get("at"))
    meta["no_data"] = False
    return meta


def no_data_metadata(request: dict[str, Any], table: str, exc: DapNoDataYetError) -> dict[str, Any]:
    """The XCom form of DAP's "There is no data available yet": the keys of :func:`job_metadata`
    with no objects, ``watermark`` None (nothing to continue from) and ``no_data`` True.

    ``job_id`` is the failed job's id when DAP reported it through a job, else None.
    """
    meta: dict[str, Any] = {
        "job_id": exc.job_id,
        "namespace": request["namespace"],
        "table": table,
        "format": request.get("format"),
        "mode": request.get("mode"),
        "schema_version": None,
        "objects": [],
        "expires_at": None,
    }
    if request.get("since") is not None:
        meta.update(kind="incremental", since=request["since"], until=request.get("until"), watermark=None)
    else:
        meta.update(kind="snapshot", at=None, watermark=None)
    if request.get("fallback_reason"):
        meta["fallback_reason"] = request["fallback_reason"]
    meta.update(no_data=True, no_data_reason=exc.error_message or str(exc))
    return meta


class _JobMemory:
    """The started job id in the task instance's state store (Airflow 3.3+), across retries.

    Without a store (Airflow 3.0-3.2, ``execute()`` called directly) a retry starts a new job
    and, from the second try on, says so in the log; DAP returns the same job for an identical
    query while its data is unchanged.
    """

    def __init__(self, context: Context, log: Any) -> None:
        self._store = task_state_store(context)
        self._try = try_number(context)
        self._log = log

    def recall(self) -> Any:
        if self._store is None:
            return None
        try:
            return self._store.get(JOB_STATE_KEY)
        except Exception as exc:
            self._log.warning("Could not read the task state store (%s); not resuming an earlier job", exc)
            return None

    def remember(self, value: dict[str, Any]) -> None:
        if self._store is None:
            if self._try is not None and self._try > 1:
                # Called right after a new job was created: a retry on Airflow < 3.3 could not look
                # for the earlier try's job, so the user should know why DAP got a second request.
                self._log.warning(
                    "Try %d started DAP job %s: Airflow %s has no task state store (Airflow 3.3+), so the job "
                    "of an earlier try could not be resumed",
                    self._try,
                    value.get("job_id"),
                    AIRFLOW_VERSION,
                )
            return
        try:
            self._store.set(JOB_STATE_KEY, value)
        except Exception as exc:
            self._log.warning("Could not save job %s in the task state store (%s)", value.get("job_id"), exc)

    def forget(self) -> None:
        if self._store is None:
            return
        try:
            self._store.delete(JOB_STATE_KEY)
        except Exception as exc:
            self._log.warning("Could not clear the task state store (%s)", exc)
