"""CD2SyncTableOperator into Delta Lake and Iceberg tables: emulator over HTTP -> hook -> download ->
lake destination, on a local directory and on S3 (moto's server over HTTP, reached through a real
Airflow ``aws`` connection).

For each format and place: a snapshot of a few core tables (integers, decimals, timestamps,
JSON, UUIDs, IPs, and ``web_logs`` whose results may repeat a key), an incremental with inserts,
updates and deletes, each table read back as another engine would (``deltalake`` /
a pyiceberg catalog of its own) and compared with the emulator row for row; the watermark read
back from the table alone; the asset URI and the OpenLineage output dataset named after the
table's location. The per-table guarantees (every table, failures between data files and the
commit) are the lake tests' (tests/replication/lake).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator
from airflow_provider_instructure.replication import open_table_format
from airflow_provider_instructure.replication.lake.arrow import arrow_type
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.timestamps import parse_timestamp as parse_watermark
from tests.replication.lake.conftest import S3_KEYS, S3_REGION, make_bucket, s3_client, s3_server  # noqa: F401
from tests.replication.repl_helpers import assert_same_rows, bump_schema, expected_table

TABLES = [("canvas", "users"), ("canvas", "submissions"), ("canvas_logs", "web_logs")]


@pytest.fixture
def lake_server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    srv = dap_emulator_factory(
        emulator=Emulator(EmulatorConfig(parts=2, job_running_seconds=0.05), rows=15, catalog="core")
    )
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json(retry_delay=0.01))
    return srv


def _lake_rows(dest: Any, vs: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The table's rows by key as another engine reads them (the lake tests' readers), normalized
    like the emulator's."""
    if dest.kind == "delta":
        from tests.replication.lake.delta_helpers import delta_rows

        return delta_rows(dest, vs)
    from tests.replication.lake.iceberg_helpers import iceberg_rows

    return iceberg_rows(dest, vs)


def _place(where: str, fmt: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: Any) -> dict[str, Any]:
    """Operator arguments for a fresh lake location, and how to read it back."""
    args: dict[str, Any] = {"table_format": fmt}
    catalog_uri = None
    if where == "local":
        args["destination_path"] = str(tmp_path / "lake")
        location = StorageLocation(args["destination_path"])
        if fmt == "iceberg":
            catalog_uri = f"sqlite:///{tmp_path / 'lake' / 'iceberg_catalog.db'}"
    else:
        endpoint = request.getfixturevalue("s3_server")
        bucket = make_bucket(request.getfixturevalue("s3_client"))
        extra = {"endpoint_url": endpoint, "region_name": S3_REGION}
        conn = {"conn_type": "aws", "login": S3_KEYS["aws_access_key_id"], "password": S3_KEYS["aws_secret_access_key"]}
        monkeypatch.setenv("AIRFLOW_CONN_LAKE_S3", json.dumps({**conn, "extra": extra}))
        args.update(destination_path=f"s3://{bucket}/lake", storage_conn_id="lake_s3")
        location = StorageLocation(
            args["destination_path"], {**S3_KEYS, "endpoint_url": endpoint, "allow_http": "true", "region": S3_REGION}
        )
        if fmt == "iceberg":  # object storage needs a catalog database every worker reaches
            monkeypatch.setenv(
                "AIRFLOW_CONN_LAKE_CATALOG", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "catalog.db")})
            )
            args["catalog_conn_id"] = "lake_catalog"
            catalog_uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    return {"args": args, "location": location, "catalog_uri": catalog_uri}


