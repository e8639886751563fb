"""Every example DAG imports cleanly and runs end to end (dag.test()) against the emulator.

All dag.test() runs live in this module: the first one in a process pays Airflow's start-up.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.operators.file_watermark import read_watermark
from tests.conftest import REPO

pytestmark = pytest.mark.dagtest


def xcom_values(run_id: str, task_id: str) -> list:
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


def asset_events(uri_prefix: str, *run_ids: str) -> list:
    """``(uri, extra, source_task_id)`` of the asset events under ``uri_prefix``, of ``run_ids`` only if given.

    The metadata DB lives for the whole session (``airflow_db``), so events of earlier tests' runs of
    the same tables are there too (the OpenLineage tests' incremental runs of ``canvas/users``):
    a check on "the events of this run" must say which runs.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = (
            session.query(AssetModel.uri, AssetEvent.extra, AssetEvent.source_task_id)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri.startswith(uri_prefix))
        )
        if run_ids:
            query = query.filter(AssetEvent.source_run_id.in_(run_ids))
        return [(uri, extra, task) for uri, extra, task in query.all()]


def fresh_dag_module(name: str) -> Any:
    """The DAG module ``name`` imported anew, so its DAG and tasks are new objects.

    ``dag.test()`` runs tasks in this process on the module's own task objects, and a run's
    ``run_conf`` stays in them: Airflow's ``process_params`` (3.1.8, unchanged in 3.3.2) resolves the
    conf into the task's own ``Param`` objects (``ParamsDict.__setitem__`` -> ``Param.resolve``
    sets ``value``). A later run of the same module object without that key then sees the old value,
    e.g. ``tables: "c*"`` from ``test_example_sync_dag_into_postgres`` made the rate-limit test
    sync 3 tables instead of 14. In a deployment every task parses its DAG anew, so this is the
    harness only.
    """
    module = importlib.import_module(name)
    return importlib.reload(module)


def test_example_dags_import_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "example_dags"))
    assert bag.import_errors == {}
    assert {"example_cd2_list_tables", "example_cd2_snapshot_to_files"} <= set(bag.dag_ids)


