"""OpenLineage for the CD2 operators: what they read from DAP and what they wrote.

The list, schema, query, download and sync operators inherit :class:`OpenLineageMixin`, note
what they learnt while running (:meth:`OpenLineageMixin._lineage_note`: the tables listed, the
schema fetched, the job's metadata, the files written, the destination table and its row
counts) and the ``apache-airflow-providers-openlineage`` listener turns that into datasets and
facets through ``get_openlineage_facets_on_start/_complete/_failure``. Building the facets
makes no DAP call and no HTTP call of any kind.

OpenLineage is optional (the ``openlineage`` extra): every OpenLineage import happens inside the
methods the listener calls, so without the provider the package imports and runs as before and
nothing calls them.

Naming (OpenLineage "Naming" spec, ``openlineage.client.naming.dataset``):

* A DAP table: namespace ``dap://<host>[:<port>]`` of the connection's base URL, name
  ``<namespace>.<table>`` (``canvas.users``). The spec has no entry for HTTP APIs; the dataset
  is a table served by the DAP service, not a URL, so its scheme names the service and its
  authority the host, as for databases (``postgres://host:port``). It does not depend on the
  URL's path, the credentials or the region, so it stays the same across runs and connections.
* Files: ``file`` and the absolute path for a local target (``LocalFileSystem``), and
  ``<scheme>://<bucket>`` with the object key for object storage (``S3``, ``GCS``...), as
  Airflow's common.io provider names them.
* Lake tables (Delta Lake, Iceberg) are named as the files they are, by their location:
  ``file`` and ``/abs/dir/<namespace>/<table>``, ``s3://<bucket>`` and ``prefix/<namespace>/<table>``
  (the spec's object-storage naming; an Iceberg table is one directory as a Delta table is).
* Tables: ``postgres://<host>:<port>`` and ``<database>.<schema>.<table>``,
  ``mysql://<host>:<port>`` and ``<database>.<table>`` (the naming of Airflow's postgres and
  mysql providers). SQLite has no entry in the spec nor in its provider: the namespace is
  ``sqlite://<absolute path of the database file>`` (the database is the file; there is no host
  or port) and the name is the table, or ``<alias>.<table>`` in an attached database.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_instructure.dap_schema import ColumnType, parse_table_schema

log = logging.getLogger(__name__)

#: Scheme of the DAP datasets' namespace.
DAP_SCHEME = "dap"

#: Default ports of the SQL dialects, for a connection that names none (as the providers do).
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}


def dap_namespace(base_url: str) -> str:
    """The OpenLineage namespace of the DAP service at ``base_url``: ``dap://<host>[:<port>]``.

    :param base_url: the connection's base URL (``https://api-gateway.instructure.com``).
    :returns: e.g. ``dap://api-gateway.instructure.com``; the port only when the URL names one.
    """
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    return f"{DAP_SCHEME}://{host}:{parts.port}" if parts.port else f"{DAP_SCHEME}://{host}"


def file_naming(path: str) -> tuple[str, str]:
    """``(namespace, name)`` of a written file: ``("file", "/abs/path")`` for a local path,
    ``("s3://bucket", "key/of/object")`` for an object-storage URI.

    :param path: a local path, or a URI such as ``s3://bucket/dir/part-00000.tsv.gz``.
    """
    parts = urlsplit(str(path))
    if parts.scheme in ("", "file"):
        return "file", os.path.abspath(parts.path if parts.scheme == "file" else str(path))
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")


def sql_table_naming(
    dialect: str, host: str | None, port: int | None, database: str | None, schema: str, table: str
) -> tuple[str, str]:
    """``(namespace, name)`` of a replica table, as Airflow's database providers name it.

    :param dialect: ``postgres``, ``mysql`` or ``sqlite``.
    :param host: the connection's host (for SQLite: the database file).
    :param port: the connection's port; the dialect's default when None.
    :param database: PostgreSQL: the connection's database (its ``schema`` field); unused otherwise.
    :param schema: the replica's schema (PostgreSQL), database (MySQL) or attached alias (SQLite).
    :param table: the replica's table name.
    :raises ValueError: an unknown dialect.
    """
    if dialect == "sqlite":
        return f"sqlite://{os.path.abspath(host or '')}", table if schema in ("", "main") else f"{schema}.{table}"
    if dialect not in DEFAULT_PORTS:
        raise ValueError(f"unknown dialect {dialect!r}")
    authority = f"{(host or '').lower()}:{port or DEFAULT_PORTS[dialect]}"
    name = f"{database}.{schema}.{table}" if dialect == "postgres" else f"{schema}.{table}"
    return f"{dialect}://{authority}", name


def dap_type(typ: ColumnType) -> str:
    """A DAP column's logical type as a short string (``int64``, ``decimal(10,2)``, ``timestamp``)."""
    if typ.kind in ("integer", "float") and typ.bits:
        return f"{'int' if typ.kind == 'integer' else 'float'}{typ.bits}"
    if typ.kind == "decimal" and typ.precision:
        return f"decimal({typ.precision},{typ.scale})"
    return typ.kind


