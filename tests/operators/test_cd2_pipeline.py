"""A snapshot sync loads part k while the next parts download, with a bounded number on disk.

The emulator cuts the snapshot into 15 one-row parts; the sync runs with
``download_concurrency=3``. Every time the replicator opens a part, the test counts the
part files in the job's directory (finished and in progress): never more than 3. When the
first part is opened, the last one has not been downloaded (its download has not even
started), so loading overlaps downloading. Afterwards the replica equals the emulator's table.
"""

# The fixtures shared with test_cd2_sync are imported, then requested by name.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import part_feed as part_feed_module
from tests.operators.test_cd2_part_reuse import downloads
from tests.operators.test_cd2_sync import replica_equals_emulator, server, sync, warehouse  # noqa: F401 - fixtures
from tests.replication.conftest import Database, my_server, pg_server  # noqa: F401 - fixtures

PARTS = 15
WINDOW = 3


def part_files(workdir: Path) -> list[Path]:
    """Part files (finished, or in progress as ``.part-....part``) in any job directory.

    Not counted: completion records (``.done``) and MySQL's decompressed scratch copy of the
    part being loaded (``.mysql.tsv``, deleted right after its LOAD DATA).
    """
    return [
        p
        for p in workdir.glob("*/job_*/*")
        if p.name.startswith(("part-", ".part-")) and not p.name.endswith((".done", ".mysql.tsv"))
    ]


class Watch:
    """Counts part files whenever the replicator opens a part, and samples them in between."""

    def __init__(self, server: EmulatorServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.at_read: list[int] = []
        self.downloads_at_first_read: int | None = None
        self.last_part_on_disk_at_first_read: bool | None = None
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # a file vanished while listed
                self.sampled = max(self.sampled, len(part_files(self.workdir)))
            time.sleep(0.002)

    def reader(self, real: Any) -> Any:
        def read(path: Path, *args: Any, **kwargs: Any) -> Any:
            self.at_read.append(len(part_files(self.workdir)))
            if self.downloads_at_first_read is None:
                self.downloads_at_first_read = sum(downloads(self.server).values())
                names = sorted(p.name for p in part_files(self.workdir))
                self.last_part_on_disk_at_first_read = any(n.startswith(f"part-{PARTS - 1:05d}") for n in names)
            return real(path, *args, **kwargs)

        return read

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def many_parts(server: EmulatorServer, bandwidth: float = 0.0) -> None:
    server.emulator.config.parts = PARTS
    server.emulator.config.rows_per_part = 1  # 15 rows: 15 parts
    server.emulator.config.download_bandwidth = bandwidth


def test_snapshot_loads_while_downloading_with_at_most_window_parts_on_disk(
    server: EmulatorServer, warehouse: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each ~600-byte part takes ~0.1 s to stream: downloads are slow next to loading a row.
    many_parts(server, bandwidth=6000)
    workdir = tmp_path / "parts"
    with Watch(server, workdir) as watch:
        monkeypatch.setattr(part_feed_module, "read_part", watch.reader(part_feed_module.read_part))
        result = sync("users", workdir=str(workdir), download_concurrency=WINDOW)
    assert result["mode"] == "snapshot" and result["rows_inserted"] == 15 and result["files"] == PARTS
    assert len(watch.at_read) == PARTS
    assert max(watch.at_read) <= WINDOW, watch.at_read
    assert watch.sampled <= WINDOW, watch.sampled
    # Overlap: part 0 was being loaded before the last part had been downloaded.
    assert watch.downloads_at_first_read is not None and watch.downloads_at_first_read <= WINDOW
    assert watch.last_part_on_disk_at_first_read is False
    assert sum(downloads(server).values()) == PARTS  # each part once
    assert result["bytes_downloaded"] > 0 and result["seconds"]["download"] > 0
    assert result["seconds"]["waiting_for_parts"] >= 0  # reported (how long depends on the database's speed)
    assert list(workdir.iterdir()) == []
    replica_equals_emulator(warehouse, server, "canvas", "users", result)


@pytest.mark.parametrize("warehouse", ["sqlite"], indirect=True)
def test_a_failed_pipelined_snapshot_leaves_whole_parts_that_the_retry_reuses(
    server: EmulatorServer, warehouse: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    many_parts(server)
    workdir = tmp_path / "parts"
    real = part_feed_module.read_part
    opened: list[str] = []

    def dies_on_the_sixth_part(path: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(path).name)
        if len(opened) == 6:
            raise RuntimeError("killed in the middle of the load")
        return real(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(part_feed_module, "read_part", dies_on_the_sixth_part)
        with pytest.raises(RuntimeError, match="killed"):
            sync("users", workdir=str(workdir), download_concurrency=WINDOW)
    left = sorted(p.name for p in part_files(workdir))
    # Parts 0-4 were loaded (and deleted); part 5 and the downloads in flight stay, whole.
    assert opened[-1] in left and 1 <= len(left) <= WINDOW and not any(n.startswith(".") for n in left), left
    first = sum(downloads(server).values())
    result = sync("users", workdir=str(workdir), download_concurrency=WINDOW)
    assert result["rows_inserted"] == 15
    again = sum(downloads(server).values()) - first
    assert again == PARTS - len(left)  # what was left on disk is reused, the rest downloaded again
    assert list(workdir.iterdir()) == []
    replica_equals_emulator(warehouse, server, "canvas", "users", result)
