"""OpenLineage events of the CD2 operators, as the OpenLineage provider's listener emits them.

The DAG runs under ``dag.test()`` against the emulator over HTTP, with the provider's listener
registered and its ``file`` transport writing every event to a file that the tests read back.
Without the provider the package imports and runs (a subprocess with ``openlineage`` blocked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.operators.lineage import dap_namespace, file_naming, sql_table_naming
from airflow_provider_instructure.timestamps import parse_timestamp
from tests.conftest import REPO, unavailable
from tests.operators.lineage_asserts import (
    assert_download_lineage,
    assert_sync_lineage,
    datasets,
    field_names,
    file_transport_env,
    read_events,
    task_event,
)
from tests.replication.conftest import my_server, pg_server  # noqa: F401 - fixtures

DAG_ID = "test_cd2_openlineage"


def _clear_openlineage_conf() -> None:
    """The provider caches every [openlineage] option on first read (functools.cache)."""
    from airflow.providers.openlineage import conf

    for value in vars(conf).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture
def lineage_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The OpenLineage listener registered in this process, writing events to the returned file.

    Plugins load once per process, and an earlier test may have loaded them with OpenLineage
    disabled (no transport then): the listener is added here, fresh, and removed afterwards.
    """
    try:
        from airflow.providers.openlineage.plugins.listener import OpenLineageListener
    except ImportError:
        unavailable("apache-airflow-providers-openlineage is not installed (pip install '.[openlineage]')")
    try:  # the task runner's listeners (Airflow 3.1+)
        from airflow.sdk.listener import get_listener_manager
    except ImportError:  # Airflow 3.0
        from airflow.listeners.listener import get_listener_manager

    path = tmp_path / "openlineage.jsonl"
    for key, value in file_transport_env(path).items():
        monkeypatch.setenv(key, value)
    _clear_openlineage_conf()
    manager = get_listener_manager()
    for plugin in list(manager.pm.get_plugins()):
        if isinstance(plugin, OpenLineageListener):
            manager.pm.unregister(plugin)
    listener = OpenLineageListener()
    manager.add_listener(listener)
    try:
        yield path
    finally:
        manager.pm.unregister(listener)
        _clear_openlineage_conf()


