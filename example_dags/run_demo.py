"""``make demo``: run the example DAGs end to end against a local DAP emulator.

Starts the emulator in this process, points the ``instructure_default`` connection at it,
creates a throw-away Airflow metadata database, then runs each example DAG with
``dag.test()`` and prints what it produced.

By default the emulator serves its core 15 tables (every column type DAP uses) so the demo
stays quick; ``--all-tables`` (``make demo DEMO_ARGS=--all-tables``) serves the full catalog
of 90 ``canvas`` tables plus ``web_logs``, the 76 extra tables with 10 rows each.
``--delta`` (``make demo DEMO_ARGS=--delta``; needs the ``[delta]`` extra) also writes every
table into Delta Lake tables under ``demo-output/delta`` with ``example_cd2_sync_delta``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
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
# Asset events reach tables no DAG schedules on yet ("inactive" assets): expected in the demo.
os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "airflow.assets.manager=error")


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


def run_dag(module_name: str, conf: dict | None = None):
    import importlib

    module = importlib.import_module(module_name)
    started = time.monotonic()
    run = module.dag.test(run_conf=conf)
    if run.state != "success":
        raise SystemExit(f"{module.dag.dag_id} ended in state {run.state}")
    print(f"{module.dag.dag_id}: {run.state} in {time.monotonic() - started:.1f} s", flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_dags.run_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--all-tables",
        action="store_true",
        help="serve the emulator's full catalog (90 canvas tables + web_logs) instead of its core 15 tables",
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        help="also replicate every table into Delta Lake tables under demo-output/delta (needs deltalake: "
        "pip install -e '.[delta]')",
    )
    args = parser.parse_args(argv)
    if args.delta:
        try:
            import deltalake  # noqa: F401 - only checked, before anything starts
        except ImportError:
            parser.error("--delta needs the deltalake package: pip install -e '.[delta]'")
    from airflow_provider_instructure.emulator.server import EmulatorServer, quiet_uvicorn_errors

    quiet_uvicorn_errors()
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    # Airflow's task logs are noisy on a console; the demo prints its own summary.
    logging.getLogger().setLevel(logging.WARNING)
    from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
    from airflow_provider_instructure.emulator.dataset import load_bundled_schemas

    # Jobs spend a moment "running" so the download tasks really defer to the trigger.
    catalog = "full" if args.all_tables else "core"
    emulator = Emulator(EmulatorConfig(job_waiting_seconds=0.2, job_running_seconds=0.5), rows=200, catalog=catalog)
    with EmulatorServer(emulator) as server:
        os.environ["AIRFLOW_CONN_INSTRUCTURE_DEFAULT"] = server.connection_json()
        banner(f"DAP emulator at {server.url} (ClientID {server.client_id})")
        served = sum(len(tables) for tables in emulator.dataset.tables.values())
        total = sum(len(tables) for tables in load_bundled_schemas("full").values())
        if args.all_tables:
            print(f"Serving the full catalog: {served} tables (the core 15 with 200 rows, the others with 10).")
        else:
            print(
                f"Serving the core subset: {served} tables with 200 rows, covering every DAP column type; "
                f"the emulator has {total}. Run `make demo DEMO_ARGS=--all-tables` for all of them."
            )

        from airflow.utils.db import resetdb

        resetdb()
        # A previous run's files and warehouse hold watermarks of a previous emulator: starting
        # from them would ask this one for changes it never made (and, within the same hour,
        # for a replica newer than its first snapshot). The demo starts clean, like its database.
        for stale in (
            REPO / "demo-output" / "cd2-lake",
            REPO / "demo-output" / "warehouse.db",
            REPO / "demo-output" / "delta",
        ):
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)

        banner("example_cd2_list_tables: ListCD2TablesOperator -> schema per table")
        run = run_dag("example_dags.example_cd2_list_tables")
        (tables,) = xcom(run.run_id, "list_tables")
        print(f"Tables in namespace 'canvas' ({len(tables)}):")
        for table in tables:
            print(f"  - {table}")

        from airflow.models.pool import Pool

        Pool.create_or_update_pool("cd2_api", 5, "DAP job creation (5 per minute upstream)", include_deferred=False)
        target = REPO / "demo-output" / "cd2-lake"
        conf = {"target": str(target), "poll_interval": 0.2}
        banner("example_cd2_snapshot_to_files: deferrable query + download per table (first run: snapshots)")
        print_downloads(run_dag("example_dags.example_cd2_snapshot_to_files", conf))
        changed = server.emulator.advance(updates=0.1, inserts=0.02, deletes=0.01)
        banner(f"Emulator committed updates, inserts and hard deletes at {changed:%Y-%m-%dT%H:%M:%S}Z")
        banner("example_cd2_snapshot_to_files again: incrementals from each table's stored watermark")
        print_downloads(run_dag("example_dags.example_cd2_snapshot_to_files", conf))
        print(f"Files under {target}")

        warehouse = REPO / "demo-output" / "warehouse.db"
        os.environ["AIRFLOW_CONN_CD2_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(warehouse)})
        banner(f"example_cd2_sync_to_database: every table into SQLite {warehouse} (first run: snapshots)")
        print_syncs(run_dag("example_dags.example_cd2_sync_to_database", conf), warehouse)
        changed = server.emulator.advance(updates=0.1, inserts=0.02, deletes=0.01)
        banner(f"Emulator committed updates, inserts and hard deletes at {changed:%Y-%m-%dT%H:%M:%S}Z")
        banner("example_cd2_sync_to_database again: incrementals from the watermarks stored in the warehouse")
        print_syncs(run_dag("example_dags.example_cd2_sync_to_database", conf), warehouse)

        if args.delta:
            lake = REPO / "demo-output" / "delta"
            delta_conf = {"lake_path": str(lake), "poll_interval": 0.2}
            banner(f"example_cd2_sync_delta: every table into Delta Lake tables under {lake} (first run: snapshots)")
            print_delta(run_dag("example_dags.example_cd2_sync_delta", delta_conf))
            changed = server.emulator.advance(updates=0.1, inserts=0.02, deletes=0.01)
            banner(f"Emulator committed updates, inserts and hard deletes at {changed:%Y-%m-%dT%H:%M:%S}Z")
            banner("example_cd2_sync_delta again: one Delta commit per table with the changes and the watermark")
            print_delta(run_dag("example_dags.example_cd2_sync_delta", delta_conf))
            print(f"Read them with e.g. duckdb: SELECT count(*) FROM delta_scan('{lake}/canvas/users')")

        calls = server.emulator.stats.snapshot()
        banner("DAP calls made by the demo")
        print(", ".join(f"{route}={count}" for route, count in calls.items()))
    return 0


def print_syncs(run, warehouse: Path) -> None:
    import sqlite3

    (report,) = xcom(run.run_id, "report")
    db = sqlite3.connect(warehouse)
    width = max(20, *map(len, report))
    print(f"{'table':<{width}} {'mode':<12} {'rows now':>8} {'ins':>5} {'upd':>5} {'del':>5} {'seconds':>7}  watermark")
    for table, info in sorted(report.items()):
        name = info["target"].split(".", 1)[1]
        (rows,) = db.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        print(
            f"{table:<{width}} {info['mode']:<12} {rows:>8} {info['inserted']:>5} {info['updated']:>5} "
            f"{info['deleted']:>5} {info['seconds']:>7.2f}  {info['watermark']}"
        )
    db.close()


def print_delta(run) -> None:
    (report,) = xcom(run.run_id, "table_version")
    width = max(20, *map(len, report))
    print(f"{'table':<{width}} {'mode':<12} {'version':>7} {'rows now':>8} {'ins':>5} {'upd':>5} {'del':>5}  watermark")
    for table, info in sorted(report.items()):
        print(
            f"{table:<{width}} {info['mode']:<12} {info['version']:>7} {info['rows']:>8} {info['inserted']:>5} "
            f"{info['updated']:>5} {info['deleted']:>5}  {info['watermark']}"
        )


def print_downloads(run) -> None:
    (report,) = xcom(run.run_id, "report")
    width = max(20, *map(len, report))
    print(f"{'table':<{width}} {'kind':<12} {'files':>5} {'rows':>7} {'bytes':>9}")
    for table, info in sorted(report.items()):
        print(f"{table:<{width}} {info['kind']:<12} {info['files']:>5} {info['rows']:>7} {info['bytes']:>9}")
    print(
        f"{'total':<{width}} {'':<12} {sum(i['files'] for i in report.values()):>5} "
        f"{sum(i['rows'] for i in report.values()):>7} {sum(i['bytes'] for i in report.values()):>9}"
    )


if __name__ == "__main__":
    sys.exit(main())
