"""The watermark of a table downloaded to files, kept next to the files themselves.

``<target>/<namespace>/<table>/_cd2_watermark.json`` records the last *successful* download:
its watermark (the snapshot's ``at`` or the incremental's ``until``, as DAP returned them,
never the wall clock), schema version, job id and files. It is written only after every
part is in place, so the next run continues exactly where the last complete one ended.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import is_object_storage_path
from airflow_provider_instructure.fileio import write_atomically

WATERMARK_FILE = "_cd2_watermark.json"


def table_dir(target: Any, namespace: str, table: str) -> Any:
    """``target/<namespace>/<table>`` for a local path or an ``ObjectStoragePath``."""
    root = _as_path(target)
    return root / namespace / table


def _as_path(target: Any) -> Any:
    if isinstance(target, str) and "://" in target and not target.startswith("file://"):
        from airflow_provider_instructure._compat import ObjectStoragePath

        return ObjectStoragePath(target)
    if not is_object_storage_path(target):
        return Path(str(target).removeprefix("file://"))
    return target  # an ObjectStoragePath already


def read_watermark(target: Any, namespace: str, table: str) -> dict[str, Any] | None:
    """The recorded state of the last successful download of ``namespace.table``, if any."""
    path = table_dir(target, namespace, table) / WATERMARK_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or not state.get("watermark"):
        raise ValueError(f"{path} is not a CD2 watermark file (no 'watermark'); remove it to start with a snapshot")
    return state


def write_watermark(target: Any, namespace: str, table: str, meta: dict[str, Any], files: list[dict[str, Any]]) -> Any:
    """Record ``meta['watermark']`` as the new starting point (atomically for local paths)."""
    directory = table_dir(target, namespace, table)
    state = {
        "namespace": namespace,
        "table": table,
        "watermark": meta["watermark"],
        "kind": meta["kind"],
        "schema_version": meta.get("schema_version"),
        "job_id": meta["job_id"],
        "files": [f["path"] for f in files],
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = json.dumps(state, indent=2)
    path = directory / WATERMARK_FILE
    if isinstance(directory, Path):
        write_atomically(path, data.encode("utf-8"))
    else:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(data)  # one PUT: object stores publish it whole or not at all
    return path