def _sync(ns: str, table: str, args: dict[str, Any]) -> tuple[dict[str, Any], CD2SyncTableOperator]:
    op = CD2SyncTableOperator(task_id=f"sync_{table}", table=table, namespace=ns, poll_interval=0.05, **args)
    return op.execute({}), op


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_snapshot_then_incremental_into_a_lake_table(
    where: str,
    fmt: str,
    lake_server: EmulatorServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    place = _place(where, fmt, tmp_path, request, monkeypatch)
    location: StorageLocation = place["location"]
    emulator = lake_server.emulator
    for round_no in range(2):
        if round_no:
            emulator.advance([f"{ns}.{t}" for ns, t in TABLES], updates=3, inserts=2, deletes=2)
        for ns, table in TABLES:
            summary, op = _sync(ns, table, place["args"])
            what = f"{fmt} {where} {ns}.{table} round {round_no}"
            assert summary["mode"] == ("incremental" if round_no else "snapshot"), what
            assert summary["dialect"] == fmt and summary["table_format"] == fmt, what
            if round_no:
                assert (summary["rows_inserted"], summary["rows_deleted"]) == (2, 2), (what, summary)
                assert summary["rows_updated"] >= 1, (what, summary)
            vs = emulator.dataset.table(ns, table).versioned_schema
            dest = open_table_format(fmt, location, ns, table, catalog_uri=place["catalog_uri"])
            try:
                state = dest.read_state()  # the watermark needs nothing but the table
                assert state is not None and state.watermark.isoformat() == summary["watermark"], what
                expected = expected_table(lake_server, ns, table, state.watermark, vs)
                assert expected, what
                assert_same_rows(_lake_rows(dest, vs), expected, what)
            finally:
                dest.close()
            table_uri = location.table_uri(ns, table)
            assert summary["destination"] == (Path(table_uri).as_uri() if where == "local" else table_uri), what
            (output,) = op.get_openlineage_facets_on_complete(None).outputs  # the [test] extra has OpenLineage
            bucket = table_uri.split("/")[2]
            want = ("file", table_uri) if where == "local" else (f"s3://{bucket}", table_uri.split("/", 3)[3])
            assert (output.namespace, output.name) == want, what
            columns = parse_table_schema(vs).columns
            assert [(f.name, f.type) for f in output.facets["schema"].fields] == [
                (c.name, str(arrow_type(c))) for c in columns
            ], what
            stats = output.outputFacets["outputStatistics"]
            assert stats.rowCount == summary["rows_inserted"] + summary["rows_updated"], what


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a destination: destination_conn_id"),
        ({"destination_conn_id": "w", "table_format": "delta", "destination_path": "/x"}, "not both"),
        ({"table_format": "delta"}, "add destination_path"),
        ({"destination_path": "/lake"}, r"add table_format \('delta' or 'iceberg'\)"),
        ({"table_format": "hudi", "destination_path": "/lake"}, "table_format 'hudi' is not one of: delta, iceberg"),
        ({"table_format": "delta", "destination_path": "lake"}, r"relative local path.* gs://, abfss:// URI"),
        ({"table_format": "delta", "destination_path": "/l", "catalog_conn_id": "c"}, "catalog_conn_id is for"),
        ({"table_format": "delta", "destination_path": "/l", "table_prefix": "x_"}, "table_prefix is for SQL"),
        (
            {"table_format": "iceberg", "destination_path": "s3://b/l"},
            r"set catalog_conn_id \(a postgres or sqlite connection; PostgreSQL when workers are on several",
        ),
        ({"destination_conn_id": "w", "storage_conn_id": "s"}, "storage_conn_id is for table_format"),
        ({"table_format": "delta", "destination_path": "ftp://h/l"}, "unsupported scheme 'ftp'"),
    ],
)
def test_destination_arguments_are_checked_when_the_operator_is_created(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InstructureConfigError, match=message):
        CD2SyncTableOperator(task_id="t", table="users", **kwargs)


def test_templated_destination_arguments_are_checked_when_rendered() -> None:
    op = CD2SyncTableOperator(
        task_id="t", table="users", table_format="delta", destination_path="{{ var.value.lake_path }}"
    )
    assert "destination_path" in op.template_fields and "table_format" in op.template_fields


