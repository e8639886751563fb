"""Bringing a :class:`~tests.deployment.deployment.Deployment` up as a user would, and reading back what a
DAG run cost. Shared by the deployment tests (``conftest.py``) and ``benchmarks/bench_makespan.py``.

* :func:`bring_up`: the DAG files, the databases, the emulator CLI in its own process, the
  connections as ``AIRFLOW_CONN_*`` variables, ``airflow db migrate``, the four Airflow components,
  the ``cd2_api`` pool and Variables set with the CLI, until everything is healthy and parsed.
* :func:`run_figures`: the makespan of a DAG run from the metadata database, the 429 answers from
  the emulator's counters and the worker-seconds spent sleeping on 429 from the task logs.

Nothing here imports pytest or Airflow: the benchmark runs it with the project's ``.venv`` Python.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from airflow_provider_instructure.timestamps import parse_timestamp
from tests.deployment.deployment import PG, Deployment, wait_for

DEMO_CLIENT_ID = "us-east-1#demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret"
#: What the README tells a user to create before the first run.
POOL = "cd2_api"
POOL_SLOTS = 5


def start_emulator(deployment: Deployment, args: list[str]) -> str:
    """``python -m airflow_provider_instructure.emulator --port 0 ARGS`` as the deployment's ``emulator``
    service; returns its URL once it prints it."""
    service = deployment.start(
        "emulator", [sys.executable, "-m", "airflow_provider_instructure.emulator", "--port", "0", *args]
    )

    def url() -> str | None:
        deployment.check_alive()
        found = re.search(r"listening on (http://\S+)", service.log.read_text(errors="replace"))
        return found.group(1) if found else None

    return wait_for("the emulator to listen", url, 60, interval=0.2)


def emulator_call(emulator_url: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One call to the emulator's unauthenticated ``/_emulator`` control routes."""
    response = requests.request(method, f"{emulator_url}/_emulator/{path}", timeout=30, **kwargs)
    response.raise_for_status()
    return dict(response.json())


def connections(emulator_url: str, warehouse_db: str) -> dict[str, str]:
    """The connections as a user sets them (the README's JSON form; a URI for PostgreSQL)."""
    port = int(emulator_url.rsplit(":", 1)[1])
    instructure = {"conn_type": "instructure", "host": emulator_url, "port": port, "login": DEMO_CLIENT_ID}
    return {
        "AIRFLOW_CONN_INSTRUCTURE_DEFAULT": json.dumps(
            {
                **instructure,
                "password": DEMO_CLIENT_SECRET,
                "extra": {"namespace": "canvas", "timeout": 60, "retry_limit": 6},
            }
        ),
        # For the retry test DAG: one attempt per HTTP call, so one injected fault fails the try.
        "AIRFLOW_CONN_INSTRUCTURE_FLAKY": json.dumps(
            {**instructure, "password": DEMO_CLIENT_SECRET, "extra": {"retry_limit": 1}}
        ),
        "AIRFLOW_CONN_CD2_WAREHOUSE": f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{warehouse_db}",
    }


def bring_up(
    deployment: Deployment,
    *,
    dag_files: Iterable[Path],
    dag_ids: list[str],
    emulator_args: list[str],
    warehouse_db: str,
    variables: dict[str, str] | None = None,
    pool_slots: int = POOL_SLOTS,
    created: list[str] | None = None,
    mark: Callable[[str], None] = lambda phase: None,
) -> str:
    """Start everything a user deploys and wait until ``dag_ids`` are parsed; returns the emulator's URL.

    :param created: databases made so far are appended to it (the caller drops them, even after a failure).
    :param mark: called with ``"migrated"`` and ``"up"`` (phase timings).
    :raises DeploymentError: a process died or a wait timed out.
    """
    created = created if created is not None else []
    deployment.dags.mkdir()
    deployment.process_logs.mkdir()
    (deployment.home / "tmp").mkdir()
    for source in dag_files:
        shutil.copy(source, deployment.dags / source.name)
    for name in (deployment.metadata_db, warehouse_db):
        deployment.create_database(name)
        created.append(name)
    emulator_url = start_emulator(deployment, emulator_args)
    deployment.extra_env.update(connections(emulator_url, warehouse_db))
    deployment.cli("db-migrate", "db", "migrate")
    mark("migrated")
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        deployment.start_airflow(component)
    # As the README tells a user: the pool, and the Variables the example DAGs read.
    commands = {"pools-set": ["pools", "set", POOL, str(pool_slots), "DAP job creation"]}
    for name, value in (variables or {}).items():
        commands[f"variables-set-{name}"] = ["variables", "set", name, value]
    deployment.cli_parallel(commands)
    deployment.wait_healthy(timeout=120)
    deployment.wait_parsed(dag_ids, timeout=120)
    mark("up")
    return emulator_url


# -- what a run cost --------------------------------------------------------------------------------

#: The hook's retry line for a 429 slept on in the calling process (hooks/retry.py ``before_sleep``).
SLEPT_ON_429 = re.compile(r"failed \(DapRateLimitError: [^\n]*?\); retrying in ([0-9.]+) s")
#: A task deferring on 429 instead (the operators' rate-limit deferral): counted, not summed.
DEFERRED_ON_429 = re.compile(r"rate limit[^\n]*deferring", re.IGNORECASE)


