"""The example sync DAG over the whole canvas catalog (90 tables) in a real deployment, with the emulator's
documented rate limits switched on and scaled down (issue 9 item 3): no failed task, no retry, every
429 waited out by deferring (no worker sleeps on one), every replica equal to the emulator.

A deployment of its own (the other module's emulator serves the 15 core tables): the sync example
alone in the dags folder, the ``cd2_api`` pool of 5 slots and the parallelism the README gives, an
emulator serving every table with a few rows, jobs that finish within the worker's first checks (so
the only waits are the rate limits'), and 5 job creations per window of ``WINDOW`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_instructure.emulator import Emulator
from tests.deployment.conftest import REPO, _deployment, _report
from tests.deployment.deployment import Deployment, pg_connect, wait_for
from tests.deployment.harness import bring_up, emulator_call, run_figures
from tests.replication.repl_helpers import assert_same_rows, expected_table, replica_table

# The deployment comes up (~1 min), syncs 90 tables (~4 min) and stops within one test.
pytestmark = [pytest.mark.deployment, pytest.mark.timeout(900)]

DAG_ID = "example_cd2_sync_to_database"
SEED = 12
ROWS = 3
CLOCK_START = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
#: The documented limits (5 job creations per minute) with the minute scaled to this many seconds. Long
#: enough that the 5 pool slots create jobs faster than the limit allows (a sync task of a 3-row table
#: takes 5-10 s on two shared cores, Airflow's start-up included), so 429s happen; 6 s windows saw none.
WINDOW = 12.0
#: A job is complete 0.5 s after its creation: the sync finishes in the worker without deferring on it.
JOB_SECONDS = 0.25
EMULATOR_ARGS = [
    "--catalog", "full", "--rows", str(ROWS), "--seed", str(SEED), "--clock-start", CLOCK_START.isoformat(),
    "--job-seconds", str(JOB_SECONDS),
]  # fmt: skip


@dataclass
class Full:
    """The running full-catalog deployment, its emulator's twin (the ground truth) and the first run."""

    deployment: Deployment
    emulator_url: str
    twin: Emulator
    warehouse_db: str
    run_id: str


@pytest.fixture(scope="module")
def full(request: pytest.FixtureRequest) -> Iterator[Full]:
    twin = Emulator(seed=SEED, rows=ROWS, clock_start=CLOCK_START, catalog="full")
    try:
        with _deployment(request, "airflow-e2e-full-") as (deployment, warehouse_db, created):
            began = time.monotonic()
            url = bring_up(
                deployment,
                dag_files=[REPO / "example_dags" / f"{DAG_ID}.py"],
                dag_ids=[DAG_ID],
                emulator_args=EMULATOR_ARGS,
                warehouse_db=warehouse_db,
                created=created,
                mark=lambda phase: deployment.timings.__setitem__(phase, round(time.monotonic() - began, 1)),
            )
            emulator_call(url, "POST", "rate-limits", json={"scale": WINDOW / 60})
            deployment.unpause(DAG_ID)  # starts the latest interval at once (catchup=False)
            runs = wait_for(f"the first run of {DAG_ID}", lambda: deployment.runs(DAG_ID), 60)
            yield Full(deployment, url, twin, warehouse_db, runs[0]["run_id"])
    finally:
        twin.close()


def test_full_catalog_syncs_under_the_rate_limits_without_a_failed_task(
    full: Full, request: pytest.FixtureRequest
) -> None:
    deployment = full.deployment
    tables = sorted(full.twin.dataset.tables["canvas"])
    assert len(tables) >= 90, f"the emulator serves {len(tables)} canvas tables, not the full catalog"
    state = deployment.wait_run(DAG_ID, full.run_id, timeout=900)
    figures = run_figures(deployment, full.emulator_url, DAG_ID, full.run_id, "sync", after="list_tables")
    deployment.timings["run"] = round(figures.run_seconds, 1)
    _report(request, f"\nfull-catalog sync under {WINDOW:g} s rate-limit windows: {figures}")

    tis = deployment.task_instances(DAG_ID, full.run_id)
    bad = [t for t in tis if t["state"] != "success" or t["try_number"] != 1]
    earlier = deployment.tries(DAG_ID, full.run_id)
    assert state == "success" and not bad and not earlier, f"run {state}; {bad}; earlier tries {earlier}"
    assert sorted(t["map_index"] for t in tis if t["task_id"] == "sync") == list(range(len(tables)))
    # The limits really were in the way: more job creations were tried than a window allows.
    assert figures.rate_limited.get("create_job", 0) > 0, figures
    # ...and every 429 was waited out in the triggerer: the tasks deferred, no worker slept on one
    # (before deferral on 429, this run slept 294 worker-seconds in the hook's retries).
    assert figures.deferrals_on_429 > 0 and figures.sleeps_on_429 == 0, figures

    (report,) = deployment.xcom(DAG_ID, full.run_id, "report")
    assert sorted(report) == tables
    conn = pg_connect(full.warehouse_db, autocommit=False)
    try:
        for table in tables:
            assert report[table]["mode"] == "snapshot", report[table]
            versioned = full.twin.dataset.table("canvas", table).versioned_schema
            schema, name = report[table]["target"].split(".", 1)
            actual = replica_table(conn, "postgres", f'"{schema}"."{name}"', versioned)
            expected = expected_table(full.twin, "canvas", table, full.twin.latest("canvas", table), versioned)
            assert_same_rows(actual, expected, f"canvas.{table} in PostgreSQL")
    finally:
        conn.close()
