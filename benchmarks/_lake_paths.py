"""The paths of ``bench_lake.py``: how each destination is built, what it wrote, and the child
process that applies one step (``python benchmarks/_lake_paths.py snapshot|incremental|verify``,
the path described by the ``BENCH_LAKE_SPEC`` environment variable, so no password is on a
command line).

Every path goes through the same seam, ``Destination.check_target`` then ``apply_snapshot`` /
``apply_incremental`` (issue 11): :class:`TableReplicator` for PostgreSQL,
``DeltaDestination`` and ``IcebergDestination`` for the lake.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: What a path imports before it moves a byte (its import-only RSS baseline).
IMPORTS: dict[str, tuple[str, ...]] = {
    "postgres": ("airflow_provider_instructure.replication.replicator", "psycopg"),
    "delta": ("airflow_provider_instructure.replication.lake", "deltalake", "pyarrow.parquet"),
    "iceberg": ("airflow_provider_instructure.replication.lake", "pyiceberg.catalog.sql", "pyarrow.parquet"),
}
#: moto accepts any key; these are its documented test values, not credentials.
S3_TEST_OPTIONS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region": "us-east-1"}
SPEC_ENV = "BENCH_LAKE_SPEC"


@dataclass
class PathSpec:
    """One path of the benchmark.

    :param path: ``postgres``, ``delta``, ``iceberg``, ``delta-s3`` or ``iceberg-s3``.
    :param work: the run's work folder (parts under ``snapshot/`` and ``incremental/``).
    :param pg: PostgreSQL ``host``, ``port``, ``user``, ``password``, ``db``.
    :param s3_endpoint: moto's URL for the ``-s3`` paths.
    :param bucket: the bucket of an ``-s3`` path.
    """

    path: str
    namespace: str
    table: str
    work: str
    pg: dict[str, Any] = field(default_factory=dict)
    s3_endpoint: str = ""
    bucket: str = ""

    @property
    def kind(self) -> str:
        return self.path.removesuffix("-s3")

    @property
    def on_s3(self) -> bool:
        return self.path.endswith("-s3")

    @property
    def root(self) -> str:
        """The lake location: a local folder or ``s3://bucket/lake``."""
        return f"s3://{self.bucket}/lake" if self.on_s3 else str(Path(self.work) / f"lake-{self.path}")

    @property
    def catalog_file(self) -> Path:
        """Iceberg's SQLite catalog: the destination's default in a local root, a file of ours for S3."""
        if self.on_s3:
            return Path(self.work) / f"catalog-{self.path}.db"
        return Path(self.root) / "iceberg_catalog.db"

    @property
    def s3_options(self) -> dict[str, str]:
        return {**S3_TEST_OPTIONS, "endpoint_url": self.s3_endpoint, "allow_http": "true"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def env(self) -> dict[str, str]:
        return {SPEC_ENV: json.dumps(self.to_dict())}


def as_utc(value: str | datetime) -> datetime:
    """An ISO-8601 timestamp (``Z`` or an offset) as an aware UTC datetime, for comparisons."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.astimezone(UTC)


# -- the parent's side: targets and bytes written -----------------------------------------------------


def _s3_client(spec: PathSpec) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=spec.s3_endpoint,
        aws_access_key_id=S3_TEST_OPTIONS["aws_access_key_id"],
        aws_secret_access_key=S3_TEST_OPTIONS["aws_secret_access_key"],
        region_name=S3_TEST_OPTIONS["region"],
    )


def _pg(spec: PathSpec, dbname: str | None = None) -> Any:
    import psycopg

    pg = spec.pg
    return psycopg.connect(
        host=pg["host"], port=pg["port"], user=pg["user"], password=pg["password"] or None,
        dbname=dbname or pg["db"], autocommit=True, connect_timeout=10,
    )  # fmt: skip


def prepare_target(spec: PathSpec) -> None:
    """An empty bucket for an S3 path (the lake paths create their folders themselves)."""
    if spec.on_s3:
        _s3_client(spec).create_bucket(Bucket=spec.bucket)


def _files(spec: PathSpec) -> dict[str, tuple[int, str]]:
    """Every file of a lake path: name -> (bytes, version tag)."""
    found: dict[str, tuple[int, str]] = {}
    if spec.on_s3:
        for page in _s3_client(spec).get_paginator("list_objects_v2").paginate(Bucket=spec.bucket):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = (obj["Size"], obj["ETag"])
    else:
        for root, _dirs, names in os.walk(spec.root):
            for name in names:
                st = os.stat(os.path.join(root, name))
                found[os.path.join(root, name)] = (st.st_size, str(st.st_mtime_ns))
    if spec.kind == "iceberg" and spec.on_s3 and spec.catalog_file.exists():
        st = spec.catalog_file.stat()
        found[str(spec.catalog_file)] = (st.st_size, str(st.st_mtime_ns))
    return found


def _pg_size(spec: PathSpec) -> int:
    with _pg(spec) as conn:
        size = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", (f'"{spec.namespace}"."{spec.table}"',))
        return int(size.fetchone()[0] or 0)


def written_state(spec: PathSpec) -> Any:
    """What :func:`written_since` compares against: the WAL position or the lake's files."""
    if spec.kind == "postgres":
        with _pg(spec) as conn:
            return conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    return _files(spec)


def written_since(spec: PathSpec, before: Any) -> tuple[int, int]:
    """Bytes written since ``before`` (lake: files new or changed; PostgreSQL: WAL generated,
    server-wide) and the table's size now (bytes)."""
    if spec.kind == "postgres":
        with _pg(spec) as conn:
            wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,)).fetchone()[0]
        return int(wal), _pg_size(spec)
    after = _files(spec)
    written = sum(size for name, (size, tag) in after.items() if before.get(name) != (size, tag))
    return written, sum(size for size, _tag in after.values())


