"""The lake core without a table format: Arrow types, the batch reader, commit metadata, storage options."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.lake import metadata as meta
from airflow_provider_instructure.replication.lake.arrow import OP_COLUMN, arrow_schema, record_batches
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.replication.part_feed import read_parts
from airflow_provider_instructure.replication.values import ValueTally
from tests.replication.repl_helpers import write_part

SCHEMA: dict[str, Any] = {
    "version": 4,
    "schema": {
        "properties": {
            "key": {"properties": {"id": {"type": "integer", "format": "int64"}}, "required": ["id"]},
            "value": {
                "properties": {
                    "small": {"type": "integer", "format": "int16"},
                    "mid": {"type": "integer", "format": "int32"},
                    "price": {"type": "number", "multipleOf": 0.01, "maximum": 100000},
                    "ratio": {"type": "number", "format": "float32"},
                    "flag": {"type": "boolean"},
                    "at": {"type": "string", "format": "date-time"},
                    "day": {"type": "string", "format": "date"},
                    "kind": {"type": "string", "enum": ["a", "b"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "uid": {"type": "string", "format": "uuid"},
                }
            },
        }
    },
}


def test_arrow_schema_maps_every_kind() -> None:
    schema = arrow_schema(parse_table_schema(SCHEMA), with_op=True)
    types = {f.name: f.type for f in schema}
    assert types["id"] == pa.int64() and not schema.field("id").nullable
    assert (types["small"], types["mid"]) == (pa.int16(), pa.int32())
    assert types["price"] == pa.decimal128(8, 2) and types["ratio"] == pa.float64()
    assert types["flag"] == pa.bool_() and types["at"] == pa.timestamp("us", tz="UTC") and types["day"] == pa.date32()
    assert types["kind"] == types["tags"] == types["uid"] == pa.string()
    assert schema.field("small").nullable and schema.names[-1] == OP_COLUMN and not schema.field(OP_COLUMN).nullable


def test_the_reader_streams_bounded_batches_with_the_op_column(tmp_path: Path) -> None:
    schema = parse_table_schema(SCHEMA)
    header = ["meta.ts", "meta.action", "key.id", "value.small", "value.at", "value.tags"]
    rows = [["2024-01-01T00:00:00Z", "U", i, i, "2024-01-01T00:00:00Z", '["x"]'] for i in range(5)]
    rows.append(["2024-01-01T00:00:00Z", "D", 9, None, None, None])
    part = write_part(tmp_path / "part-00000.tsv.gz", header, rows)
    tally = ValueTally()
    batches = list(
        record_batches(
            read_parts([part], schema, schema, incremental=True),
            schema,
            where="t",
            incremental=True,
            tally=tally,
            batch_rows=2,
        )
    )
    assert [b.num_rows for b in batches] == [2, 2, 2]
    table = pa.Table.from_batches(batches)
    assert table.column(OP_COLUMN).to_pylist() == ["U"] * 5 + ["D"]
    assert table.column("mid").null_count == 6  # not in the part: NULL
    assert table.column("tags").to_pylist()[0] == '["x"]' and table.column("small").type == pa.int16()


def test_commit_metadata_round_trips_to_a_sync_state() -> None:
    at = datetime(2024, 3, 1, 12, 0, 0, 5, tzinfo=timezone.utc)
    pairs = meta.commit_metadata(
        namespace="canvas", table="users", versioned_schema=SCHEMA, mode="snapshot", watermark=at, job_id="j1"
    )
    assert pairs["dap.watermark"] == "2024-03-01T12:00:00.000005+00:00" and pairs["dap.schema_version"] == "4"
    assert all(isinstance(v, str) for v in pairs.values())
    state = meta.state_from_metadata(pairs, namespace="canvas", table="users", target="x")
    assert state is not None and state.watermark == at and state.versioned_schema == SCHEMA and state.job_id == "j1"
    assert (
        meta.state_from_metadata({**pairs, "dap.watermark": ""}, namespace="canvas", table="users", target="x") is None
    )
    with pytest.raises(ReplicationConfigError, match=r"already replicates canvas\.users"):
        meta.state_from_metadata(pairs, namespace="canvas", table="courses", target="x")


def test_storage_locations_translate_options_and_mask_secrets(tmp_path: Path) -> None:
    s3 = StorageLocation(
        "s3://bucket/lake/",
        {"aws_access_key_id": "AK", "aws_secret_access_key": "SECRET", "endpoint_url": "http://h:1", "allow_http": "1"},
    )
    assert s3.table_uri("canvas", "users") == "s3://bucket/lake/canvas/users"
    assert s3.for_deltalake() == {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SECRET",
        "AWS_ENDPOINT_URL": "http://h:1",
        "AWS_ALLOW_HTTP": "true",
    }
    assert s3.for_pyiceberg()["s3.secret-access-key"] == "SECRET"
    assert "SECRET" not in repr(s3) and "SECRET" not in str(s3)
    gs = StorageLocation("gs://b/p", {"google_service_account_key": '{"private_key": "PK"}'})
    assert gs.for_deltalake() == {"GOOGLE_SERVICE_ACCOUNT_KEY": '{"private_key": "PK"}'} and "PK" not in repr(gs)
    local = StorageLocation(f"file://{tmp_path}/lake")
    assert local.is_local and local.table_uri("canvas", "users") == f"{tmp_path}/lake/canvas/users"
    with pytest.raises(ReplicationConfigError, match="unsupported scheme"):
        StorageLocation("ftp://host/lake")
    with pytest.raises(ReplicationConfigError, match="unknown storage option"):
        StorageLocation("s3://b/p", {"password": "x"})
    with pytest.raises(ReplicationConfigError):
        local.table_uri("..", "users")
