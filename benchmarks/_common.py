"""Shared plumbing of the benchmark scripts (not a test module; pytest never collects it).

* :class:`EmulatorProcess` runs the DAP emulator in its own process, so that its memory and
  CPU are never counted against either client, and talks to it over HTTP (login, query,
  job polling, ``/_emulator/advance``).
* :func:`run_measured` runs a child process and returns its wall-clock seconds and peak RSS
  (``ru_maxrss`` from ``wait4``: exact, no polling, no external tool).
* :func:`print_table` prints aligned result tables.

Everything talks to 127.0.0.1 only; no Instructure host is ever called.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIENT_ID = "us-east-1#demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret"


def dap_cli() -> Path:
    """The official ``dap`` CLI: ``$DAP_CLI``, else ``.venv-dap/bin/dap`` of this repository."""
    path = Path(os.environ.get("DAP_CLI") or REPO / ".venv-dap" / "bin" / "dap")
    if not (path.is_file() and os.access(path, os.X_OK)):
        sys.exit(f"official dap CLI not found at {path}: run `make test` once (it builds .venv-dap) or set DAP_CLI")
    return path


def dap_python() -> Path:
    """The interpreter of the official client's virtualenv (for its import-only baseline)."""
    return dap_cli().parent / "python"


_AIRFLOW_HOME: Path | None = None