def test_a_wrong_storage_connection_fails_before_any_job(
    lake_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_GCS", json.dumps({"conn_type": "google_cloud_platform"}))
    op = CD2SyncTableOperator(
        task_id="t", table="users", table_format="delta", destination_path="s3://b/lake", storage_conn_id="lake_gcs"
    )
    before = lake_server.emulator.jobs.created_count
    with pytest.raises(InstructureConfigError, match="a s3:// path needs a connection of type aws"):
        op.execute({})
    assert lake_server.emulator.jobs.created_count == before


def test_parts_directory_depends_on_the_lake_location(tmp_path: Path) -> None:
    meta = {"namespace": "canvas", "table": "users", "job_id": "job-1"}

    def parts_dir(**kwargs: Any) -> Path:
        return CD2SyncTableOperator(task_id="t", table="users", workdir=str(tmp_path), **kwargs)._parts_dir(meta)

    a = parts_dir(table_format="delta", destination_path="/lake/a")
    assert a == parts_dir(table_format="delta", destination_path="/lake/a/")
    assert a != parts_dir(table_format="delta", destination_path="/lake/b")
    assert a != parts_dir(table_format="iceberg", destination_path="/lake/a")


def test_table_format_case_and_s3a_name_one_destination(tmp_path: Path) -> None:
    """ "Delta" is "delta" (XCom, parts directory); s3a:// is s3:// (asset, parts directory)."""
    meta = {"namespace": "canvas", "table": "users", "job_id": "job-1"}

    def op(**kwargs: Any) -> CD2SyncTableOperator:
        return CD2SyncTableOperator(task_id="t", table="users", workdir=str(tmp_path), **kwargs)

    capital = op(table_format=" Delta", destination_path="/lake/a")
    assert capital.table_format == "delta"
    assert capital._parts_dir(meta) == op(table_format="delta", destination_path="/lake/a")._parts_dir(meta)
    s3a = op(table_format="delta", destination_path="s3a://b/lake")._parts_dir(meta)
    assert s3a == op(table_format="delta", destination_path="s3://b/lake")._parts_dir(meta)


def test_an_iceberg_target_is_logged_with_its_location() -> None:
    ice = CD2SyncTableOperator(task_id="t", table="accounts", table_format="iceberg", destination_path="/lake")
    ice._asset_uri = "file:///lake/canvas/accounts"
    assert ice._where("canvas.accounts") == "canvas.accounts at file:///lake/canvas/accounts"
    assert ice._where("/lake/canvas/accounts") == "/lake/canvas/accounts"  # a Delta table URI says it already


def test_no_data_yet_then_a_schema_change_that_needs_a_snapshot(
    lake_server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the Destination protocol as for SQL: DAP's "no data yet" leaves an empty Delta table
    and no watermark; later, a removed column cannot be applied in place, so the operator takes a
    new snapshot (the _NeedSnapshot fallback) that replaces the table in one commit."""
    from deltalake import DeltaTable

    args = {"table_format": "delta", "destination_path": str(tmp_path / "lake")}
    location = StorageLocation(args["destination_path"])
    lake_server.emulator.config.tables_without_data = {"canvas.users": "post"}
    summary, _ = _sync("canvas", "users", args)
    assert summary["no_data"] and summary["mode"] == "snapshot" and summary["watermark"] is None
    empty = DeltaTable(location.table_uri("canvas", "users"))
    assert empty.to_pyarrow_table().num_rows == 0
    dest = open_table_format("delta", location, "canvas", "users")
    assert dest.read_state() is None  # the next run snapshots again
    dest.close()

    lake_server.emulator.config.tables_without_data = {}
    assert _sync("canvas", "users", args)[0]["mode"] == "snapshot"

    def drop_column(vs: dict[str, Any]) -> None:
        del vs["schema"]["properties"]["value"]["properties"]["storage_quota"]

    version = bump_schema(lake_server, "canvas", "users", drop_column)
    lake_server.emulator.advance(["canvas.users"], updates=2, inserts=1, deletes=1)
    summary, _ = _sync("canvas", "users", args)
    assert summary["mode"] == "snapshot" and summary["schema_version"] == version, summary
    table = DeltaTable(location.table_uri("canvas", "users"))
    assert "storage_quota" not in table.schema().to_arrow().names
    vs = lake_server.emulator.dataset.table("canvas", "users").versioned_schema
    expected = expected_table(lake_server, "canvas", "users", parse_watermark(summary["watermark"]), vs)
    dest = open_table_format("delta", location, "canvas", "users")
    assert_same_rows(_lake_rows(dest, vs), expected, "after the rebuild")
    dest.close()
