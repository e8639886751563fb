"""Fixtures for the emulator's wire-level tests: private servers with small data and short TTLs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors
from tests.emulator.dap_wire import DapApi

#: Commit time of the initial rows of every test server: fixed, so nothing depends on the wall clock.
CLOCK = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

Serve = Callable[..., tuple[EmulatorServer, DapApi]]
Shared = tuple[EmulatorServer, DapApi]


@pytest.fixture
def serve(dap_emulator_factory: Callable[..., EmulatorServer]) -> Serve:
    """``serve(rows=8, seed=0, **config)`` starts a private emulator; returns it and a logged-out client."""

    def start(rows: int | dict[str, int] = 8, seed: int = 0, clock_start: datetime = CLOCK, **config: Any):
        emulator = Emulator(EmulatorConfig(**config), seed=seed, rows=rows, clock_start=clock_start)
        server = dap_emulator_factory(emulator=emulator)
        return server, DapApi(server.url)

    return start


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One server per module for tests that only read (do not advance, reload or reconfigure it)."""
    quiet_uvicorn_errors()
    emulator = Emulator(EmulatorConfig(parts=2), rows=12, clock_start=CLOCK)
    server = EmulatorServer(emulator).start()
    try:
        yield server, DapApi(server.url)
    finally:
        server.stop()