def airflow_home() -> Path:
    """A temporary ``AIRFLOW_HOME`` for this run (removed at exit): nothing touches ``~/airflow``."""
    global _AIRFLOW_HOME
    if _AIRFLOW_HOME is None:
        _AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bench-airflow-home-"))
        atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
    return _AIRFLOW_HOME


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no ``DAP_*``/``AIRFLOW_CONN_*`` leaking in from outside,
    and a temporary ``AIRFLOW_HOME`` unless ``extra`` names one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAP_", "AIRFLOW_CONN_"))}
    env["AIRFLOW_HOME"] = str(airflow_home())
    env["DAP_TRACKING"] = "false"
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# -- measuring child processes -------------------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall-clock seconds, peak resident set size and its output."""

    command: list[str]
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Measured:
        if self.returncode != 0:
            sys.exit(
                f"{what} failed with exit code {self.returncode}\n--- command\n{' '.join(self.command)}\n"
                f"--- stdout (tail)\n{self.stdout[-4000:]}\n--- stderr (tail)\n{self.stderr[-6000:]}"
            )
        return self

    def last_json(self) -> dict[str, Any]:
        """The last stdout line that is a JSON object (how worker modes report in-process figures)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise ValueError(f"no JSON result line in the output of {' '.join(self.command)}")


def run_measured(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Measured:
    """Run ``command`` to completion; peak RSS is ``ru_maxrss`` of the child (and of any
    descendant it waited for, the largest one), read with ``wait4`` so no spike is missed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(command), stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            list(command),
            seconds,
            usage.ru_maxrss / 1024.0,  # Linux reports KiB
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def baseline_rss(python: Path | str, imports: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Peak RSS (MiB) of a process that only imports ``imports`` and exits: the fixed cost
    every client pays before it moves a byte."""
    code = "\n".join(f"import {name}" for name in imports)
    return run_measured([str(python), "-c", code], env=env).check(f"baseline import of {imports}").peak_rss_mb


class DiskSampler:
    """Peak bytes of the files under ``folder`` (and how many there were then), sampled every
    ``interval`` seconds on a thread while the ``with`` block runs. A sample can miss a peak
    shorter than the interval; parts live far longer than that."""

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        self.folder = folder
        self.interval = interval
        self.peak = 0
        self.peak_files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = files = 0
        for root, _dirs, names in os.walk(self.folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                    files += 1
                except OSError:  # removed between listing and stat
                    pass
        if total > self.peak:
            self.peak, self.peak_files = total, files

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the emulator in its own process -----------------------------------------------------------------


@dataclass
class EmulatorProcess:
    """``python -m airflow_provider_instructure.emulator`` on a free 127.0.0.1 port.

    :param rows: ``{"canvas.submissions": 1_000_000}``; other tables get 10 rows.
    :param rows_per_part: maximum rows per result part.
    :param parts: minimum parts per result.
    :param seed: data seed.
    """

    rows: dict[str, int]
    rows_per_part: int = 100_000
    parts: int = 2
    seed: int = 0
    url: str = ""
    _proc: subprocess.Popen[str] | None = None
    _token: str | None = None
    _session: requests.Session = field(default_factory=requests.Session)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmulatorProcess:
        command = [
            sys.executable, "-m", "airflow_provider_instructure.emulator",
            "--port", "0", "--seed", str(self.seed), "--job-seconds", "0",
            "--parts", str(self.parts), "--rows-per-part", str(self.rows_per_part),
            "--log-level", "warning",
            "--rows", *(f"{name}={count}" for name, count in self.rows.items()), "*=10",
        ]  # fmt: skip
        self._proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=REPO
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                # Keep draining its output so the pipe never fills up and blocks the server.
                threading.Thread(target=self._drain, daemon=True).start()
                return self._wait_ready(deadline)
        self.stop()
        raise RuntimeError("the emulator process did not start")

    def _wait_ready(self, deadline: float) -> EmulatorProcess:
        # The address is printed just before the server starts accepting connections.
        while time.monotonic() < deadline:
            try:
                self._session.get(f"{self.url}/_emulator/stats", timeout=5).raise_for_status()
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the emulator at {self.url} did not answer")

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for _ in self._proc.stdout:
            pass

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # SIGINT, not SIGTERM: the emulator's CLI then shuts down through its own clean-up,
            # which removes its result files (uvicorn re-raises SIGTERM, which skips it).
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    # -- what clients need ---------------------------------------------------------------------------

    def connection_json(self) -> str:
        """The Airflow connection (``AIRFLOW_CONN_INSTRUCTURE_DEFAULT``) for this emulator."""
        return json.dumps(
            {
                "conn_type": "instructure",
                "host": self.url,
                "login": DEMO_CLIENT_ID,
                "password": DEMO_CLIENT_SECRET,
                "extra": {"namespace": "canvas", "timeout": 300},
            }
        )

    def dap_command(self, *args: str) -> list[str]:
        """``dap [global options] <args>`` against this emulator."""
        return [
            str(dap_cli()),
            "--base-url", self.url,
            "--client-id", DEMO_CLIENT_ID,
            "--client-secret", DEMO_CLIENT_SECRET,
            "--non-interactive", "--no-tracking", "--loglevel", "warning",
            *args,
        ]  # fmt: skip

    # -- direct HTTP (warm-up and control) ------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            response = self._session.post(
                f"{self.url}/ids/auth/login",
                auth=(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
                data={"grant_type": "client_credentials"},
                timeout=30,
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def query(self, namespace: str, table: str, body: dict[str, Any], *, timeout: float = 3600) -> dict[str, Any]:
        """POST a query and poll until its job is complete; returns the complete job.

        Identical queries are de-duplicated by the emulator (as by DAP), so a client that
        sends the same body afterwards gets this job, with its files already written.
        """
        response = self._session.post(
            f"{self.url}/dap/query/{namespace}/table/{table}/data", json=body, headers=self._auth(), timeout=300
        )
        response.raise_for_status()
        job = response.json()
        deadline = time.monotonic() + timeout
        while job.get("status") not in ("complete", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.get('id')} not complete after {timeout:.0f} s")
            time.sleep(0.5)
            response = self._session.get(f"{self.url}/dap/job/{job['id']}", headers=self._auth(), timeout=60)
            response.raise_for_status()
            job = response.json()
        if job["status"] != "complete":
            raise RuntimeError(f"job {job['id']} failed: {job.get('error')}")
        return job

    def object_urls(self, object_ids: Sequence[str]) -> dict[str, str]:
        response = self._session.post(
            f"{self.url}/dap/object/url", json=[{"id": oid} for oid in object_ids], headers=self._auth(), timeout=60
        )
        response.raise_for_status()
        return {oid: entry["url"] for oid, entry in response.json()["urls"].items()}

    def object_sizes(self, job: dict[str, Any]) -> int:
        """Total bytes of a job's files (HEAD-free: read the Content-Length of a streamed GET)."""
        total = 0
        urls = self.object_urls([o["id"] for o in job["objects"]])
        for url in urls.values():
            with self._session.get(url, stream=True, timeout=60) as response:
                response.raise_for_status()
                total += int(response.headers["Content-Length"])
        return total

    def advance(self, tables: list[str], **amounts: Any) -> str:
        response = self._session.post(f"{self.url}/_emulator/advance", json={"tables": tables, **amounts}, timeout=600)
        response.raise_for_status()
        return str(response.json()["ts"])

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change emulator settings (``PATCH /_emulator/config``), e.g. ``download_bandwidth``."""
        response = self._session.patch(f"{self.url}/_emulator/config", json=values, timeout=30)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        response = self._session.get(f"{self.url}/_emulator/stats", timeout=30)
        response.raise_for_status()
        return response.json()


# -- output ------------------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> None:
    """Print rows as an aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    if title:
        print(f"\n{title}")
    print(fmt(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(fmt(row))
    sys.stdout.flush()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} GB"


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def log(message: str) -> None:
    """Progress lines go to stderr, the result tables to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
