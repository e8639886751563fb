"""Creating the state table (:mod:`.state`), and upgrading one of an earlier release.

Kept apart from the replicator because the creation races with parallel first runs (tables
sharing a schema all try ``CREATE TABLE IF NOT EXISTS`` at once) and the upgrade with
parallel ``ALTER TABLE ... ADD COLUMN``; both are retried by looking again.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_instructure.replication.dialects.base import Dialect, Target
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.state import ADDED_COLUMNS, STATE_TABLE, StateStore


def upgrade_sql(store: StateStore, cur: Any, target: Target) -> list[str]:
    """DDL bringing an existing state table of an older release to the current layout (empty
    when it is current): the columns added since (:data:`~.state.ADDED_COLUMNS`), and
    ``source_table`` widened to varchar(255) (DAP table names longer than 64 characters)."""
    d = store.d
    missing = [name for name in ADDED_COLUMNS if name not in store.state_columns(cur, target)]
    if not missing:
        return []
    types = d.state_types
    table = store.table_sql(target)
    q = d.quote
    statements = [f"ALTER TABLE {table} ADD COLUMN {q(name)} {types['long_text']}" for name in missing]
    if d.name == "postgres":  # a varchar widening: no rewrite
        statements.append(f"ALTER TABLE {table} ALTER COLUMN {q('source_table')} TYPE {types['key']}")
    elif d.name == "mysql":  # SQLite does not enforce lengths
        statements.append(f"ALTER TABLE {table} MODIFY COLUMN {q('source_table')} {types['key']} NOT NULL")
    return statements


def _current(d: Dialect, store: StateStore, target: Target) -> bool:
    with d.transaction(read_only=True) as cur:
        if d.table_kind(cur, target.schema, STATE_TABLE) != "table":
            return False
        return not upgrade_sql(store, cur, target)


def ensure_state_table(
    d: Dialect, store: StateStore, target: Target, log: logging.Logger, *, probe: bool = False
) -> None:
    """Create the target's state table (and its schema) if missing, or upgrade it.

    :param probe: a failure raises :class:`ReplicationConfigError` (the pre-flight check's
        "cannot write here"), not the driver's error.
    :raises ReplicationConfigError: the table cannot be created (``probe``), or the dialect
        refused the target.
    """
    sql = store.ensure_table_sql(target)
    for attempt in range(3):
        try:
            with d.transaction() as cur:
                if d.table_kind(cur, target.schema, STATE_TABLE) == "table":
                    upgrade = upgrade_sql(store, cur, target)
                    for statement in upgrade:
                        log.info("upgrading the state table: %s", statement)
                        cur.execute(statement)
                    if upgrade:
                        store.forget_columns()
                    return
                d.ensure_schema(cur, target)
                cur.execute(sql)
            return
        except ReplicationConfigError:
            raise
        except Exception as exc:
            # Parallel first runs of tables sharing a schema race on CREATE ... IF NOT
            # EXISTS (PostgreSQL then reports a duplicate catalog entry), and parallel
            # upgrades on ADD COLUMN: look again.
            store.forget_columns()
            if attempt < 2 and _current(d, store, target):
                return
            if attempt < 2 and not probe:
                continue
            if not probe:
                raise
            raise ReplicationConfigError(
                f"cannot create the state table {d.qualify(target.schema, STATE_TABLE)}: {exc}"
            ) from exc


__all__ = ["ensure_state_table", "upgrade_sql"]
