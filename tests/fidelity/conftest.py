"""Fixtures for running the official ``dap`` CLI (instructure-dap-client) against the emulator.

* The CLI is found through ``DAP_CLI`` (default: ``.venv-dap/bin/dap`` in the repository); it lives in
  its own virtualenv because its pins conflict with Airflow's.
* Databases: a fresh, uniquely named database per session on the PostgreSQL and MariaDB/MySQL
  servers of ``TEST_POSTGRES_URL`` / ``TEST_MYSQL_URL``, dropped at the end.
* Anything missing skips with the reason locally and fails when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors
from tests.conftest import MYSQL_URL, POSTGRES_URL, unavailable
from tests.fidelity.db_compare import Database

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CLI = REPO / ".venv-dap" / "bin" / "dap"

#: Commit time of the initial rows: recent enough that nothing looks odd, fixed per session.
CLOCK = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)


def fidelity_config(**overrides: Any) -> EmulatorConfig:
    """Jobs finish while the POST waits, so the CLI never sleeps its fixed 5 s between polls."""
    return EmulatorConfig(post_wait_seconds=5, parts=2, **overrides)


@pytest.fixture(scope="session")
def dap_binary() -> Path:
    path = Path(os.environ.get("DAP_CLI") or DEFAULT_CLI)
    if not (path.is_file() and os.access(path, os.X_OK)):
        unavailable(f"official dap CLI not found at {path} (set DAP_CLI, or run `make test` to build .venv-dap)")
    return path


@dataclass
class CliRun:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class DapCli:
    """Runs ``dap [global options] COMMAND ...`` against one emulator."""

    def __init__(self, binary: Path, server: EmulatorServer, workdir: Path) -> None:
        self.binary = binary
        self.server = server
        self.workdir = workdir

    def run(self, *args: str, check: bool = True, timeout: float = 180) -> CliRun:
        command = [
            str(self.binary),
            "--base-url", self.server.url,
            "--client-id", self.server.client_id,
            "--client-secret", self.server.client_secret,
            "--non-interactive",
            "--no-tracking",
            *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
        env["DAP_TRACKING"] = "false"
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.workdir, env=env, timeout=timeout)
        run = CliRun(tuple(args), done.returncode, done.stdout, done.stderr)
        if check and run.returncode != 0:
            pytest.fail(
                f"`dap {shlex.join(args)}` exited {run.returncode}\n--- stdout (tail)\n{run.stdout[-3000:]}"
                f"\n--- stderr (tail)\n{run.stderr[-6000:]}"
            )
        return run


@pytest.fixture(scope="module")
def start_server() -> Iterator[Callable[..., EmulatorServer]]:
    """``start_server(rows=..., **config)``: emulators that live as long as the test module.

    They serve the core catalog (the 15 tables chosen to cover every column type): ``test_cli_full_catalog``
    runs the client over the full one once; every format and sync round over 91 tables would not
    add coverage, only minutes.
    """
    quiet_uvicorn_errors()
    servers: list[EmulatorServer] = []

    def start(rows: int | dict[str, int] = 12, seed: int = 0, catalog: str = "core", **config: Any) -> EmulatorServer:
        emulator = Emulator(fidelity_config(**config), seed=seed, rows=rows, clock_start=CLOCK, catalog=catalog)
        server = EmulatorServer(emulator).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def _database(url: str, dialect: str) -> Iterator[Database]:
    parts = urlparse(url)
    name = f"fidelity_{secrets.token_hex(5)}"
    admin = Database(dialect, parts.hostname or "127.0.0.1", parts.port, parts.username or "", parts.password, "")
    try:
        connection = admin.connect(database=None)
    except Exception as exc:  # any driver error means "no server here"
        unavailable(f"{dialect} not reachable at {parts.hostname}:{parts.port} ({type(exc).__name__}: {exc})")
    try:
        admin.create_database(connection, name)
        yield Database(dialect, admin.host, admin.port, admin.user, admin.password, name)
    finally:
        admin.drop_database(connection, name)
        connection.close()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[Database]:
    yield from _database(POSTGRES_URL, "postgresql")


@pytest.fixture(scope="session")
def mysql_db() -> Iterator[Database]:
    yield from _database(MYSQL_URL, "mysql")
