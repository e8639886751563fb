"""A local emulator of Instructure's DAP API (Identity Service, query API and S3 downloads).

It imports nothing from Airflow, so it can run anywhere the package is installed::

    python -m airflow_provider_instructure.emulator --port 8765

or in-process from Python (tests, benchmarks)::

    from airflow_provider_instructure.emulator import EmulatorServer

    with EmulatorServer(rows=1000) as server:
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_instructure.emulator.config import EmulatorConfig
    from airflow_provider_instructure.emulator.core import Emulator
    from airflow_provider_instructure.emulator.server import EmulatorServer

__all__ = ["Emulator", "EmulatorConfig", "EmulatorServer"]


def __getattr__(name: str) -> Any:
    # Lazy so that importing the package (e.g. by the pytest plugin) does not pull in uvicorn.
    if name == "Emulator":
        from airflow_provider_instructure.emulator.core import Emulator

        return Emulator
    if name == "EmulatorConfig":
        from airflow_provider_instructure.emulator.config import EmulatorConfig

        return EmulatorConfig
    if name == "EmulatorServer":
        from airflow_provider_instructure.emulator.server import EmulatorServer

        return EmulatorServer
    raise AttributeError(name)
