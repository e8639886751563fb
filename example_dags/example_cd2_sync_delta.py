"""Keep a Delta Lake copy of every Canvas Data 2 table up to date (needs the ``[delta]`` extra).

* ``ListCD2TablesOperator`` lists the namespace's tables.
* ``CD2SyncTableOperator`` is mapped over them with ``table_format="delta"``: each DAP table
  becomes the Delta table ``<lake_path>/<namespace>/<table>``, on a local directory or in object
  storage (``s3://bucket/prefix`` with an ``aws`` connection as ``storage_conn_id``; ``gs://`` and
  ``abfss://`` likewise). The first run writes a snapshot; later runs commit one Delta version
  per sync with the upserts, the hard deletes and the new watermark in that commit's metadata,
  so Spark, Databricks, Trino, DuckDB or Snowflake read a consistent table at every version and
  the next run needs nothing but the table to continue.
* ``table_version`` reads each table back with ``deltalake`` (as any reader would): its version,
  row count and the watermark its last commit recorded.

Trigger with ``{"lake_path": "s3://my-bucket/cd2", "storage_conn_id": "cd2_lake"}`` for S3; the
default is a local directory. The settings are params, read when the tasks run, never at parse time.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_instructure.operators.cd2 import ListCD2TablesOperator
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

with DAG(
    dag_id="example_cd2_sync_delta",
    schedule="45 */4 * * *",  # DAP refreshes its data every 4 hours
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "instructure", "delta"],
    params={
        "namespace": "canvas",
        "tables": "*",
        "lake_path": "/tmp/cd2-delta",
        "storage_conn_id": None,
        "poll_interval": 30,
    },
) as dag:
    tables = ListCD2TablesOperator(
        task_id="list_tables",
        namespace="{{ params.namespace }}",
        include="{{ params.tables }}",
        deferrable=True,
    )

    # [START howto_operator_cd2_sync_delta]
    synced = CD2SyncTableOperator.partial(
        task_id="sync",
        namespace="{{ params.namespace }}",
        table_format="delta",
        destination_path="{{ params.lake_path }}",
        storage_conn_id="{{ params.storage_conn_id or '' }}",  # empty: the environment's credentials
        deferrable=True,
        poll_interval="{{ params.poll_interval }}",
        pool="cd2_api",
        retries=2,
    ).expand(table=tables.output)
    # [END howto_operator_cd2_sync_delta]

    @task
    def table_version(results: list[dict]) -> dict[str, dict]:
        """Every table read back with deltalake: version, rows, and the commit's watermark."""
        from deltalake import DeltaTable

        out = {}
        for i in range(len(results)):  # index rather than iterate: the lazy XCom sequence knows its end
            r = results[i]
            # Asset URI of a lake table: its location (file:///... or s3://...).
            # Credentials: the environment's, or storage_options built as in hooks/storage.py.
            uri = r["destination"].removeprefix("file://")
            if not uri.startswith("/"):
                out[r["table"]] = {"mode": r["mode"], "target": r["target"], "watermark": r["watermark"]}
                continue
            table = DeltaTable(uri)
            commit = table.history(1)[0]
            out[r["table"]] = {
                "mode": r["mode"],
                "version": table.version(),
                "rows": table.to_pyarrow_dataset().count_rows(),
                "inserted": r["rows_inserted"],
                "updated": r["rows_updated"],
                "deleted": r["rows_deleted"],
                "watermark": commit.get("dap.watermark"),  # recorded in the commit with the data
                "target": r["target"],
            }
        return out

    table_version(synced.output)


if __name__ == "__main__":
    dag.test()
