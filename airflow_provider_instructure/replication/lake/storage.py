"""Where a lake table lives: a local directory or an object-store URI, with credentials.

:class:`StorageLocation` holds the URI and *generic* credential keys; each table-format
library spells them differently, so :meth:`StorageLocation.for_deltalake` and
:meth:`StorageLocation.for_pyiceberg` translate them. Connection parsing (Airflow
connections to these keys) lives in ``hooks/storage.py``, not here.

Generic keys (all optional, all strings):

==============================  ===================================================
key                             meaning
==============================  ===================================================
``aws_access_key_id``           S3 access key
``aws_secret_access_key``       S3 secret key
``aws_session_token``           S3 session token (temporary credentials)
``region``                      S3 region
``endpoint_url``                S3-compatible endpoint (MinIO, moto, Ceph...)
``allow_http``                  ``"true"`` to allow a plain-HTTP endpoint
``google_service_account_key``  a GCS service account key, the JSON text itself
``azure_storage_account_name``  ADLS Gen2 / Blob account
``azure_storage_account_key``   its shared key
``azure_client_id``             service principal (with secret and tenant id)
``azure_client_secret``
``azure_tenant_id``
==============================  ===================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from airflow_provider_instructure.replication.errors import ReplicationConfigError

#: URI schemes a location may use besides a local path.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl")

GENERIC_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region",
        "endpoint_url",
        "allow_http",
        "google_service_account_key",
        "azure_storage_account_name",
        "azure_storage_account_key",
        "azure_client_id",
        "azure_client_secret",
        "azure_tenant_id",
    }
)
#: Keys whose values never appear in a repr, a log line or an error message.
SECRET_KEYS = frozenset(
    {
        "aws_secret_access_key",
        "aws_session_token",
        "google_service_account_key",
        "azure_storage_account_key",
        "azure_client_secret",
    }
)

# deltalake (delta-rs) passes storage options to the Rust ``object_store`` crate, whose
# configuration keys these are (object_store ``AmazonS3ConfigKey``, ``GoogleConfigKey``,
# ``AzureConfigKey``, ``ClientConfigKey``).
_DELTA_KEYS = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "region": "AWS_REGION",
    "endpoint_url": "AWS_ENDPOINT_URL",
    "allow_http": "AWS_ALLOW_HTTP",
    "google_service_account_key": "GOOGLE_SERVICE_ACCOUNT_KEY",
    "azure_storage_account_name": "AZURE_STORAGE_ACCOUNT_NAME",
    "azure_storage_account_key": "AZURE_STORAGE_ACCOUNT_KEY",
    "azure_client_id": "AZURE_CLIENT_ID",
    "azure_client_secret": "AZURE_CLIENT_SECRET",
    "azure_tenant_id": "AZURE_TENANT_ID",
}

# pyiceberg FileIO properties (pyiceberg.io: S3_*, GCS_*, ADLS_* constants).
_ICEBERG_KEYS = {
    "aws_access_key_id": "s3.access-key-id",
    "aws_secret_access_key": "s3.secret-access-key",
    "aws_session_token": "s3.session-token",
    "region": "s3.region",
    "endpoint_url": "s3.endpoint",
    "azure_storage_account_name": "adls.account-name",
    "azure_storage_account_key": "adls.account-key",
    "azure_client_id": "adls.client-id",
    "azure_client_secret": "adls.client-secret",
    "azure_tenant_id": "adls.tenant-id",
}


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class StorageLocation:
    """A local directory or an ``s3://``/``gs://``/``abfs://`` URI, and its credentials.

    :param uri: ``/data/lake``, ``file:///data/lake``, ``s3://bucket/prefix``,
        ``gs://bucket/prefix``, ``abfss://container@account.dfs.core.windows.net/prefix``.
    :param options: generic credential keys (module docstring); secrets are masked in ``repr``.
    :raises ReplicationConfigError: an unknown URI scheme or an unknown option key.
    """

    uri: str
    options: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        uri = str(self.uri).strip()
        if not uri:
            raise ReplicationConfigError("the destination path is empty")
        scheme = urlsplit(uri).scheme.lower()
        if scheme == "file":
            uri = urlsplit(uri).path
        elif scheme and len(scheme) > 1 and scheme not in REMOTE_SCHEMES:
            # one letter: a Windows drive ("C:\\lake")
            raise ReplicationConfigError(
                f"destination path {uri!r}: unsupported scheme {scheme!r}; use a local directory or "
                f"one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}"
            )
        if not self.is_remote_uri(uri):
            uri = str(Path(uri).expanduser().absolute())
        object.__setattr__(self, "uri", uri.rstrip("/") or "/")
        unknown = sorted(set(self.options) - GENERIC_KEYS)
        if unknown:
            raise ReplicationConfigError(
                f"unknown storage option(s) {unknown}; known: {', '.join(sorted(GENERIC_KEYS))}"
            )
        object.__setattr__(self, "options", {k: str(v) for k, v in self.options.items() if v is not None})

    @staticmethod
    def is_remote_uri(uri: str) -> bool:
        return urlsplit(uri).scheme.lower() in REMOTE_SCHEMES

    @property
    def is_local(self) -> bool:
        """True for a directory on this machine."""
        return not self.is_remote_uri(self.uri)

    @property
    def scheme(self) -> str:
        """``file`` for a local path, else the URI scheme (``s3``, ``gs``, ``abfss``...)."""
        return "file" if self.is_local else urlsplit(self.uri).scheme.lower()

    def table_uri(self, namespace: str, table: str) -> str:
        """``<uri>/<namespace>/<table>``: where a DAP table's lake table lives."""
        for part in (namespace, table):
            if not part or "/" in part or "\\" in part or part in (".", ".."):
                raise ReplicationConfigError(f"{part!r} cannot be a path segment of a lake table")
        if self.is_local:
            return os.path.join(self.uri, namespace, table)
        return f"{self.uri}/{namespace}/{table}"

    def for_deltalake(self) -> dict[str, str]:
        """Storage options for ``deltalake`` (delta-rs, Rust ``object_store`` keys).

        What deltalake 1.6 needs, measured against moto's S3 over HTTP:

        * ``AWS_ALLOW_HTTP="true"`` for a plain-HTTP ``endpoint_url`` (MinIO, moto): without it
          the first request fails with "builder error" (object_store refuses http:// URLs).
          It is set only when ``allow_http`` says so.
        * Nothing for commit safety: a Delta commit creates ``_delta_log/<version>.json`` with a
          put-if-absent (``PutMode::Create``, ``If-None-Match: *``), which object_store sends to
          S3 natively; neither ``AWS_S3_ALLOW_UNSAFE_RENAME`` nor a DynamoDB lock (no longer
          supported by delta-rs) nor ``AWS_CONDITIONAL_PUT`` is required. The store must
          honour ``If-None-Match`` (AWS S3 since 2024, MinIO, moto) for two concurrent writers
          to be safe; this provider runs one writer per table at a time anyway.
        * With an ``endpoint_url`` object_store addresses buckets by path, which S3-compatible
          servers expect (its default, not set here).
        """
        out = {_DELTA_KEYS[k]: v for k, v in self.options.items() if k in _DELTA_KEYS}
        out.pop("AWS_ALLOW_HTTP", None)
        if "allow_http" in self.options:
            # S3's spelling; the other backends take object_store's generic client option
            key = "AWS_ALLOW_HTTP" if self.scheme in ("s3", "s3a") else "allow_http"
            out[key] = "true" if _truthy(self.options["allow_http"]) else "false"
        return out

    def for_pyiceberg(self) -> dict[str, str]:
        """FileIO properties for ``pyiceberg`` (``s3.*``, ``gcs.*``, ``adls.*``).

        pyiceberg has no property for a GCS service account key's JSON text, so
        ``google_service_account_key`` is not translated here; the Iceberg destination
        decides how to pass it (:mod:`.iceberg`).
        """
        out = {_ICEBERG_KEYS[k]: v for k, v in self.options.items() if k in _ICEBERG_KEYS}
        if self.scheme in ("s3", "s3a") and "endpoint_url" in self.options:
            out.setdefault("s3.path-style-access", "true")
        return out

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_KEYS else v) for k, v in sorted(self.options.items())}
        return f"StorageLocation(uri={self.uri!r}, options={shown!r})"

    __str__ = __repr__


__all__ = ["GENERIC_KEYS", "SECRET_KEYS", "StorageLocation"]
