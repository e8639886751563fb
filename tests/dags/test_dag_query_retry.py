"""A DAG for tests only: a query task whose first try fails after its job started."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_instructure.operators.cd2 import CD2QueryOperator

with DAG(dag_id="test_cd2_query_retry", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    CD2QueryOperator(
        task_id="query",
        table="users",
        poll_interval=0.1,
        retries=1,
        retry_delay=timedelta(seconds=0),
        instructure_conn_id="instructure_flaky",
    )
