"""``make demo``: run the example DAGs end to end against a local DAP emulator.

Starts the emulator in this process, points the ``instructure_default`` connection at it,
creates a throw-away Airflow metadata database, then runs each example DAG with
``dag.test()`` and prints what it produced.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow-home"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "example_dags")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Task logs would drown the summary the demo prints; warnings and errors still show.
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def xcom(run_id: str, task_id: str) -> list:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.run_id == run_id, XComModel.task_id == task_id, XComModel.key == "return_value")
            .order_by(XComModel.map_index)
            .all()
        )
        return [row.value for row in rows]


def run_dag(module_name: str):
    import importlib

    module = importlib.import_module(module_name)
    started = time.monotonic()
    run = module.dag.test()
    if run.state != "success":
        raise SystemExit(f"{module.dag.dag_id} ended in state {run.state}")
    print(f"{module.dag.dag_id}: {run.state} in {time.monotonic() - started:.1f} s", flush=True)
    return run


def main() -> int:
    from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors

    quiet_uvicorn_errors()
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    # Airflow's task logs are noisy on a console; the demo prints its own summary.
    logging.getLogger().setLevel(logging.WARNING)
    with EmulatorServer(rows=200) as server:
        os.environ["AIRFLOW_CONN_INSTRUCTURE_DEFAULT"] = server.connection_json()
        banner(f"DAP emulator at {server.url} (ClientID {server.client_id})")

        from airflow.utils.db import resetdb

        resetdb()

        banner("example_cd2_list_tables: ListCD2TablesOperator -> schema per table")
        run = run_dag("example_dags.example_cd2_list_tables")
        (tables,) = xcom(run.run_id, "list_tables")
        print(f"Tables in namespace 'canvas' ({len(tables)}):")
        for table in tables:
            print(f"  - {table}")
        print(f"Identity Service logins: {server.emulator.stats.count('login')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
