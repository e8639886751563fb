"""Pytest fixtures that run the DAP emulator in-process on a free port.

Registered through the ``pytest11`` entry point, so any project with the provider installed
can write::

    def test_my_dag(dap_emulator):
        conn = dap_emulator.connection_json()   # for AIRFLOW_CONN_INSTRUCTURE_DEFAULT
        ...
        assert dap_emulator.emulator.stats.count("login") == 1

Fixtures:

* ``dap_emulator_session``: one server for the whole session.
* ``dap_emulator``: that server, with counters, faults, rate limits and settings reset after
  each test (data and jobs persist; use ``dap_emulator_factory`` for a private dataset).
* ``dap_emulator_factory``: ``factory(**kwargs)`` starts a private server, stopped at teardown.

The shared server serves the full catalog (every table DAP exposes: 90 ``canvas`` tables and
``canvas_logs.web_logs``), 40 rows in each of the 15 core tables and 10 in the others; pass
``catalog="core"`` to the factory for the 15 core tables only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_instructure.emulator.server import EmulatorServer


def _start(**kwargs: Any) -> EmulatorServer:
    from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors

    quiet_uvicorn_errors()
    return EmulatorServer(**kwargs).start()


@pytest.fixture(scope="session")
def dap_emulator_session() -> Iterator[EmulatorServer]:
    server = _start(rows=40)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dap_emulator(dap_emulator_session: EmulatorServer) -> Iterator[EmulatorServer]:
    emulator = dap_emulator_session.emulator
    saved = copy.deepcopy(emulator.config.__dict__)
    emulator.reset()
    try:
        yield dap_emulator_session
    finally:
        emulator.config.__dict__.update(saved)
        emulator.reset()


@pytest.fixture
def dap_emulator_factory() -> Iterator[Callable[..., EmulatorServer]]:
    servers: list[EmulatorServer] = []

    def factory(**kwargs: Any) -> EmulatorServer:
        server = _start(**kwargs)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
