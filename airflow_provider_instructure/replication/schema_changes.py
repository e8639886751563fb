"""Classify the difference between two versions of a table schema.

In place (no new snapshot needed):

* a new **nullable** value column (rows written before it existed read NULL upstream too);
* new enum members (text columns need nothing; native enums of a ``dap initdb`` table get
  ``ALTER TYPE ... ADD VALUE`` / ``MODIFY COLUMN ... ENUM``);
* a required column becoming nullable (ours are nullable already; a ``dap initdb`` table
  gets ``DROP NOT NULL``);
* a nullable column becoming required, removed enum members, description changes.

Everything else needs a snapshot: a removed column (its old values would linger), a changed
type (width, precision, length, kind), a new required column (existing rows would need a
value we do not have), or a different primary key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from airflow_provider_instructure.dap_schema import Column, ColumnType, TableSchema


@dataclass(frozen=True)
class SchemaChange:
    """The in-place part of a schema change, plus the reasons it cannot be applied in place.

    :param old_version: version the target holds.
    :param new_version: version of the incoming data.
    :param added: new nullable value columns, in schema order.
    :param enum_values: column name to its full member list, for columns whose members grew.
    :param relaxed: columns that became nullable.
    :param blocking: why a snapshot is needed; empty when the change can be applied in place.
    """

    old_version: int
    new_version: int
    added: tuple[Column, ...] = ()
    enum_values: dict[str, tuple[object, ...]] = field(default_factory=dict)
    relaxed: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()

    @property
    def in_place(self) -> bool:
        return not self.blocking

    @property
    def empty(self) -> bool:
        return not (self.added or self.enum_values or self.relaxed or self.blocking)

    def describe(self) -> tuple[str, ...]:
        """One line per in-place change, for logs and :class:`~.replicator.SyncResult`."""
        lines = [f"add column {c.name} ({c.type.kind})" for c in self.added]
        lines += [f"enum {name}: members now {list(values)}" for name, values in self.enum_values.items()]
        lines += [f"column {name} became nullable" for name in self.relaxed]
        return tuple(lines)


def _comparable(typ: ColumnType) -> ColumnType:
    # Enum membership is compared separately; everything else must match exactly.
    return replace(typ, values=()) if typ.kind == "enum" else typ


def diff_schemas(old: TableSchema, new: TableSchema) -> SchemaChange:
    """Compare the schema a target was loaded with (``old``) with the incoming one (``new``)."""
    blocking: list[str] = []
    old_keys = [(c.name, _comparable(c.type)) for c in old.key_columns]
    new_keys = [(c.name, _comparable(c.type)) for c in new.key_columns]
    if old_keys != new_keys:
        blocking.append(f"primary key changed from {[k for k, _ in old_keys]} to {[k for k, _ in new_keys]}")
    new_by_name = {c.name: c for c in new.columns}
    old_by_name = {c.name: c for c in old.columns}
    enum_values: dict[str, tuple[object, ...]] = {}
    relaxed: list[str] = []
    for col in old.columns:
        now = new_by_name.get(col.name)
        if now is None:
            blocking.append(f"column {col.name} was removed")
            continue
        if now.section != col.section:
            blocking.append(f"column {col.name} moved from {col.section} to {now.section}")
            continue
        if _comparable(now.type) != _comparable(col.type):
            blocking.append(f"column {col.name} changed type from {col.type} to {now.type}")
            continue
        if col.type.kind == "enum" and set(now.type.values) - set(col.type.values):
            enum_values[col.name] = now.type.values
        if now.nullable and not col.nullable and not col.is_key:
            relaxed.append(col.name)
    added: list[Column] = []
    for col in new.columns:
        if col.name in old_by_name:
            continue
        if col.is_key:
            continue  # reported as a key change above
        if not col.nullable:
            blocking.append(f"new required column {col.name}: existing rows would need a value")
            continue
        added.append(col)
    return SchemaChange(
        old_version=old.version,
        new_version=new.version,
        added=tuple(added),
        enum_values=enum_values,
        relaxed=tuple(relaxed),
        blocking=tuple(blocking),
    )
