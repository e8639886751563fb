"""Stream a job's result objects from their pre-signed URLs to local disk or object storage.

Every part is downloaded (never just the first), in bounded parallel, in 1 MiB chunks (never
a whole file in memory), to a temporary name that is renamed into place only once the file
is complete. Pre-signed URLs are fetched in batches just before use and fetched again when
they expire (403) or grow old; truncated transfers are retried.

With ``reuse=True`` a part already in the target directory (left by an earlier try of the same
job) is kept instead of downloaded again when it checks out: each completed part gets a small
record beside it (``.<name>.done``: its size and, for gzip files, the 8-byte gzip trailer, CRC32
and length), and a part is reused only when its size and trailer still match that record. A
gzip part without a record is reused only if it inflates to the end of its stream. Anything
else is downloaded again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import requests
from tenacity import Retrying

from airflow_provider_instructure.exceptions import DapDownloadError, DapServerError, InstructureConfigError
from airflow_provider_instructure.hooks.dap_protocol import map_error
from airflow_provider_instructure.hooks.retry import RetryPolicy, redact_url

CHUNK = 1 << 20
#: Parallel downloads by default. Measured with ``benchmarks/bench_download.py`` (62 MB job, 33
#: parts, README "Benchmarks"): with each connection capped like one S3 object stream, 8
#: connections move 2.1-2.3x what the official CLI's 4 do and 16 move 3.4-4.3x; without a cap
#: the local figures are CPU-bound and gain little from more connections. 8 meets the 2x goal at
#: half the memory of 16 (~2 MB per connection, ~4 MB when inspecting) and half its parts on
#: disk in a sync (``download_concurrency`` bounds them).
DEFAULT_CONCURRENCY = 8
#: Most bytes one inflate step produces (row counting and ``decompress=True``).
INFLATE_PIECE = 256 << 10
#: Size of the gzip trailer (CRC32 and ISIZE, RFC 1952 section 2.3.1).
GZIP_TRAILER = 8


@dataclass(frozen=True)
class DownloadedFile:
    """One result part on its final path.

    :param object_id: the DAP object id.
    :param path: where it was written (local path or object-storage URI).
    :param size: bytes written.
    :param rows: data rows in it, when cheap to know (TSV, JSONL, Parquet), else ``None``.
    """

    object_id: str
    path: str
    size: int
    rows: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UrlExpired(DapDownloadError):
    """The pre-signed URL was refused (403): it expired or its signature no longer holds."""


class Truncated(DapDownloadError):
    """The transfer ended before the announced length or before the end of the gzip stream."""


def file_format(object_id: str) -> str:
    name = object_id.lower()
    for suffix, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".json", "jsonl"), (".jsonl", "jsonl")):
        if name.endswith(suffix + ".gz") or name.endswith(suffix):
            return fmt
    if name.endswith(".parquet"):
        return "parquet"
    return "unknown"


def safe_name(object_id: str) -> str:
    """The local file name for an object: its last path segment, refusing anything that escapes."""
    name = PurePosixPath(object_id).name
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise DapDownloadError(f"refusing to write object {object_id!r}: its name is not a plain file name")
    return name


class _Sink:
    """Where one file goes: a local path (atomic rename) or an ObjectStoragePath."""

    def __init__(self, target: Any) -> None:
        # Not ``isinstance(target, os.PathLike)``: under universal-pathlib < 0.3 (Airflow 3.0/3.1) an
        # ObjectStoragePath is a pathlib.Path; its fsspec ``fs`` tells (_compat.is_object_storage_path).
        self.remote = not isinstance(target, str) and hasattr(target, "fs")
        if not self.remote:
            self.root: Any = Path(target)
            self.root.mkdir(parents=True, exist_ok=True)
        else:
            self.root = target
            self.root.mkdir(parents=True, exist_ok=True)

    def temp(self, name: str) -> Any:
        return self.root / f".{name}.part"

    def final(self, name: str) -> Any:
        return self.root / name

    def open(self, path: Any) -> Any:
        return open(path, "wb") if not self.remote else path.open("wb")

    def commit(self, temp: Any, final: Any) -> None:
        if self.remote:
            temp.rename(final)
        else:
            os.replace(temp, final)

    def discard(self, temp: Any) -> None:
        try:
            if self.remote:
                if temp.exists():
                    temp.unlink()
            else:
                Path(temp).unlink(missing_ok=True)
        except OSError:
            pass

    def uri(self, final: Any) -> str:
        return str(final)

    def record(self, name: str) -> Path:
        """Local sinks only: where the completion record of file ``name`` goes."""
        return Path(self.root) / f".{name}.done"


class ObjectDownloader:
    """Downloads a set of objects with bounded concurrency.

    :param fetch_urls: maps object ids to fresh pre-signed URLs (one batched API call).
    :param session: a plain session (pre-signed URLs need no Authorization header).
    :param retry: the retry policy (transport errors, 5xx, truncation and expiry are retried).
    :param concurrency: parallel downloads.
    :param decompress: gunzip text formats on the fly (the ``.gz`` suffix is dropped).
    :param inspect: inflate gzip parts in-stream to count rows and check the gzip trailer even
        when they are stored compressed; callers that read every byte anyway (a database load)
        turn it off and keep the Content-Length check.
    :param reuse: keep parts an earlier try left in the (local) target when they check out
        against their completion record (see the module docstring) and download only the rest.
    :param url_batch: object ids per URL request.
    :param url_max_age: seconds after which a cached URL is fetched again before use.
    :param timeout: ``(connect, read)`` timeouts per request.
    :param log: logger.
    """

    def __init__(
        self,
        fetch_urls: Callable[[list[str]], dict[str, str]],
        session: requests.Session,
        retry: RetryPolicy,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        decompress: bool = False,
        inspect: bool = True,
        reuse: bool = False,
        url_batch: int = 100,
        url_max_age: float = 600.0,
        timeout: tuple[float, float] = (10.0, 300.0),
        log: Any,
    ) -> None:
        if concurrency < 1:
            raise InstructureConfigError(f"concurrency must be at least 1, got {concurrency}")
        self._fetch_urls = fetch_urls
        self._session = session
        self._retry = retry
        self._concurrency = concurrency
        self._decompress = decompress
        self._inspect = inspect
        self._reuse = reuse
        self.reused = 0  # parts kept from an earlier try by the last download()
        self._url_batch = max(1, url_batch)
        self._url_max_age = url_max_age
        self._timeout = timeout
        self._log = log
        self._lock = threading.Lock()
        self._urls: dict[str, tuple[str, float]] = {}
        self._pending: list[str] = []

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def begin(self, object_ids: Sequence[str], target: Any) -> _Sink:
        """Check the objects' file names and prepare ``target`` for :meth:`one` calls."""
        sink = _Sink(target)
        names = [safe_name(oid) for oid in object_ids]
        if len(set(names)) != len(names):
            raise DapDownloadError("two result objects share a file name; refusing to overwrite one with another")
        self._pending = list(object_ids)
        self.reused = 0
        return sink

    def download(self, object_ids: Sequence[str], target: Any) -> list[DownloadedFile]:
        """Download every object into ``target`` (a directory); returns them in input order."""
        sink = self.begin(object_ids, target)
        if not object_ids:
            return []
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(object_ids))) as pool:
            futures = [pool.submit(self.one, oid, sink) for oid in object_ids]
            files = [f.result() for f in futures]
        self.log_reuse(len(files))
        return files

    def log_reuse(self, total: int) -> None:
        if self._reuse:
            self._log.info(
                "Reused %d of %d part(s) already downloaded by an earlier try; downloaded %d",
                self.reused,
                total,
                total - self.reused,
            )

    # -- URLs ---------------------------------------------------------------------------------

    def _url(self, object_id: str, refresh: bool = False) -> str:
        with self._lock:
            cached = self._urls.get(object_id)
            if cached and not refresh and time.monotonic() - cached[1] < self._url_max_age:
                return cached[0]
            if refresh and cached:
                # URLs fetched together expire together: drop the refused one's whole batch.
                self._urls = {oid: entry for oid, entry in self._urls.items() if entry[1] > cached[1]}
            # Fetch this id plus the next ones still waiting, so N objects cost ~N/batch calls,
            # yet each URL is fetched shortly before it is used.
            waiting = [oid for oid in self._pending if oid != object_id and oid not in self._urls]
            batch = [object_id, *waiting[: self._url_batch - 1]]
            urls = self._fetch_urls(batch)
            now = time.monotonic()
            for oid, url in urls.items():
                self._urls[oid] = (url, now)
            if object_id not in urls:
                raise DapDownloadError(f"DAP returned no URL for object {object_id!r}")
            return urls[object_id]

    def _done(self, object_id: str) -> None:
        with self._lock:
            self._pending.remove(object_id)
            self._urls.pop(object_id, None)

    # -- one object -----------------------------------------------------------------------------

    def one(self, object_id: str, sink: _Sink) -> DownloadedFile:
        """Download (or reuse) one object of a :meth:`begin` call into its sink."""
        fmt = file_format(object_id)
        name = safe_name(object_id)
        gunzip = self._decompress and name.endswith(".gz")
        if self._decompress and fmt == "parquet":
            raise InstructureConfigError("decompress=True does not apply to parquet results (they are not gzip files)")
        final_name = name[: -len(".gz")] if gunzip else name
        reuse = self._reuse and not sink.remote
        if reuse:
            kept = self._reusable(object_id, sink, final_name, fmt)
            if kept is not None:
                with self._lock:
                    self._pending.remove(object_id)
                    self.reused += 1
                return kept
        refresh = False
        kwargs = self._retry.tenacity_kwargs(f"Download of {object_id}")
        try:
            for attempt in Retrying(**kwargs):
                with attempt:
                    url = self._url(object_id, refresh=refresh)
                    refresh = False
                    try:
                        done = self._transfer(object_id, url, sink, final_name, fmt, gunzip, record=reuse)
                    except UrlExpired:
                        refresh = True
                        raise
                    self._done(object_id)
                    return done
        except DapDownloadError:
            raise
        except self._retry.transport_errors as exc:
            # requests puts the whole pre-signed URL, signature included, into its messages.
            raise DapDownloadError(
                f"download of {object_id} failed after retries: {type(exc).__name__}: {redact_url(str(exc))}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _transfer(
        self, object_id: str, url: str, sink: _Sink, final_name: str, fmt: str, gunzip: bool, *, record: bool = False
    ) -> DownloadedFile:
        temp = sink.temp(final_name)
        if record:
            # The old record must not vouch for the file about to replace it.
            sink.record(final_name).unlink(missing_ok=True)
        tail = b""  # the last bytes written: the gzip trailer of a compressed part
        text = fmt in ("tsv", "jsonl", "csv")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if text and (gunzip or self._inspect) else None
        newlines = 0
        written = 0
        received = 0
        try:
            with self._session.get(url, stream=True, timeout=self._timeout) as response:
                if response.status_code == 403:
                    raise UrlExpired(f"the pre-signed URL of {object_id} was refused (HTTP 403); fetching a new one")
                if response.status_code >= 400:
                    error = map_error(response.status_code, response.headers.get("Content-Type"), response.text[:2000])
                    if isinstance(error, DapServerError) or response.status_code == 429:
                        raise error
                    raise DapDownloadError(f"download of {object_id} failed with HTTP {response.status_code}")
                expected = response.headers.get("Content-Length")
                with sink.open(temp) as out:
                    for chunk in response.iter_content(CHUNK):
                        received += len(chunk)
                        if inflater is not None:
                            # Inflate in bounded pieces: a 1 MiB block of text can expand
                            # tenfold, and 4 parallel downloads would hold all of that at once.
                            pending = chunk
                            while True:
                                plain = inflater.decompress(pending, INFLATE_PIECE)
                                newlines += plain.count(b"\n")
                                if gunzip and plain:
                                    out.write(plain)
                                    written += len(plain)
                                pending = inflater.unconsumed_tail
                                if not pending and len(plain) < INFLATE_PIECE:
                                    break
                        if (inflater is None or not gunzip) and chunk:
                            out.write(chunk)
                            written += len(chunk)
                            # Only the last 8 bytes: concatenating the whole chunk would copy 1 MiB each time.
                            tail = (tail + chunk[-GZIP_TRAILER:])[-GZIP_TRAILER:]
                    if inflater is not None and gunzip:
                        tail = inflater.flush()
                        out.write(tail)
                        written += len(tail)
            if expected is not None and received != int(expected):
                raise Truncated(f"download of {object_id} ended after {received} of {expected} bytes")
            if inflater is not None and not inflater.eof:
                raise Truncated(f"download of {object_id} ended before the end of its gzip stream")
            sink.commit(temp, sink.final(final_name))
        except BaseException:
            sink.discard(temp)
            raise
        rows = _row_count(fmt, newlines, sink, final_name) if inflater is not None or fmt == "parquet" else None
        self._log.info("Downloaded %s (%d bytes%s)", final_name, written, f", {rows} rows" if rows is not None else "")
        if record:
            trailer = tail.hex() if final_name.endswith(".gz") else None
            data = {"object_id": object_id, "size": written, "gzip_trailer": trailer, "rows": rows}
            sink.record(final_name).write_text(json.dumps(data))
        return DownloadedFile(object_id, sink.uri(sink.final(final_name)), written, rows)

    def _reusable(self, object_id: str, sink: _Sink, final_name: str, fmt: str) -> DownloadedFile | None:
        """The part an earlier try left, if it checks out (see the module docstring), else None."""
        path = Path(sink.final(final_name))
        try:
            size = path.stat().st_size
        except OSError:
            return None
        try:
            record = json.loads(sink.record(final_name).read_text())
        except (OSError, ValueError):
            record = None
        gzipped = final_name.endswith(".gz")
        reason = None
        if isinstance(record, dict) and record.get("object_id") == object_id:
            if record.get("size") != size:
                reason = f"{size} bytes on disk, {record.get('size')} expected"
            elif gzipped and _trailer(path) != record.get("gzip_trailer"):
                reason = "its gzip trailer differs from the one downloaded"
            rows = record.get("rows")
        elif gzipped:
            # No record (it was not written, or lost): only a full inflate can vouch for the file.
            reason = None if _gzip_complete(path) else "its gzip stream is cut short"
            rows = None
        else:
            reason = "no completion record"
        if reason is not None:
            self._log.warning(
                "Downloading %s again: the copy from an earlier try is not intact (%s)", final_name, reason
            )
            return None
        self._log.info("Reusing %s (%d bytes) downloaded by an earlier try", final_name, size)
        return DownloadedFile(object_id, sink.uri(path), size, rows if isinstance(rows, int) else None)


def _trailer(path: Path) -> str | None:
    """The last 8 bytes of a gzip file (CRC32 and ISIZE), as hex."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < GZIP_TRAILER:
            return None
        f.seek(-GZIP_TRAILER, os.SEEK_END)
        return f.read(GZIP_TRAILER).hex()


def _gzip_complete(path: Path) -> bool:
    """Whether every gzip member of ``path`` inflates to its end (its CRC and length checked)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                while chunk:
                    if inflater.eof:  # a gzip file may hold several concatenated members
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    inflater.decompress(chunk, INFLATE_PIECE)
                    chunk = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")
        return inflater.eof
    except (OSError, zlib.error):
        return False


def _row_count(fmt: str, newlines: int, sink: _Sink, final_name: str) -> int | None:
    if fmt == "tsv":
        return max(0, newlines - 1)  # TSV escapes newlines inside values; the first line is the header
    if fmt == "jsonl":
        return newlines
    if fmt == "parquet" and not sink.remote:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        return pq.ParquetFile(sink.final(final_name)).metadata.num_rows
    return None  # CSV may quote newlines: counting them would lie
