"""The provider's AssetAlias is in the serialized DAG of mapped tasks (issue 8, finding 1).

In a real deployment the dag-processor creates the alias row from the serialized DAG. When a
``.partial().expand()`` task carried no alias outlet, the row was first inserted when tasks
finished, and mapped tasks finishing together raced on ``idx_asset_alias_name_unique``: the
api-server set them failed without a retry. Here the alias must exist right after the DAG is
synced to the metadata database, before any task runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from airflow_provider_instructure.assets import ALIAS_NAME
from airflow_provider_instructure.operators.cd2 import CD2DownloadOperator, CD2QueryOperator
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

pytestmark = pytest.mark.dagtest


def _dag(tmp_path: Path, *, unmapped: bool = True):
    from airflow.sdk import DAG, Asset

    with DAG(dag_id="alias_in_serialized_dag", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        CD2DownloadOperator.partial(task_id="download", target=str(tmp_path)).expand(table=["users", "courses"])
        CD2SyncTableOperator.partial(
            task_id="sync", destination_conn_id="warehouse", outlets=[Asset("warehouse://mine")]
        ).expand(table=["users", "courses"])
        CD2QueryOperator.partial(task_id="query").expand(table=["users"])
        if unmapped:
            CD2DownloadOperator(task_id="download_one", table="users", target=str(tmp_path))
    return dag


def airflow_3_0() -> bool:
    import airflow

    return airflow.__version__.startswith("3.0.")


def _declared(dag, kind: str) -> dict[str, list[str]]:
    """Per task, the aliases or asset URIs the dag-processor reads from the serialized DAG."""
    try:
        from airflow.dag_processing.collection import _get_dag_assets
    except ImportError:  # Airflow 3.0 (version matrix); the synced-alias test below covers it there
        pytest.skip("Airflow 3.0's dag-processor has no _get_dag_assets")
    try:
        from airflow.serialization.definitions.assets import SerializedAsset, SerializedAssetAlias
    except ImportError:  # Airflow 3.1: the dag-processor reads the SDK classes
        from airflow.sdk import Asset as SerializedAsset
        from airflow.sdk import AssetAlias as SerializedAssetAlias
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    of = SerializedAssetAlias if kind == "alias" else SerializedAsset
    found: dict[str, list[str]] = {}
    for task_id, obj in _get_dag_assets(LazyDeserializedDAG.from_dag(dag), of=of, inlets=False):
        found.setdefault(task_id, []).append(obj.name if kind == "alias" else obj.uri)
    return found


def test_mapped_tasks_declare_the_alias_in_the_serialized_dag(tmp_path: Path) -> None:
    dag = _dag(tmp_path)
    aliases = _declared(dag, "alias")
    assert aliases == {"download": [ALIAS_NAME], "sync": [ALIAS_NAME], "download_one": [ALIAS_NAME]}
    # the user's own outlets are kept beside the alias; the query operator emits no table events
    assert _declared(dag, "asset") == {"sync": ["warehouse://mine/"]}


def test_alias_row_exists_once_the_dag_is_synced(airflow_db, tmp_path: Path) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    if airflow_3_0():
        # Airflow 3.0 (version matrix) syncs only DAGs parsed from a file (relative_fileloc); the
        # example DAGs' dag.test() runs check the alias's asset events there
        pytest.skip("Airflow 3.0 cannot sync a DAG built in the test")
    from airflow.models.asset import AssetAliasModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(AssetAliasModel).filter(AssetAliasModel.name == ALIAS_NAME).delete()
    bag = DagBag(dag_folder=str(tmp_path / "none"))
    bag.bag_dag(_dag(tmp_path, unmapped=False))  # only mapped tasks, as in the example DAGs
    DagBundlesManager().sync_bundles_to_db()  # the dag table refers to its bundle's row
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        names = [a.name for a in session.query(AssetAliasModel).filter(AssetAliasModel.name == ALIAS_NAME)]
    assert names == [ALIAS_NAME]
