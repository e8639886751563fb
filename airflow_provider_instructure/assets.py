"""Airflow Assets for Canvas Data 2 tables: ``instructure://<namespace>/<table>``.

Operators that produce table data (downloads, replication) emit an event for the table's
asset with the watermark and schema version in its ``extra``, so downstream DAGs can be
scheduled on fresh Canvas data::

    with DAG(schedule=[Asset("instructure://canvas/users")], ...):
        ...

Mapped tasks do not know their table at parse time, so events go through an
:class:`AssetAlias` that the operators add to their outlets automatically.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure._compat import Asset

try:
    from airflow.sdk import AssetAlias
except ImportError:  # pragma: no cover - Airflow < 3.0 is not supported, but keep imports cheap
    AssetAlias = None  # type: ignore[assignment,misc]

ALIAS_NAME = "instructure_cd2"


def table_asset_uri(namespace: str, table: str) -> str:
    return f"instructure://{namespace}/{table}"


def table_asset(namespace: str, table: str) -> Asset:
    return Asset(table_asset_uri(namespace, table))


def with_alias(outlets: Any) -> list[Any]:
    """``outlets`` plus the provider's asset alias (once)."""
    items = list(outlets or [])
    if AssetAlias is not None and not any(isinstance(o, AssetAlias) and o.name == ALIAS_NAME for o in items):
        items.append(AssetAlias(ALIAS_NAME))
    return items


def emit_table_event(context: Any, outlets: Any, namespace: str, table: str, extra: dict[str, Any]) -> None:
    """Record an asset event for ``instructure://<namespace>/<table>`` with ``extra``.

    Uses the asset itself when the task declared it as an outlet, the alias otherwise. Does
    nothing outside a task run (e.g. ``execute()`` called directly in a unit test).
    """
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    asset = table_asset(namespace, table)
    for outlet in outlets or []:
        if isinstance(outlet, Asset) and outlet.uri == asset.uri:
            events[outlet].extra = {**events[outlet].extra, **extra}
            return
    if AssetAlias is not None:
        events[AssetAlias(ALIAS_NAME)].add(asset, extra=extra)