@pytest.mark.dagtest
def test_dag_emits_lineage_of_every_operator(
    airflow_db, dap_emulator_factory, lineage_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib

    from tests.test_example_dags import xcom_values

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.2), rows=7, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    warehouse = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_OL_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(warehouse)}))
    module = importlib.import_module("tests.dags.test_dag_openlineage")

    run = module.dag.test(run_conf={"target": str(tmp_path / "out")})
    assert run.state == "failed"  # missing_table fails on purpose; the others succeed
    events = read_events(lineage_file)
    dap = f"dap://127.0.0.1:{server.port}"

    # list: one input per listed table, no output.
    listed = task_event(events, DAG_ID, "list_tables")
    assert list(datasets(listed, "inputs")) == [(dap, "canvas.courses"), (dap, "canvas.users")]
    assert listed["outputs"] == []

    # schema: the table with its schema facet (DAP's columns and types) in, the schema file out.
    schema_event = task_event(events, DAG_ID, "schema")
    (source,) = schema_event["inputs"]
    assert (source["namespace"], source["name"]) == (dap, "canvas.users")
    (schema_file,) = (tmp_path / "out" / "schemas").iterdir()
    columns = parse_table_schema(json.loads(schema_file.read_text())).columns
    assert field_names(source) == [c.name for c in columns]
    types = {f["name"]: f["type"] for f in source["facets"]["schema"]["fields"]}
    assert types["id"] == "int64" and types["created_at"] == "timestamp", types
    assert list(datasets(schema_event, "outputs")) == [("file", str(schema_file))]

    # query: the table in, at the job's watermark; nothing written.
    (meta,) = xcom_values(run.run_id, "query")
    query_event = task_event(events, DAG_ID, "query")
    (source,) = query_event["inputs"]
    assert (source["name"], source["facets"]["version"]["datasetVersion"]) == ("canvas.users", meta["watermark"])
    assert query_event["outputs"] == []

    # download: one output per file, with its rows and bytes.
    (downloaded,) = xcom_values(run.run_id, "download")
    assert_download_lineage(
        events, DAG_ID, "download", dap_namespace=dap, table="canvas.users", files=downloaded["files"]
    )
    assert sum(f["rows"] for f in downloaded["files"]) == 7

    # sync: the DAP table in, the SQLite table out, with its columns and the rows written.
    sync_event = assert_sync_lineage(
        events,
        DAG_ID,
        "sync",
        dap_namespace=dap,
        table="canvas.users",
        destination=(f"sqlite://{warehouse}", "canvas__users"),
        rows=7,
    )
    (output,) = sync_event["outputs"]
    assert {f["name"]: f["type"] for f in output["facets"]["schema"]["fields"]}["id"] == "INTEGER"

    # A failed task: a FAIL event with the table it tried to read and the provider's error facet.
    failed = task_event(events, DAG_ID, "missing_table", "FAIL")
    assert list(datasets(failed, "inputs")) == [(dap, "canvas.no_such_table")]
    error = failed["run"]["facets"]["errorMessage"]
    assert "no_such_table" in error["message"] and error["programmingLanguage"] == "python"

    # An incremental sync: rowCount counts the rows written (inserted + updated), not the deletes.
    server.emulator.advance(updates=3, inserts=2, deletes=1)
    again = module.dag.test(run_conf={"target": str(tmp_path / "out")})
    (summary,) = xcom_values(again.run_id, "sync")
    assert (summary["mode"], summary["rows_inserted"], summary["rows_updated"], summary["rows_deleted"]) == (
        "incremental", 2, 3, 1,
    )  # fmt: skip
    events = read_events(lineage_file)
    incremental = assert_sync_lineage(
        events,
        DAG_ID,
        "sync",
        dap_namespace=dap,
        table="canvas.users",
        destination=(f"sqlite://{warehouse}", "canvas__users"),
        rows=5,
    )
    assert incremental["run"]["runId"] != sync_event["run"]["runId"]
    (source,) = incremental["inputs"]
    version = parse_timestamp(source["facets"]["version"]["datasetVersion"])
    assert version == parse_timestamp(summary["watermark"])  # DAP's "Z" spelling, the sync's "+00:00"
    assert server.client_secret not in json.dumps(events)


@pytest.mark.dagtest
def test_example_sync_dag_into_postgres(
    airflow_db,
    dap_emulator_factory,
    lineage_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The example sync DAG (mapped, deferrable) into PostgreSQL: one COMPLETE event per table with
    the postgres provider's naming, checked by what the deployment test uses."""
    import importlib

    from airflow.models.pool import Pool

    from tests.operators.lineage_asserts import assert_mapped_sync_lineage
    from tests.operators.test_cd2_sync import airflow_connection
    from tests.replication.conftest import make_database
    from tests.test_example_dags import xcom_values

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.2), rows=4, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json())
    db = make_database("postgres", tmp_path, request)
    monkeypatch.setenv("AIRFLOW_CONN_CD2_WAREHOUSE", json.dumps(airflow_connection(db)))
    Pool.create_or_update_pool("cd2_api", 5, "DAP job creation", include_deferred=False)
    module = importlib.import_module("example_dags.example_cd2_sync_to_database")

    run = module.dag.test(run_conf={"tables": "c*", "poll_interval": 0.1})
    assert run.state == "success"
    (report,) = xcom_values(run.run_id, "report")
    assert sorted(report) == ["calendar_events", "course_sections", "courses"]
    assert_mapped_sync_lineage(
        read_events(lineage_file),
        "example_cd2_sync_to_database",
        "sync",
        dap_namespace=f"dap://127.0.0.1:{server.port}",
        destination_namespace="postgres://127.0.0.1:5432",
        database=db.name,
        report=report,
        run_id=run.run_id,
    )


