"""One real Airflow deployment, brought up once for the deployment test module (see ``deployment.py``).

What a user deploys: copies of ``example_dags/example_cd2_*.py`` (plus this package's test DAGs) in the
dags folder, the ``instructure_default`` and ``cd2_warehouse`` connections as ``AIRFLOW_CONN_*``
environment variables, the ``cd2_api`` pool made with ``airflow pools set``. The DAP side is the
emulator CLI in its own process; an identical emulator in this process (same seed, rows, clock and
``advance`` calls, all deterministic) is the ground truth for the replica.

The temporary ``AIRFLOW_HOME`` is removed after a clean run and kept, with its path printed, when a
test failed, a process had to be killed, or ``E2E_KEEP_HOME`` is set.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_instructure.emulator import Emulator
from airflow_provider_instructure.operators.cd2 import CD2QueryOperator
from tests.conftest import unavailable
from tests.deployment.deployment import AIRFLOW, PG, REPO, Deployment, DeploymentError, pg_connect, wait_for
from tests.deployment.harness import bring_up
from tests.operators.lineage_asserts import file_transport_env

SEED = 11
ROWS = 20
#: The emulator's initial commit time, shared with the in-process twin.
CLOCK_START = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
#: Jobs of the first runs outlast the operators' checks in the worker (``defer_after``, 7 s) by 6 s, so
#: that every deferrable task really defers even when a loaded machine delays its last check (a quicker
#: job finishes in the worker, by design), and end before the trigger's first check (10 s after deferring).
FIRST_RUN_JOB_SECONDS = float(inspect.signature(CD2QueryOperator.__init__).parameters["defer_after"].default) + 6.0
EXAMPLE_DAGS = ["example_cd2_list_tables", "example_cd2_snapshot_to_files", "example_cd2_sync_to_database"]
RETRY_DAG = "e2e_retry_resumes_job"
DAGS_DIR = Path(__file__).resolve().parent / "dags"
#: The emulator CLI's options: the original 15 tables (14 in canvas), which every example DAG maps
#: over; the full catalog has a deployment of its own (test_full_catalog.py).
EMULATOR_ARGS = [
    "--rows", str(ROWS), "--seed", str(SEED), "--clock-start", CLOCK_START.isoformat(), "--catalog", "core",
    "--job-seconds", str(FIRST_RUN_JOB_SECONDS / 2),  # the time spent waiting, then as much running
]  # fmt: skip


@dataclass
class E2E:
    """The running deployment and what the tests need around it."""

    deployment: Deployment
    emulator_url: str
    twin: Emulator
    warehouse_db: str
    tables: list[str]
    first_runs: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def lake(self) -> Path:
        """Where the files example writes (the ``cd2_target`` Variable)."""
        return self.deployment.home / "cd2-lake"

    def emulator(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call to the emulator's ``/_emulator`` control routes."""
        response = requests.request(method, f"{self.emulator_url}/_emulator/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return dict(response.json())

    def mark(self, phase: str) -> None:
        self.deployment.timings[phase] = round(time.monotonic() - self.started, 1)


def _check_prerequisites() -> None:
    if not Path(AIRFLOW).exists():
        unavailable(f"the airflow command is missing next to {sys.executable} (run `make .venv/.stamp-test`)")
    try:
        pg_connect("postgres").close()
    except Exception as exc:
        unavailable(f"PostgreSQL at {PG['host']}:{PG['port']} (user {PG['user']}) is not reachable: {exc}")


def _report(request: pytest.FixtureRequest, text: str) -> None:
    """A line on the terminal even while output is captured (the kept AIRFLOW_HOME must be seen)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(text)


@contextlib.contextmanager
def _deployment(request: pytest.FixtureRequest, prefix: str) -> Iterator[tuple[Deployment, str, list[str]]]:
    """A new :class:`Deployment` (home, warehouse database name, databases made so far), stopped and
    cleaned up afterwards whatever happened; the home is kept after a failure or with ``E2E_KEEP_HOME``."""
    _check_prerequisites()
    failed_before = request.session.testsfailed
    deployment = Deployment(Path(tempfile.mkdtemp(prefix=prefix)))
    started = time.monotonic()
    created: list[str] = []
    leftovers: list[str] = []
    clean = False
    try:
        yield deployment, f"cd2_e2e_{deployment.suffix}", created
        clean = True  # the body raised nothing (a failed test is counted below)
    finally:
        deployment.timings["tests done"] = round(time.monotonic() - started, 1)
        leftovers = deployment.stop()
        deployment.timings["stopped"] = round(time.monotonic() - started, 1)
        for name in created:
            try:
                deployment.drop_database(name)
            except Exception as exc:
                _report(request, f"could not drop database {name}: {exc}")
        (deployment.home / "timings.json").write_text(json.dumps(deployment.timings, indent=2))
        _report(request, f"\ndeployment test timings (s): {deployment.timings}")
        failed = not clean or request.session.testsfailed > failed_before
        if failed or leftovers or os.environ.get("E2E_KEEP_HOME"):
            _report(request, f"deployment test: logs and AIRFLOW_HOME kept in {deployment.home}")
        else:
            deployment.remove()
    if leftovers:
        raise DeploymentError(
            "processes of the deployment outlived their process groups and were killed by pid: " + "; ".join(leftovers)
        )


@pytest.fixture(scope="module")
def e2e(request: pytest.FixtureRequest) -> Iterator[E2E]:
    """Bring the deployment up, start every example DAG's first run, and tear everything down afterwards."""
    twin = Emulator(seed=SEED, rows=ROWS, clock_start=CLOCK_START, catalog="core")
    try:
        with _deployment(request, "airflow-e2e-") as (deployment, warehouse_db, created):
            e2e = E2E(deployment, "", twin, warehouse_db, sorted(twin.dataset.tables["canvas"]))
            e2e.started = time.monotonic()
            # OpenLineage events, one file per event (many task processes write at once).
            (deployment.home / "openlineage").mkdir()
            deployment.extra_env.update(file_transport_env(deployment.home / "openlineage" / "event", append=False))
            e2e.emulator_url = bring_up(
                deployment,
                dag_files=[*sorted((REPO / "example_dags").glob("example_cd2_*.py")), *sorted(DAGS_DIR.glob("*.py"))],
                dag_ids=[*EXAMPLE_DAGS, RETRY_DAG],
                emulator_args=EMULATOR_ARGS,
                warehouse_db=warehouse_db,
                variables={"cd2_target": str(e2e.lake)},
                created=created,
                mark=e2e.mark,
            )
            # First runs, as a user starts them: unpausing a scheduled DAG (catchup=False) starts its
            # latest interval at once; the unscheduled one is triggered.
            for dag_id in EXAMPLE_DAGS:
                deployment.unpause(dag_id)
            e2e.first_runs["example_cd2_list_tables"] = deployment.trigger("example_cd2_list_tables")
            for dag_id in EXAMPLE_DAGS[1:]:
                runs = wait_for(f"the first run of {dag_id}", lambda d=dag_id: deployment.runs(d), 60)
                e2e.first_runs[dag_id] = runs[0]["run_id"]
            yield e2e
    finally:
        twin.close()
