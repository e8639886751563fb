"""``InstructureHook.stream_objects``: parts in order as they land, at most ``window`` on disk,
errors at the part they concern, and a clean stop when the consumer gives up early."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import DapDownloadError
from airflow_provider_instructure.hooks.downloads import _gzip_complete, safe_name
from airflow_provider_instructure.hooks.instructure import InstructureHook


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """12 two-row parts per result."""
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(parts=12, rows_per_part=2), rows=24))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_limit=1, retry_delay=0.01))
    return srv


def job_objects(hook: InstructureHook) -> list[str]:
    job = hook.start_query("users", "canvas", format="tsv")
    job = hook.wait_for_job(job["id"], poll_interval=0.05, timeout=30)
    return sorted((o["id"] for o in job["objects"]), key=safe_name)


def on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".done"))


def test_parts_come_in_order_and_the_window_bounds_the_disk(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook()
    ids = job_objects(hook)
    assert len(ids) == 12
    seen: list[str] = []
    # More slots than connections: queued downloads wait for a worker, not for a slot.
    with hook.stream_objects(ids, tmp_path, concurrency=2, window=5, inspect=True) as stream:
        for part in stream:
            assert len(on_disk(tmp_path)) <= 5
            assert part.rows == 2 and _gzip_complete(Path(part.path))
            seen.append(part.object_id)
            stream.release(part.path)
        assert stream.peak_on_disk <= 5 and stream.download_seconds is not None
    assert seen == ids
    assert on_disk(tmp_path) == []  # every part released, so deleted


def test_a_consumer_that_stops_early_leaves_whole_parts(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook()
    ids = job_objects(hook)
    server.emulator.config.download_bandwidth = 4000  # ~0.1 s per part: later ones are still queued
    # One connection, four slots: when the consumer stops, one download is in flight and the
    # others wait in the queue; they are cancelled, the one in flight finishes.
    with hook.stream_objects(ids, tmp_path, concurrency=1, window=4, reuse=True) as stream:
        for part in stream:
            stream.release(part.path)
            break
    left = on_disk(tmp_path)
    assert 1 <= len(left) <= 3 and not any(n.startswith(".") for n in left), left
    assert all(_gzip_complete(tmp_path / n) for n in left)
    assert sum(1 for c in server.emulator.stats.recent if c.route == "download") <= 4


def test_a_failed_download_surfaces_at_its_part(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook()
    ids = job_objects(hook)
    server.emulator.faults.inject("download", "truncate", count=100)  # every transfer is cut short
    with pytest.raises(DapDownloadError), hook.stream_objects(ids, tmp_path, concurrency=2) as stream:
        for part in stream:
            stream.release(part.path)
    assert [n for n in on_disk(tmp_path) if n.startswith(".")] == []  # no temporary file left behind
