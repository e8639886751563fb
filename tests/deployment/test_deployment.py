"""The provider in a real Airflow 3.3.2 deployment (issue 8 A): separate api-server, scheduler (LocalExecutor),
dag-processor and triggerer on a fresh PostgreSQL metadata database, the emulator as DAP.

The module's tests share one deployment (``e2e`` in conftest.py) and run in file order: the first
runs start while the connection test runs, the retry and second-sync tests come after them, the log
scan comes last. ``make e2e`` runs this module alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import requests

from airflow_provider_instructure.emulator.config import DEMO_CLIENT_SECRET
from airflow_provider_instructure.operators.lineage import dap_namespace
from tests.deployment.conftest import E2E, EXAMPLE_DAGS, RETRY_DAG, ROWS
from tests.deployment.deployment import pg_connect
from tests.deployment.ui_connection import ui_save_body, ui_test_body, visible_fields
from tests.operators.lineage_asserts import assert_mapped_sync_lineage, read_events
from tests.replication.repl_helpers import assert_same_rows, expected_table, replica_table

pytestmark = pytest.mark.deployment

MAPPED = {
    "example_cd2_list_tables": "get_schema",
    "example_cd2_snapshot_to_files": "download",
    "example_cd2_sync_to_database": "sync",
}
DEFERRABLE = {"example_cd2_snapshot_to_files": "download", "example_cd2_sync_to_database": "sync"}
#: What the second sync run sees: one round of changes committed by the emulator.
ADVANCE = {"updates": 3, "inserts": 2, "deletes": 1, "step_seconds": 60}


def _where(e2e: E2E) -> str:
    return f"(logs: {e2e.deployment.home})"


def test_connection_saved_and_tested_as_the_ui_does(e2e: E2E) -> None:
    """The Test button passes for a connection made in the provider's form, filled as the README says."""
    deployment = e2e.deployment
    response = deployment.api("GET", "/ui/connections/hook_meta")
    assert response.ok, response.text
    (meta,) = [m for m in response.json() if m["connection_type"] == "instructure"]
    shown = visible_fields(meta)
    # As the README's "Fill it like this" says for the emulator: Client ID, Client Secret, the whole
    # API URL and its Port (when the form shows one); every other field keeps what the form shows.
    typed: dict[str, Any] = {"login": "us-east-1#demo-client-id", "password": DEMO_CLIENT_SECRET}
    typed["host"] = e2e.emulator_url
    if "port" in shown:
        typed["port"] = e2e.emulator_url.rsplit(":", 1)[1]
    save = ui_save_body(meta, "instructure_ui", typed)
    response = deployment.api("POST", "/api/v2/connections", json=save)
    assert response.status_code == 201, f"save {save}: {response.status_code} {response.text}"

    listed = deployment.api("GET", "/api/v2/connections", params={"limit": 100})
    (row,) = [c for c in listed.json()["connections"] if c["connection_id"] == "instructure_ui"]
    body = ui_test_body(row)
    response = deployment.api("POST", "/api/v2/connections/test", json=body)
    assert response.status_code == 200, (
        f"the UI's Test button would fail: POST /api/v2/connections/test {json.dumps(body)} -> "
        f"{response.status_code} {response.text} (saved with {json.dumps({**save, 'password': '<secret>'})})"
    )
    result = response.json()
    assert result["status"] is True, result
    # The README: the message names the API URL and the Client ID, never the token nor the secret.
    assert e2e.emulator_url in result["message"] and "us-east-1#demo-client-id" in result["message"], result
    assert DEMO_CLIENT_SECRET not in result["message"] and "eyJ" not in result["message"], result


@pytest.fixture(scope="module")
def first_runs(e2e: E2E) -> dict[str, str]:
    """Every example DAG's first run on the fresh metadata database, finished."""
    for dag_id, run_id in e2e.first_runs.items():
        e2e.deployment.wait_run(dag_id, run_id, timeout=240)
    e2e.mark("first runs done")
    return e2e.first_runs