_DAG_TEST_IN_A_PROCESS = """
import json, sys
from tests.dags.test_dag_openlineage import dag
run = dag.test(run_conf={"target": sys.argv[1]})
print(json.dumps({"state": str(run.state)}))
"""


@pytest.mark.dagtest
def test_configuration_alone_turns_lineage_on(
    airflow_db, dap_emulator_factory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What a user does: install the provider and set [openlineage] transport; the provider's plugin
    registers its listener (no test fixture involved) and the events reach the transport."""
    if importlib.util.find_spec("airflow.providers.openlineage") is None:
        unavailable("apache-airflow-providers-openlineage is not installed (pip install '.[openlineage]')")
    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.2), rows=4, catalog="core"))
    events_path = tmp_path / "events.jsonl"
    env = {
        **os.environ,
        **file_transport_env(events_path),
        "AIRFLOW_CONN_INSTRUCTURE_DEFAULT": server.connection_json(),
        "AIRFLOW_CONN_OL_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")}),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DAG_TEST_IN_A_PROCESS, str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_events(events_path)
    dap = f"dap://127.0.0.1:{server.port}"
    assert list(datasets(task_event(events, DAG_ID, "list_tables"), "inputs")) == [
        (dap, "canvas.courses"),
        (dap, "canvas.users"),
    ]
    assert_sync_lineage(
        events, DAG_ID, "sync", dap_namespace=dap, table="canvas.users",
        destination=(f"sqlite://{tmp_path / 'w.db'}", "canvas__users"), rows=4,
    )  # fmt: skip
    assert "errorMessage" in task_event(events, DAG_ID, "missing_table", "FAIL")["run"]["facets"]


# -- naming, at unit level -----------------------------------------------------------------------


def test_dap_namespace_is_the_host_of_the_base_url() -> None:
    assert dap_namespace("https://api-gateway.instructure.com") == "dap://api-gateway.instructure.com"
    assert dap_namespace("https://API-Gateway.instructure.com/some/path/") == "dap://api-gateway.instructure.com"
    assert dap_namespace("http://127.0.0.1:8765") == "dap://127.0.0.1:8765"


def test_file_naming_follows_the_spec() -> None:
    assert file_naming("/data/lake/canvas/users/job_1/part-00000.tsv.gz") == (
        "file",
        "/data/lake/canvas/users/job_1/part-00000.tsv.gz",
    )
    assert file_naming("file:///data/x.json") == ("file", "/data/x.json")
    assert file_naming("s3://bucket/lake/canvas/users/part-00000.tsv.gz") == (
        "s3://bucket",
        "lake/canvas/users/part-00000.tsv.gz",
    )
    assert file_naming("gs://b/k.parquet") == ("gs://b", "k.parquet")


def test_sql_naming_matches_the_database_providers() -> None:
    """Our namespace is what the postgres and mysql providers report for the same connection."""
    from airflow.models.connection import Connection

    pytest.importorskip("airflow.providers.openlineage")
    from airflow.providers.mysql.hooks.mysql import MySqlHook
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    pg = Connection(conn_id="pg", conn_type="postgres", host="DB.example.org", schema="warehouse")
    info = PostgresHook(postgres_conn_id="pg").get_openlineage_database_info(pg)
    namespace, name = sql_table_naming("postgres", pg.host, pg.port, pg.schema, "canvas", "users")
    assert namespace == f"{info.scheme}://{info.authority}" == "postgres://db.example.org:5432"
    assert name == "warehouse.canvas.users"

    my = Connection(conn_id="my", conn_type="mysql", host="mysql.local", port=3307, schema="cd2")
    info = MySqlHook(mysql_conn_id="my").get_openlineage_database_info(my)
    namespace, name = sql_table_naming("mysql", my.host, my.port, my.schema, "cd2", "canvas__users")
    assert namespace == f"{info.scheme}://{info.authority}" == "mysql://mysql.local:3307"
    assert name == "cd2.canvas__users"

    assert sql_table_naming("sqlite", "/tmp/w.db", None, None, "main", "canvas__users") == (
        "sqlite:///tmp/w.db",
        "canvas__users",
    )


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
def test_sync_lineage_into_postgres_and_mysql(
    dialect: str, dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A real sync into a fresh PostgreSQL / MariaDB database, then the facets the listener would get:
    the providers' naming, the replica's SQL types, rows inserted then inserted + updated."""
    pytest.importorskip("airflow.providers.openlineage")
    from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator
    from tests.operators.test_cd2_sync import airflow_connection
    from tests.replication.conftest import make_database

    server = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=0.05), rows=6, catalog="core"))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", server.connection_json(retry_delay=0.01))
    db = make_database(dialect, tmp_path, request)
    monkeypatch.setenv("AIRFLOW_CONN_OL_WAREHOUSE", json.dumps(airflow_connection(db)))

    def run() -> tuple[dict[str, Any], Any]:
        op = CD2SyncTableOperator(task_id="sync", table="users", destination_conn_id="ol_warehouse", poll_interval=0.05)
        return op.execute({}), op.get_openlineage_facets_on_complete(None)

    first, lineage = run()
    (source,) = lineage.inputs
    assert (source.namespace, source.name) == (f"dap://127.0.0.1:{server.port}", "canvas.users")
    (output,) = lineage.outputs
    schema, table = first["target"].split(".")
    if dialect == "postgres":
        assert (output.namespace, output.name) == ("postgres://127.0.0.1:5432", f"{db.name}.{schema}.{table}")
    else:
        assert (output.namespace, output.name) == ("mysql://127.0.0.1:3306", f"{db.name}.{table}")
    types = {f.name: f.type for f in output.facets["schema"].fields}
    assert [f.name for f in source.facets["schema"].fields] == list(types)
    assert types["id"] == "bigint" if dialect == "postgres" else types["id"].upper().startswith("BIGINT"), types
    assert output.outputFacets["outputStatistics"].rowCount == first["rows_inserted"] == 6

    server.emulator.advance(updates=2, inserts=1, deletes=1)
    second, lineage = run()
    assert (second["rows_inserted"], second["rows_updated"]) == (1, 2)
    (output,) = lineage.outputs
    assert output.outputFacets["outputStatistics"].rowCount == 3
    db.close_all()


