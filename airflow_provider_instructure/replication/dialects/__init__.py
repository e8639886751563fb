"""Target databases: :class:`PostgresDialect`, :class:`MySQLDialect` (MySQL and MariaDB) and
:class:`SQLiteDialect`, looked up by name with :func:`dialect_class`."""

from __future__ import annotations

from airflow_provider_instructure.replication.dialects.base import Dialect
from airflow_provider_instructure.replication.dialects.mysql import MySQLDialect
from airflow_provider_instructure.replication.dialects.postgres import PostgresDialect
from airflow_provider_instructure.replication.dialects.sqlite import SQLiteDialect
from airflow_provider_instructure.replication.errors import ReplicationConfigError

_BY_NAME: dict[str, type[Dialect]] = {
    "postgres": PostgresDialect,
    "postgresql": PostgresDialect,
    "mysql": MySQLDialect,
    "mariadb": MySQLDialect,
    "sqlite": SQLiteDialect,
}


def dialect_class(name: str) -> type[Dialect]:
    """The dialect for ``name`` (``postgres``/``postgresql``, ``mysql``/``mariadb``, ``sqlite``)."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        raise ReplicationConfigError(
            f"unknown dialect {name!r}; use one of: postgres, mysql (also for MariaDB), sqlite"
        ) from None


__all__ = ["Dialect", "MySQLDialect", "PostgresDialect", "SQLiteDialect", "dialect_class"]
