"""Reading a Delta table's storage and commit log for :class:`~.delta.DeltaDestination`.

* :func:`latest_dap_commit`: the newest commit written by this package (its ``commitInfo``
  carries ``dap.namespace``), walking back past commits by other writers (``OPTIMIZE``,
  ``VACUUM START/END``, a user's ``ALTER``) that carry no ``dap.*`` keys.
* :func:`listing` / :func:`probe_writable`: what is at a location and whether this process
  can write there, through the same Rust ``object_store`` (and so the same credentials) as
  the writes, so a check that passes means the sync can write.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime, timezone
from typing import Any

from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.lake import metadata as meta
from airflow_provider_instructure.replication.lake.storage import StorageLocation

#: Commits read in the first round when walking the log back to our latest commit (each is
#: one request on object storage; ours is normally the newest). Later rounds read 8x more.
HISTORY_PAGE = 2


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{1,200})</\1>")
#: Service error codes (S3, GCS, Azure) meaning the credentials are refused.
_DENIED = (
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthorizationFailure",
    "AuthenticationFailed",
    "ExpiredToken",
)
_UNREACHABLE = ("connection refused", "tcp connect error", "dns error", "timed out", "error sending request")


def storage_error(target: str, exc: BaseException) -> ReplicationConfigError:
    """A storage failure as a configuration error naming the reason, not secrets.

    delta-rs puts a generic first line ("Generic S3 error") over a chain of causes, the last of
    which is the service's answer (``<Code>NoSuchBucket</Code><Message>...``) or the network
    error; the reason is read from that chain: the bucket/container is missing, the endpoint is
    unreachable, or the credentials are refused. Only the service's error code and message and
    the innermost network error are quoted: never the request (its URL may carry a signature)
    nor the storage options.
    """
    text = _ANSI.sub("", str(exc)).strip()
    lines = [line.strip().lstrip("\u21b3").strip() for line in text.splitlines() if line.strip()]
    head = lines[0] if lines else type(exc).__name__
    fields = dict(_XML_FIELD.findall(text))
    code, message = fields.get("Code", ""), fields.get("Message", "")
    lowered = text.lower()
    if code in ("NoSuchBucket", "ContainerNotFound") or "bucket does not exist" in lowered:
        reason = "the bucket (or container) does not exist: create it or fix destination_path"
    elif code in _DENIED or " 403 forbidden" in f" {lowered}":
        reason = "access denied: check the storage connection's credentials and their permissions"
    elif any(marker in lowered for marker in _UNREACHABLE):
        cause = lines[-1] if lines else ""
        reason = f"the storage endpoint is unreachable ({cause[:120]}): check endpoint_url / the network"
    else:
        reason = ""
    detail = f" ({code}: {message})" if code and message else ""
    said = f"{head[:200]}{detail}"
    prefix = f"{target}: the storage is not usable: "
    if reason:
        return ReplicationConfigError(f"{prefix}{reason} [{type(exc).__name__}: {said}]")
    return ReplicationConfigError(f"{prefix}{type(exc).__name__}: {said[:300]}")


def latest_dap_commit(table: Any) -> tuple[dict[str, Any], datetime | None] | None:
    """The ``commitInfo`` of the newest commit of ours in ``table`` (a ``DeltaTable``), and when
    it was made; ``None`` when no commit carries ``dap.namespace``.

    Reads the log newest first, :data:`HISTORY_PAGE` commits at a time, so a table with a long
    history is not read whole when our commit is recent (it normally is the newest).
    """
    limit = HISTORY_PAGE
    newest = table.version()
    while True:
        history = table.history(limit=limit)
        for commit in history:
            if meta.owner(commit) is not None:
                stamp = commit.get("timestamp")
                when = datetime.fromtimestamp(stamp / 1000, tz=timezone.utc) if isinstance(stamp, int) else None
                return commit, when
        if len(history) < limit or limit > newest:
            return None
        limit *= 8


def listing(location: StorageLocation, table_uri: str) -> list[str] | None:
    """The names directly under ``table_uri`` (``None``: it does not exist).

    :raises ReplicationConfigError: the storage cannot be listed (no bucket, no access...).
    """
    if location.is_local:
        if not os.path.exists(table_uri):
            return None
        if not os.path.isdir(table_uri):
            raise ReplicationConfigError(f"{table_uri} exists and is not a directory")
        return sorted(os.listdir(table_uri))
    from deltalake._internal import DeltaFileSystemHandler

    try:
        # The Rust handler itself, not pyarrow's PyFileSystem(DeltaStorageHandler) - the
        # filesystem behind DeltaTable.to_pyarrow_dataset, whose teardown at interpreter exit
        # can abort the process on object storage (delta-rs issue #2184, exit -6).
        handler = DeltaFileSystemHandler(table_uri, location.for_deltalake())
        infos = handler.get_file_info_selector("", allow_not_found=True, recursive=False)
    except Exception as exc:  # delta-rs raises its own, unrelated exception types per backend
        raise storage_error(table_uri, exc) from exc
    names = sorted({info.path.strip("/").split("/")[0] for info in infos if info.path.strip("/")})
    return names or None


def probe_writable(location: StorageLocation, table_uri: str) -> None:
    """Write and delete a small object under ``table_uri`` (the directory is created locally).

    :raises ReplicationConfigError: the write or the delete failed.
    """
    name = f"_dap_write_probe_{secrets.token_hex(4)}"
    if location.is_local:
        try:
            os.makedirs(table_uri, exist_ok=True)
            path = os.path.join(table_uri, name)
            with open(path, "wb") as fh:
                fh.write(b"probe")
            os.unlink(path)
        except OSError as exc:
            raise ReplicationConfigError(f"{table_uri} is not writable: {exc}") from exc
        return
    from deltalake._internal import DeltaFileSystemHandler

    try:
        # The Rust handler itself: pyarrow's PyFileSystem wrapper hands its write() a pyarrow
        # Buffer, which this handler refuses (pyarrow 26, deltalake 1.6).
        handler = DeltaFileSystemHandler(table_uri, location.for_deltalake())
        out = handler.open_output_stream(name, None)
        out.write(b"probe")
        out.close()
        handler.delete_file(name)
    except Exception as exc:  # delta-rs raises its own, unrelated exception types per backend
        raise storage_error(table_uri, exc) from exc


__all__ = ["HISTORY_PAGE", "latest_dap_commit", "listing", "probe_writable", "storage_error"]
