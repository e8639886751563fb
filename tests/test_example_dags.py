"""Every example DAG imports cleanly and runs end to end (dag.test()) against the emulator."""

from __future__ import annotations

import importlib

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
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


def test_example_dags_import_without_errors() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "example_dags"))
    assert bag.import_errors == {}
    assert "example_cd2_list_tables" in bag.dag_ids


def test_list_tables_dag(airflow_db, instructure_conn: EmulatorServer) -> None:
    module = importlib.import_module("example_dags.example_cd2_list_tables")
    run = module.dag.test()
    assert run.state == "success"
    served = sorted(instructure_conn.emulator.dataset.tables["canvas"])
    assert xcom_values(run.run_id, "list_tables") == [served]
    assert xcom_values(run.run_id, "summarize") == [{"tables": len(served), "max_schema_version": 1}]