def test_every_example_dag_succeeds_first_time_without_retries(e2e: E2E, first_runs: dict[str, str]) -> None:
    deployment = e2e.deployment
    problems = []
    for dag_id in EXAMPLE_DAGS:
        run_id = first_runs[dag_id]
        # The earliest run (a schedule boundary passing during the test may have added a later one).
        first = deployment.runs(dag_id)[0]
        assert first["run_id"] == run_id, f"{dag_id}: {run_id} is not its first run"
        tis = deployment.task_instances(dag_id, run_id)
        state = first["state"]
        bad = [t for t in tis if t["state"] != "success" or t["try_number"] != 1]
        earlier = deployment.tries(dag_id, run_id)
        if state != "success" or bad or earlier:
            problems.append(f"{dag_id} {run_id}: run {state}; not success at try 1: {bad}; earlier tries: {earlier}")
        mapped = sorted(t["map_index"] for t in tis if t["task_id"] == MAPPED[dag_id])
        assert mapped == list(range(len(e2e.tables))), f"{dag_id}: {MAPPED[dag_id]} mapped over {mapped}"
    # A task the api-server failed while recording its success (the asset alias race on a fresh metadata
    # database) shows up here even when its own log ends normally.
    api_log = deployment.services["api-server"].log.read_text(errors="replace")
    problems += [line[:600] for line in api_log.splitlines() if "IntegrityError" in line or "UniqueViolation" in line]
    assert not problems, "\n".join(problems) + f" {_where(e2e)}"

    assert deployment.xcom("example_cd2_list_tables", first_runs["example_cd2_list_tables"], "list_tables") == [
        e2e.tables
    ]
    (files,) = deployment.xcom("example_cd2_snapshot_to_files", first_runs["example_cd2_snapshot_to_files"], "report")
    assert sorted(files) == e2e.tables
    assert all(r["kind"] == "snapshot" and r["rows"] == ROWS for r in files.values()), files
    written = sorted(p.name for p in (e2e.lake / "canvas").iterdir() if p.is_dir())
    assert written == e2e.tables, f"the cd2_target Variable was not used: {e2e.lake} holds {written}"
    (synced,) = deployment.xcom("example_cd2_sync_to_database", first_runs["example_cd2_sync_to_database"], "report")
    assert sorted(synced) == e2e.tables
    assert all(r["mode"] == "snapshot" and r["inserted"] == ROWS for r in synced.values()), synced


def test_deferrable_tasks_are_resumed_by_the_triggerer(e2e: E2E, first_runs: dict[str, str]) -> None:
    """Each deferrable task deferred in try 1, its trigger fired in the triggerer process, the task resumed."""
    deployment = e2e.deployment
    triggerer_jobs = {r["id"] for r in deployment.sql("SELECT id FROM job WHERE job_type = 'TriggererJob'")}
    assert triggerer_jobs, "no TriggererJob in the metadata database"
    missing = []
    for dag_id, task_id in DEFERRABLE.items():
        folder = deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={first_runs[dag_id]}" / f"task_id={task_id}"
        for map_index in range(len(e2e.tables)):
            task_log = (folder / f"map_index={map_index}" / "attempt=1.log").read_text(errors="replace")
            trigger_logs = list((folder / f"map_index={map_index}").glob("attempt=1.log.trigger.*.log"))
            # The trigger ran in the triggerer process: its log file is named after the TriggererJob. Its
            # "Trigger fired event" line is not always flushed to that file before the test reads it (seen
            # once on a fresh clone), so the firing is read from the task: only the trigger's "complete"
            # event makes the resumed try log the job complete and push its XCom.
            by_triggerer = {int(p.name.rsplit(".", 2)[-2]) for p in trigger_logs} & triggerer_jobs
            resumed = task_log.split("Pausing task as DEFERRED", 1)[-1]
            if (
                "Pausing task as DEFERRED" not in task_log
                or not by_triggerer
                or " complete: " not in resumed
                or "Pushing xcom" not in resumed
            ):
                missing.append(f"{dag_id} {task_id}[{map_index}]: trigger logs {[p.name for p in trigger_logs]}")
    assert not missing, "tasks that did not go deferred -> triggerer -> resumed:\n" + "\n".join(missing)
    triggerer_log = deployment.services["triggerer"].log.read_text(errors="replace")
    assert "Starting the triggerer" in triggerer_log or "triggers currently running" in triggerer_log


def test_a_retry_after_a_fault_resumes_the_same_job(e2e: E2E, first_runs: dict[str, str]) -> None:
    deployment = e2e.deployment
    # From now on jobs finish within the worker's first checks: later runs need no triggerer round trip.
    e2e.emulator("PATCH", "config", json={"job_waiting_seconds": 0.5, "job_running_seconds": 0.5})
    # The scheduled example DAGs are paused meanwhile: a run the scheduler starts at a schedule
    # boundary (hh:00, hh:30) would create jobs counted below and could take the injected fault.
    scheduled = EXAMPLE_DAGS[1:]
    for dag_id in scheduled:
        deployment.set_paused(dag_id, True)
    try:
        deployment.wait_idle(scheduled, timeout=180)
        before = e2e.emulator("GET", "stats")
        e2e.emulator("POST", "faults", json={"route": "download", "kind": "500", "count": 1})
        deployment.unpause(RETRY_DAG)
        run_id = deployment.trigger(RETRY_DAG)
        state = deployment.wait_run(RETRY_DAG, run_id, timeout=120, fail_fast=False)
        after = e2e.emulator("GET", "stats")
    finally:
        for dag_id in scheduled:
            deployment.unpause(dag_id)
    e2e.mark("retry run done")

    (ti,) = deployment.task_instances(RETRY_DAG, run_id)
    assert state == "success" and ti["state"] == "success", f"{state} {ti} {_where(e2e)}"
    assert ti["try_number"] == 2, f"the injected fault did not fail try 1: {ti}"
    assert [t["state"] for t in deployment.tries(RETRY_DAG, run_id)] == ["failed"]
    assert after["calls"]["create_job"] - before["calls"]["create_job"] == 1, (before, after)
    assert after["jobs_created"] - before["jobs_created"] == 1, (before, after)
    first = deployment.task_log(RETRY_DAG, run_id, "download", -1, 1)
    second = deployment.task_log(RETRY_DAG, run_id, "download", -1, 2)
    started = re.search(r"job ([0-9a-f-]{36}) is", first)
    assert started, f"try 1 started no job:\n{first[-2000:]}"
    assert f"Resuming job {started.group(1)}" in second, f"try 2 did not resume job {started.group(1)}:\n{second}"