def schema_fields(versioned_schema: dict[str, Any], dialect: str | None = None) -> list[tuple[str, str, str | None]]:
    """``(name, type, description)`` of every column of a DAP schema, key columns first.

    :param versioned_schema: ``{"schema": ..., "version": N}`` as the hook returns it.
    :param dialect: None for the DAP types (:func:`dap_type`); ``postgres``, ``mysql`` or
        ``sqlite`` for the SQL types the replication creates; ``delta`` or ``iceberg`` for the
        Arrow types of the lake table (``int64``, ``timestamp[us, tz=UTC]``, ``decimal128(10, 2)``).
    """
    if dialect in ("delta", "iceberg"):
        from airflow_provider_instructure.replication.lake.arrow import arrow_type

        def typed(column: Any) -> str:
            return str(arrow_type(column))
    else:
        from airflow_provider_instructure.replication.types import sql_type

        def typed(column: Any) -> str:
            return sql_type(column, dialect)  # type: ignore[arg-type]

    fields = []
    for column in parse_table_schema(versioned_schema).columns:
        typ = dap_type(column.type) if dialect is None else typed(column)
        description = column.schema.get("description")
        fields.append((column.name, typ, description if isinstance(description, str) else None))
    return fields


class OpenLineageMixin:
    """``get_openlineage_facets_on_start/_complete/_failure`` from what the operator noted.

    Facts an operator notes (:meth:`_lineage_note`), all optional:

    * ``namespace``, ``table``: the DAP table read (else the operator's ``namespace``/``table``).
    * ``tables``: tables listed (list operator): one input each.
    * ``schema``: the versioned DAP schema: the input's ``schema`` facet.
    * ``job``: the job's metadata: the input's ``version`` facet is its watermark.
    * ``files``: files written (``path``, ``size``, ``rows``): one output each, with
      ``outputStatistics`` (``rowCount``, ``size``, ``fileCount`` 1).
    * ``destination``: ``(namespace, name)`` of a replica table (:func:`sql_table_naming`, or
      :func:`file_naming` of a lake table's location), with ``dialect`` (the destination's kind)
      for its ``schema`` facet and ``summary`` (the sync's XCom) for its
      ``outputStatistics`` (``rowCount``: rows inserted plus updated; ``size``: bytes loaded).
    """

    def _lineage_note(self, **facts: Any) -> None:
        """Remember facts for the lineage events (never fails the task: plain attribute writes)."""
        self._lineage_facts = {**getattr(self, "_lineage_facts", {}), **facts}

    # -- the listener's entry points ---------------------------------------------------------------

    def get_openlineage_facets_on_start(self) -> Any:
        """The DAP table about to be read (the operator's arguments; nothing is noted yet).

        :returns: an ``OperatorLineage``, or None without the OpenLineage provider.
        """
        return self._operator_lineage(complete=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs and outputs of a successful run, from the facts noted during it.

        :param task_instance: the finished task instance (unused: everything was noted while running).
        :returns: an ``OperatorLineage``, or None without the OpenLineage provider.
        """
        return self._operator_lineage(complete=True)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """What a failed run had read or written when it failed. The OpenLineage provider adds the
        ``errorMessage`` run facet (the exception's message and stack trace) to the FAIL event.

        :param task_instance: the failed task instance (unused).
        :returns: an ``OperatorLineage``, or None without the OpenLineage provider.
        """
        return self._operator_lineage(complete=True)

    # -- building ----------------------------------------------------------------------------------

    def _operator_lineage(self, *, complete: bool) -> Any:
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:  # the listener is the provider's: without it nothing calls this
            log.debug("apache-airflow-providers-openlineage is not installed: no lineage")
            return None
        facts: dict[str, Any] = getattr(self, "_lineage_facts", {}) if complete else {}
        return OperatorLineage(inputs=self._lineage_inputs(facts), outputs=self._lineage_outputs(facts))

    def _dap_namespace(self) -> str | None:
        try:
            return dap_namespace(self.hook.settings.base_url)  # type: ignore[attr-defined]
        except Exception as exc:  # a broken connection fails the task, not its lineage
            log.debug("No DAP namespace for lineage: %s", exc)
            return None

    def _lineage_inputs(self, facts: dict[str, Any]) -> list[Any]:
        from openlineage.client.event_v2 import InputDataset

        namespace = self._dap_namespace()
        if namespace is None:
            return []
        job = facts.get("job") or {}  # a download given job= has no table of its own
        dap_ns = facts.get("namespace") or job.get("namespace") or getattr(self, "namespace", None)
        if not dap_ns:
            try:
                dap_ns = self.hook.settings.namespace  # type: ignore[attr-defined]
            except Exception:
                return []
        if "tables" in facts:
            return [InputDataset(namespace=namespace, name=f"{dap_ns}.{t}") for t in facts["tables"]]
        table = facts.get("table") or job.get("table") or getattr(self, "table", None)
        if not table:
            return []
        return [InputDataset(namespace=namespace, name=f"{dap_ns}.{table}", facets=self._input_facets(facts))]

    @staticmethod
    def _input_facets(facts: dict[str, Any]) -> dict[str, Any]:
        from openlineage.client.facet_v2 import dataset_version_dataset

        facets: dict[str, Any] = {}
        if facts.get("schema"):
            facets["schema"] = _schema_facet(schema_fields(facts["schema"]))
        job = facts.get("job") or {}
        if job.get("watermark"):
            # The DAP commit the data reflects: what "which version of canvas.users" means.
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(job["watermark"]))
        return facets

    @staticmethod
    def _lineage_outputs(facts: dict[str, Any]) -> list[Any]:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

        outputs = []
        for f in facts.get("files") or []:
            namespace, name = file_naming(f["path"])
            statistics = stats.OutputStatisticsOutputDatasetFacet(
                rowCount=f.get("rows"), size=f.get("size"), fileCount=1
            )
            outputs.append(OutputDataset(namespace=namespace, name=name, outputFacets={"outputStatistics": statistics}))
        if facts.get("destination"):
            namespace, name = facts["destination"]
            facets: dict[str, Any] = {}
            if facts.get("schema") and facts.get("dialect"):
                facets["schema"] = _schema_facet(schema_fields(facts["schema"], facts["dialect"]))
            output_facets: dict[str, Any] = {}
            summary = facts.get("summary")
            if summary is not None:
                output_facets["outputStatistics"] = stats.OutputStatisticsOutputDatasetFacet(
                    rowCount=summary["rows_inserted"] + summary["rows_updated"], size=summary.get("bytes_loaded")
                )
            outputs.append(OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=output_facets))
        return outputs


def _schema_facet(fields: list[tuple[str, str, str | None]]) -> Any:
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t, description=d) for n, t, d in fields]
    )


__all__ = ["DAP_SCHEME", "OpenLineageMixin", "dap_namespace", "file_naming", "schema_fields", "sql_table_naming"]
