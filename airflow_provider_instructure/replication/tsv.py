"""Streaming access to DAP TSV result parts (``format: tsv``, ``mode: condensed``).

A job's result is many parts, gzip-compressed (``*.tsv.gz``) or already decompressed, and
every part starts with its own header row (``meta.ts``, ``meta.action``, ``key.<pk>``,
``value.<col>``; dap-api.md section 7.3). The body uses PostgreSQL COPY text escapes
(``\\N`` NULL, ``\\t``, ``\\n``, ``\\\\``...), so PostgreSQL can load it byte for byte.

Nothing here parses fields into Python values except :func:`iter_rows`, which SQLite needs
because it has no bulk loader. The other readers move whole blocks of complete lines:

* :func:`iter_body_chunks` yields the body of a part (header skipped) in ~1 MiB blocks that
  end on a line boundary, optionally cutting the leading ``meta.*`` fields off every line
  (one split and join per block, the rest of each line untouched);
* :func:`prefetch` produces those blocks on a background thread, so that decompressing the
  next block overlaps with the database reading the previous one;
* :func:`mysql_transcode` rewrites the two escapes MySQL's ``LOAD DATA`` does not know
  (``\\f``, ``\\v``) into raw bytes.

Raw newline bytes only ever end a record (newlines in values are escaped), which is what
makes block-wise processing safe.
"""

from __future__ import annotations

import functools
import gzip
import io
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Full, Queue
from typing import BinaryIO

from airflow_provider_instructure.dap_schema import Column, TableSchema
from airflow_provider_instructure.replication.errors import TsvFormatError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK_SIZE = 1 << 20

#: Staging column names for the metadata fields: the dot cannot clash with a DAP column name.
META_TS = "meta.ts"
META_ACTION = "meta.action"


@dataclass(frozen=True)
class HeaderField:
    """One field of a part's header.

    :param label: the header label (``meta.ts``, ``key.id``, ``value.name``).
    :param column: the schema column it carries, ``None`` for ``meta.*`` fields.
    """

    label: str
    column: Column | None

    @property
    def is_meta(self) -> bool:
        return self.column is None

    @property
    def name(self) -> str:
        """The column name in the target (or staging) table."""
        return self.column.name if self.column is not None else self.label


@dataclass(frozen=True)
class Part:
    """One result file and its parsed header.

    :param path: the file.
    :param compressed: gzip-compressed (detected from the magic bytes, not the name).
    :param size: bytes on disk.
    :param fields: the header, mapped to schema columns.
    """

    path: Path
    compressed: bool
    size: int
    fields: tuple[HeaderField, ...]

    @property
    def data_fields(self) -> tuple[HeaderField, ...]:
        return tuple(f for f in self.fields if not f.is_meta)

    @property
    def leading_meta(self) -> int:
        """How many ``meta.*`` fields come before the first data field (normally all of them)."""
        count = 0
        for field in self.fields:
            if not field.is_meta:
                break
            count += 1
        return count

    @property
    def meta_is_leading(self) -> bool:
        return self.leading_meta == sum(1 for f in self.fields if f.is_meta)

    @property
    def has_action(self) -> bool:
        return any(f.label == META_ACTION for f in self.fields)


