"""Deployment test only: one deferrable download whose first try fails after its DAP job started.

The test injects an emulator fault on the download route, so try 1 fails once the job is complete;
try 2 (one second later) must resume the same DAP job instead of starting a new one. A DAG of its own
because the example DAGs map over 14 tables at once (a fault would hit whichever task downloads
first) and keep Airflow's default ``retry_delay`` of 5 minutes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_instructure.operators.cd2 import CD2DownloadOperator

with DAG(
    dag_id="e2e_retry_resumes_job",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["test"],
) as dag:
    CD2DownloadOperator(
        task_id="download",
        table="users",
        format="csv",  # a query no example DAG makes, so the emulator starts a new job for it
        target="{{ var.value.cd2_target }}/retry",
        deferrable=True,
        retries=1,
        retry_delay=timedelta(seconds=1),
        # One attempt per HTTP call, so one injected download fault fails the try.
        instructure_conn_id="instructure_flaky",
    )
