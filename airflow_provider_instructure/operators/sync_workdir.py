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

A sync holds an exclusive ``flock`` on ``.job_<id>.lock`` (beside the job's directory) while it
uses the directory: a second sync of the same job on the machine fails fast instead of writing
the same files, and a directory in use by another run (an overlapping run of the same table,
for example) is never removed as "older". A crashed process releases its lock with its file
descriptors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from airflow_provider_instructure.exceptions import InstructureError

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


class JobDirBusy(InstructureError):
    """Another sync on this machine is using the same job's directory (retrying later helps)."""


class JobDirClaim:
    """An exclusive, non-blocking ``flock`` on a job directory's lock file; see the module docstring.

    :raises JobDirBusy: another process holds it.
    """

    def __init__(self, job_dir: Path) -> None:
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        self.job_dir = job_dir
        self.lock_path = job_dir.parent / f".{job_dir.name}.lock"
        self._fd: int | None = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise JobDirBusy(
                f"another sync on this machine is using {job_dir} (the same DAP job of the same table and "
                "destination); only one runs at a time, retry once it has finished"
            ) from None

    def remove(self) -> None:
        """Delete the job's directory and lock file, then release the lock."""
        shutil.rmtree(self.job_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def remove_other_jobs(job_dir: Path, log: Any) -> int:
    """Remove the directories of the table's other jobs (an older job's parts are never reused),
    except those another run holds right now.

    :returns: how many directories were removed.
    """
    removed = 0
    parent = job_dir.parent
    if not parent.is_dir():
        return 0
    for other in parent.iterdir():
        if other.name.startswith("job_") and other != job_dir and other.is_dir():
            try:
                JobDirClaim(other).remove()
            except JobDirBusy:
                log.info("Leaving %s in place: another run is using it", other)
                continue
            removed += 1
    if removed:
        log.info("Removed the downloaded parts of %d older job(s) of this table in %s", removed, parent)
    return removed


def remove_job(claim: JobDirClaim) -> None:
    """Remove a finished job's parts, and the table's directory when nothing else is left in it."""
    claim.remove()
    with contextlib.suppress(OSError):  # another job's directory is still there, or it is gone already
        claim.job_dir.parent.rmdir()
