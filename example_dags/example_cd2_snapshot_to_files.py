"""Snapshot every Canvas Data 2 table to files: one deferrable query-and-download task per table.

* ``ListCD2TablesOperator`` lists the namespace's tables.
* ``CD2DownloadOperator`` is mapped over them: each task starts the table's query job,
  defers while DAP works (no worker is held), then downloads every part to
  ``<target>/<namespace>/<table>/job_<id>/``. With ``incremental=True`` the first run takes a
  snapshot and each later run continues from the last successful run's watermark.
* Job creation is limited by DAP to a few calls per minute: the tasks share the ``cd2_api``
  pool (create it with ``airflow pools set cd2_api 5 "DAP job creation"``) and the hook waits
  on 429 answers instead of failing.

``target`` may be a local directory or an object-storage URL (``s3://bucket/cd2`` with the
Amazon provider installed and an ``aws_default`` connection, ``gs://...``, ``abfs://...``).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_instructure.operators.cd2 import CD2DownloadOperator, ListCD2TablesOperator

with DAG(
    dag_id="example_cd2_snapshot_to_files",
    schedule="0 */4 * * *",  # DAP refreshes its data every 4 hours
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "instructure"],
    params={
        "namespace": "canvas",
        # Empty: the Airflow Variable ``cd2_target`` decides, read when the task runs (set it once
        # with ``airflow variables set cd2_target s3://bucket/cd2``; nothing to export on every process).
        "target": "",
        "poll_interval": 30,  # longest wait between job checks (they start at 1 s and double), seconds
    },
) as dag:
    # deferrable: a 429 on the listing (5/min) waits in the triggerer, not in a worker
    tables = ListCD2TablesOperator(task_id="list_tables", namespace="{{ params.namespace }}", deferrable=True)

    # [START howto_operator_cd2_download]
    downloads = CD2DownloadOperator.partial(
        task_id="download",
        namespace="{{ params.namespace }}",
        target="{{ params.target or var.value.get('cd2_target', '/tmp/cd2-lake') }}",
        format="jsonl",
        incremental=True,
        deferrable=True,
        poll_interval="{{ params.poll_interval }}",
        pool="cd2_api",
        retries=2,
    ).expand(table=tables.output)
    # [END howto_operator_cd2_download]

    @task
    def report(results: list[dict]) -> dict[str, dict]:
        summary = {}
        for i in range(len(results)):  # index rather than iterate: the lazy XCom sequence knows its end
            r = results[i]
            summary[r["table"]] = {"kind": r["kind"], "files": r["file_count"], "rows": r["rows"], "bytes": r["bytes"]}
        return summary

    report(downloads.output)


if __name__ == "__main__":
    dag.test()
