"""Download a job's parts in the background and hand them to a consumer in order, with a bound
on how many are on disk at once: the pipeline of :class:`~..operators.cd2_sync.CD2SyncTableOperator`.

The consumer (a database load) takes part ``k`` while parts ``k+1...`` download, so a sync's
wall time tends to ``max(download, load)`` instead of their sum. A part holds one of
``window`` slots from the moment its download starts until the consumer :meth:`PartStream.release`
it (the file is then deleted); a new download starts only when a slot is free. Downloads start
in the order the consumer takes the parts, so the part it waits for always holds a slot and
the pipeline cannot deadlock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any

from airflow_provider_instructure.hooks.downloads import DownloadedFile, ObjectDownloader


class PartStream:
    """Iterates over :class:`~.downloads.DownloadedFile` in the order of ``object_ids`` as they land.

    :param downloader: does (or reuses) each download; its ``concurrency`` sets the number of
        parallel connections.
    :param object_ids: the objects, in the order the consumer loads them.
    :param target: a local directory.
    :param window: most parts on disk at once (downloading, waiting or being loaded); at least 1.
    :param log: logger.

    Iterate once; then :meth:`release` each part when it is loaded, and :meth:`close` in every
    case (a ``with`` block does): downloads not started yet are skipped, those in flight finish,
    so what an interrupted sync leaves on disk is whole parts a retry can reuse.
    Download errors are raised by the iteration when the consumer reaches the failed part.
    """

    def __init__(
        self,
        downloader: ObjectDownloader,
        object_ids: Sequence[str],
        target: str | PathLike[str],
        *,
        window: int,
        log: Any,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._downloader = downloader
        self._ids = list(object_ids)
        self._sink = downloader.begin(self._ids, target)
        self._log = log
        self.window = window
        self._slots = threading.Semaphore(window)
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._futures: list[Future[DownloadedFile] | None] = [None] * len(self._ids)
        self._held: dict[str, bool] = {}  # path -> slot still held
        self.on_disk = 0
        #: Most parts that held a slot at once (what ``window`` bounds).
        self.peak_on_disk = 0
        #: Seconds the consumer spent waiting for a part to land (the load idle, download-bound).
        self.wait_seconds = 0.0
        #: The parts handed to the consumer so far.
        self.files: list[DownloadedFile] = []
        self.started = time.monotonic()
        self._landed: float | None = None
        self._landed_count = 0
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(downloader.concurrency, len(self._ids))), thread_name_prefix="dap-part"
        )
        self._dispatcher = threading.Thread(target=self._dispatch, name="dap-part-dispatch", daemon=True)
        self._dispatcher.start()

    # -- producer -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        for index, object_id in enumerate(self._ids):
            while not self._slots.acquire(timeout=0.05):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                self._slots.release()
                return
            with self._cond:
                self.on_disk += 1
                self.peak_on_disk = max(self.peak_on_disk, self.on_disk)
                future = self._pool.submit(self._downloader.one, object_id, self._sink)
                self._futures[index] = future
                self._cond.notify_all()
            future.add_done_callback(self._one_landed)

    def _one_landed(self, future: Future[DownloadedFile]) -> None:
        with self._cond:
            self._landed_count += 1
            if self._landed_count == len(self._ids):
                self._landed = time.monotonic()

    # -- consumer -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[DownloadedFile]:
        for index in range(len(self._ids)):
            clock = time.monotonic()
            with self._cond:
                while self._futures[index] is None:
                    if self._stop.is_set():
                        raise RuntimeError("the part stream was closed")
                    self._cond.wait(0.05)
                future = self._futures[index]
            assert future is not None
            try:
                file = future.result()  # a download error surfaces here, at the part it concerns
            finally:
                self.wait_seconds += time.monotonic() - clock
            with self._cond:
                self._held[str(Path(file.path))] = True
            self.files.append(file)
            yield file

    def release(self, path: str | PathLike[str]) -> None:
        """The consumer is done with the part at ``path``: delete it (and its completion record)
        and let the next download start."""
        key = str(Path(path))
        with self._cond:
            if not self._held.get(key):
                return
            self._held[key] = False
            self.on_disk -= 1
        local = Path(path)
        local.unlink(missing_ok=True)
        (local.parent / f".{local.name}.done").unlink(missing_ok=True)
        self._slots.release()

    @property
    def download_seconds(self) -> float | None:
        """Seconds from the start until the last part landed (None if it has not)."""
        return None if self._landed is None else self._landed - self.started

    def close(self) -> None:
        """Start no more downloads and wait for those in flight (see the class docstring)."""
        self._stop.set()
        self._dispatcher.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        landed = [f for f in self._futures if f is not None and f.done() and not f.cancelled()]
        done = sum(1 for f in landed if f.exception() is None)
        self._downloader.log_reuse(done)
        self._log.info(
            "Part stream: %d of %d part(s) downloaded%s; at most %d on disk at once (limit %d)",
            done,
            len(self._ids),
            f" in {self.download_seconds:.1f} s" if self.download_seconds is not None else "",
            self.peak_on_disk,
            self.window,
        )

    def __enter__(self) -> PartStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
