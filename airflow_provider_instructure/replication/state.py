"""The replication state table, and reading/continuing the official ``dap`` CLI's state.

State table
-----------

One row per replicated table, in the target database next to the data, written in the same
transaction as the data it describes:

* PostgreSQL: ``"<target schema>"."dap_replication_state"``
* MySQL/MariaDB: ``dap_replication_state`` in the target database
* SQLite: ``dap_replication_state`` in the target database alias (``main`` by default)

=================  ===============================  ==============================================
column             type (PG / MySQL / SQLite)       meaning
=================  ===============================  ==============================================
target_table       varchar(255) PRIMARY KEY         the replica's table name (in that schema)
source_namespace   varchar(64)                      DAP namespace (``canvas``)
source_table       varchar(255)                     DAP table (``accounts``)
watermark          timestamptz / DATETIME(6) UTC /  the last ``at``/``until`` applied: the next
                   TEXT ISO-8601                    incremental's ``since``
schema_version     integer                          DAP schema version the table holds
versioned_schema   text / LONGTEXT / TEXT           the ``{"version", "schema"}`` JSON it was
                                                    built or last altered with
layout_version     integer                          this package's type-mapping version (1)
last_mode          varchar(16)                      ``snapshot`` or ``incremental``
job_id             varchar(64) NULL                 DAP job of the last applied result
pending_swap       varchar(255) NULL                MySQL only: a fully loaded snapshot table not
                                                    yet renamed in (see the MySQL dialect)
updated_at         timestamptz / DATETIME(6) / TEXT wall clock of the commit
name_map           text / LONGTEXT / TEXT NULL      names shortened to fit the identifier limit
                                                    (:mod:`.identifiers`), as JSON
                                                    ``{"table": {full: used}, "columns": {full:
                                                    used}}``; NULL when every name fits
=================  ===============================  ==============================================

State tables created before ``name_map`` existed (with ``source_table varchar(64)``) get the
column added and ``source_table`` widened the first time a sync needs the state table.

``dap initdb`` databases
------------------------

The official CLI keeps its state in ``instructure_dap.table_sync`` (PostgreSQL) or
``instructure_dap__table_sync`` (MySQL): ``timestamp`` (naive UTC), ``schema_version`` and
``schema_description`` (the JSON schema without ``meta``). When there is no row of ours but
such a row names the target table, it is read as the state (``origin="dap"``) and
incrementals *update that row* (same transaction as the data), so ``dap syncdb`` keeps
working on the table. A snapshot rebuild hands the table over: the new table uses this
package's types, the ``table_sync`` row is deleted and a row of ours is written, in the
transaction that swaps the table in.

``instructure-dap-client`` 0.3.x databases
------------------------------------------

Before ``table_sync`` (dap 1.x), the client kept one ``dap_meta`` table per namespace: in the
schema named after the namespace on PostgreSQL (``canvas.dap_meta``), in the database named
after it on MySQL (SQLAlchemy's ``schema=namespace``); dap 2.x's 0-to-1 upgrade scripts read
it from there and rename it ``dap_meta_backup``. Its columns: ``id`` (primary key),
``namespace``, ``source_table``, ``timestamp`` (naive UTC; DATETIME without fractions on
MySQL), ``schema_version``, ``target_schema``, ``target_table``,
``schema_description_format`` (``json``) and ``schema_description``, unique on
``(namespace, source_table)`` [instructure-dap-client 0.3.x ``dap/model/meta_table.py``;
dap 2.3.1 ``dap/version_upgrade/*_0_to_1.sql``]. It is continued exactly like
``table_sync`` (``origin="dap_meta"``): its watermark and schema version are read, the table
keeps the client's column types, every incremental updates the ``dap_meta`` row (timestamp,
schema version and description, as 0.3.x's own ``syncdb`` did) in the data transaction, so
the official client, or its upgrade to ``table_sync``, carries on from the same point; a
snapshot rebuild writes our row and deletes the ``dap_meta`` row. ``dap_meta`` is looked for
in the schema (database) named after the namespace, then in the target's; on MySQL 0.3.x
named tables without a prefix, so such a table is continued with ``table_prefix=""``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from airflow_provider_instructure.dap_schema import TableSchema, parse_table_schema
from airflow_provider_instructure.replication.dialects.base import Dialect, Target
from airflow_provider_instructure.replication.errors import ReplicationConfigError

STATE_TABLE = "dap_replication_state"
#: Bumped when the type mapping of created tables changes incompatibly.
LAYOUT_VERSION = 1

ORIGIN_AIRFLOW = "airflow"
ORIGIN_DAP = "dap"
#: the state is a row of the per-namespace ``dap_meta`` table of instructure-dap-client 0.3.x
ORIGIN_DAP_META = "dap_meta"
DAP_META_TABLE = "dap_meta"

_COLUMNS = (
    ("target_table", "key", False),
    ("source_namespace", "name", False),
    ("source_table", "key", False),
    ("watermark", "ts", False),
    ("schema_version", "int", False),
    ("versioned_schema", "long_text", False),
    ("layout_version", "int", False),
    ("last_mode", "short", False),
    ("job_id", "name", True),
    ("pending_swap", "key", True),
    ("updated_at", "ts", False),
    ("name_map", "long_text", True),
)
#: Columns added after the first release (text, nullable): added on first use (:mod:`.state_table`).
ADDED_COLUMNS = ("name_map",)


@dataclass(frozen=True)
class SyncState:
    """Where a replicated table stands.

    :param namespace: DAP namespace.
    :param table: DAP table.
    :param target: the replica, ``schema.table``.
    :param watermark: the last ``at``/``until`` applied (aware, UTC): the next ``since``.
    :param schema_version: DAP schema version of the replica.
    :param versioned_schema: the ``{"version", "schema"}`` the replica was built/altered with.
    :param origin: ``"airflow"`` (our state table), ``"dap"`` (a ``dap initdb`` table_sync row) or
        ``"dap_meta"`` (a ``dap_meta`` row of instructure-dap-client 0.3.x).
    :param table_exists: whether the replica table exists right now.
    :param last_mode: ``snapshot`` or ``incremental`` (``None`` for dap rows).
    :param job_id: DAP job id of the last applied result, if recorded.
    :param pending_swap: MySQL: a loaded snapshot table waiting to be renamed in.
    :param updated_at: when the state was last written (ours only).
    :param dap_row_id: ``table_sync.id`` (or ``dap_meta.id``) for dap rows.
    :param dap_meta_schema: the schema (MySQL database) holding the ``dap_meta`` row.
    :param name_map: names shortened to fit the identifier limit: ``{"table": {full: used},
        "columns": {full: used}}`` (only the shortened ones; empty when all fit).
    """

    namespace: str
    table: str
    target: str
    watermark: datetime
    schema_version: int
    versioned_schema: dict[str, Any]
    origin: str
    table_exists: bool
    last_mode: str | None = None
    job_id: str | None = None
    pending_swap: str | None = None
    updated_at: datetime | None = None
    dap_row_id: int | None = None
    dap_meta_schema: str | None = None
    name_map: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def from_dap_cli(self) -> bool:
        """True when the table was created by the official client (``dap initdb``, or 0.3.x with
        its ``dap_meta``) and is continued in place with its column types."""
        return self.origin in (ORIGIN_DAP, ORIGIN_DAP_META)

    def schema(self) -> TableSchema:
        return parse_table_schema(self.versioned_schema)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (without the schema body) for logs and XCom."""
        return {
            "namespace": self.namespace,
            "table": self.table,
            "target": self.target,
            "watermark": self.watermark.isoformat(),
            "schema_version": self.schema_version,
            "origin": self.origin,
            "table_exists": self.table_exists,
            "last_mode": self.last_mode,
            "job_id": self.job_id,
            "pending_swap": self.pending_swap,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "name_map": self.name_map,
        }


