"""Errors raised by the replication package.

The package must stay importable without Airflow, so these derive from :class:`Exception`,
not from ``AirflowException``; the operator that wraps :class:`~.replicator.TableReplicator`
translates them (``ReplicationConfigError`` is a "do not retry" failure, ``SnapshotRequired``
means "run the snapshot path instead").

Database driver errors (connection lost, lock timeout...) are not wrapped: their type is
what a retry policy needs to see.
"""

from __future__ import annotations


class ReplicationError(Exception):
    """Base class of every error raised by this package."""


class ReplicationConfigError(ReplicationError):
    """The target cannot be used as configured (wrong driver or dialect, missing privileges,
    a name collision with a table this package does not manage, a bad schema name...).

    Raised before any data moves; retrying cannot help until the configuration is fixed.
    """


class TsvFormatError(ReplicationError):
    """A result part does not match the table schema or the expected DAP TSV layout."""


class DataLoadError(ReplicationError):
    """A bulk load failed on the data or the file: the database refused a value, reported
    warnings (MySQL ``LOAD DATA LOCAL`` turns conversion errors into warnings), or could not
    read the part. The message carries the driver's own words; the transaction was rolled back."""


class BadValueError(DataLoadError):
    """A value that the bad-value policy (:mod:`~.values`) cannot turn into something the
    target stores: the sync is rolled back, and the message says where the value is.

    :param table: ``namespace.table -> target``.
    :param part: the result part's file name.
    :param line: line number in the (uncompressed) part, the header being line 1.
    :param column: the column.
    :param key: the record's key, ``name=value``.
    :param value: the value, cut to 80 characters.
    """

    def __init__(
        self, message: str, *, table: str, part: str, line: int | None, column: str, key: str, value: str
    ) -> None:
        super().__init__(message)
        self.table = table
        self.part = part
        self.line = line
        self.column = column
        self.key = key
        self.value = value


class WatermarkError(ReplicationError):
    """An incremental window does not connect to the stored watermark.

    :param watermark: the stored watermark.
    :param since: the window's start.
    :param until: the window's end.
    """

    def __init__(self, message: str, *, watermark: object = None, since: object = None, until: object = None) -> None:
        super().__init__(message)
        self.watermark = watermark
        self.since = since
        self.until = until


class ConcurrentReplicationError(ReplicationError):
    """Another replication of the same target holds its lock; retry when it has finished."""


class SnapshotRequired(ReplicationError):
    """The table cannot be continued incrementally; load a snapshot instead.

    The operator catches this class to switch to the snapshot path.
    """


class SchemaChangeRequiresSnapshot(SnapshotRequired):
    """The schema changed in a way that cannot be applied in place (a removed column, a type
    change, a new required column, a different primary key).

    :param old_version: the schema version the target was loaded with.
    :param new_version: the version of the incoming data.
    :param reasons: one human-readable line per blocking change.
    """

    def __init__(self, message: str, *, old_version: int, new_version: int, reasons: tuple[str, ...]) -> None:
        super().__init__(message)
        self.old_version = old_version
        self.new_version = new_version
        self.reasons = reasons
