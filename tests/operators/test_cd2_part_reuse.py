"""A retry of a failed sync reuses the parts the failed try downloaded for the same DAP job.

Try 1 downloads every part and then fails in the load; try 2 resumes the same job (DAP
de-duplicates the identical query) and downloads only what is missing or damaged, as the
emulator's download counter shows. A finished sync leaves no parts behind.
"""

# The fixtures shared with test_cd2_sync are imported, then requested by name.
# ruff: noqa: F811

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapDownloadError
from airflow_provider_instructure.hooks import downloads as downloads_module
from airflow_provider_instructure.hooks.downloads import _gzip_complete
from airflow_provider_instructure.operators.cd2_download import CD2DownloadOperator
from airflow_provider_instructure.operators.sync_workdir import JobDirBusy, JobDirClaim, remove_other_jobs
from airflow_provider_instructure.replication import part_feed as part_feed_module
from tests.operators.test_cd2_sync import replica_equals_emulator, server, sync, warehouse  # noqa: F401 - fixtures
from tests.replication.conftest import Database, my_server, pg_server  # noqa: F401 - fixtures

SQLITE = pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)


def downloads(server: EmulatorServer) -> Counter[str]:
    """Downloads per object path so far."""
    return Counter(c.path for c in server.emulator.stats.recent if c.route == "download" and c.status == 200)


def fail_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def dies(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed before the load")

    monkeypatch.setattr(part_feed_module, "read_part", dies)


def job_dirs(workdir: Path) -> list[Path]:
    (table_dir,) = workdir.iterdir()
    return sorted(table_dir.glob("job_*"))


def parts_of(workdir: Path) -> list[Path]:
    (job_dir,) = job_dirs(workdir)
    return sorted(job_dir.glob("part-*"))


def failed_try(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> list[Path]:
    with monkeypatch.context() as patch:
        fail_the_load(patch)
        with pytest.raises(RuntimeError, match="killed"):
            sync("users", workdir=str(workdir))
    parts = parts_of(workdir)
    assert len(parts) == 3 and all(_gzip_complete(p) for p in parts)
    assert sum(downloads(server).values()) == 3
    return parts


@SQLITE
def test_retry_downloads_nothing_again_and_cleans_up(
    server: EmulatorServer, warehouse: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server.emulator.config.parts = 3
    workdir = tmp_path / "parts"
    failed_try(server, monkeypatch, workdir)
    created = server.emulator.jobs.created_count
    result = sync("users", workdir=str(workdir))
    assert result["mode"] == "snapshot" and result["rows_inserted"] == 15
    assert server.emulator.jobs.created_count == created  # the same job
    assert sum(downloads(server).values()) == 3  # every part reused, none downloaded again
    assert list(workdir.iterdir()) == []  # a finished sync removes its parts
    replica_equals_emulator(warehouse, server, "canvas", "users", result)


@SQLITE
def test_damaged_parts_are_downloaded_again(
    server: EmulatorServer, warehouse: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server.emulator.config.parts = 3
    workdir = tmp_path / "parts"
    truncated, unrecorded, recorded = failed_try(server, monkeypatch, workdir)
    truncated.write_bytes(truncated.read_bytes()[:-20])  # cut short after the try checked it
    (unrecorded.parent / f".{unrecorded.name}.done").unlink()  # intact, but its record is gone
    damaged = recorded.read_bytes()
    recorded.write_bytes(damaged[:-8] + bytes(8))  # same size, trailer overwritten
    before = downloads(server)
    result = sync("users", workdir=str(workdir))
    again = downloads(server) - before
    assert sorted(path.rsplit("/", 1)[-1] for path in again) == sorted([truncated.name, recorded.name])
    assert result["rows_inserted"] == 15
    replica_equals_emulator(warehouse, server, "canvas", "users", result)


@SQLITE
def test_older_jobs_parts_are_removed_when_a_new_job_downloads(
    server: EmulatorServer, warehouse: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    workdir = tmp_path / "parts"
    with monkeypatch.context() as patch:
        fail_the_load(patch)
        with pytest.raises(RuntimeError):
            sync("users", workdir=str(workdir))
    (old_job,) = job_dirs(workdir)
    server.emulator.advance(["canvas.users"], updates=1)  # new data: the next query is a new job
    with monkeypatch.context() as patch:
        fail_the_load(patch)
        with pytest.raises(RuntimeError):
            sync("users", workdir=str(workdir))
    (new_job,) = job_dirs(workdir)
    assert new_job != old_job


def test_a_gzip_stream_check_needs_its_end(tmp_path: Path) -> None:
    whole = gzip.compress(b"a\tb\n" * 1000) + gzip.compress(b"c\td\n")  # two members, as gzip allows
    (tmp_path / "ok.gz").write_bytes(whole)
    (tmp_path / "cut.gz").write_bytes(whole[:-3])
    assert _gzip_complete(tmp_path / "ok.gz") and not _gzip_complete(tmp_path / "cut.gz")


def test_a_job_directory_in_use_is_neither_shared_nor_removed(tmp_path: Path) -> None:
    table_dir = tmp_path / "canvas.users-key"
    busy, idle, mine = (table_dir / f"job_{name}" for name in ("busy", "idle", "mine"))
    for job_dir in (busy, idle):
        job_dir.mkdir(parents=True)
    held = JobDirClaim(busy)  # another run, downloading
    try:
        with pytest.raises(JobDirBusy, match="another sync on this machine"):
            JobDirClaim(busy)
        assert remove_other_jobs(mine, logging.getLogger(__name__)) == 1
        assert busy.is_dir() and not idle.exists()
    finally:
        held.release()
    assert remove_other_jobs(mine, logging.getLogger(__name__)) == 1 and not busy.exists()


def test_download_retry_fetches_only_the_part_that_failed(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CD2DownloadOperator: try 1 loses the last part to a cut-off transfer; try 2 fetches only it."""
    server.emulator.config.parts = 3
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_limit=1, retry_delay=0.01))

    def download() -> dict[str, Any]:
        return CD2DownloadOperator(
            task_id="d", table="users", target=tmp_path, concurrency=1, poll_interval=0.05
        ).execute({})

    real = downloads_module.ObjectDownloader._transfer
    started: list[str] = []

    def last_part_is_cut(self: Any, object_id: str, *args: Any, **kwargs: Any) -> Any:
        started.append(object_id)
        if len(started) == 3:  # parts go one at a time (concurrency=1): the third is the last
            server.emulator.faults.inject("download", "truncate", count=5)
        return real(self, object_id, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(downloads_module.ObjectDownloader, "_transfer", last_part_is_cut)
        with pytest.raises(DapDownloadError):
            download()
    server.emulator.faults.clear()
    before = downloads(server)
    result = download()
    again = downloads(server) - before
    assert list(again) == [f"/files/{started[2]}"] and again[f"/files/{started[2]}"] == 1
    assert result["file_count"] == 3 and result["rows"] == 15
    job_dir = Path(result["target"])
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(Path(f["path"]).name for f in result["files"])
