"""Reading and checking OpenLineage events that the provider's listener wrote with the ``file`` transport.

Shared by the ``dag.test`` lineage tests and the deployment test: configure the deployment with
:func:`file_transport_env` (every Airflow process, so the workers' listener writes the events),
run the DAGs, then check with :func:`assert_sync_lineage` / :func:`assert_download_lineage`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def file_transport_env(path: Path | str, namespace: str = "cd2-tests", *, append: bool = True) -> dict[str, str]:
    """Environment that makes ``apache-airflow-providers-openlineage`` write every event to files
    instead of sending it anywhere: appended to ``path`` (one JSON document a line), or with
    ``append=False`` one file per event, ``<path>-<timestamp>.json`` (for many processes writing
    at once, as in a deployment: no two events can interleave).

    ``execute_in_thread``: the listener emits from a thread of the task process rather than a fork
    (the events are written before the task process reports its state).
    """
    transport = {"type": "file", "log_file_path": str(path), "append": append}
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": namespace,
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }


def read_events(path: Path | str) -> list[dict[str, Any]]:
    """Every event written to ``path`` (appended) or to ``<path>-*.json`` (one per file), by event time."""
    path = Path(path)
    texts = [path.read_text()] if path.exists() else []
    texts += [p.read_text() for p in sorted(path.parent.glob(f"{path.name}-*.json"))]
    events = [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]
    return sorted(events, key=lambda e: e.get("eventTime", ""))


def task_event(events: list[dict[str, Any]], dag_id: str, task_id: str, event_type: str = "COMPLETE") -> dict[str, Any]:
    """The one event of ``event_type`` of task ``dag_id.task_id`` (the last one, for a task run twice).

    :raises AssertionError: there is none, with the jobs and types that are there.
    """
    name = f"{dag_id}.{task_id}"
    found = [e for e in events if e.get("job", {}).get("name") == name and e.get("eventType") == event_type]
    assert found, f"no {event_type} event for {name}; events: {[(e['job']['name'], e['eventType']) for e in events]}"
    return found[-1]


def datasets(event: dict[str, Any], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(namespace, name): dataset}`` of the event's ``inputs`` or ``outputs``."""
    return {(d["namespace"], d["name"]): d for d in event.get(kind) or []}


def field_names(dataset: dict[str, Any]) -> list[str]:
    """Column names of a dataset's ``schema`` facet."""
    return [f["name"] for f in dataset["facets"]["schema"]["fields"]]


def assert_dap_input(event: dict[str, Any], dap_namespace: str, table: str, *, schema: bool) -> dict[str, Any]:
    """The event reads exactly the DAP table ``table`` (``canvas.users``) in ``dap_namespace``,
    with a schema facet (key ``id`` first) when ``schema``; returns that input."""
    inputs = datasets(event, "inputs")
    assert list(inputs) == [(dap_namespace, table)], inputs
    dataset = inputs[(dap_namespace, table)]
    if schema:
        names = field_names(dataset)
        assert names[0] == "id" and len(names) > 1, names
    return dataset


def assert_sync_lineage(
    events: list[dict[str, Any]],
    dag_id: str,
    task_id: str,
    *,
    dap_namespace: str,
    table: str,
    destination: tuple[str, str],
    rows: int,
) -> dict[str, Any]:
    """A sync's COMPLETE event: the DAP table with its schema in, ``destination`` (``(namespace,
    name)``) out with the same columns and ``outputStatistics.rowCount == rows``."""
    event = task_event(events, dag_id, task_id)
    source = assert_dap_input(event, dap_namespace, table, schema=True)
    outputs = datasets(event, "outputs")
    assert list(outputs) == [destination], outputs
    output = outputs[destination]
    assert field_names(output) == field_names(source)
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == rows
    return event


def assert_download_lineage(
    events: list[dict[str, Any]],
    dag_id: str,
    task_id: str,
    *,
    dap_namespace: str,
    table: str,
    files: list[dict[str, Any]],
) -> dict[str, Any]:
    """A download's COMPLETE event: the DAP table in (its version facet the job's watermark), one
    output per file in ``files`` (the task's XCom ``files``) with its row count and size."""
    event = task_event(events, dag_id, task_id)
    source = assert_dap_input(event, dap_namespace, table, schema=False)
    assert source["facets"]["version"]["datasetVersion"], source
    outputs = datasets(event, "outputs")
    assert len(outputs) == len(files) > 0, outputs
    for f in files:
        uri = urlsplit(str(f["path"]))  # a local path, or s3://bucket/key (spec: s3://bucket + key)
        key = ("file", uri.path) if uri.scheme in ("", "file") else (f"{uri.scheme}://{uri.netloc}", uri.path[1:])
        stats = outputs[key]["outputFacets"]["outputStatistics"]
        assert (stats["rowCount"], stats["size"], stats["fileCount"]) == (f["rows"], f["size"], 1), (key, stats)
    return event


def assert_mapped_sync_lineage(
    events: list[dict[str, Any]],
    dag_id: str,
    task_id: str,
    *,
    dap_namespace: str,
    destination_namespace: str,
    database: str,
    report: dict[str, dict[str, Any]],
    run_id: str | None = None,
) -> None:
    """One COMPLETE event per synced table of a mapped sync task (every map index is the same
    OpenLineage job): ``canvas.<table>`` with its schema in, the replica ``<database>.<target>``
    out with ``rowCount`` = inserted + updated.

    :param report: ``{table: {"target": "schema.table", "inserted": n, "updated": n, ...}}``, the
        example sync DAG's ``report`` XCom.
    :param run_id: only the events of this DAG run (the ``airflow`` run facet's ``dagRun.run_id``).
    """
    complete = [
        e
        for e in events
        if e["job"]["name"] == f"{dag_id}.{task_id}"
        and e["eventType"] == "COMPLETE"
        and (run_id is None or e["run"]["facets"]["airflow"]["dagRun"]["run_id"] == run_id)
    ]
    by_table = {}
    for event in complete:
        (source,) = event["inputs"]
        by_table[source["name"]] = event
    assert sorted(by_table) == sorted(f"canvas.{t}" for t in report), sorted(by_table)
    for table, row in report.items():
        event = by_table[f"canvas.{table}"]
        assert_dap_input(event, dap_namespace, f"canvas.{table}", schema=True)
        outputs = datasets(event, "outputs")
        expected = (destination_namespace, f"{database}.{row['target']}")
        assert list(outputs) == [expected], (table, list(outputs))
        stats = outputs[expected]["outputFacets"]["outputStatistics"]
        assert stats["rowCount"] == row["inserted"] + row["updated"], (table, stats, row)
