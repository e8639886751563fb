"""Keep a SQL copy of every Canvas Data 2 table up to date.

* ``ListCD2TablesOperator`` lists the namespace's tables.
* ``CD2SyncTableOperator`` is mapped over them into the ``cd2_warehouse`` connection (PostgreSQL,
  MySQL/MariaDB or SQLite). The first run takes a snapshot per table; later runs apply
  incrementals (upserts and hard deletes) from the watermark stored in the warehouse itself,
  in the same transaction as the data. A table that DAP reloaded, or whose schema changed in a
  way that cannot be applied in place, is rebuilt from a snapshot and swapped in atomically.
* Job-creating tasks share the ``cd2_api`` pool (``airflow pools set cd2_api 5 "DAP job creation"``);
  waits happen in the triggerer (deferrable), so the pool never holds a worker for a running job.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_instructure.operators.cd2 import ListCD2TablesOperator
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

with DAG(
    dag_id="example_cd2_sync_to_database",
    schedule="30 */4 * * *",  # DAP refreshes its data every 4 hours
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "instructure"],
    # Trigger with {"tables": "course*"} to sync only the tables matching a glob.
    params={"namespace": "canvas", "tables": "*", "poll_interval": 30},
) as dag:
    tables = ListCD2TablesOperator(
        task_id="list_tables",
        namespace="{{ params.namespace }}",
        include="{{ params.tables }}",
        deferrable=True,  # a 429 on the listing (5/min) waits in the triggerer, not in a worker
    )

    # [START howto_operator_cd2_sync_table]
    synced = CD2SyncTableOperator.partial(
        task_id="sync",
        namespace="{{ params.namespace }}",
        destination_conn_id="cd2_warehouse",
        deferrable=True,
        poll_interval="{{ params.poll_interval }}",
        pool="cd2_api",
        retries=2,
    ).expand(table=tables.output)
    # [END howto_operator_cd2_sync_table]

    @task
    def report(results: list[dict]) -> dict[str, dict]:
        summary = {}
        for i in range(len(results)):  # index rather than iterate: the lazy XCom sequence knows its end
            r = results[i]
            summary[r["table"]] = {
                "mode": r["mode"],
                "inserted": r["rows_inserted"],
                "updated": r["rows_updated"],
                "deleted": r["rows_deleted"],
                "watermark": r["watermark"],
                "seconds": round(sum(r["seconds"].values()), 2),
                "target": r["target"],
            }
        return summary

    report(synced.output)


if __name__ == "__main__":
    dag.test()
