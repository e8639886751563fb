"""Operators for Canvas Data 2 tables: list them, read their schema.

They are thin: all HTTP goes through :class:`~airflow_provider_instructure.hooks.instructure.InstructureHook`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow_provider_instructure._compat import BaseOperator, Context
from airflow_provider_instructure.exceptions import InstructureConfigError
from airflow_provider_instructure.hooks.instructure import InstructureHook


def _patterns(value: str | Sequence[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not all(isinstance(p, str) for p in value):
        raise InstructureConfigError(f"{name} must be a glob string or a list of glob strings, got {value!r}")
    return list(value)


def filter_tables(tables: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Tables matching any ``include`` glob (all when empty) and no ``exclude`` glob, sorted."""
    chosen = [t for t in tables if not include or any(fnmatch.fnmatchcase(t, p) for p in include)]
    return sorted(t for t in chosen if not any(fnmatch.fnmatchcase(t, p) for p in exclude))


class _InstructureOperator(BaseOperator):
    """Holds the connection id and builds the hook lazily (never at DAG-parse time)."""

    def __init__(self, *, instructure_conn_id: str = InstructureHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instructure_conn_id = instructure_conn_id

    @cached_property
    def hook(self) -> InstructureHook:
        return InstructureHook(self.instructure_conn_id)


class ListCD2TablesOperator(_InstructureOperator):
    """List the tables of a DAP namespace and push the sorted names to XCom.

    The result is a plain list of names, ready for dynamic task mapping::

        tables = ListCD2TablesOperator(task_id="tables", include=["course*", "users"])
        CD2QueryOperator.partial(task_id="query").expand(table=tables.output)

    :param namespace: DAP namespace (``canvas``, ``canvas_logs``...); the connection's default when None.
    :param include: glob pattern(s) a table must match (all tables when empty).
    :param exclude: glob pattern(s) that drop a table.
    :param instructure_conn_id: the ``instructure`` connection.
    """

    template_fields: Sequence[str] = ("namespace", "include", "exclude")

    def __init__(
        self,
        *,
        namespace: str | None = "canvas",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.include = include
        self.exclude = exclude

    def execute(self, context: Context) -> list[str]:
        include = _patterns(self.include, "include")
        exclude = _patterns(self.exclude, "exclude")
        tables = self.hook.list_tables(self.namespace)
        chosen = filter_tables(tables, include, exclude)
        if not chosen:
            self.log.warning(
                "No table of %d in namespace %r matches include=%s exclude=%s",
                len(tables),
                self.namespace,
                include,
                exclude,
            )
        self.log.info("%d of %d tables selected: %s", len(chosen), len(tables), ", ".join(chosen))
        return chosen


class GetCD2TableSchemaOperator(_InstructureOperator):
    """Fetch the versioned JSON schema of a table (``{"schema": ..., "version": N}``) to XCom.

    :param table: table name, e.g. ``users``.
    :param namespace: DAP namespace; the connection's default when None.
    :param output_path: optionally also write the schema there (a file, or a directory in
        which ``<table>_schema_version_<N>.json`` is created, like ``dap schema``). The file
        is written atomically.
    :param instructure_conn_id: the ``instructure`` connection.
    """

    template_fields: Sequence[str] = ("table", "namespace", "output_path")

    def __init__(
        self,
        *,
        table: str,
        namespace: str | None = "canvas",
        output_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.namespace = namespace
        self.output_path = output_path

    def execute(self, context: Context) -> dict[str, Any]:
        schema = self.hook.get_table_schema(self.table, self.namespace)
        self.log.info("Schema of %s.%s is version %d", self.namespace, self.table, schema["version"])
        if self.output_path:
            path = Path(self.output_path)
            if path.is_dir() or str(self.output_path).endswith(os.sep):
                path = path / f"{self.table}_schema_version_{schema['version']}.json"
            write_atomically(path, json.dumps(schema, indent=4).encode("utf-8"))
            self.log.info("Wrote the schema to %s", path)
        return schema


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
