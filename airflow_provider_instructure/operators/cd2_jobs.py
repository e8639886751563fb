"""What the query operators keep about a DAP job: its XCom form, and its id across retries.

Split from :mod:`.cd2` (which re-exports these names) to keep that module small.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure._compat import Context
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

    Without a store (older Airflow, ``execute()`` called directly) a retry simply asks DAP
    again; DAP returns the same job for an identical query while its data is unchanged.
    """

    def __init__(self, context: Context, log: Any) -> None:
        self._store = context.get("task_state_store") if hasattr(context, "get") else None
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
