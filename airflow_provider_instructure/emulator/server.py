"""Run the emulator with uvicorn, in a background thread (tests) or in the foreground (CLI)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from airflow_provider_instructure.emulator.app import create_app
from airflow_provider_instructure.emulator.config import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from airflow_provider_instructure.emulator.core import Emulator


class EmulatorServer:
    """A real HTTP server for one :class:`Emulator`, on 127.0.0.1 and a free port by default.

    Use as a context manager::

        with EmulatorServer(rows=100) as server:
            print(server.url)            # http://127.0.0.1:<port>
            server.emulator.advance()    # commit updates and deletes

    :param emulator: the state to serve; built from ``emulator_kwargs`` when omitted.
    :param host: interface to bind.
    :param port: port to bind; 0 picks a free one.
    :param log_level: uvicorn log level.
    :param emulator_kwargs: passed to :class:`Emulator` (``rows``, ``seed``, ``catalog="core"``...).
    """

    def __init__(
        self,
        emulator: Emulator | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        **emulator_kwargs: Any,
    ) -> None:
        self.emulator = emulator or Emulator(**emulator_kwargs)
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.emulator),
            log_level=log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL to put in the connection's host (``--base-url`` of the ``dap`` CLI)."""
        return f"http://{self.host}:{self.port}"

    @property
    def client_id(self) -> str:
        return DEMO_CLIENT_ID

    @property
    def client_secret(self) -> str:
        return DEMO_CLIENT_SECRET

    def connection_json(self, **extra: Any) -> str:
        """An Airflow connection (the JSON form of ``AIRFLOW_CONN_<ID>``) for this server's demo account."""
        return json.dumps(
            {
                "conn_type": "instructure",
                "host": self.url,
                # Port repeats the URL's: the Airflow 3.3.2 UI's Test button needs a stored port.
                "port": self.port,
                "login": self.client_id,
                "password": self.client_secret,
                "extra": extra,
            }
        )

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="dap-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the DAP emulator did not start within 10 s")
            time.sleep(0.01)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted."""
        self._server.run(sockets=[self._socket])

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()
        self.emulator.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def quiet_uvicorn_errors() -> None:
    """Injected dropped connections make uvicorn log tracebacks; tests do not need them."""
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