def schema_without_meta(versioned_schema: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema as ``dap`` stores it in ``schema_description``: ``meta`` removed."""
    schema = json.loads(json.dumps(versioned_schema.get("schema", versioned_schema)))
    (schema.get("properties") or {}).pop("meta", None)
    return schema


def dap_schema_description(versioned_schema: dict[str, Any]) -> str:
    # Same serialization as dap's json_dump_string, so the row reads as if dap wrote it.
    return json.dumps(
        schema_without_meta(versioned_schema), ensure_ascii=False, check_circular=False, separators=(",", ":")
    )


class StateStore:
    """Reads and writes the state of one target through a dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        #: columns of the existing state table, learnt on first read (older tables lack some)
        self._columns: frozenset[str] | None = None

    def table_sql(self, target: Target) -> str:
        return self.d.qualify(target.schema, STATE_TABLE)

    def ensure_table_sql(self, target: Target) -> str:
        types = self.d.state_types
        cols = []
        for name, kind, nullable in _COLUMNS:
            cols.append(f"{self.d.quote(name)} {types[kind]}{'' if nullable else ' NOT NULL'}")
        cols.append(f"PRIMARY KEY ({self.d.quote('target_table')})")
        return f"CREATE TABLE IF NOT EXISTS {self.table_sql(target)} ({', '.join(cols)})"

    def state_columns(self, cur: Any, target: Target) -> frozenset[str]:
        """The columns the target's state table has (it exists)."""
        if self._columns is None or not self._columns.issuperset(ADDED_COLUMNS):
            where = Target(target.schema, STATE_TABLE, "", "")
            self._columns = frozenset(self.d.live_columns(cur, where))
        return self._columns

    def forget_columns(self) -> None:
        """Read the state table's columns again next time (after an upgrade, :mod:`.state_table`)."""
        self._columns = None

    # -- reading --------------------------------------------------------------------------

    def read(self, cur: Any, target: Target, *, table_exists: bool) -> SyncState | None:
        """Our row for ``target``, else a matching ``dap initdb`` row, else ``None``.

        :raises ReplicationConfigError: if the target's state row belongs to another DAP table.
        """
        own = self._read_own(cur, target, table_exists)
        if own is not None:
            return own
        return self._read_dap(cur, target, table_exists) or self._read_dap_meta(cur, target, table_exists)

    def _read_own(self, cur: Any, target: Target, table_exists: bool) -> SyncState | None:
        if self.d.table_kind(cur, target.schema, STATE_TABLE) is None:
            return None
        q = self.d.quote
        have = self.state_columns(cur, target)
        names = [name for name, _, _ in _COLUMNS if name in have]
        row = self.d.fetch_one(
            cur,
            f"SELECT {', '.join(q(n) for n in names)} FROM {self.table_sql(target)} "
            f"WHERE {q('target_table')} = {self.d.param}",
            (target.table,),
        )
        if row is None:
            return None
        rec = dict(zip(names, row, strict=True))
        if (rec["source_namespace"], rec["source_table"]) != (target.namespace, target.source_table):
            raise ReplicationConfigError(
                f"{target.display} already replicates {rec['source_namespace']}.{rec['source_table']}, not "
                f"{target.namespace}.{target.source_table}; choose another table_prefix/target_schema"
            )
        return SyncState(
            namespace=target.namespace,
            table=target.source_table,
            target=target.display,
            watermark=self.d.from_db_timestamp(rec["watermark"]),
            schema_version=int(rec["schema_version"]),
            versioned_schema=json.loads(rec["versioned_schema"]),
            origin=ORIGIN_AIRFLOW,
            table_exists=table_exists,
            last_mode=rec["last_mode"],
            job_id=rec["job_id"],
            pending_swap=rec["pending_swap"],
            updated_at=self.d.from_db_timestamp(rec["updated_at"]),
            name_map=json.loads(rec["name_map"]) if rec.get("name_map") else {},
        )

    def _read_dap(self, cur: Any, target: Target, table_exists: bool) -> SyncState | None:
        where = self.d.dap_sync_table(target)
        if where is None or self.d.table_kind(cur, where[0] or target.schema, where[1]) is None:
            return None
        p = self.d.param
        rows = self.d.fetch_all(
            cur,
            "SELECT id, timestamp, schema_version, target_schema, target_table, schema_description "
            f"FROM {self.d.qualify(*where)} WHERE source_namespace = {p} AND source_table = {p}",
            (target.namespace, target.source_table),
        )
        for row_id, ts, version, t_schema, t_table, description in rows:
            if not self.d.dap_target_matches(target, t_schema, t_table):
                continue
            return _dap_client_state(target, ts, version, description, row_id, ORIGIN_DAP, table_exists)
        return None

    def _dap_meta_schemas(self, cur: Any, target: Target) -> list[str]:
        """Where a 0.3.x ``dap_meta`` table exists: the namespace's schema, then the target's."""
        if self.d.name not in ("postgres", "mysql"):  # 0.3.x wrote to no other database
            return []
        candidates = dict.fromkeys([target.namespace, target.schema])
        return [s for s in candidates if self.d.table_kind(cur, s, DAP_META_TABLE) == "table"]

    def _read_dap_meta(self, cur: Any, target: Target, table_exists: bool) -> SyncState | None:
        p = self.d.param
        for where in self._dap_meta_schemas(cur, target):
            rows = self.d.fetch_all(
                cur,
                "SELECT id, timestamp, schema_version, target_schema, target_table, schema_description_format, "
                f"schema_description FROM {self.d.qualify(where, DAP_META_TABLE)} "
                f"WHERE namespace = {p} AND source_table = {p}",
                (target.namespace, target.source_table),
            )
            for row_id, ts, version, t_schema, t_table, fmt, description in rows:
                if t_table != target.table or (t_schema or where) != target.schema:
                    self.d.log.warning(
                        "%s.%s names %s.%s for %s.%s, not %s: it is not continued (on MySQL, 0.3.x tables have no "
                        "prefix: set table_prefix='' and destination_schema to that database)",
                        where,
                        DAP_META_TABLE,
                        t_schema or where,
                        t_table,
                        target.namespace,
                        target.source_table,
                        target.display,
                    )
                    continue
                if (fmt or "json") != "json":
                    raise ReplicationConfigError(
                        f"{where}.{DAP_META_TABLE} describes {target.display} in format {fmt!r}, not json; "
                        "it cannot be continued: drop the table to start with a snapshot"
                    )
                return _dap_client_state(
                    target, ts, version, description, row_id, ORIGIN_DAP_META, table_exists, dap_meta_schema=where
                )
        return None

    # -- writing --------------------------------------------------------------------------

    def write(
        self,
        cur: Any,
        target: Target,
        *,
        previous: SyncState | None,
        watermark: datetime,
        versioned_schema: dict[str, Any],
        mode: str,
        job_id: str | None,
        pending_swap: str | None = None,
        name_map: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Record the new watermark; called inside the data transaction.

        A dap-origin table continued incrementally updates dap's row; anything else
        (including the snapshot that hands a dap table over) writes our row.

        :param name_map: the shortened names (see :class:`SyncState`); empty parts are left out.
        """
        version = int(versioned_schema.get("version", 0) or 0)
        if previous is not None and previous.origin == ORIGIN_DAP_META:
            if mode == "incremental":
                self._write_dap_meta(cur, previous, watermark, versioned_schema, version)
                return
            # A snapshot rebuilt the table with this package's types: the state moves to our row.
            cur.execute(
                f"DELETE FROM {self.d.qualify(previous.dap_meta_schema, DAP_META_TABLE)} WHERE id = {self.d.param}",
                (previous.dap_row_id,),
            )
            previous = None
        if previous is not None and previous.from_dap_cli and mode == "incremental":
            self._write_dap(cur, target, previous, watermark, versioned_schema, version)
            return
        q = self.d.quote
        values = {
            "target_table": target.table,
            "source_namespace": target.namespace,
            "source_table": target.source_table,
            "watermark": self.d.to_db_timestamp(watermark),
            "schema_version": version,
            "versioned_schema": json.dumps(versioned_schema, ensure_ascii=False, separators=(",", ":")),
            "layout_version": LAYOUT_VERSION,
            "last_mode": mode,
            "job_id": job_id,
            "pending_swap": pending_swap,
            "updated_at": self.d.to_db_timestamp(datetime.now(timezone.utc)),
            "name_map": _name_map_json(name_map),
        }
        names = list(values)
        cur.execute(
            self.d.upsert_sql(self.table_sql(target), [q(n) for n in names], [q("target_table")]), list(values.values())
        )
        if previous is not None and previous.from_dap_cli and previous.dap_row_id is not None:
            where = self.d.dap_sync_table(target)
            assert where is not None
            cur.execute(f"DELETE FROM {self.d.qualify(*where)} WHERE id = {self.d.param}", (previous.dap_row_id,))

    def _write_dap(
        self,
        cur: Any,
        target: Target,
        previous: SyncState,
        watermark: datetime,
        versioned_schema: dict[str, Any],
        version: int,
    ) -> None:
        where = self.d.dap_sync_table(target)
        assert where is not None and previous.dap_row_id is not None
        p = self.d.param
        cur.execute(
            f"UPDATE {self.d.qualify(*where)} SET timestamp = {p}, schema_version = {p}, schema_description = {p} "
            f"WHERE id = {p}",
            (
                self.d.dap_timestamp(cur, target, watermark),
                version,
                dap_schema_description(versioned_schema),
                previous.dap_row_id,
            ),
        )

    def _write_dap_meta(
        self, cur: Any, previous: SyncState, watermark: datetime, versioned_schema: dict[str, Any], version: int
    ) -> None:
        assert previous.dap_meta_schema is not None and previous.dap_row_id is not None
        p = self.d.param
        naive = watermark.astimezone(timezone.utc).replace(tzinfo=None)
        if self.d.name == "mysql":
            # 0.3.x created DATETIME without fractions; MySQL would round, and rounding up would
            # skip changes: truncate (the next window overlaps a little; the merge is idempotent).
            row = self.d.fetch_one(
                cur,
                "SELECT DATETIME_PRECISION FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                "AND TABLE_NAME = %s AND COLUMN_NAME = 'timestamp'",
                (previous.dap_meta_schema, DAP_META_TABLE),
            )
            step = 10 ** (6 - min(int(row[0] or 0) if row else 0, 6))
            naive = naive.replace(microsecond=naive.microsecond - naive.microsecond % step)
        cur.execute(
            f"UPDATE {self.d.qualify(previous.dap_meta_schema, DAP_META_TABLE)} SET timestamp = {p}, "
            f"schema_version = {p}, schema_description = {p} WHERE id = {p}",
            (naive, version, dap_schema_description(versioned_schema), previous.dap_row_id),
        )

    def clear_pending(self, cur: Any, target: Target) -> None:
        q = self.d.quote
        cur.execute(
            f"UPDATE {self.table_sql(target)} SET {q('pending_swap')} = NULL "
            f"WHERE {q('target_table')} = {self.d.param}",
            (target.table,),
        )


def _name_map_json(name_map: dict[str, dict[str, str]] | None) -> str | None:
    kept = {kind: names for kind, names in (name_map or {}).items() if names}
    return json.dumps(kept, ensure_ascii=False, sort_keys=True) if kept else None


def _dap_client_state(
    target: Target,
    timestamp: datetime,
    version: Any,
    description: str,
    row_id: Any,
    origin: str,
    table_exists: bool,
    **extra: Any,
) -> SyncState:
    """A state row of the official client (``table_sync`` or 0.3.x ``dap_meta``): its naive UTC timestamp,
    schema version and schema description (the JSON schema without ``meta``)."""
    return SyncState(
        namespace=target.namespace,
        table=target.source_table,
        target=target.display,
        watermark=timestamp.replace(tzinfo=timezone.utc)
        if timestamp.tzinfo is None
        else timestamp.astimezone(timezone.utc),
        schema_version=int(version),
        versioned_schema={"version": int(version), "schema": json.loads(description)},
        origin=origin,
        table_exists=table_exists,
        dap_row_id=int(row_id),
        **extra,
    )
