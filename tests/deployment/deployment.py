"""A real Airflow 3 deployment for one test module: separate processes, PostgreSQL metadata DB, the emulator.

Everything lives under one temporary ``AIRFLOW_HOME``:

* ``dags/``: copies of the example DAGs (what a user deploys) and the test DAGs of this package;
* ``processes/<name>.log``: the output of each process (api-server, scheduler, dag-processor,
  triggerer, emulator, and each CLI call);
* ``logs/``: Airflow's task and trigger logs; ``cd2-lake/``: what the file-download DAGs write;
* ``tmp/``: every process's ``TMPDIR`` (the sync operator keeps its parts there).

Each long-running process is started in its own session (``start_new_session``), so its process
group id is its pid: :meth:`Deployment.stop` signals those groups by id, then looks for any process
that still carries this deployment's ``AIRFLOW_HOME`` in its environment and kills it by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
#: The ``airflow`` entry point of the virtualenv running the tests (the project's ``.venv``).
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
#: The PostgreSQL server (trust authentication), from ``TEST_POSTGRES_URL`` like the other PostgreSQL tests.
_PG_URL = urlsplit(os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
PG = {"host": _PG_URL.hostname or "127.0.0.1", "port": _PG_URL.port or 5432, "user": _PG_URL.username or "postgres"}


class DeploymentError(AssertionError):
    """The deployment did not come up or a process died; the message ends with the log's tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the api-server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_connect(dbname: str, *, autocommit: bool = True, patience: float = 60.0) -> Any:
    """A psycopg2 connection; waits up to ``patience`` seconds while the server has no free connection.

    The PostgreSQL server is shared with every other test run on the machine (100 connections by
    default): a moment at its limit must not fail the deployment test's own polling.
    """
    import psycopg2

    deadline = time.monotonic() + patience
    while True:
        try:
            conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
            break
        except psycopg2.OperationalError as exc:
            if "too many clients" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    conn.autocommit = autocommit
    return conn


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{path} unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``check`` until it returns something truthy; :class:`DeploymentError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """One long-running process of the deployment."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Deployment:
    """Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor) on a fresh PostgreSQL database.

    :param home: an empty directory to use as ``AIRFLOW_HOME``.
    :param extra_env: more environment for every process (connections, ``CD2_TARGET``...).
    """

    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    api_port: int = field(default_factory=free_port)
    services: dict[str, Service] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _token: str | None = None

    @property
    def metadata_db(self) -> str:
        return f"airflow_e2e_{self.suffix}"

    @property
    def dags(self) -> Path:
        return self.home / "dags"

    @property
    def process_logs(self) -> Path:
        return self.home / "processes"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # -- environment ----------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The environment every process gets: the pytest process's own Airflow settings are dropped."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST", "CD2_", "_AIRFLOW"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                    f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.metadata_db}"
                ),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                # Two cores are shared by every process: a few task processes at a time is enough
                # (the cd2_api pool allows 5 job-creating tasks anyway).
                "AIRFLOW__CORE__PARALLELISM": "8",
                # The PostgreSQL server is shared (max_connections 100 by default): at most 10
                # connections per Airflow process instead of 15.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "7",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__WORKERS": "1",
                # New DAG files are listed every few seconds instead of every 5 minutes.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # The files never change during the test: parse each once, not every 30 s.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                # Its own temporary directory, as a container has: the sync operator's parts
                # directory (under TMPDIR) must not be shared with other test runs on this machine.
                "TMPDIR": str(self.home / "tmp"),
                "DAP_TRACKING": "false",
            }
        )
        env.update(self.extra_env)
        return env

    # -- databases --------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        conn = pg_connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    @staticmethod
    def drop_database(name: str) -> None:
        conn = pg_connect("postgres")
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of one query on the metadata database, as dicts."""
        conn = pg_connect(self.metadata_db)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    # -- processes --------------------------------------------------------------------------------

    def cli(self, name: str, *args: str, timeout: float = 120) -> None:
        """Run one ``airflow`` CLI command to completion; its output goes to ``processes/<name>.log``."""
        self.cli_parallel({name: list(args)}, timeout=timeout)

    def cli_parallel(self, commands: dict[str, list[str]], timeout: float = 120) -> None:
        """Run ``airflow`` CLI commands side by side (each costs seconds of start-up); raise on any failure."""
        started = time.monotonic()
        running = {}
        for name, args in commands.items():
            log = self.process_logs / f"{name}.log"
            with log.open("wb") as out:
                running[name] = (
                    args,
                    log,
                    subprocess.Popen(
                        [AIRFLOW, *args], env=self.environment(), cwd=self.home, stdout=out, stderr=subprocess.STDOUT
                    ),
                )
        failures = []
        for name, (args, log, process) in running.items():
            try:
                code = process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            self.timings[name] = round(time.monotonic() - started, 1)
            if code != 0:
                failures.append(f"`airflow {' '.join(args)}` exited with {code}:\n{tail(log)}")
        if failures:
            raise DeploymentError("\n".join(failures))

    def start(self, name: str, argv: list[str]) -> Service:
        """Start a long-running process in its own process group, output to ``processes/<name>.log``."""
        log = self.process_logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=self.environment(),
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        service = Service(name, process, log)
        self.services[name] = service
        return service

    def start_airflow(self, component: str) -> Service:
        return self.start(component, [AIRFLOW, component])

    def check_alive(self) -> None:
        """:class:`DeploymentError` naming the first process that exited, with its log's tail."""
        for service in self.services.values():
            code = service.process.poll()
            if code is not None:
                raise DeploymentError(f"{service.name} (pid {service.pid}) exited with {code}:\n{tail(service.log)}")

    def stop(self, grace: float = 20.0) -> list[str]:
        """Stop every process this deployment started; returns what had to be killed after the groups.

        SIGTERM to each process group (the scheduler stops its LocalExecutor workers, the api-server
        its uvicorn workers), SIGKILL to any group still alive after ``grace`` seconds, then SIGKILL
        by pid to any process still carrying this ``AIRFLOW_HOME``.
        """
        for service in reversed(list(self.services.values())):
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.pid, signal.SIGTERM)
        started = time.monotonic()
        deadline = started + grace
        for service in self.services.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            self.timings[f"stop {service.name}"] = round(time.monotonic() - started, 1)
        for service in self.services.values():
            # The group may outlive its leader (a worker of the scheduler, say).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=5)
        leftovers = []
        for pid, cmdline in self.processes():
            leftovers.append(f"{pid}: {cmdline}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leftovers

    def processes(self) -> Iterator[tuple[int, str]]:
        """Processes (pid, command line) whose environment has this deployment's ``AIRFLOW_HOME``."""
        marker = f"AIRFLOW_HOME={self.home}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                yield int(entry.name), cmdline

    # -- the REST API, as a user's client ---------------------------------------------------------

    def admin_password(self) -> str:
        """The simple auth manager writes the generated admin password under ``AIRFLOW_HOME``."""
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return str(json.loads(path.read_text())["admin"])

    def token(self) -> str:
        if self._token is None:
            response = requests.post(
                f"{self.api_url}/auth/token",
                json={"username": "admin", "password": self.admin_password()},
                timeout=30,
            )
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One authenticated call to the api-server (``path`` starts with ``/``)."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.api_url}{path}", headers=headers, timeout=60, **kwargs)

    def health(self) -> dict[str, Any] | None:
        try:
            response = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        except requests.RequestException:
            return None
        return response.json() if response.ok else None

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Until the api-server reports the metadata DB, scheduler, triggerer and dag-processor healthy."""

        def healthy() -> dict[str, Any] | None:
            self.check_alive()
            health = self.health()
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            if health and all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                return health
            return None

        return wait_for("every Airflow component to report healthy", healthy, timeout)

    # -- DAG runs ---------------------------------------------------------------------------------

    def wait_parsed(self, dag_ids: list[str], timeout: float) -> None:
        def parsed() -> bool:
            self.check_alive()
            errors = self.sql("SELECT filename, stacktrace FROM import_error")
            if errors:
                raise DeploymentError(f"DAG import errors: {errors}")
            rows = self.sql("SELECT dag_id FROM dag WHERE is_stale = false")
            return set(dag_ids) <= {r["dag_id"] for r in rows}

        wait_for(f"the dag-processor to parse {dag_ids}", parsed, timeout)

    def unpause(self, dag_id: str) -> None:
        self.set_paused(dag_id, False)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})
        assert response.ok, f"{'pausing' if paused else 'unpausing'} {dag_id}: {response.status_code} {response.text}"

    def wait_idle(self, dag_ids: list[str], timeout: float) -> None:
        """Until none of ``dag_ids`` has a queued or running run (e.g. one the scheduler started at a
        schedule boundary just before they were paused)."""

        def idle() -> bool:
            self.check_alive()
            return not any(r["state"] in ("queued", "running") for d in dag_ids for r in self.runs(d))

        wait_for(f"no queued or running runs of {dag_ids}", idle, timeout, interval=1.0)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run (no logical date, as the UI's Trigger button does); returns its run id."""
        response = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        assert response.ok, f"triggering {dag_id}: {response.status_code} {response.text}"
        return str(response.json()["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.sql("SELECT run_id, state, run_type FROM dag_run WHERE dag_id = %s ORDER BY id", (dag_id,))

    def wait_run(self, dag_id: str, run_id: str, timeout: float, *, fail_fast: bool = True) -> str:
        """Until the run finishes; returns its state.

        :param fail_fast: raise as soon as a task instance is failed or up for retry (a retry waits
            Airflow's default ``retry_delay``, 5 minutes), naming them.
        """

        def finished() -> str | None:
            self.check_alive()
            (row,) = self.sql("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
            if fail_fast:
                bad = [t for t in self.task_instances(dag_id, run_id) if t["state"] in ("failed", "up_for_retry")]
                if bad:
                    raise DeploymentError(f"{dag_id} {run_id}: task instances failed or up for retry: {bad}")
            return row["state"] if row["state"] in ("success", "failed") else None

        return wait_for(f"{dag_id} run {run_id} to finish", finished, timeout, interval=1.0)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.sql(
            "SELECT task_id, map_index, state, try_number, next_method, hostname FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
            (dag_id, run_id),
        )

    def tries(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Earlier tries of the run's task instances (``task_instance_history``)."""
        return self.sql(
            "SELECT task_id, map_index, state, try_number FROM task_instance_history"
            " WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index, try_number",
            (dag_id, run_id),
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> list[Any]:
        rows = self.sql(
            "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s"
            " AND key = 'return_value' ORDER BY map_index",
            (dag_id, run_id, task_id),
        )
        return [json.loads(r["value"]) if isinstance(r["value"], str) else r["value"] for r in rows]

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
        """The task's log file for one try (trigger logs of that try included), as text."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        texts = [p.read_text(errors="replace") for p in sorted(folder.glob(f"attempt={try_number}.log*"))]
        return "\n".join(texts)

    def log_files(self) -> list[Path]:
        return sorted(p for p in self.home.rglob("*") if p.is_file() and re.search(r"\.log($|\.)", p.name))

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
