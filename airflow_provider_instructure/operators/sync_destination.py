"""Where :class:`~.cd2_sync.CD2SyncTableOperator` replicates to: the operator's destination
arguments checked (:func:`check_destination_args`) and turned into a
:class:`~airflow_provider_instructure.replication.destination.Destination` (:func:`open_destination`).

Two kinds, exactly one per operator:

* a SQL database: ``destination_conn_id`` (a ``postgres``, ``mysql`` or ``sqlite`` connection),
  with ``destination_schema`` / ``table_prefix``;
* a lake table: ``table_format`` (``delta`` or ``iceberg``) and ``destination_path`` (an
  absolute local directory or an ``s3://``, ``gs://``, ``abfs://`` URI), with
  ``storage_conn_id`` for the credentials (:mod:`~..hooks.storage`) and, for Iceberg,
  ``catalog_conn_id`` (a ``postgres`` or ``sqlite`` connection holding the SQL catalog; default a
  SQLite file in a local warehouse) and ``destination_schema`` as the catalog namespace.

Everything kind-specific the operator needs is decided here, once: the destination, its asset
URI and its OpenLineage dataset. The rest of the operator only speaks the protocol.

Asset URIs: the SQL forms of Airflow's postgres/mysql providers; for Delta **and Iceberg** the
table's location (``file:///abs/dir/<namespace>/<table>``, ``s3://bucket/prefix/<namespace>/<table>``).
An Iceberg table is also known by its catalog identifier, but a location is what every reader
can open and what Airflow's object-storage assets already name, and both formats keep one
table per location. OpenLineage names the same place as files: ``file`` + path, ``s3://bucket``
+ key (:func:`~.lineage.file_naming`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import AirflowNotFoundException, BaseHook, mask_secret
from airflow_provider_instructure.exceptions import DestinationUnavailableError, InstructureConfigError
from airflow_provider_instructure.operators.lineage import file_naming, sql_table_naming
from airflow_provider_instructure.replication import (
    TABLE_FORMATS,
    Destination,
    ReplicationConfigError,
    TableReplicator,
    open_table_format,
)

#: Airflow connection types and the replication dialect that serves them.
DIALECTS = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite"}
#: Connection types that can hold an Iceberg SQL catalog.
CATALOG_CONN_TYPES = ("postgres", "postgresql", "sqlite")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def normalise_table_format(table_format: Any) -> Any:
    """``table_format`` as the code spells it (``"Delta "`` -> ``"delta"``); templated values and
    None are returned as they are (they are normalised once rendered)."""
    if isinstance(table_format, str) and not _templated(table_format):
        return table_format.strip().lower()
    return table_format


def check_destination_args(
    *,
    destination_conn_id: str | None,
    table_format: str | None,
    destination_path: str | None,
    storage_conn_id: str | None,
    catalog_conn_id: str | None,
    table_prefix: str | None,
) -> None:
    """Exactly one destination kind, and only the arguments that kind uses (at DAG parse time).

    :raises InstructureConfigError: naming the argument to add or drop.
    """
    lake = table_format is not None or destination_path is not None
    if destination_conn_id and lake:
        raise InstructureConfigError(
            "CD2SyncTableOperator takes one destination: destination_conn_id (a SQL database) or "
            "table_format + destination_path (a Delta or Iceberg table), not both"
        )
    if not destination_conn_id and not lake:
        raise InstructureConfigError(
            "CD2SyncTableOperator needs a destination: destination_conn_id (a postgres, mysql or sqlite "
            "connection) or table_format ('delta' or 'iceberg') with destination_path"
        )
    if not lake:
        for name, value in (("storage_conn_id", storage_conn_id), ("catalog_conn_id", catalog_conn_id)):
            if value:
                raise InstructureConfigError(
                    f"{name} is for table_format destinations; a SQL destination (destination_conn_id) takes none"
                )
        return
    table_format = normalise_table_format(table_format)
    if not table_format or not destination_path:
        missing = "table_format ('delta' or 'iceberg')" if not table_format else "destination_path"
        raise InstructureConfigError(f"a lake destination needs both table_format and destination_path: add {missing}")
    if not _templated(table_format) and table_format.lower() not in TABLE_FORMATS:
        raise InstructureConfigError(f"table_format {table_format!r} is not one of: {', '.join(TABLE_FORMATS)}")
    if table_prefix is not None:
        raise InstructureConfigError("table_prefix is for SQL destinations; a lake table is named after the DAP table")
    if catalog_conn_id and not _templated(table_format) and table_format.lower() != "iceberg":
        raise InstructureConfigError("catalog_conn_id is for table_format='iceberg'; a Delta table needs no catalog")
    if not _templated(destination_path):
        from airflow_provider_instructure.hooks.storage import check_destination_path

        scheme = check_destination_path(destination_path)
        if scheme and not _templated(table_format) and table_format.lower() == "iceberg" and not catalog_conn_id:
            raise InstructureConfigError(
                f"an Iceberg table on {scheme}:// needs a catalog database that every worker reaches: "
                "set catalog_conn_id (a postgres or sqlite connection; PostgreSQL when workers are on several "
                "machines)"
            )


@dataclass
class OpenedDestination:
    """A destination ready for a sync, with what the operator reports about it.

    :param destination: the replica (:class:`Destination`), checked; :meth:`close` it when done.
    :param asset_uri: the replica as an Airflow asset URI.
    :param lineage: ``(namespace, name)`` of its OpenLineage dataset.
    """

    destination: Destination
    asset_uri: str
    lineage: tuple[str, str]

    def close(self) -> None:
        self.destination.close()


def _connection(conn_id: str, what: str, types: str) -> Any:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise InstructureConfigError(
            f"{what} connection {conn_id!r} is not defined; create a {types} connection with that id"
        ) from None


def open_destination(
    op: Any, namespace: str, empty_table_schema: Callable[[], dict[str, Any]], log: logging.Logger
) -> OpenedDestination:
    """The operator's destination for ``namespace.<op.table>``, after every check that precedes
    data movement (:meth:`Destination.check_target`).

    :param op: the operator (its destination arguments, rendered).
    :param empty_table_schema: the table's versioned DAP schema, fetched only if needed.
    :raises InstructureConfigError: bad arguments or connections, or a destination that cannot be used.
    :raises DestinationUnavailableError: a SQL database that does not answer (retryable).
    """
    opener = _open_lake if op.table_format else _open_sql
    return opener(op, namespace, empty_table_schema, log)


def _open_sql(
    op: Any, namespace: str, empty_table_schema: Callable[[], dict[str, Any]], log: logging.Logger
) -> OpenedDestination:
    conn = _connection(op.destination_conn_id, "Destination", "postgres, mysql or sqlite")
    dialect = DIALECTS.get((conn.conn_type or "").lower())
    if dialect is None:
        raise InstructureConfigError(
            f"Destination connection {op.destination_conn_id!r} has type {conn.conn_type!r}; "
            f"supported types are {', '.join(sorted(set(DIALECTS)))}"
        )
    hook = conn.get_hook(hook_params={"local_infile": True} if dialect == "mysql" else None)
    try:
        db = hook.get_conn()
    except Exception as exc:  # driver errors name host/port; the password is not in them
        # Transient more often than not (too many clients, a restart, a failover): let retries run.
        raise DestinationUnavailableError(
            f"Cannot connect to destination {op.destination_conn_id!r} ({conn.conn_type}://{conn.host or ''}"
            f"{':' + str(conn.port) if conn.port else ''}/{conn.schema or ''}): {type(exc).__name__}: {exc}"
        ) from None
    try:
        replicator = TableReplicator(
            db,
            dialect,
            namespace,
            op.table,
            target_schema=op.destination_schema or None,
            table_prefix=op.table_prefix,
            log=log,
        )
        # An empty table without a state row is what a run that found no data in DAP leaves.
        replicator.check_target(empty_table_schema=empty_table_schema)
    except ReplicationConfigError as exc:
        db.close()
        raise InstructureConfigError(f"Destination {op.destination_conn_id!r}: {exc}") from None
    t = replicator.target
    if dialect == "postgres":
        uri = f"postgres://{conn.host}:{conn.port or 5432}/{conn.schema}/{t.schema}/{t.table}"
    elif dialect == "mysql":
        uri = f"mysql://{conn.host}:{conn.port or 3306}/{t.schema}/{t.table}"
    else:
        uri = f"sqlite:///{Path(conn.host or '').resolve()}/{t.table}"
    lineage = sql_table_naming(dialect, conn.host, conn.port, conn.schema, t.schema, t.table)
    return OpenedDestination(replicator, uri, lineage)


def catalog_url(catalog_conn_id: str) -> str:
    """The SQLAlchemy URL of an Iceberg SQL catalog held by a ``postgres`` or ``sqlite`` connection
    (the password is registered with the secrets masker).

    :raises InstructureConfigError: an undefined connection or one of another type.
    """
    conn = _connection(catalog_conn_id, "Iceberg catalog", "postgres or sqlite")
    conn_type = (conn.conn_type or "").lower()
    if conn_type not in CATALOG_CONN_TYPES:
        raise InstructureConfigError(
            f"Iceberg catalog connection {catalog_conn_id!r} has type {conn.conn_type!r}; use a postgres or sqlite "
            "connection (the catalog is a SQL database)"
        )
    if conn_type == "sqlite":
        return f"sqlite:///{Path(conn.host or '').resolve()}"
    if conn.password:
        mask_secret(conn.password)
    # PostgresHook knows the driver it runs on (psycopg 3 or psycopg2) and quotes the parts.
    return str(conn.get_hook().sqlalchemy_url.render_as_string(hide_password=False))


def _open_lake(
    op: Any, namespace: str, empty_table_schema: Callable[[], dict[str, Any]], log: logging.Logger
) -> OpenedDestination:
    from airflow_provider_instructure.hooks.storage import storage_location

    check_destination_args(
        destination_conn_id=op.destination_conn_id,
        table_format=op.table_format,
        destination_path=op.destination_path,
        storage_conn_id=op.storage_conn_id,
        catalog_conn_id=op.catalog_conn_id,
        table_prefix=op.table_prefix,
    )  # again: templated arguments are rendered now
    table_format = normalise_table_format(op.table_format)
    location = storage_location(op.destination_path, op.storage_conn_id)
    label = f"{table_format} table at {location.uri}"
    try:
        destination = open_table_format(
            table_format,
            location,
            namespace,
            op.table,
            catalog_uri=catalog_url(op.catalog_conn_id) if op.catalog_conn_id else None,
            catalog_namespace=op.destination_schema or None,
            log=log,
        )
    except ReplicationConfigError as exc:
        raise InstructureConfigError(f"Destination {label}: {exc}") from None
    try:
        destination.check_target(empty_table_schema=empty_table_schema)
    except ReplicationConfigError as exc:
        destination.close()
        raise InstructureConfigError(f"Destination {label}: {exc}") from None
    table_uri = location.table_uri(op.destination_schema or namespace, op.table)
    asset_uri = Path(table_uri).as_uri() if location.is_local else table_uri
    return OpenedDestination(destination, asset_uri, file_naming(table_uri))


def parts_key(op: Any) -> list[Any]:
    """What identifies the operator's destination for its parts directory (:mod:`.sync_workdir`):
    what the connection points at, not its id, so that two deployments on one host that both
    call their (different) warehouses ``cd2_warehouse`` never share or remove parts; for a lake
    table its format and location (without credentials) and the catalog."""
    if op.table_format:
        catalog: list[Any] = []
        if op.catalog_conn_id:
            conn = BaseHook.get_connection(op.catalog_conn_id)
            catalog = [conn.conn_type, conn.host, conn.port, conn.schema]
        from airflow_provider_instructure.hooks.storage import normalise_path

        path = normalise_path(op.destination_path).rstrip("/")
        return ["lake", str(op.table_format).lower(), path, op.destination_schema, *catalog]
    conn = BaseHook.get_connection(op.destination_conn_id)
    return [conn.conn_type, conn.host, conn.port, conn.schema, conn.login, op.destination_schema, op.table_prefix]


__all__ = [
    "CATALOG_CONN_TYPES",
    "DIALECTS",
    "OpenedDestination",
    "catalog_url",
    "check_destination_args",
    "normalise_table_format",
    "open_destination",
    "parts_key",
]