# -- the child's side ---------------------------------------------------------------------------------


def destination(spec: PathSpec) -> tuple[Any, Callable[[], None]]:
    """The path's ``Destination`` (the seam of ``replication/destination.py``) and how to close it."""
    if spec.kind == "postgres":
        from airflow_provider_instructure.replication.replicator import TableReplicator

        conn = _pg(spec)
        conn.autocommit = False  # the replicator manages its own transactions
        return TableReplicator(conn, "postgres", spec.namespace, spec.table), conn.close
    from airflow_provider_instructure.replication import lake
    from airflow_provider_instructure.replication.lake.storage import StorageLocation

    location = StorageLocation(spec.root, spec.s3_options if spec.on_s3 else {})
    if spec.kind == "delta":
        dest = lake.DeltaDestination(location, spec.namespace, spec.table)
    else:
        catalog_uri = f"sqlite:///{spec.catalog_file}" if spec.on_s3 else None
        dest = lake.IcebergDestination(location, spec.namespace, spec.table, catalog_uri=catalog_uri)
    return dest, dest.close


def apply_step(spec: PathSpec, step: str) -> dict[str, Any]:
    """Child: ``check_target`` + one ``apply_*`` from the saved parts; seconds and the SyncResult."""
    work = Path(spec.work)
    schema = json.loads((work / "schema.json").read_text())
    job = json.loads((work / "jobs.json").read_text())[step]
    started = time.perf_counter()
    dest, close = destination(spec)
    try:
        dest.check_target()
        if step == "snapshot":
            result = dest.apply_snapshot(work / "snapshot", versioned_schema=schema, at=job["at"], job_id=job["id"])
        else:
            result = dest.apply_incremental(
                work / "incremental", versioned_schema=schema, since=job["since"], until=job["until"], job_id=job["id"]
            )
        seconds = time.perf_counter() - started
    finally:
        close()
    return {"seconds": seconds, "result": result.to_dict()}


def _sums(table: Any) -> tuple[int, int, int]:
    """Rows, key sum and the sum of ``updated_at`` epoch seconds of an Arrow table (id, updated_at)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    micros = pc.cast(pc.cast(table["updated_at"], pa.timestamp("us", tz="UTC")), pa.int64())
    return (
        table.num_rows,
        int(pc.sum(table["id"]).as_py() or 0),
        # floor, as PostgreSQL's floor(extract(epoch ...)): the same for timestamps before 1970
        int(pc.sum(pc.cast(pc.floor(pc.divide(pc.cast(micros, pa.float64()), 1e6)), pa.int64())).as_py() or 0),
    )


def verify(spec: PathSpec) -> dict[str, Any]:
    """Child: what the table holds now, and its watermark read back through ``read_state``."""
    dest, close = destination(spec)
    try:
        state = dest.read_state()
    finally:
        close()
    if spec.kind == "postgres":
        with _pg(spec) as conn:
            rows, key_sum, ts_sum = conn.execute(
                f"SELECT count(*), coalesce(sum(id), 0), coalesce(sum(floor(extract(epoch FROM updated_at))), 0) "
                f'FROM "{spec.namespace}"."{spec.table}"'
            ).fetchone()
        sums = (int(rows), int(key_sum), int(ts_sum))
    else:
        sums = _sums(read_lake_table(spec, ["id", "updated_at"]))
    return {
        "rows": sums[0],
        "key_sum": sums[1],
        "updated_at_sum": sums[2],
        "watermark": state.watermark.isoformat() if state is not None else None,
    }


def read_lake_table(spec: PathSpec, columns: list[str]) -> Any:
    """The lake table's current version read by the format's own library, not by our code."""
    from airflow_provider_instructure.replication.lake.storage import StorageLocation

    location = StorageLocation(spec.root, spec.s3_options if spec.on_s3 else {})
    if spec.kind == "delta":
        import pyarrow as pa
        from deltalake import DeltaTable, QueryBuilder

        uri = location.table_uri(spec.namespace, spec.table)
        table = DeltaTable(uri, storage_options=location.for_deltalake())
        # delta-rs' own engine, not to_pyarrow_dataset: its PyFileSystem can abort the interpreter at
        # exit on object storage (delta-rs #2184), which would fail a --s3 run after its figures.
        select = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        stream = QueryBuilder().register("t", table).execute(f"SELECT {select} FROM t")
        return pa.RecordBatchReader.from_stream(stream).read_all()
    from pyiceberg.catalog.sql import SqlCatalog

    from airflow_provider_instructure.replication.lake.iceberg_catalog import CATALOG_NAME

    # The catalog by its name and database, as another engine would open it (not through our code).
    catalog = SqlCatalog(
        CATALOG_NAME, uri=f"sqlite:///{spec.catalog_file}", warehouse=spec.root, **location.for_pyiceberg()
    )
    return catalog.load_table(f"{spec.namespace}.{spec.table}").scan(selected_fields=tuple(columns)).to_arrow()


def main() -> None:
    mode = sys.argv[1]
    spec = PathSpec(**json.loads(os.environ[SPEC_ENV]))
    out = verify(spec) if mode == "verify" else apply_step(spec, mode)
    print(json.dumps(out, default=str), flush=True)
    if mode == "verify":
        # Reading a Delta table on S3 through pyarrow's dataset scanner aborts the interpreter
        # at exit about once in 12 runs ("terminate called without an active exception", exit
        # -6: scanner threads outlive Arrow at teardown; delta-rs#2184, apache/arrow#39162).
        # The check's answer is printed by then; leave without the teardown. The apply steps
        # exit normally, so a crash of the destination's own process would still fail the run.
        os._exit(0)


if __name__ == "__main__":
    main()
