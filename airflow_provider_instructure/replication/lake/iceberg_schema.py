"""Iceberg schemas of DAP tables, and where a table's replication state is recorded.

Types come from the Arrow schema of :mod:`.arrow` through pyiceberg's own Arrow-to-Iceberg
mapping, so the data written always matches the table: ``int64`` -> ``long``, ``int32`` and
``int16`` -> ``int`` (Iceberg has no 16-bit integer; an ``int16`` column is stored as a 32-bit
``int`` and reads back as such), ``decimal128(p, s)`` -> ``decimal(p, s)``,
``timestamp[us, UTC]`` -> ``timestamptz``, ``date32`` -> ``date``, ``bool`` -> ``boolean``,
``float``/``double`` -> ``float``/``double``, strings (JSON values included) -> ``string``. The
DAP key columns are required and are the table's identifier fields.

Where the state lives (both written by the sync's single catalog commit):

* **snapshot summary** of the commit's last snapshot: ``dap.watermark``, ``dap.mode``,
  ``dap.job_id``, ``dap.schema_version``, ``dap.namespace``, ``dap.table``, ``dap.writer``.
  The watermark describes the *data*, and a snapshot is the data: time travel or a rollback to
  an older snapshot brings the watermark that matches those rows, and snapshots that other
  tools add on top (compaction, ``rewrite_data_files``) are walked past to the newest one of
  ours (:func:`dap_snapshot`).
* **table properties**: ``dap.namespace``, ``dap.table``, ``dap.schema_version`` and
  ``dap.schema`` (the versioned DAP schema JSON). The schema describes the *table's columns*,
  which Iceberg keeps per table, not per snapshot (a rollback keeps the current schema, so the
  DAP schema must stay with it too). It is also the large value (up to ~20 kB): every snapshot's
  summary is repeated in every later ``metadata.json``, so putting it in the summary would grow
  the metadata by that much on every sync until snapshots are expired.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.replication.lake import metadata as meta

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.schema import Schema
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

#: Keys written to the table properties (the rest of :func:`.metadata.commit_metadata` goes to
#: the snapshot summary).
PROPERTY_KEYS = (meta.NAMESPACE, meta.TABLE, meta.SCHEMA_VERSION, meta.SCHEMA, meta.WRITER)
SUMMARY_KEYS = (meta.NAMESPACE, meta.TABLE, meta.WATERMARK, meta.SCHEMA_VERSION, meta.MODE, meta.JOB_ID, meta.WRITER)
#: Set by every sync. pyiceberg retries a commit that lost a race by re-basing the sync's
#: snapshot on the new head; but the sync checked its window against the watermark it read and
#: chose the files to rewrite from the snapshot it read, and a concurrent sync may have moved
#: both (re-basing would apply older rows over newer ones, or append the same new keys twice).
#: No retry: the commit fails (ConcurrentReplicationError) and the task's retry starts over.
#: pyiceberg reads it from the committed metadata, Java writers too (their conflicts on these
#: tables are not retried either: rerun a failed compaction).
SYNC_PROPERTIES = {"commit.retry.num-retries": "0"}
#: Written on every table we create (pyiceberg's defaults otherwise).
TABLE_PROPERTIES = {"format-version": "2", "write.parquet.compression-codec": "zstd", **SYNC_PROPERTIES}


def split_metadata(pairs: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``commit_metadata`` pairs as (table properties, snapshot summary properties)."""
    props = {k: pairs[k] for k in PROPERTY_KEYS if k in pairs}
    summary = {k: pairs[k] for k in SUMMARY_KEYS if k in pairs}
    return props, summary


def iceberg_schema(
    arrow_schema: pa.Schema, key_names: list[str], current: Schema | None = None, last_column_id: int = 0
) -> Schema:
    """The Iceberg schema for ``arrow_schema``, with field ids.

    :param key_names: the DAP key columns: required identifier fields.
    :param current: the table's current schema, if any: a column whose name and type are
        unchanged keeps its field id (readers keep following it); any other column gets a new id
        above every id the table ever used (so old data files never map onto it) and the
        schema id is assigned when it is staged (:func:`stage_schema`).
    :param last_column_id: the highest field id the table ever assigned (its metadata's
        ``last-column-id``; dropped columns count).
    """
    import pyarrow as pa
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    # pyiceberg maps Arrow types to Iceberg types for fields that carry an id: give each a
    # provisional one, then assign the real ids below.
    tagged = pa.schema(
        [f.with_metadata({b"PARQUET:field_id": str(i + 1).encode()}) for i, f in enumerate(arrow_schema)]
    )
    converted = pyarrow_to_schema(tagged)
    old = {f.name: f for f in current.fields} if current is not None else {}
    next_id = max(last_column_id, _last_column_id(current)) + 1
    fields = []
    for field in converted.fields:
        required = field.name in key_names or field.required
        previous = old.get(field.name)
        if previous is not None and previous.field_type == field.field_type:
            field_id = previous.field_id
        else:
            field_id, next_id = next_id, next_id + 1
        fields.append(NestedField(field_id, field.name, field.field_type, required=required, doc=field.doc))
    ids = [f.field_id for f in fields if f.name in key_names]
    return Schema(*fields, schema_id=0, identifier_field_ids=ids)


