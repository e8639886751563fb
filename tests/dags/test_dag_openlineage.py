"""A DAG for tests only: every lineage-emitting operator once, and a task that fails.

Run with ``run_conf={"target": <directory>}``: the schema file and the downloads go there; the
sync writes to the ``ol_warehouse`` connection.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_instructure.operators.cd2 import (
    CD2QueryOperator,
    GetCD2TableSchemaOperator,
    ListCD2TablesOperator,
)
from airflow_provider_instructure.operators.cd2_download import CD2DownloadOperator
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

with DAG(dag_id="test_cd2_openlineage", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    ListCD2TablesOperator(task_id="list_tables", include=["users", "courses"])
    GetCD2TableSchemaOperator(task_id="schema", table="users", output_path="{{ dag_run.conf['target'] }}/schemas/")
    # Deferred at once: its lineage comes from the resumed task (execute_complete).
    query = CD2QueryOperator(
        task_id="query", table="users", poll_interval=0.1, deferrable=True, defer_after=0, trigger_first_delay=0.5
    )
    CD2DownloadOperator(task_id="download", job=query.output, target="{{ dag_run.conf['target'] }}/lake")
    CD2SyncTableOperator(task_id="sync", table="users", destination_conn_id="ol_warehouse", poll_interval=0.1)
    GetCD2TableSchemaOperator(task_id="missing_table", table="no_such_table", retries=0)