# -- without the OpenLineage provider ------------------------------------------------------------

_WITHOUT_OPENLINEAGE = """
import importlib.abc, json, sys

# As if the openlineage extra were not installed: its modules cannot be imported and its
# distributions are not found (Airflow discovers providers through their entry points).
def hidden(name):
    name = (name or "").lower().replace("_", "-")
    return name.startswith("openlineage") or name == "apache-airflow-providers-openlineage"

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openlineage" or name.startswith("airflow.providers.openlineage"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

try:
    import importlib_metadata  # noqa: F401  (Airflow's choice when present; it adds a finder)
except ImportError:
    pass
for finder in sys.meta_path:
    original = getattr(finder, "find_distributions", None)
    if original is not None:
        def visible(*args, _original=original, **kwargs):
            return (d for d in _original(*args, **kwargs) if not hidden(d.metadata["Name"]))
        finder.find_distributions = visible
sys.meta_path.insert(0, Blocked())

from airflow_provider_instructure.operators.cd2 import GetCD2TableSchemaOperator, ListCD2TablesOperator
from airflow_provider_instructure.operators.cd2_download import CD2DownloadOperator
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

op = GetCD2TableSchemaOperator(task_id="schema", table="users")
schema = op.execute({})
print(json.dumps({
    "version": schema["version"],
    "complete": op.get_openlineage_facets_on_complete(None),
    "failure": op.get_openlineage_facets_on_failure(None),
    "loaded": sorted(m for m in sys.modules if m.startswith(("openlineage", "airflow.providers.openlineage"))),
}))
"""


def test_package_works_without_openlineage(instructure_conn: EmulatorServer) -> None:
    env = {**os.environ, "AIRFLOW_CONN_INSTRUCTURE_DEFAULT": instructure_conn.connection_json()}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENLINEAGE], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"version": 1, "complete": None, "failure": None, "loaded": []}