def open_part(path: Path) -> BinaryIO:
    """Open a part for binary reading, decompressing it if it is gzip."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def read_part(path: Path, schema: TableSchema, *, incremental: bool) -> Part:
    """Read a part's header and map it onto ``schema``.

    :raises TsvFormatError: for an empty file, a header column the schema does not know (the
        schema passed is not the one the job was produced with), an ``expanded``-mode header,
        a missing key column, or an incremental part without ``meta.action``.
    """
    path = Path(path)
    with open_part(path) as fh:
        line = fh.readline()
    if not line.strip():
        raise TsvFormatError(f"{path.name}: empty file; every DAP TSV part starts with a header row")
    labels = line.rstrip(b"\r\n").decode("utf-8").split("\t")
    by_header = {c.header: c for c in schema.columns}
    fields: list[HeaderField] = []
    for label in labels:
        if label in (META_TS, META_ACTION):
            fields.append(HeaderField(label, None))
            continue
        if label.startswith("meta."):
            # Unknown metadata is not data; DAP may add fields here.
            fields.append(HeaderField(label, None))
            continue
        column = by_header.get(label)
        if column is None:
            if label.count(".") > 1:
                raise TsvFormatError(
                    f"{path.name}: header field {label!r} looks like 'expanded' mode; request the job with "
                    "mode 'condensed' (nested values as one JSON column)"
                )
            raise TsvFormatError(
                f"{path.name}: header field {label!r} is not in schema version {schema.version} of this table; "
                "pass the schema the job reports in its schema_version"
            )
        fields.append(HeaderField(label, column))
    labels_seen = [f.label for f in fields]
    if len(set(labels_seen)) != len(labels_seen):
        raise TsvFormatError(f"{path.name}: duplicate header fields in {labels_seen}")
    missing_keys = [c.header for c in schema.key_columns if c.header not in labels_seen]
    if missing_keys:
        raise TsvFormatError(f"{path.name}: header lacks the key column(s) {missing_keys}")
    part = Part(path=path, compressed=is_gzip(path), size=path.stat().st_size, fields=tuple(fields))
    if incremental and not part.has_action:
        raise TsvFormatError(
            f"{path.name}: an incremental part must have a 'meta.action' column (U/D); is this a snapshot result?"
        )
    return part


def strip_leading_fields(block: bytes, count: int) -> bytes:
    """Cut the first ``count`` tab-terminated fields off every line of ``block``.

    A line with fewer fields is left as it is (the database then reports its field count).
    Splitting is about twice as fast as an equivalent multi-line regular expression.
    """
    lines = block.split(b"\n")
    if count == 1:
        out = [line.partition(b"\t")[2] if b"\t" in line else line for line in lines]
    else:
        out = []
        for line in lines:
            fields = line.split(b"\t", count)
            out.append(fields[count] if len(fields) > count else line)
    return b"\n".join(out)


def iter_body_chunks(
    part: Part,
    *,
    drop_leading: int = 0,
    size: int = CHUNK_SIZE,
    fix: Callable[[bytes], bytes] | None = None,
) -> Iterator[bytes]:
    """Yield the part's records (header skipped) in blocks that end with a newline.

    :param drop_leading: cut this many leading fields off every record (the ``meta.*``
        fields when they lead, so the rest maps straight onto table columns).
    :param fix: applied to every block first, with all header fields still in place (the
        bad-value policy, :class:`~.values.ChunkFixer`).
    """
    strip_meta = functools.partial(strip_leading_fields, count=drop_leading) if drop_leading else None
    if fix is not None and strip_meta is not None:
        strip: Callable[[bytes], bytes] | None = lambda chunk: strip_meta(fix(chunk))  # noqa: E731
    else:
        strip = fix or strip_meta
    with open_part(part.path) as fh:
        fh.readline()
        rest = b""
        while True:
            block = fh.read(size)
            if not block:
                break
            if rest:
                block = rest + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest = block
                continue
            rest = block[cut:]
            chunk = block[:cut]
            yield strip(chunk) if strip is not None else chunk
        if rest.strip(b"\r\n"):
            chunk = rest if rest.endswith(b"\n") else rest + b"\n"
            yield strip(chunk) if strip is not None else chunk


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetch(chunks: Iterable[bytes], depth: int = 4) -> Iterator[bytes]:
    """Produce ``chunks`` on a background thread, up to ``depth`` blocks ahead of the consumer.

    Reading, gunzipping and cutting the next block then overlap with sending the previous
    one to the database (zlib and socket writes release the GIL). Errors of the producer are
    raised in the consumer; closing the returned generator (use :func:`contextlib.closing`)
    stops the producer and closes its source.
    """
    queue: Queue[object] = Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        source = iter(chunks)
        end: object = _END
        try:
            for chunk in source:
                if not put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            end = _Failed(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        put(end)

    thread = threading.Thread(target=produce, name="dap-tsv-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class ChunkFile(io.RawIOBase):
    """A read-only file over an iterator of byte blocks (psycopg2's ``copy_expert`` wants one).

    ``read`` returns whole blocks regardless of the size asked for; psycopg2 sends whatever
    it gets. ``count`` is the number of bytes handed out; ``error`` the exception the blocks
    raised, if any.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self.count = 0
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        try:
            chunk = next(self._chunks, b"")
        except Exception as exc:  # kept for the caller: the driver may wrap it in its own error
            self.error = exc
            raise
        self.count += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:  # psycopg2 only calls read(); be complete
        return self.read()


_MYSQL_ESCAPES = re.compile(rb"\\([\\fv])")
_MYSQL_REPLACEMENTS = {b"\\": b"\\\\", b"f": b"\x0c", b"v": b"\x0b"}


def mysql_transcode(chunk: bytes) -> bytes:
    """Rewrite COPY escapes MySQL's ``LOAD DATA`` reads differently.

    MySQL reads ``\\f`` as ``f`` and ``\\v`` as ``v``; the raw control bytes are read as
    themselves. Escaped backslashes are matched first so ``\\\\f`` (a backslash, then ``f``)
    stays intact.
    """
    if b"\\f" not in chunk and b"\\v" not in chunk:
        return chunk
    return _MYSQL_ESCAPES.sub(lambda m: _MYSQL_REPLACEMENTS[m.group(1)], chunk)


def needs_mysql_transcode(path: Path) -> bool:
    """True if a plain part contains an escape MySQL would misread (a cheap byte scan)."""
    with open(path, "rb") as fh:
        tail = b""
        while True:
            block = fh.read(CHUNK_SIZE)
            if not block:
                return False
            window = tail + block
            if b"\\f" in window or b"\\v" in window:
                return True
            tail = block[-1:]


_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def unescape(field: str) -> str | None:
    """Decode one COPY-text field: ``\\N`` is NULL, other escapes become their characters."""
    if "\\" not in field:
        return field
    if field == "\\N":
        return None
    return _ESCAPE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), field)


def iter_rows(part: Part) -> Iterator[list[str | None]]:
    """Yield every record of ``part`` as decoded fields in header order (for SQLite only)."""
    for _, fields in iter_numbered_rows(part):
        yield fields


def iter_numbered_rows(part: Part) -> Iterator[tuple[int, list[str | None]]]:
    """Yield ``(line number, decoded fields)`` for every record of ``part`` (the header is line 1).

    :raises TsvFormatError: a record whose field count differs from the header's.
    """
    width = len(part.fields)
    with open_part(part.path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        text.readline()
        for number, line in enumerate(text, start=2):
            if line.endswith("\n"):
                line = line[:-1]
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != width:
                raise TsvFormatError(f"{part.path.name}, line {number}: {len(fields)} fields, the header has {width}")
            yield number, [unescape(f) for f in fields]


def read_record(part: Part, number: int) -> list[str | None] | None:
    """The decoded fields of line ``number`` of ``part`` (``None`` past the end); for error
    messages, which name the key and the value of a record the database refused."""
    with open_part(part.path) as raw:
        for current, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n"), 1):
            if current == number:
                return [unescape(f) for f in line.rstrip("\n").split("\t")]
    return None
