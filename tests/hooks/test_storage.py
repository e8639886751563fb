"""Airflow connections to lake storage locations (:mod:`airflow_provider_instructure.hooks.storage`).

The connections are real Airflow connections (``AIRFLOW_CONN_*`` JSON, read by
``BaseHook.get_connection``); the translated options are what ``deltalake``/``pyiceberg`` get.
That they reach a real S3 API is shown by ``tests/operators/test_cd2_sync_lake.py`` (moto over HTTP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.hooks.storage import storage_location


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> Any:
    def define(conn_id: str, **fields: Any) -> str:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        return conn_id

    return define


def _redact(text: str) -> str:
    from airflow.sdk.log import redact

    return str(redact(text))


def test_aws_keys_region_endpoint_and_token(conn: Any) -> None:
    conn(
        "lake_s3",
        conn_type="aws",
        login="AKIAEXAMPLE",
        password="s3cr3t-value-1",
        extra={"region_name": "eu-west-1", "endpoint_url": "http://127.0.0.1:9000", "aws_session_token": "tok-xyz-9"},
    )
    loc = storage_location("s3://bucket/lake", "lake_s3")
    assert loc.uri == "s3://bucket/lake"
    assert loc.options == {
        "aws_access_key_id": "AKIAEXAMPLE",
        "aws_secret_access_key": "s3cr3t-value-1",
        "aws_session_token": "tok-xyz-9",
        "region": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9000",
        "allow_http": "true",
    }
    assert loc.for_deltalake()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value-1"
    assert "s3cr3t-value-1" not in repr(loc) and "tok-xyz-9" not in repr(loc)
    assert _redact("key s3cr3t-value-1 token tok-xyz-9") == "key *** token ***"


def test_aws_keys_in_extra_and_the_endpoint_of_service_config(conn: Any) -> None:
    conn(
        "lake_s3",
        conn_type="aws",
        extra={
            "aws_access_key_id": "AKIA2",
            "aws_secret_access_key": "other-secret-2",
            "service_config": {"s3": {"endpoint_url": "https://minio.example"}},
        },
    )
    loc = storage_location("s3a://bucket", "lake_s3")
    assert loc.uri == "s3://bucket"  # s3a:// is Hadoop's name for the same objects: one asset name
    assert loc.options == {
        "aws_access_key_id": "AKIA2",
        "aws_secret_access_key": "other-secret-2",
        "endpoint_url": "https://minio.example",
    }


def test_no_connection_means_the_environments_credentials(conn: Any) -> None:
    assert storage_location("s3://bucket/prefix", None).options == {}
    assert storage_location("gs://bucket/prefix", None).options == {}


def test_gcp_keyfile_dict_text_or_object_and_key_path(conn: Any, tmp_path: Path) -> None:
    key = {"type": "service_account", "client_email": "a@b.iam", "private_key": "-----BEGIN PRIVATE KEY-----xyz"}
    conn("gcs_text", conn_type="google_cloud_platform", extra={"keyfile_dict": json.dumps(key)})
    conn("gcs_obj", conn_type="google_cloud_platform", extra={"extra__google_cloud_platform__keyfile_dict": key})
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    conn("gcs_path", conn_type="google_cloud_platform", extra={"key_path": str(path)})
    for conn_id in ("gcs_text", "gcs_obj", "gcs_path"):
        loc = storage_location("gs://bucket/lake", conn_id)
        assert json.loads(loc.options["google_service_account_key"]) == key, conn_id
        assert "PRIVATE KEY" not in repr(loc)
    assert "xyz" not in _redact("-----BEGIN PRIVATE KEY-----xyz")
    conn("gcs_adc", conn_type="google_cloud_platform", extra={"project": "p"})
    assert storage_location("gs://bucket/lake", "gcs_adc").options == {}


def test_azure_shared_key_and_service_principal(conn: Any) -> None:
    conn("blob", conn_type="wasb", login="myaccount", password="azure-key-123")
    loc = storage_location("abfss://container@myaccount.dfs.core.windows.net/lake", "blob")
    assert loc.options == {"azure_storage_account_name": "myaccount", "azure_storage_account_key": "azure-key-123"}
    conn(
        "adls_sp",
        conn_type="adls",
        host="https://other.dfs.core.windows.net",
        login="client-id",
        password="client-secret-456",
        extra={"tenant_id": "tenant-1"},
    )
    loc = storage_location("abfss://container@ignored.dfs.core.windows.net/lake", "adls_sp")
    assert loc.options == {
        "azure_storage_account_name": "other",
        "azure_tenant_id": "tenant-1",
        "azure_client_id": "client-id",
        "azure_client_secret": "client-secret-456",
    }
    assert "client-secret-456" not in repr(loc) and _redact("client-secret-456") == "***"
    conn("adls_key", conn_type="adls", password="k-789", extra={"account_key": "unused"})
    loc = storage_location("abfs://c@fromtheuri.dfs.core.windows.net", "adls_key")
    assert loc.options == {"azure_storage_account_name": "fromtheuri", "azure_storage_account_key": "k-789"}


@pytest.mark.parametrize(
    ("path", "conn_id", "fields", "message"),
    [
        (
            "s3://b/p",
            "pg",
            {"conn_type": "postgres", "host": "h"},
            "has type 'postgres'; lake destinations take an aws",
        ),
        ("gs://b/p", "s3c", {"conn_type": "aws"}, r"'aws', which serves s3://, s3a://.*type google_cloud_pl"),
        ("s3://b/p", "blob", {"conn_type": "wasb"}, r"serves abfs://.*a s3:// path needs a connection of type aws"),
        ("/abs/dir", "s3c", {"conn_type": "aws"}, "is a local directory, which takes no storage_conn_id"),
        ("lake/dir", None, None, r"is a relative local path; pass an absolute directory.* gs://, abfss:// URI"),
        ("file:lake", None, None, "is a relative local path"),
        ("", None, None, "destination_path is empty"),
        ("hdfs://nn/lake", None, None, "unsupported scheme 'hdfs'"),
        ("s3:///lake", None, None, "names no bucket or container"),
        ("s3://b/p", "missing", None, "storage connection 'missing' is not defined"),
        ("s3://b/p", "role", {"conn_type": "aws", "extra": {"role_arn": "arn:aws:iam::1:role/x"}}, "assume role"),
        ("gs://b/p", "gk", {"conn_type": "google_cloud_platform", "extra": {"key_path": "/nope.json"}}, "cannot read"),
    ],
)
def test_wrong_settings_fail_before_any_network_call(
    conn: Any, path: str, conn_id: str | None, fields: dict[str, Any] | None, message: str
) -> None:
    if fields is not None and conn_id is not None:
        conn(conn_id, **fields)
    with pytest.raises(InstructureConfigError, match=message):
        storage_location(path, conn_id)


def test_local_paths(tmp_path: Path) -> None:
    assert storage_location(str(tmp_path / "lake"), None).uri == str(tmp_path / "lake")
    assert storage_location(f"file://{tmp_path}/lake/", None).uri == str(tmp_path / "lake")