def test_second_sync_run_leaves_the_replica_equal_to_dap(e2e: E2E, first_runs: dict[str, str]) -> None:
    deployment = e2e.deployment
    dag_id = "example_cd2_sync_to_database"
    step = ADVANCE["step_seconds"]
    e2e.emulator("POST", "advance", json=ADVANCE)
    e2e.twin.advance(step=timedelta(seconds=step), **{k: v for k, v in ADVANCE.items() if k != "step_seconds"})
    run_id = deployment.trigger(dag_id)
    state = deployment.wait_run(dag_id, run_id, timeout=180)
    e2e.mark("second sync done")
    tis = deployment.task_instances(dag_id, run_id)
    bad = [t for t in tis if t["state"] != "success" or t["try_number"] != 1]
    assert state == "success" and not bad, f"second sync run {state}: {bad} {_where(e2e)}"
    (report,) = deployment.xcom(dag_id, run_id, "report")
    assert {r["mode"] for r in report.values()} == {"incremental"}, report

    conn = pg_connect(e2e.warehouse_db, autocommit=False)
    try:
        for table in e2e.tables:
            versioned = e2e.twin.dataset.table("canvas", table).versioned_schema
            schema, name = report[table]["target"].split(".", 1)
            actual = replica_table(conn, "postgres", f'"{schema}"."{name}"', versioned)
            expected = expected_table(e2e.twin, "canvas", table, e2e.twin.latest("canvas", table), versioned)
            assert_same_rows(actual, expected, f"canvas.{table} in PostgreSQL after the second sync")
    finally:
        conn.close()


SECRETS = {
    "client secret": re.compile(re.escape(DEMO_CLIENT_SECRET)),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"),
    "URL signature": re.compile(r"X-Amz-(?:Signature|Credential)=(?!\*\*\*)[^&\s\"'\\]+"),
}


def test_no_secret_in_any_log(e2e: E2E) -> None:
    """Task, trigger and process logs of the whole session hold no client secret, JWT or signed URL."""
    # The patterns must match the real thing: a token the emulator issues to the demo client.
    login = requests.post(
        f"{e2e.emulator_url}/ids/auth/login",
        auth=("us-east-1#demo-client-id", DEMO_CLIENT_SECRET),
        data={"grant_type": "client_credentials"},
        timeout=30,
    )
    assert SECRETS["JWT"].fullmatch(login.json()["access_token"]), "the JWT pattern misses the emulator's tokens"
    found: Counter[tuple[str, str]] = Counter()
    files = [p for p in e2e.deployment.log_files() if p.name != "emulator.log"]  # the stand-in for DAP itself
    assert len(files) > 50, files
    for path in files:
        text = path.read_text(errors="replace")
        for what, pattern in SECRETS.items():
            for _ in pattern.finditer(text):
                found[(what, str(path.relative_to(e2e.deployment.home)))] += 1
    assert not found, f"secrets in logs: {dict(found)} {_where(e2e)}"


def test_openlineage_events_of_the_mapped_sync(e2e: E2E, first_runs: dict[str, str]) -> None:
    """The OpenLineage provider's listener, in the real worker processes, reports every synced
    table: ``canvas.<table>`` from DAP in, the PostgreSQL replica (schema facet, rowCount) out."""
    events = read_events(e2e.deployment.home / "openlineage" / "event")
    dag_id = "example_cd2_sync_to_database"
    run_id = first_runs[dag_id]
    (report,) = e2e.deployment.xcom(dag_id, run_id, "report")
    assert_mapped_sync_lineage(
        events,
        dag_id,
        "sync",
        dap_namespace=dap_namespace(e2e.emulator_url),
        destination_namespace="postgres://127.0.0.1:5432",
        database=e2e.warehouse_db,
        report=report,
        run_id=run_id,
    )
