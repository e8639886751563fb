"""Lake destinations: DAP tables replicated into Delta Lake and Apache Iceberg tables.

``DeltaDestination`` (:mod:`.delta`, needs the ``[delta]`` extra: deltalake) and
``IcebergDestination`` (:mod:`.iceberg`, needs the ``[iceberg]`` extra: pyiceberg with a SQL
catalog) implement :class:`~..destination.Destination`. Importing this package imports
neither library: the classes are loaded on first access, and a missing extra raises
:class:`~..errors.ReplicationConfigError` naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.replication.errors import ReplicationConfigError

if TYPE_CHECKING:
    from airflow_provider_instructure.replication.lake.delta import DeltaDestination
    from airflow_provider_instructure.replication.lake.iceberg import IcebergDestination

#: class name -> (module, the library it needs, the extra that installs it)
_LAZY = {
    "DeltaDestination": ("delta", "deltalake", "delta"),
    "IcebergDestination": ("iceberg", "pyiceberg", "iceberg"),
}


def require(library: str, extra: str) -> None:
    """Import ``library`` or explain which extra installs it.

    :raises ReplicationConfigError: the library is not installed.
    """
    try:
        importlib.import_module(library)
    except ImportError as exc:
        raise ReplicationConfigError(
            f"the {extra} destination needs the {library!r} package: "
            f"pip install 'airflow-provider-instructure[{extra}]'"
        ) from exc


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, library, extra = _LAZY[name]
    require(library, extra)
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["DeltaDestination", "IcebergDestination", "require"]
