"""Where :class:`~.cd2_sync.CD2SyncTableOperator` keeps a job's downloaded parts between tries.

``<workdir>/<namespace>.<table>-<key>/job_<job id>/``: ``workdir`` is the operator's argument
(the system temporary directory plus ``airflow-cd2-sync`` by default), ``key`` a short hash of
the destination (connection id, schema, table prefix), so two syncs of the same DAP table into
different databases never share or remove each other's parts. A failed try leaves the job's
directory in place and the retry, which resumes the same DAP job, reuses the parts that check
out (:class:`~airflow_provider_instructure.hooks.downloads.ObjectDownloader`, ``reuse=True``).
The directory is removed once the sync has committed; directories of other (older) jobs of
the same table and destination are removed whenever a job's download starts, so at most one
job's parts stay on disk per table and destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: The default parent directory of every table's parts (under the system temporary directory).
DEFAULT_DIRNAME = "airflow-cd2-sync"
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def table_parts_dir(workdir: str | None, destination: list[Any], namespace: str, table: str) -> Path:
    """The directory holding the job directories of one table and destination.

    :param workdir: the operator's ``workdir`` (None: the system temporary directory).
    :param destination: what identifies the destination (connection id, schema, prefix).
    """
    base = Path(workdir) if workdir else Path(tempfile.gettempdir()) / DEFAULT_DIRNAME
    key = hashlib.sha256(json.dumps([*destination, namespace, table]).encode()).hexdigest()[:12]
    return base / f"{namespace}.{table}-{key}"


def job_parts_dir(table_dir: Path, job_id: str) -> Path:
    """``job_<job id>`` inside ``table_dir`` (a hash stands in for an id that is not a plain name)."""
    name = job_id if _PLAIN.match(job_id or "") else hashlib.sha256(str(job_id).encode()).hexdigest()[:32]
    return table_dir / f"job_{name}"


def remove_other_jobs(job_dir: Path, log: Any) -> int:
    """Remove the directories of the table's other jobs (an older job's parts are never reused).

    :returns: how many directories were removed.
    """
    removed = 0
    parent = job_dir.parent
    if not parent.is_dir():
        return 0
    for other in parent.iterdir():
        if other.name.startswith("job_") and other != job_dir and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
            removed += 1
    if removed:
        log.info("Removed the downloaded parts of %d older job(s) of this table in %s", removed, parent)
    return removed


def remove_job(job_dir: Path) -> None:
    """Remove a finished job's parts, and the table's directory when nothing else is left in it."""
    shutil.rmtree(job_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # another job's directory is still there, or it is gone already
        job_dir.parent.rmdir()
