"""A snapshot's parts handed to the load as they arrive, each released once its rows are in.

The caller (the operator) downloads parts in the background and passes
:class:`StreamedParts` instead of a list; :class:`PartFeed` reads each part's header when the
load reaches it and calls ``loaded(path)`` for the previous part as soon as the load asks for
the next one (or finishes): by then every row of that part is in the table being built, so
the caller may delete the file and start another download. Nothing here waits on the network
itself; the iterator of paths does, in the caller's code.

Only snapshots take streamed parts: an incremental's staging table is built from the headers
of all its parts before the first row is loaded, so it needs them all on disk first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from os import PathLike
from pathlib import Path

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.identifiers import remap_parts
from airflow_provider_instructure.replication.tsv import Part, read_part


class StreamedParts:
    """A snapshot's parts as they become available locally.

    :param paths: the part files in the order to load them (``part-00000...`` first); the
        iterator may block until the next one has landed.
    :param total: how many parts the iterator yields (for messages).
    :param loaded: called with a part's path once its rows are loaded (in the still-open
        transaction); the caller may delete the file then.
    """

    def __init__(
        self,
        paths: Iterable[str | PathLike[str]],
        *,
        total: int,
        loaded: Callable[[Path], None] | None = None,
    ) -> None:
        self.paths = paths
        self.total = total
        self.loaded = loaded or (lambda path: None)


class PartFeed:
    """The :class:`~.tsv.Part` objects of a :class:`StreamedParts`, read as the load takes them.

    Iterate once to load (the parts stream in); a later iteration, when the result is
    summarized, returns the parts that were loaded. ``len()`` is the announced total.

    :param source: the streamed parts.
    :param read: reads (and validates) one part's header.
    :raises ValueError: while iterating, if the parts do not come in name order (the order
        that makes "the last occurrence of a repeated key wins" deterministic).
    """

    def __init__(self, source: StreamedParts, read: Callable[[Path], Part]) -> None:
        self._source = source
        self._read = read
        self._started = False
        #: The parts handed to the load so far.
        self.consumed: list[Part] = []

    def __len__(self) -> int:
        return self._source.total

    def __iter__(self) -> Iterator[Part]:
        if self._started:
            return iter(list(self.consumed))
        self._started = True
        return self._stream()

    def _stream(self) -> Iterator[Part]:
        paths = iter(self._source.paths)
        previous: Part | None = None
        while True:
            if previous is not None:
                # The load asked for the next part: the previous one's rows are all in. Released
                # before waiting for the next path, whose download may need the freed slot.
                self._source.loaded(previous.path)
            try:
                path = Path(next(paths))
            except StopIteration:
                return
            if previous is not None and path.name < previous.path.name:
                raise ValueError(f"streamed parts must come in name order: {path.name} after {previous.path.name}")
            part = self._read(path)
            self.consumed.append(part)
            previous = part
            yield part


#: Result parts: a sequence of files, the directory that holds them, or (snapshots) parts
#: streamed in as they download.
Parts = Sequence[str | PathLike[str]] | str | PathLike[str] | StreamedParts


def read_parts(files: Parts, schema: TableSchema, mapped: TableSchema, *, incremental: bool) -> list[Part]:
    """The parts' headers, read with the DAP ``schema`` and pointing at the ``mapped`` columns.

    :param files: part paths, their directory (``*.tsv``, ``*.tsv.gz``) or streamed parts
        (snapshots only; each is read when the load reaches it).
    :raises TypeError: a path that is not a directory, or streamed parts for an incremental.
    """
    if isinstance(files, StreamedParts):
        if incremental:
            raise TypeError("streamed parts are for snapshots; pass an incremental's parts as a list or directory")
        feed = PartFeed(files, lambda path: read_parts([path], schema, mapped, incremental=False)[0])
        return feed  # type: ignore[return-value]  # iterable and sized, which is all the loads use
    if isinstance(files, (str, PathLike)):
        folder = Path(files)
        if not folder.is_dir():
            raise TypeError(f"files must be a sequence of part paths or a directory of parts, got {files!r}")
        files = [p for p in folder.iterdir() if p.name.endswith((".tsv", ".tsv.gz"))]
    # Parts are numbered (part-00000-...); applying them in that order makes "the last
    # occurrence of a repeated key wins" deterministic.
    paths = sorted((Path(f) for f in files), key=lambda p: (p.name, str(p)))
    return remap_parts([read_part(p, schema, incremental=incremental) for p in paths], schema, mapped)
