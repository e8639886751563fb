"""The SQL catalog and the FileIO of the Iceberg destination.

An Iceberg table is a chain of metadata files; the *catalog* holds the pointer to the current
one, and a commit is the swap of that pointer (pyiceberg's ``SqlCatalog``: one
``UPDATE iceberg_tables SET metadata_location = new WHERE metadata_location = old``, so a
concurrent commit fails instead of being lost). The catalog is a SQL database named by a
SQLAlchemy URL:

* ``sqlite:////data/lake/iceberg_catalog.db`` (the default for a local location: a file beside
  the tables);
* ``postgresql+psycopg2://user:password@host:5432/db`` (what object storage needs, since every
  worker must see the same catalog).

pyiceberg creates its two tables (``iceberg_tables``, ``iceberg_namespace_properties``) in that
database on first use; Spark, Trino or another pyiceberg reach the same tables through a JDBC /
SQL catalog named :data:`CATALOG_NAME` on the same database.

Files go through pyiceberg's ``PyArrowFileIO`` (local paths, ``s3://``, ``gs://``,
``abfss://``) with the credentials of :meth:`.storage.StorageLocation.for_pyiceberg`.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.lake.storage import StorageLocation

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog

#: The ``catalog_name`` column pyiceberg writes in ``iceberg_tables``: other engines reading the
#: same catalog database must use this name.
CATALOG_NAME = "dap"
#: The SQLite catalog file created beside local tables when no ``catalog_uri`` is given.
DEFAULT_SQLITE_FILE = "iceberg_catalog.db"
_ARROW_FILE_IO = "pyiceberg.io.pyarrow.PyArrowFileIO"


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reprs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show only the scheme
        return url.split(":", 1)[0] + ":***"


def scrub(text: str, url: str) -> str:
    """``text`` without the password of ``url`` (a driver message may quote the URL)."""
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        return text
    return text.replace(str(password), "***") if password else text


def default_catalog_uri(location: StorageLocation) -> str:
    """``sqlite:///<location>/iceberg_catalog.db`` for a local location.

    :raises ReplicationConfigError: the location is object storage, where a file-based catalog
        cannot be shared safely between workers: a ``catalog_uri`` is required.
    """
    if not location.is_local:
        raise ReplicationConfigError(
            f"an Iceberg destination on {location.scheme}:// needs a catalog database: give catalog_uri "
            "(a SQLAlchemy URL such as postgresql+psycopg2://user:password@host/db) or, in the operator, "
            "catalog_conn_id"
        )
    return f"sqlite:///{os.path.join(location.uri, DEFAULT_SQLITE_FILE)}"


def warehouse_uri(location: StorageLocation) -> str:
    """The location as pyiceberg spells it (``file:///...`` for a local directory)."""
    return Path(location.uri).as_uri() if location.is_local else location.uri


def file_io_properties(location: StorageLocation) -> dict[str, str]:
    """pyiceberg FileIO properties: always the PyArrow FileIO, with the location's credentials.

    :raises ReplicationConfigError: a GCS service account key given as JSON text, which
        pyiceberg's FileIO cannot take (it reads Application Default Credentials or an OAuth
        token).
    """
    if location.options.get("google_service_account_key"):
        raise ReplicationConfigError(
            "the Iceberg destination cannot use a GCS service account key given as JSON text (pyiceberg's "
            "FileIO takes no such option); let the worker find Application Default Credentials "
            "(GOOGLE_APPLICATION_CREDENTIALS) and leave the key out of the connection"
        )
    return {"py-io-impl": _ARROW_FILE_IO, **location.for_pyiceberg()}


_catalogs: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_catalogs_lock = threading.Lock()


def open_catalog(location: StorageLocation, catalog_uri: str) -> SqlCatalog:
    """A pyiceberg ``SqlCatalog`` on ``catalog_uri`` whose default warehouse is ``location``.

    Creates the catalog tables when the database has none. For a local location the directory
    is created first (the SQLite file lives in it). Catalogs are shared within the process per
    URL and storage options: opening one (engine, probing its tables, compiling its queries)
    costs more than a small sync, and a SQLAlchemy engine is safe to share between threads.

    :raises ReplicationConfigError: pyiceberg is not installed, or the catalog database cannot
        be reached or written (the message masks the URL's password).
    """
    try:
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ReplicationConfigError(
            "the Iceberg destination needs pyiceberg: pip install 'airflow-provider-instructure[iceberg]'"
        ) from exc
    if location.is_local:
        try:
            Path(location.uri).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplicationConfigError(f"cannot create the local Iceberg location {location.uri}: {exc}") from exc
    properties = {"warehouse": warehouse_uri(location), **file_io_properties(location)}
    key = (catalog_uri, tuple(sorted(properties.items())))
    with _catalogs_lock:
        cached = _catalogs.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        try:
            try:
                catalog = SqlCatalog(CATALOG_NAME, uri=catalog_uri, **properties)
            except Exception as exc:
                # Two processes opening a new catalog database at once both find no catalog
                # tables and both create them; the slower one fails on "already exists" and
                # opens it again.
                if "already exists" not in str(exc):
                    raise
                catalog = SqlCatalog(CATALOG_NAME, uri=catalog_uri, **properties)
        except Exception as exc:
            raise ReplicationConfigError(
                f"cannot open the Iceberg SQL catalog at {masked_url(catalog_uri)}: {type(exc).__name__}: "
                f"{scrub(first_line(exc), catalog_uri)}"
            ) from None  # the driver's exception may carry the URL with its password
        _catalogs[key] = catalog
        return catalog


def release(catalog: Any) -> None:
    """Close the idle database connections of a catalog from :func:`open_catalog` (it stays
    usable: the next query opens a new connection)."""
    engine = getattr(catalog, "engine", None)
    if engine is not None:
        engine.dispose()


def probe_writable(catalog: Any, table_location: str) -> None:
    """Write and delete a small file under ``table_location`` through the catalog's FileIO.

    :raises ReplicationConfigError: the location cannot be written (missing bucket, no
        permission, wrong endpoint...).
    """
    from pyiceberg.io import load_file_io

    io = load_file_io(catalog.properties, table_location)
    probe = f"{table_location.rstrip('/')}/.dap-write-probe-{uuid.uuid4().hex}"
    try:
        with io.new_output(probe).create(overwrite=True) as out:
            out.write(b"airflow-provider-instructure write probe\n")
        io.delete(probe)
    except Exception as exc:
        raise ReplicationConfigError(
            f"cannot write to the Iceberg location {table_location}: {type(exc).__name__}: {first_line(exc)}"
        ) from None


#: What a table location may hold without a catalog entry: what an interrupted first sync of
#: this table leaves (data files, manifests) before its catalog commit.
_ICEBERG_DIRS = ("data", "metadata")
_PROBE_PREFIX = ".dap-write-probe-"


def _entries(io: Any, uri: str) -> list[str] | None:
    """Base names directly under ``uri`` (``None``: it does not exist), through the FileIO's
    pyarrow filesystem (the same credentials as the writes)."""
    import pyarrow.fs as pafs

    scheme, netloc, path = io.parse_location(uri)
    fs = io.fs_by_scheme(scheme, netloc)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    names = sorted(info.base_name for info in infos if not info.base_name.startswith(_PROBE_PREFIX))
    if names:
        return names
    return None if fs.get_file_info(path).type == pafs.FileType.NotFound else []


def check_location_free(catalog: Any, table_location: str, catalog_uri: str, target: str) -> None:
    """Refuse a new table's location that holds something else.

    A table that is not (yet) in our catalog may only go where nothing is, or where an
    interrupted first sync of it left ``data/`` and ``metadata/`` without a committed
    ``*.metadata.json``. Sharing a directory with a Delta table, user files or another catalog's
    Iceberg table would mix the files, and the other's VACUUM / orphan-file cleanup would then
    delete ours (or ours theirs).

    :param catalog: the catalog from :func:`open_catalog` (its FileIO lists the location).
    :param table_location: ``<location>/<catalog_namespace>/<table>``.
    :param catalog_uri: the catalog's URL (shown with its password masked).
    :param target: the table's identifier, for the message.
    :raises ReplicationConfigError: the location is not empty, or cannot be listed.
    """
    from pyiceberg.io import load_file_io

    io = load_file_io(catalog.properties, table_location)
    base = table_location.rstrip("/")
    try:
        found = _entries(io, base)
        committed = []
        if found and "metadata" in found:
            committed = [n for n in (_entries(io, f"{base}/metadata") or []) if n.endswith(".metadata.json")]
    except Exception as exc:
        raise ReplicationConfigError(
            f"cannot list the Iceberg location {table_location}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not found:
        return
    if "_delta_log" in found:
        raise ReplicationConfigError(
            f"{table_location} is a Delta table (found _delta_log); the Iceberg table {target} cannot share its "
            "directory (a Delta VACUUM would delete the Iceberg files). Choose another destination_path or "
            "catalog_namespace"
        )
    if committed:
        raise ReplicationConfigError(
            f"{table_location} already holds an Iceberg table (metadata/{committed[-1]}) that the catalog at "
            f"{masked_url(catalog_uri)} does not point at: another catalog owns it, or its catalog entry was "
            f"dropped. Use the catalog that wrote it (catalog_conn_id), or another destination_path or "
            f"catalog_namespace for {target}; if the old table is no longer wanted, delete {table_location}"
        )
    others = [n for n in found if n not in _ICEBERG_DIRS]
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ReplicationConfigError(
            f"{table_location} is not empty and is not an Iceberg table of this catalog (found {shown}); the "
            f"Iceberg table {target} needs an empty directory: choose another destination_path or "
            "catalog_namespace, or move those files away"
        )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, cut to 300 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def namespace_exists(catalog: Any, namespace: str) -> bool:
    """Whether the catalog has ``namespace`` (False if it cannot tell)."""
    try:
        return bool(catalog.namespace_exists(namespace))
    except Exception:
        return False


def same_place(found: str, expected: str) -> bool:
    """Whether two table locations name the same place (``file://`` and trailing ``/`` aside)."""

    def norm(uri: str) -> str:
        return uri.removeprefix("file://").rstrip("/")

    return norm(found) == norm(expected)


__all__ = [
    "CATALOG_NAME",
    "DEFAULT_SQLITE_FILE",
    "check_location_free",
    "default_catalog_uri",
    "file_io_properties",
    "first_line",
    "masked_url",
    "namespace_exists",
    "open_catalog",
    "probe_writable",
    "release",
    "same_place",
    "scrub",
    "warehouse_uri",
]