@dataclass
class RunFigures:
    """What one DAG run cost (seconds unless named otherwise).

    :param makespan: from the end of ``after`` (the upstream task whose output the mapped tasks
        expand over: from then on they can start) to the last end of a ``task_id`` task, from the
        metadata database (a task's ``start_date`` is not used: it may be a resumption's).
    :param run_seconds: the whole run, its first task's start to its last task's end.
    :param tasks: task instances of ``task_id``.
    :param slept_on_429: worker-seconds spent sleeping on 429 answers inside task processes (the
        hook's "retrying in N s" lines in task logs; trigger logs excluded: the triggerer's waits hold
        no worker slot).
    :param sleeps_on_429: how many such sleeps.
    :param deferrals_on_429: task log lines saying a rate limit made the task defer.
    :param rate_limited: 429 answers per route, from the emulator's counters.
    """

    makespan: float
    run_seconds: float
    tasks: int
    slept_on_429: float
    sleeps_on_429: int
    deferrals_on_429: int
    rate_limited: dict[str, int] = field(default_factory=dict)
    tries: dict[int, int] = field(default_factory=dict)


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


def task_logs(deployment: Deployment, dag_id: str, run_id: str, task_id: str) -> Iterable[Path]:
    """Task log files of every try and map index of ``task_id`` (not the triggerer's ``.trigger.`` files)."""
    folder = deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return (p for p in sorted(folder.rglob("attempt=*.log")) if ".trigger." not in p.name)


def run_figures(
    deployment: Deployment, emulator_url: str, dag_id: str, run_id: str, task_id: str, after: str
) -> RunFigures:
    """The figures of one finished run (see :class:`RunFigures`)."""
    rows = deployment.sql(
        "SELECT task_id, start_date, end_date, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    )
    mapped = [r for r in rows if r["task_id"] == task_id]
    timed = [r for r in rows if r["start_date"] and r["end_date"]]
    slept, sleeps, deferrals = 0.0, 0, 0
    for path in task_logs(deployment, dag_id, run_id, task_id):
        text = path.read_text(errors="replace")
        found = [float(s) for s in SLEPT_ON_429.findall(text)]
        slept += sum(found)
        sleeps += len(found)
        deferrals += len(DEFERRED_ON_429.findall(text))
    tries: dict[int, int] = {}
    for r in mapped:
        tries[r["try_number"]] = tries.get(r["try_number"], 0) + 1
    return RunFigures(
        makespan=_seconds(
            max(r["end_date"] for r in rows if r["task_id"] == after), max(r["end_date"] for r in mapped)
        ),
        run_seconds=_seconds(min(r["start_date"] for r in timed), max(r["end_date"] for r in timed)),
        tasks=len(mapped),
        slept_on_429=round(slept, 1),
        sleeps_on_429=sleeps,
        deferrals_on_429=deferrals,
        rate_limited=emulator_call(emulator_url, "GET", "stats").get("rate_limited", {}),
        tries=tries,
    )


# -- where the time between creation windows goes ---------------------------------------------------

_CREATED = re.compile(r"query of \S+: job [0-9a-f-]{36} is")
_DEFERRING = re.compile(r"rate limit on .*: deferring ([0-9.]+) s", re.IGNORECASE)


@dataclass
class CreationTimeline:
    """When jobs were created, from the task logs' timestamps (seconds; medians over resumed creations).

    :param creations: epoch seconds of each successful job creation, sorted.
    :param lateness: per creation ``k > per_window``: how long after ``creations[k - per_window] + window``
        (the moment the sliding window let it through) it came.
    :param due_to_start: for creations made by a task resumed after a rate-limit deferral: from the
        moment its deferral ended (deferral time + delay) to the start of the resumed task process
        (trigger firing, scheduler and executor latency).
    :param start_to_create: from that process start to the creation (task start-up, DAG parse, login).
    :param overshoot: the deferral delay beyond what was needed: from the moment the window let the
        creation through (as for ``lateness``) to the deferral's end, when positive.
    """

    creations: list[float]
    lateness: list[float]
    due_to_start: list[float]
    start_to_create: list[float]
    overshoot: list[float]


def _events(path: Path) -> Iterable[tuple[float, str]]:
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
            stamp = parse_timestamp(record["timestamp"], naive_is_utc=True).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        yield stamp, str(record.get("event", ""))


def creation_timeline(
    deployment: Deployment, dag_id: str, run_id: str, task_id: str, *, per_window: int, window: float
) -> CreationTimeline:
    """Read job creations, deferrals and process starts of ``task_id``'s task logs (see :class:`CreationTimeline`)."""
    creations: list[float] = []
    resumed: list[tuple[float, float, float]] = []  # (deferral end, resumed process start, creation)
    for path in task_logs(deployment, dag_id, run_id, task_id):
        due = start = None
        for stamp, event in _events(path):
            if event == "::group::Pre Execute":
                start = stamp
            deferring = _DEFERRING.search(event)
            if deferring:
                due = stamp + float(deferring.group(1))
            if _CREATED.search(event):
                creations.append(stamp)
                if due is not None and start is not None:
                    resumed.append((due, start, stamp))
    creations.sort()
    opened = {round(c, 3): creations[k - per_window] + window for k, c in enumerate(creations) if k >= per_window}
    lateness = [c - opened[round(c, 3)] for c in creations if round(c, 3) in opened]
    overshoot = [max(0.0, due - opened[round(c, 3)]) for due, _, c in resumed if round(c, 3) in opened]
    return CreationTimeline(
        creations=creations,
        lateness=lateness,
        due_to_start=[s - d for d, s, _ in resumed],
        start_to_create=[c - s for _, s, c in resumed],
        overshoot=overshoot,
    )