def _last_column_id(current: Schema | None) -> int:
    return max((f.field_id for f in current.fields), default=0) if current is not None else 0


def same_columns(a: Schema, b: Schema) -> bool:
    """Same fields (ids, names, types, nullability) in the same order, same identifier fields."""
    return list(a.fields) == list(b.fields) and set(a.identifier_field_ids) == set(b.identifier_field_ids)


def stage_schema(txn: Any, new: Schema) -> None:
    """Make ``new`` the current schema inside the transaction ``txn`` (a snapshot rebuild).

    pyiceberg's public ``UpdateSchema`` evolves a schema column by column; a rebuild replaces it
    whole (dropped columns, changed types, new required columns, a different key), which is the
    same pair of metadata updates ``UpdateSchema`` itself stages: add a schema, make it current,
    guarded by the current schema id (a concurrent schema change fails the commit).
    """
    from pyiceberg.schema import Schema
    from pyiceberg.table.update import AddSchemaUpdate, AssertCurrentSchemaId, SetCurrentSchemaUpdate

    metadata = txn.table_metadata
    schema_id = 1 + max(s.schema_id for s in metadata.schemas)
    schema = Schema(*new.fields, schema_id=schema_id, identifier_field_ids=list(new.identifier_field_ids))
    txn._apply(
        (AddSchemaUpdate(schema_=schema), SetCurrentSchemaUpdate(schema_id=-1)),
        (AssertCurrentSchemaId(current_schema_id=metadata.current_schema_id),),
    )


def evolve_schema(txn: Any, desired: Schema) -> list[str]:
    """Apply the additive difference between the table's schema and ``desired`` in ``txn``:
    new columns (optional, at the end, in ``desired``'s order) and columns that became
    optional. Returns one line per change (for :class:`~..result.SyncResult`).

    Anything else (a removed column, a changed type) is refused earlier by
    :func:`~..schema_changes.diff_schemas`; this only mirrors what it allowed.
    """
    current = txn.table_metadata.schema()
    have = {f.name: f for f in current.fields}
    changes: list[str] = []
    added = [f for f in desired.fields if f.name not in have]
    relaxed = [f for f in desired.fields if f.name in have and have[f.name].required and not f.required]
    if not added and not relaxed:
        return changes
    with txn.update_schema() as update:
        for field in added:
            update.add_column(field.name, field.field_type, doc=field.doc, required=False)
            changes.append(f"add column {field.name} ({field.field_type})")
        for field in relaxed:
            update.make_column_optional(field.name)
            changes.append(f"column {field.name} became optional")
    return changes


def dap_snapshot(table: Table) -> Snapshot | None:
    """The newest snapshot of ours in the current snapshot's ancestry: the first one, walking
    back through parents, whose summary carries ``dap.watermark``.

    Other writers' snapshots on top (compaction, maintenance) are skipped. ``None`` when the
    table has no snapshot, or none of ours is left (expired).
    """
    snapshot = table.current_snapshot()
    seen: set[int] = set()
    while snapshot is not None and snapshot.snapshot_id not in seen:
        seen.add(snapshot.snapshot_id)
        if meta.has_state(summary_properties(snapshot)):
            return snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return None


def summary_properties(snapshot: Snapshot) -> dict[str, str]:
    """A snapshot summary's free-form properties (the ``dap.*`` keys among Iceberg's own)."""
    summary = snapshot.summary
    if summary is None:
        return {}
    return dict(summary.additional_properties)


__all__ = [
    "PROPERTY_KEYS",
    "SUMMARY_KEYS",
    "SYNC_PROPERTIES",
    "TABLE_PROPERTIES",
    "dap_snapshot",
    "evolve_schema",
    "iceberg_schema",
    "same_columns",
    "split_metadata",
    "stage_schema",
    "summary_properties",
]