def test_list_tables_dag(airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The core tables: the DAG maps a schema task over every table, and 15 show the same as 90.
    server = dap_emulator_factory(rows=5, catalog="core")
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    module = fresh_dag_module("example_dags.example_cd2_list_tables")
    run = module.dag.test()
    assert run.state == "success"
    served = sorted(server.emulator.dataset.tables["canvas"])
    assert xcom_values(run.run_id, "list_tables") == [served]
    assert xcom_values(run.run_id, "summarize") == [{"tables": len(served), "max_schema_version": 1}]


def test_snapshot_to_files_dag(
    airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.models.pool import Pool

    # The core tables: the DAG downloads every table, and 15 show the same as 90.
    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.3), rows=30, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    module = fresh_dag_module("example_dags.example_cd2_snapshot_to_files")
    assert module.dag.get_task("download").pool == "cd2_api"
    conf = {"target": str(tmp_path), "poll_interval": 0.1}

    first = module.dag.test(run_conf=conf)
    assert first.state == "success"
    (report,) = xcom_values(first.run_id, "report")
    tables = sorted(server.emulator.dataset.tables["canvas"])
    assert sorted(report) == tables
    for table in tables:
        assert report[table]["kind"] == "snapshot" and report[table]["files"] >= 2, table
        assert report[table]["rows"] == 30, table
        assert read_watermark(tmp_path, "canvas", table)["watermark"] == server.emulator.latest(
            "canvas", table
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert server.emulator.stats.count("create_job") == len(tables)
    events = asset_events("instructure://canvas/", first.run_id)
    assert {uri for uri, _, _ in events} == {f"instructure://canvas/{t}" for t in tables}
    assert all(
        extra["kind"] == "snapshot" and extra["watermark"] and extra["schema_version"] == 1 for _, extra, _ in events
    )

    server.emulator.advance(updates=3, inserts=1, deletes=1)
    second = module.dag.test(run_conf=conf)
    assert second.state == "success"
    (report,) = xcom_values(second.run_id, "report")
    assert all(report[t]["kind"] == "incremental" and report[t]["rows"] == 5 for t in tables)


def test_a_retried_task_resumes_its_job(airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's real task_state_store carries the job id from the failed try to the retry.

    Airflow 3.0-3.2 have no store (the version matrix runs them): the retry starts a new job,
    which DAP answers with the same one while the data is unchanged, and the task still succeeds.
    """
    from airflow_provider_instructure._compat import AIRFLOW_V_3_3_PLUS

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.5), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_FLAKY", server.connection_json(retry_limit=1, retry_delay=0.01))
    server.emulator.faults.inject("get_job", "500", count=1)  # try 1 fails while waiting for its job
    module = fresh_dag_module("tests.dags.test_dag_query_retry")
    run = module.dag.test()
    assert run.state == "success"
    assert server.emulator.stats.count("create_job") == (1 if AIRFLOW_V_3_3_PLUS else 2)
    (meta,) = xcom_values(run.run_id, "query")
    assert meta["kind"] == "snapshot" and server.emulator.jobs.created_count == 1


def test_sync_to_database_dag(
    airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json
    import sqlite3

    from airflow.models.pool import Pool

    # The core tables: the DAG syncs every table, and 15 show the same as 90.
    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.2), rows=20, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    warehouse = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    module = fresh_dag_module("example_dags.example_cd2_sync_to_database")
    tables = sorted(server.emulator.dataset.tables["canvas"])

    first = module.dag.test(run_conf={"poll_interval": 0.1})
    assert first.state == "success"
    (report,) = xcom_values(first.run_id, "report")
    assert sorted(report) == tables and all(r["mode"] == "snapshot" and r["inserted"] == 20 for r in report.values())
    server.emulator.advance(updates=3, inserts=2, deletes=1)
    second = module.dag.test(run_conf={"poll_interval": 0.1})
    assert second.state == "success"
    (report,) = xcom_values(second.run_id, "report")
    assert all(
        (r["mode"], r["inserted"], r["updated"], r["deleted"]) == ("incremental", 2, 3, 1) for r in report.values()
    )
    db = sqlite3.connect(warehouse)
    for table in tables:
        (count,) = db.execute(f'SELECT count(*) FROM "canvas__{table}"').fetchone()
        assert count == len(list(server.emulator.expected_rows("canvas", table)))
    db.close()
    replicas = [uri for uri, _, _ in asset_events("sqlite:", first.run_id, second.run_id)]
    assert len(replicas) == 2 * len(tables)
    sources = [
        extra for _, extra, task in asset_events("instructure://canvas/", first.run_id, second.run_id) if task == "sync"
    ]
    assert len(sources) == 2 * len(tables) and all(e["destination"].startswith("sqlite:") for e in sources)


def test_example_dags_parse_the_same_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings reach tasks at run time (Variables, params), never through the dag-processor's environment.

    In a deployment the dag-processor and the workers are separate processes; a DAG that reads
    ``os.environ`` while parsing silently differs between them (issue 8: ``CD2_TARGET``).
    """
    import json

    from airflow.dag_processing.dagbag import DagBag

    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow 3.1 (version matrix)
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    def serialized() -> dict[str, str]:
        bag = DagBag(dag_folder=str(REPO / "example_dags"))
        return {i: json.dumps(DagSerialization.to_dict(d), sort_keys=True, default=str) for i, d in bag.dags.items()}

    for name in ("CD2_TARGET", "CD2_NAMESPACE", "CD2_WAREHOUSE"):
        monkeypatch.delenv(name, raising=False)
    plain = serialized()
    for name in ("CD2_TARGET", "CD2_NAMESPACE", "CD2_WAREHOUSE"):
        monkeypatch.setenv(name, "/somewhere/else")
    assert serialized() == plain


def test_sync_delta_dag(airflow_db, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Core tables into Delta tables on a local path, then an incremental: the DAG's own read-back
    task sees the versions, row counts and the watermarks the commits recorded. Three tables
    (``c*``): the mapping is the SQL DAG's, tested with all 15."""
    from airflow.models.pool import Pool

    pytest.importorskip("deltalake", reason="the [delta] extra is not installed")
    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.05), rows=20, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    module = fresh_dag_module("example_dags.example_cd2_sync_delta")
    tables = sorted(t for t in server.emulator.dataset.tables["canvas"] if t.startswith("c"))
    conf = {"poll_interval": 0.1, "lake_path": str(tmp_path / "lake"), "tables": "c*"}

    first = module.dag.test(run_conf=conf)
    assert first.state == "success"
    (report,) = xcom_values(first.run_id, "table_version")
    assert sorted(report) == tables
    for table, r in report.items():
        assert (r["mode"], r["rows"], r["inserted"]) == ("snapshot", 20, 20), (table, r)
        assert r["target"] == str(tmp_path / "lake" / "canvas" / table)
    server.emulator.advance(updates=3, inserts=2, deletes=1)
    second = module.dag.test(run_conf=conf)
    assert second.state == "success"
    (again,) = xcom_values(second.run_id, "table_version")
    for table, r in again.items():
        assert (r["mode"], r["inserted"], r["updated"], r["deleted"]) == ("incremental", 2, 3, 1), (table, r)
        assert r["version"] == report[table]["version"] + 1, (table, r)  # one commit per sync
        assert r["rows"] == len(list(server.emulator.expected_rows("canvas", table))), table
        assert report[table]["watermark"] and r["watermark"] > report[table]["watermark"], table
    uris = {uri for uri, _, _ in asset_events("file://", second.run_id)}
    assert uris == {(tmp_path / "lake" / "canvas" / t).as_uri() for t in tables}
