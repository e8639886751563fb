"""Airflow connections to lake storage locations (:class:`~..replication.lake.storage.StorageLocation`).

``CD2SyncTableOperator(table_format=..., destination_path=..., storage_conn_id=...)`` names
where the Delta or Iceberg table goes and which Airflow connection holds the credentials; this
module turns the pair into a :class:`StorageLocation` with the generic credential keys the
replication layer translates for ``deltalake`` and ``pyiceberg``. It makes no network call:
every error here is raised before any data moves.

==============================  ===============  ==========================================
connection type                 path schemes     fields read
==============================  ===============  ==========================================
``aws``                         ``s3://``        login / password: access key id / secret;
                                ``s3a://``       extra ``region_name``, ``endpoint_url``
                                                 (or ``service_config.s3.endpoint_url``),
                                                 ``aws_session_token``; also the extras
                                                 ``aws_access_key_id`` / ``aws_secret_access_key``
``google_cloud_platform``       ``gs://``        extra ``keyfile_dict`` (the JSON key, text or
                                ``gcs://``       object) or ``key_path`` (a key file on the
                                                 worker, read now)
``wasb``, ``adls``              ``abfs://``      account name: extra ``account_name``, else the
                                ``abfss://``     host (a name or ``https://<account>.…`` URL),
                                ``az://``        else the path's ``…@<account>.dfs…``, else (wasb)
                                ``adl://``       the login. Shared key: password (or extra
                                                 ``shared_access_key``/``account_key``). Service
                                                 principal when extra ``tenant_id`` is set:
                                                 login / password = client id / secret
==============================  ===============  ==========================================

No connection (``storage_conn_id=None``) means the environment's credentials (the AWS/GCP/Azure
variables, an instance profile, workload identity), which both libraries look up themselves;
a local directory needs none and takes no connection. Fields prefixed the old way
(``extra__google_cloud_platform__keyfile_dict``) are read too.

Secrets (keys, tokens, the service account JSON and its private key) are registered with
Airflow's secrets masker as they are read, so no task log shows them; the location's ``repr``
masks them as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_instructure._compat import AirflowNotFoundException, BaseHook, mask_secret
from airflow_provider_instructure.exceptions import InstructureConfigError

#: Path schemes each connection type can serve.
SCHEMES_BY_CONN_TYPE: dict[str, tuple[str, ...]] = {
    "aws": ("s3", "s3a"),
    "google_cloud_platform": ("gs", "gcs"),
    "wasb": ("abfs", "abfss", "az", "adl"),
    "adls": ("abfs", "abfss", "az", "adl"),
}
_CONN_TYPE_BY_SCHEME = {
    "s3": "aws",
    "s3a": "aws",
    "gs": "google_cloud_platform",
    "gcs": "google_cloud_platform",
    "abfs": "wasb or adls",
    "abfss": "wasb or adls",
    "az": "wasb or adls",
    "adl": "wasb or adls",
}


def _scheme(path: str) -> str:
    scheme = urlsplit(path).scheme.lower()
    return "" if len(scheme) <= 1 or scheme == "file" else scheme  # one letter: a Windows drive


def check_destination_path(path: str) -> str:
    """The scheme of a destination path (``""`` for a local directory), refusing what cannot work.

    :param path: ``/abs/dir``, ``file:///abs/dir``, ``s3://bucket/prefix``, ``gs://…``, ``abfss://…``.
    :raises InstructureConfigError: an empty or relative local path (a worker's working directory
        is not a stable place for a table), an unknown scheme, or a bucket-less URI.
    """
    text = str(path or "").strip()
    if not text:
        raise InstructureConfigError(
            "destination_path is empty; pass a local directory or an s3://, gs://, abfss:// URI."
        )
    scheme = _scheme(text)
    if not scheme:
        local = urlsplit(text).path if text.lower().startswith("file:") else text
        if not os.path.isabs(os.path.expanduser(local)):
            raise InstructureConfigError(
                f"destination_path {text!r} is a relative local path; pass an absolute directory (the worker's "
                "working directory changes between runs) or an s3://, gs://, abfss:// URI"
            )
        return ""
    if scheme not in _CONN_TYPE_BY_SCHEME:
        raise InstructureConfigError(
            f"destination_path {text!r}: unsupported scheme {scheme!r}; use an absolute local directory or one of "
            f"{', '.join(sorted(s + '://' for s in _CONN_TYPE_BY_SCHEME))}"
        )
    if not urlsplit(text).netloc:
        raise InstructureConfigError(f"destination_path {text!r} names no bucket or container")
    return scheme


def normalise_path(path: str) -> str:
    """``path`` stripped, with ``s3a://`` (Hadoop's name for S3) spelled ``s3://``: both name the
    same objects, so the table, its Airflow asset and its parts directory get one name."""
    text = str(path or "").strip()
    if urlsplit(text).scheme.lower() == "s3a":
        return "s3" + text[text.index(":") :]
    return text


def storage_location(path: str, storage_conn_id: str | None) -> Any:
    """The :class:`StorageLocation` of ``path`` with the credentials of ``storage_conn_id``.

    :param path: the operator's ``destination_path`` (``s3a://`` is taken as ``s3://``,
        ``file:///abs/dir`` as ``/abs/dir``).
    :param storage_conn_id: an ``aws``, ``google_cloud_platform``, ``wasb`` or ``adls`` Airflow
        connection; None for a local path or the environment's credentials.
    :returns: a ``replication.lake.storage.StorageLocation``.
    :raises InstructureConfigError: a relative or unsupported path, a connection that is not
        defined, of another type, or of a type that does not serve the path's scheme.
    """
    from airflow_provider_instructure.replication.errors import ReplicationConfigError
    from airflow_provider_instructure.replication.lake.storage import StorageLocation

    scheme = check_destination_path(path)
    options: dict[str, str] = {}
    if storage_conn_id:
        if not scheme:
            raise InstructureConfigError(
                f"destination_path {path!r} is a local directory, which takes no storage_conn_id "
                f"({storage_conn_id!r}); drop storage_conn_id or pass an object-storage URI"
            )
        try:
            conn = BaseHook.get_connection(storage_conn_id)
        except AirflowNotFoundException:
            raise InstructureConfigError(
                f"storage connection {storage_conn_id!r} is not defined; create an aws, google_cloud_platform, "
                "wasb or adls connection with that id"
            ) from None
        options = location_options(conn, storage_conn_id, path)
    try:
        return StorageLocation(normalise_path(path), options)
    except ReplicationConfigError as exc:
        raise InstructureConfigError(f"destination_path {path!r}: {exc}") from None


def location_options(conn: Any, conn_id: str, path: str) -> dict[str, str]:
    """The generic credential keys of an Airflow connection, for a destination at ``path``.

    :param conn: an Airflow ``Connection`` (``conn_type``, ``login``, ``password``, ``host``,
        ``extra_dejson``).
    :param conn_id: its id, for messages.
    :raises InstructureConfigError: the type is not a storage type, or does not serve ``path``.
    """
    conn_type = (conn.conn_type or "").lower()
    scheme = _scheme(path)
    served = SCHEMES_BY_CONN_TYPE.get(conn_type)
    if served is None:
        raise InstructureConfigError(
            f"storage connection {conn_id!r} has type {conn.conn_type!r}; lake destinations take an aws, "
            "google_cloud_platform, wasb or adls connection"
        )
    if scheme not in served:
        raise InstructureConfigError(
            f"storage connection {conn_id!r} is of type {conn_type!r}, which serves "
            f"{', '.join(s + '://' for s in served)} paths, but destination_path is {path!r}; a {scheme}:// path "
            f"needs a connection of type {_CONN_TYPE_BY_SCHEME.get(scheme, 'matching it')}"
        )
    extra = _extra(conn)
    if conn_type == "aws":
        options = _aws(conn, extra, conn_id)
    elif conn_type == "google_cloud_platform":
        options = _gcp(extra, conn_id)
    else:
        options = _azure(conn, extra, conn_type, path)
    from airflow_provider_instructure.replication.lake.storage import SECRET_KEYS

    for key, value in options.items():
        if key in SECRET_KEYS and value:
            mask_secret(value)
    return {k: v for k, v in options.items() if v not in (None, "")}


def _extra(conn: Any) -> dict[str, Any]:
    extra = dict(conn.extra_dejson or {})
    prefix = f"extra__{(conn.conn_type or '').lower()}__"
    for key in list(extra):  # the pre-2.3 spelling of provider extras
        if key.startswith(prefix):
            extra.setdefault(key[len(prefix) :], extra[key])
    return extra


def _aws(conn: Any, extra: dict[str, Any], conn_id: str) -> dict[str, str]:
    if extra.get("role_arn"):
        raise InstructureConfigError(
            f"storage connection {conn_id!r} asks to assume role {extra['role_arn']!r}, which lake destinations "
            "do not do; give the connection keys of that role, or leave storage_conn_id unset to use the "
            "environment's credentials (an instance profile or web identity)"
        )
    endpoint = extra.get("endpoint_url") or ((extra.get("service_config") or {}).get("s3") or {}).get("endpoint_url")
    options = {
        "aws_access_key_id": conn.login or extra.get("aws_access_key_id"),
        "aws_secret_access_key": conn.password or extra.get("aws_secret_access_key"),
        "aws_session_token": extra.get("aws_session_token"),
        "region": extra.get("region_name") or extra.get("region"),
        "endpoint_url": endpoint,
    }
    if endpoint and str(endpoint).lower().startswith("http://"):
        options["allow_http"] = "true"  # an S3-compatible server without TLS (MinIO, moto) was asked for
    return {k: str(v) for k, v in options.items() if v}


def _gcp(extra: dict[str, Any], conn_id: str) -> dict[str, str]:
    keyfile = extra.get("keyfile_dict")
    key_path = extra.get("key_path")
    if extra.get("key_secret_name"):
        raise InstructureConfigError(
            f"storage connection {conn_id!r} keeps its key in Secret Manager (key_secret_name), which lake "
            "destinations do not read; set keyfile_dict or key_path, or leave storage_conn_id unset"
        )
    if keyfile:
        text = keyfile if isinstance(keyfile, str) else json.dumps(keyfile)
    elif key_path:
        try:
            text = Path(key_path).read_text()
        except OSError as exc:
            raise InstructureConfigError(
                f"storage connection {conn_id!r}: cannot read key_path {key_path!r}: {exc.strerror}"
            ) from None
    else:
        return {}  # application default credentials
    try:
        key = json.loads(text)
    except ValueError:
        raise InstructureConfigError(
            f"storage connection {conn_id!r}: the service account key is not JSON (keyfile_dict / key_path)"
        ) from None
    if isinstance(key, dict) and key.get("private_key"):
        mask_secret(str(key["private_key"]))
    return {"google_service_account_key": text}


def _azure(conn: Any, extra: dict[str, Any], conn_type: str, path: str) -> dict[str, str]:
    tenant = extra.get("tenant_id")
    account = extra.get("account_name") or _account_from_host(conn.host) or _account_from_path(path)
    if not account and conn_type == "wasb" and not tenant:
        account = conn.login  # WasbHook: login is the account name for shared-key access
    options = {"azure_storage_account_name": account}
    if tenant:
        options.update(azure_tenant_id=tenant, azure_client_id=conn.login, azure_client_secret=conn.password)
    else:
        options["azure_storage_account_key"] = (
            conn.password or extra.get("shared_access_key") or extra.get("account_key")
        )
    return {k: str(v) for k, v in options.items() if v}


def _account_from_host(host: str | None) -> str | None:
    if not host:
        return None
    name = urlsplit(host).hostname if "://" in host else host
    return (name or "").split(".")[0] or None


def _account_from_path(path: str) -> str | None:
    netloc = urlsplit(path).netloc  # container@account.dfs.core.windows.net
    if "@" not in netloc:
        return None
    return netloc.split("@", 1)[1].split(".")[0] or None


__all__ = ["SCHEMES_BY_CONN_TYPE", "check_destination_path", "location_options", "storage_location"]
