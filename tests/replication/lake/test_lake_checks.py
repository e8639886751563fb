"""Checks before data moves that a new-user test found missing (issue 11): an Iceberg table is
never created in a directory holding something else (a Delta table, user files, another
catalog's Iceberg table), and a Delta storage failure names its reason (missing bucket,
unreachable endpoint) instead of "Generic S3 error", without secrets."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.lake import delta_log
from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from airflow_provider_instructure.replication.lake.iceberg import IcebergDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from tests.replication.lake.conftest import S3_KEYS
from tests.replication.test_handcrafted import TRICKY_SCHEMA


def _listing(path: str) -> list[str]:
    return sorted(os.listdir(path))


def test_iceberg_refuses_a_delta_table_and_user_files(local_location: StorageLocation) -> None:
    from deltalake import write_deltalake

    delta_dir = f"{local_location.uri}/canvas/tricky"
    write_deltalake(delta_dir, pa.table({"id": [1]}))
    with pytest.raises(ReplicationConfigError, match=r"canvas/tricky is a Delta table \(found _delta_log\)"):
        IcebergDestination(local_location, "canvas", "tricky").check_target()
    assert _listing(delta_dir) == ["_delta_log", *[n for n in _listing(delta_dir) if n.endswith(".parquet")]]

    os.makedirs(f"{local_location.uri}/canvas/users")
    Path(f"{local_location.uri}/canvas/users/notes.txt").write_text("mine")
    with pytest.raises(ReplicationConfigError, match=r"is not empty .*\(found notes\.txt\)"):
        IcebergDestination(local_location, "canvas", "users").check_target()
    assert _listing(f"{local_location.uri}/canvas/users") == ["notes.txt"]


def test_iceberg_accepts_what_an_interrupted_first_sync_left(local_location: StorageLocation) -> None:
    # Data files (and manifests) written before a first commit that never happened.
    os.makedirs(f"{local_location.uri}/canvas/tricky/data")
    Path(f"{local_location.uri}/canvas/tricky/data/orphan.parquet").write_bytes(b"PAR1")
    os.makedirs(f"{local_location.uri}/canvas/tricky/metadata")
    dest = IcebergDestination(local_location, "canvas", "tricky")
    dest.check_target()
    assert dest.create_empty(TRICKY_SCHEMA)
    dest.check_target()  # its own table: accepted again
    dest.close()


def test_a_second_catalog_is_refused_the_first_ones_location(local_location: StorageLocation, tmp_path: Path) -> None:
    first = IcebergDestination(local_location, "canvas", "tricky")
    first.check_target()
    assert first.create_empty(TRICKY_SCHEMA)
    first.close()
    other = f"sqlite:///{tmp_path / 'other_catalog.db'}"
    second = IcebergDestination(local_location, "canvas", "tricky", catalog_uri=other)
    with pytest.raises(ReplicationConfigError) as caught:
        second.check_target()
    message = str(caught.value)
    assert f"{local_location.uri}/canvas/tricky already holds an Iceberg table" in message
    assert f"the catalog at {other} does not point at" in message
    assert "Use the catalog that wrote it" in message
    second.close()


def test_delta_storage_errors_name_the_reason(s3_server: str) -> None:
    options = {**S3_KEYS, "endpoint_url": s3_server, "allow_http": "true", "region": "us-east-1"}
    missing = DeltaDestination(StorageLocation("s3://no-such-bucket-h9/lake", options), "canvas", "accounts")
    with pytest.raises(ReplicationConfigError) as caught:
        missing.check_target()
    text = str(caught.value)
    assert "the bucket (or container) does not exist" in text
    assert "NoSuchBucket: The specified bucket does not exist" in text
    closed = DeltaDestination(
        StorageLocation("s3://lake/x", {**options, "endpoint_url": "http://127.0.0.1:1"}), "canvas", "accounts"
    )
    with pytest.raises(ReplicationConfigError) as caught:
        closed.check_target()
    assert "the storage endpoint is unreachable (Connection refused" in str(caught.value)
    for message in (text, str(caught.value)):
        assert S3_KEYS["aws_secret_access_key"] not in message
        assert S3_KEYS["aws_access_key_id"] not in message
        assert "Generic S3 error" in message  # delta-rs's own words are kept after the reason


def test_access_denied_is_named_without_the_signature() -> None:
    # What delta-rs reports for refused credentials (its cause chain; moto does not check keys).
    raw = OSError(
        "Generic S3 error\n  \x1b[31m\u21b3\x1b[0m Error performing PUT http://h/b/k?X-Amz-Signature=abc123secret\n"
        "   \x1b[31m\u21b3\x1b[0m 403 Forbidden\n"
        "    \x1b[31m\u21b3\x1b[0m <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we "
        "calculated does not match</Message><StringToSign>AWS4-HMAC-SHA256 x</StringToSign></Error>"
    )
    text = str(delta_log.storage_error("s3://b/k", raw))
    assert "access denied" in text and "SignatureDoesNotMatch" in text
    assert "abc123secret" not in text and "StringToSign" not in text and "AWS4" not in text


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_dap_column_named_like_the_op_column_is_refused(
    fmt: str, local_location: StorageLocation, tmp_path: Path
) -> None:
    # delta-rs panicked on the incremental's MERGE source holding two _dap_op columns.
    from airflow_provider_instructure.replication.lake.arrow import OP_COLUMN
    from tests.replication.lake.test_iceberg import _snapshot_parts
    from tests.replication.test_handcrafted import T0, _rows

    versioned = copy.deepcopy(TRICKY_SCHEMA)
    versioned["schema"]["properties"]["value"]["properties"][OP_COLUMN] = {"type": "string"}
    cls = DeltaDestination if fmt == "delta" else IcebergDestination
    dest = cls(local_location, "canvas", "tricky")
    with pytest.raises(ReplicationConfigError, match=f"has a column named '{OP_COLUMN}'.* SQL destination"):
        dest.apply_snapshot(_snapshot_parts(tmp_path, _rows(0)), versioned_schema=versioned, at=T0)
    assert dest.read_state() is None
    dest.close()
