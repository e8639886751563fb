"""The replication state of a lake table, as metadata of the commit that wrote it.

A Delta commit's ``commitInfo`` (``CommitProperties(custom_metadata=...)``) and an Iceberg
snapshot's summary properties both carry string key/value pairs written atomically with the
data. Every sync writes these keys in its own commit, so the table alone says where it
stands; there is no side file or state table to keep in step:

====================  ==================================================================
key                   value
====================  ==================================================================
``dap.namespace``     DAP namespace (``canvas``)
``dap.table``         DAP table (``accounts``)
``dap.watermark``     the ``at``/``until`` applied, ISO-8601 UTC with microseconds
                      (``2026-01-02T03:04:05.000000+00:00``): the next ``since``
``dap.schema_version`` the DAP schema version the table holds
``dap.schema``        the ``{"version", "schema"}`` JSON the table was built/evolved with
``dap.mode``          ``snapshot`` or ``incremental``
``dap.job_id``        the DAP job of the result (empty when unknown)
``dap.writer``        ``airflow-provider-instructure <version>``
====================  ==================================================================

A table created empty (:meth:`create_empty`, DAP has no data yet) carries ``dap.namespace``,
``dap.table``, ``dap.schema*`` and ``dap.writer`` but no ``dap.watermark``: it is ours, with no
state yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.state import ORIGIN_AIRFLOW, SyncState
from airflow_provider_instructure.timestamps import parse_timestamp

NAMESPACE = "dap.namespace"
TABLE = "dap.table"
WATERMARK = "dap.watermark"
SCHEMA_VERSION = "dap.schema_version"
SCHEMA = "dap.schema"
MODE = "dap.mode"
JOB_ID = "dap.job_id"
WRITER = "dap.writer"

KEYS = (NAMESPACE, TABLE, WATERMARK, SCHEMA_VERSION, SCHEMA, MODE, JOB_ID, WRITER)


def writer() -> str:
    """``airflow-provider-instructure <version>``."""
    from airflow_provider_instructure import __version__

    return f"airflow-provider-instructure {__version__}"


def format_watermark(value: datetime | str) -> str:
    """ISO-8601 UTC with microseconds; a naive datetime is taken as UTC.

    :raises ValueError: a string that is not ISO-8601.
    """
    moment = parse_watermark(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_watermark(text: str | datetime) -> datetime:
    """An aware UTC datetime from ISO-8601 text (``Z`` accepted); naive text is UTC.

    :raises ValueError: the text is not ISO-8601.
    """
    moment = text if isinstance(text, datetime) else parse_timestamp(text.strip(), naive_is_utc=True)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def commit_metadata(
    *,
    namespace: str,
    table: str,
    versioned_schema: Mapping[str, Any],
    mode: str,
    watermark: datetime | str | None,
    job_id: str | None = None,
) -> dict[str, str]:
    """The string pairs to write in a commit (``watermark=None``: an empty table, no state).

    :param mode: ``snapshot``, ``incremental`` or ``empty``.
    """
    meta = {
        NAMESPACE: namespace,
        TABLE: table,
        SCHEMA_VERSION: str(int(versioned_schema.get("version", 0) or 0)),
        SCHEMA: json.dumps(versioned_schema, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        MODE: mode,
        JOB_ID: job_id or "",
        WRITER: writer(),
    }
    if watermark is not None:
        meta[WATERMARK] = format_watermark(watermark)
    return meta


def owner(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(namespace, table)`` named by ``meta``, or ``None`` if it has no ``dap.*`` owner."""
    namespace, table = meta.get(NAMESPACE), meta.get(TABLE)
    if not namespace or not table:
        return None
    return str(namespace), str(table)


def check_owner(meta: Mapping[str, Any], namespace: str, table: str, target: str) -> None:
    """Refuse a table whose metadata names another DAP table.

    :raises ReplicationConfigError: ``meta`` names another ``namespace.table``.
    """
    found = owner(meta)
    if found is not None and found != (namespace, table):
        raise ReplicationConfigError(
            f"{target} already replicates {found[0]}.{found[1]}, not {namespace}.{table}; choose another "
            "destination_path"
        )


def has_state(meta: Mapping[str, Any]) -> bool:
    """True when ``meta`` records a watermark (a snapshot or incremental commit of ours)."""
    return bool(meta.get(WATERMARK))


def state_from_metadata(
    meta: Mapping[str, Any],
    *,
    namespace: str,
    table: str,
    target: str,
    table_exists: bool = True,
    updated_at: datetime | None = None,
) -> SyncState | None:
    """The :class:`~..state.SyncState` recorded in one commit's metadata.

    :param meta: the commit's key/value pairs (other keys are ignored).
    :param target: the table URI or identifier, for the state and messages.
    :param updated_at: when the commit was made (the format's own commit timestamp).
    :returns: ``None`` when the commit carries no ``dap.watermark``.
    :raises ReplicationConfigError: the metadata names another DAP table, or is unreadable.
    """
    check_owner(meta, namespace, table, target)
    if not has_state(meta):
        return None
    try:
        watermark = parse_watermark(str(meta[WATERMARK]))
        versioned = json.loads(str(meta[SCHEMA]))
        version = int(meta.get(SCHEMA_VERSION) or versioned.get("version", 0))
    except (KeyError, ValueError, TypeError) as exc:
        raise ReplicationConfigError(
            f"{target}: the replication metadata of its latest sync is unreadable ({type(exc).__name__}: {exc}); "
            "load a snapshot to rebuild it"
        ) from exc
    return SyncState(
        namespace=namespace,
        table=table,
        target=target,
        watermark=watermark,
        schema_version=version,
        versioned_schema=versioned,
        origin=ORIGIN_AIRFLOW,
        table_exists=table_exists,
        last_mode=str(meta.get(MODE) or "") or None,
        job_id=str(meta.get(JOB_ID) or "") or None,
        updated_at=updated_at,
    )


__all__ = [
    "JOB_ID",
    "KEYS",
    "MODE",
    "NAMESPACE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TABLE",
    "WATERMARK",
    "WRITER",
    "check_owner",
    "commit_metadata",
    "format_watermark",
    "has_state",
    "owner",
    "parse_watermark",
    "state_from_metadata",
]
