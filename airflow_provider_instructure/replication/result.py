"""What one sync did: :class:`SyncResult`, returned by :class:`~.replicator.TableReplicator`
and pushed to XCom by the operator (``to_dict``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_instructure.replication.dialects.base import LoadCounts, PhaseTimer
from airflow_provider_instructure.replication.tsv import Part
from airflow_provider_instructure.replication.values import ValueTally


@dataclass(frozen=True)
class SyncResult:
    """What one snapshot or incremental did.

    :param mode: ``snapshot`` or ``incremental``.
    :param target: the replica, ``schema.table``.
    :param dialect: ``postgres``, ``mysql`` or ``sqlite``.
    :param rows_inserted: new keys (for a snapshot: every row loaded).
    :param rows_updated: existing keys overwritten by ``U`` records.
    :param rows_deleted: keys removed by ``D`` records (keys never seen are not counted).
    :param watermark: the new watermark (``at`` or ``until``), aware UTC.
    :param schema_version: schema version the replica now holds.
    :param bytes_read: bytes of the result files as given (compressed if gzip).
    :param bytes_loaded: uncompressed bytes handed to the database.
    :param seconds: wall-clock seconds per phase (``prepare``, ``load``, ``index``, ``merge``,
        ``swap``, ``commit``, ``recover``).
    :param files: number of result parts.
    :param job_id: the DAP job the result came from, if given.
    :param schema_changes: in-place DDL applied before the data (``ALTER TABLE ...``).
    :param continued_from_dap: the replica is a ``dap initdb`` table continued in place.
    :param coerced_values: column name to the number of values stored differently from what
        DAP sent under the bad-value policy (:mod:`.values`): empty fields of non-text columns
        stored as NULL, timestamps clamped to the target's range, deletes without a key
        skipped. Empty when nothing was coerced.
    :param oversized_values: column name to the number of oversized-value placeholders
        received (kept in text columns, a JSON string in JSON columns, NULL elsewhere).
    :param skipped_deletes: delete records without a key, which cannot delete anything.
    """

    mode: str
    target: str
    dialect: str
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    watermark: datetime
    schema_version: int
    bytes_read: int
    bytes_loaded: int
    seconds: dict[str, float] = field(default_factory=dict)
    files: int = 0
    job_id: str | None = None
    schema_changes: tuple[str, ...] = ()
    continued_from_dap: bool = False
    coerced_values: dict[str, int] = field(default_factory=dict)
    oversized_values: dict[str, int] = field(default_factory=dict)
    skipped_deletes: int = 0

    @classmethod
    def from_load(
        cls,
        mode: str,
        target: str,
        dialect: str,
        counts: LoadCounts,
        parts: list[Part],
        timer: PhaseTimer,
        watermark: datetime,
        schema_version: int,
        job_id: str | None,
        ddl: tuple[str, ...],
        *,
        continued: bool,
    ) -> SyncResult:
        """The result of a load that the dialect described with ``counts``."""
        return cls(
            mode=mode,
            target=target,
            dialect=dialect,
            rows_inserted=counts.inserted,
            rows_updated=counts.updated,
            rows_deleted=counts.deleted,
            watermark=watermark,
            schema_version=schema_version,
            bytes_read=sum(p.size for p in parts),
            bytes_loaded=counts.bytes_loaded,
            seconds=dict(timer.seconds),
            files=len(parts),
            job_id=job_id,
            schema_changes=ddl,
            continued_from_dap=continued,
            coerced_values=dict(sorted(counts.values.coerced.items())),
            oversized_values=dict(sorted(counts.values.oversized.items())),
            skipped_deletes=counts.values.skipped_deletes,
        )

    def log_summary(self, log: logging.Logger, source: str, values: ValueTally) -> None:
        """One WARNING per column the bad-value policy touched, then the INFO summary line."""
        what = f"{self.mode} of {source} into {self.target}"
        values.log(log, what)
        log.info(
            "%s: +%d inserted, %d updated, -%d deleted, watermark %s, schema v%d, %.2fs",
            what,
            self.rows_inserted,
            self.rows_updated,
            self.rows_deleted,
            self.watermark.isoformat(),
            self.schema_version,
            sum(self.seconds.values()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for XCom (timestamps as ISO-8601 strings)."""
        return {
            "mode": self.mode,
            "target": self.target,
            "dialect": self.dialect,
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_deleted": self.rows_deleted,
            "watermark": self.watermark.isoformat(),
            "schema_version": self.schema_version,
            "bytes_read": self.bytes_read,
            "bytes_loaded": self.bytes_loaded,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "files": self.files,
            "job_id": self.job_id,
            "schema_changes": list(self.schema_changes),
            "continued_from_dap": self.continued_from_dap,
            "coerced_values": dict(self.coerced_values),
            "oversized_values": dict(self.oversized_values),
            "skipped_deletes": self.skipped_deletes,
        }


__all__ = ["SyncResult"]
