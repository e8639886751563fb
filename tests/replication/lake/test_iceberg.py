"""The Iceberg destination beyond the full catalog: types and awkward values, plain Parquet data
files, one catalog commit per sync (a failure before it changes nothing, the rerun converges),
schema evolution and rebuilds, the state read back past other writers' snapshots, an empty
table, the checks before data moves, and a PostgreSQL catalog with the files on S3."""

from __future__ import annotations

import copy
import glob
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from airflow_provider_instructure.replication.errors import (
    ReplicationConfigError,
    SchemaChangeRequiresSnapshot,
    SnapshotRequired,
    WatermarkError,
)
from airflow_provider_instructure.replication.lake.iceberg import IcebergDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.replication.part_feed import StreamedParts
from tests.replication.conftest import PG, SESSION, pg_connect
from tests.replication.lake.iceberg_helpers import iceberg_rows, load, reader_catalog
from tests.replication.repl_helpers import assert_same_rows, write_part
from tests.replication.test_handcrafted import COLUMNS, T0, T1, TRICKY_SCHEMA, _expected, _rows

HEADER = ["meta.ts", *[("key." if c == "id" else "value.") + c for c in COLUMNS]]
INC_HEADER = ["meta.ts", "meta.action", *HEADER[1:]]


def _snapshot_parts(tmp_path: Path, rows: dict[int, list[Any]], name: str = "snap") -> list[Path]:
    keys = sorted(rows)
    return [
        write_part(tmp_path / name / "part-00000.tsv.gz", HEADER, [[T0, *rows[k]] for k in keys[:7]]),
        write_part(tmp_path / name / "part-00001.tsv", HEADER, [[T0, *rows[k]] for k in keys[7:]], compress=False),
    ]


def _incremental(tmp_path: Path, first: dict[int, list[Any]]) -> tuple[list[Path], dict[int, list[Any]]]:
    """Updates of every key but two, those two deleted, a delete of a key never seen, one insert."""
    second = _rows(1)
    keys = sorted(first)
    deleted = {keys[0], keys[5]}
    records = [[T1, "U", *second[k]] for k in keys if k not in deleted]
    records += [[T1, "D", k, *([None] * (len(COLUMNS) - 1))] for k in [*sorted(deleted), 999]]
    new_key = max(keys) + 1
    records.append([T1, "U", new_key, *second[keys[1]][1:]])
    parts = [
        write_part(tmp_path / "inc" / "part-00000.tsv.gz", INC_HEADER, records[::2]),
        write_part(tmp_path / "inc" / "part-00001.tsv.gz", INC_HEADER, records[1::2]),
    ]
    want = {k: v for k, v in second.items() if k not in deleted}
    want[new_key] = [new_key, *second[keys[1]][1:]]
    return parts, want


def test_awkward_values_types_and_plain_parquet(local_location: StorageLocation, tmp_path: Path) -> None:
    from airflow_provider_instructure.replication import lake

    dest = lake.IcebergDestination(local_location, "canvas", "tricky")  # the package's lazy export
    first = _rows(0)
    # Streamed parts (the operator's pipelined download): each released once its rows are read.
    paths = _snapshot_parts(tmp_path, first)
    released: list[Path] = []
    streamed = StreamedParts(iter(paths), total=len(paths), loaded=released.append)
    result = dest.apply_snapshot(streamed, versioned_schema=TRICKY_SCHEMA, at=T0, job_id="j1")
    assert released == paths and result.files == len(paths)
    assert (result.dialect, result.target, result.rows_inserted) == ("iceberg", "canvas.tricky", len(first))
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(first), "snapshot")

    snapshots = len(load(dest).snapshots())
    parts, want = _incremental(tmp_path, first)
    result = dest.apply_incremental(parts, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1, job_id="j2")
    assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (1, len(first) - 2, 2)
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(want), "incremental")

    table = load(dest)
    # Deletes and upserts are one overwrite snapshot, no intermediate state to time travel to.
    assert len(table.snapshots()) == snapshots + 1
    assert table.current_snapshot().summary.operation.value == "overwrite"
    types = {f.name: (str(f.field_type), f.required) for f in table.schema().fields}
    assert types["id"] == ("long", True) and table.schema().identifier_field_names() == {"id"}
    assert types["small"] == ("int", False)  # Iceberg has no 16-bit integer
    assert types["amount"][0] == "decimal(5, 2)" and types["at"][0] == "timestamptz"
    assert (types["day"][0], types["flag"][0], types["ratio"][0]) == ("date", "boolean", "double")
    assert types["doc"][0] == types["tags"][0] == types["state"][0] == "string"  # JSON and enums as text
    # The data files are plain Parquet: pyarrow alone reads the current rows from them.
    files = [row["file_path"] for row in table.inspect.files().to_pylist()]
    assert files and all(f.endswith(".parquet") for f in files)
    rows = sum(pq.read_table(f.removeprefix("file://")).num_rows for f in files)
    assert rows == len(want)
    state = dest.read_state()
    assert state is not None and (state.watermark, state.job_id, state.last_mode) == (T1, "j2", "incremental")
    dest.close()


def _parquet_files(dest: IcebergDestination) -> set[str]:
    return set(glob.glob(f"{dest.table_location}/data/**/*.parquet", recursive=True))


@pytest.mark.parametrize("mode", ["snapshot", "incremental"])
def test_a_failure_before_the_catalog_commit_changes_nothing(
    mode: str, local_location: StorageLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    dest = IcebergDestination(local_location, "canvas", "tricky")
    first = _rows(0)
    dest.apply_snapshot(_snapshot_parts(tmp_path, first), versioned_schema=TRICKY_SCHEMA, at=T0)
    before = load(dest).metadata_location
    files_before = _parquet_files(dest)
    state_before = dest.read_state()
    if mode == "incremental":
        parts, want = _incremental(tmp_path, first)
        run = lambda: dest.apply_incremental(parts, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)  # noqa: E731
    else:
        want = _rows(2)
        parts = _snapshot_parts(tmp_path, want, "snap2")
        run = lambda: dest.apply_snapshot(parts, versioned_schema=TRICKY_SCHEMA, at=T1)  # noqa: E731

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError("injected: the catalog database went away")

    with monkeypatch.context() as patch:
        patch.setattr(SqlCatalog, "commit_table", broken)
        with pytest.raises(OSError, match="injected"):
            run()
    # The data files of the failed sync were written (orphans), the table did not move.
    assert _parquet_files(dest) - files_before, "the failure was injected before any data file was written"
    assert load(dest).metadata_location == before
    assert dest.read_state() == state_before
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(first), f"{mode} after the failure")
    run()  # the rerun converges
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(want), f"{mode} rerun")
    state = dest.read_state()
    assert state is not None and state.watermark == T1
    dest.close()


def _with_column(versioned: dict[str, Any], name: str, node: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(versioned)
    out["schema"]["properties"]["value"]["properties"][name] = node
    out["version"] = int(out["version"]) + 1
    return out


def test_schema_evolves_in_the_commit_or_needs_a_snapshot(local_location: StorageLocation, tmp_path: Path) -> None:
    dest = IcebergDestination(local_location, "canvas", "tricky")
    first = _rows(0)
    dest.apply_snapshot(_snapshot_parts(tmp_path, first), versioned_schema=TRICKY_SCHEMA, at=T0)
    commits = len(load(dest).metadata.metadata_log)

    # Additive: a new nullable column, in the incremental's own commit.
    v2 = _with_column(TRICKY_SCHEMA, "note", {"type": "string"})
    header = [*INC_HEADER, "value.note"]
    row = [T1, "U", *first[1], "hello"]
    part = write_part(tmp_path / "v2" / "part-00000.tsv", header, [row], compress=False)
    result = dest.apply_incremental([part], versioned_schema=v2, since=T0, until=T1)
    table = load(dest)
    assert len(table.metadata.metadata_log) == commits + 1, "one catalog commit for schema + data + state"
    assert table.schema().find_field("note").required is False and result.schema_changes
    rows = iceberg_rows(dest, v2)
    assert rows[(1,)]["note"] == "hello" and rows[(2,)]["note"] is None
    state = dest.read_state()
    assert state is not None and state.schema_version == v2["version"]

    # Not additive: a changed type needs a snapshot; nothing changes until then.
    v3 = copy.deepcopy(v2)
    v3["schema"]["properties"]["value"]["properties"]["small"] = {"type": "string"}
    v3["version"] = v2["version"] + 1
    with pytest.raises(SchemaChangeRequiresSnapshot):
        dest.apply_incremental([], versioned_schema=v3, since=T1, until=T1)
    assert load(dest).metadata_location == table.metadata_location
    # The snapshot rebuilds the table with the new schema in one commit.
    rows3 = {k: [*v, None] for k, v in _rows(3).items()}
    for values in rows3.values():
        values[COLUMNS.index("small")] = None if values[COLUMNS.index("small")] is None else "s"
    snap = [write_part(tmp_path / "v3" / "part-00000.tsv", [*HEADER, "value.note"], [[T1, *r] for r in rows3.values()])]
    snapshots = len(load(dest).snapshots())
    dest.apply_snapshot(snap, versioned_schema=v3, at=T1)
    table = load(dest)
    assert len(table.snapshots()) == snapshots + 1, "old rows out and new rows in: one snapshot"
    assert str(table.schema().find_field("small").field_type) == "string"
    assert len(table.metadata.metadata_log) == commits + 2
    assert len(iceberg_rows(dest, v3)) == len(rows3)
    dest.close()


def test_state_walks_past_other_writers_and_the_window_is_checked(
    local_location: StorageLocation, tmp_path: Path
) -> None:
    dest = IcebergDestination(local_location, "canvas", "tricky")
    assert dest.create_empty(TRICKY_SCHEMA) is True and dest.create_empty(TRICKY_SCHEMA) is False
    assert dest.read_state() is None  # ours, but no state: the next run loads a snapshot
    with pytest.raises(SnapshotRequired):
        dest.apply_incremental([], versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    dest.apply_snapshot(_snapshot_parts(tmp_path, _rows(0)), versioned_schema=TRICKY_SCHEMA, at=T0, job_id="j")
    # Another writer's snapshot on top (an empty append without our keys, like a compaction).
    table = load(dest)
    table.append(table.scan(limit=0).to_arrow())
    assert load(dest).current_snapshot().summary.additional_properties.get("dap.watermark") is None
    state = dest.read_state()
    assert state is not None and (state.watermark, state.job_id) == (T0, "j")
    with pytest.raises(WatermarkError):
        dest.apply_incremental([], versioned_schema=TRICKY_SCHEMA, since=T1, until=T1)  # a gap
    # An empty result just moves the watermark.
    result = dest.apply_incremental([], versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    assert (result.rows_inserted, result.rows_deleted) == (0, 0) and dest.read_state().watermark == T1  # type: ignore[union-attr]
    dest.close()


def test_checks_before_data_moves(
    local_location: StorageLocation, s3_location: StorageLocation, tmp_path: Path
) -> None:
    with pytest.raises(ReplicationConfigError, match="catalog_uri"):
        IcebergDestination(s3_location, "canvas", "accounts")
    # A table of the same name that another tool made is not taken over.
    dest = IcebergDestination(local_location, "canvas", "tricky")
    dest.check_target()
    other = reader_catalog(dest)
    import pyarrow as pa

    other.create_table(
        "canvas.foreign", schema=pa.schema([pa.field("id", pa.int64())]), location=f"{tmp_path}/lake/canvas/foreign"
    )
    with pytest.raises(ReplicationConfigError, match="not written by this provider"):
        IcebergDestination(local_location, "canvas", "foreign").check_target()
    # Nor one that replicates another DAP table (same Iceberg name through catalog_namespace).
    dest.create_empty(TRICKY_SCHEMA)
    with pytest.raises(ReplicationConfigError, match=r"already replicates canvas\.tricky"):
        IcebergDestination(local_location, "canvas_logs", "tricky", catalog_namespace="canvas").check_target()
    # A bucket that does not exist: refused before any data moves.
    missing = StorageLocation("s3://no-such-bucket-here/lake", dict(s3_location.options))
    uri = f"sqlite:///{tmp_path / 'cat.db'}"
    with pytest.raises(ReplicationConfigError, match="cannot write"):
        IcebergDestination(missing, "canvas", "accounts", catalog_uri=uri).check_target()
    # An unreachable catalog database: the message and the repr never show the password.
    secret = "s3cr3t-pw"
    bad = IcebergDestination(s3_location, "canvas", "a", catalog_uri=f"postgresql+psycopg2://u:{secret}@127.0.0.1:1/x")
    with pytest.raises(ReplicationConfigError) as caught:
        bad.check_target()
    assert secret not in str(caught.value) and secret not in repr(bad) and "***" in repr(bad)
    dest.close()


@pytest.fixture
def pg_catalog_uri(pg_server: None) -> str:
    name = f"{SESSION}_iceberg"
    conn = pg_connect("postgres", autocommit=True)
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"


def test_postgres_catalog_with_files_on_s3(pg_catalog_uri: str, s3_location: StorageLocation, tmp_path: Path) -> None:
    dest = IcebergDestination(s3_location, "canvas", "tricky", catalog_uri=pg_catalog_uri)
    first = _rows(0)
    dest.apply_snapshot(_snapshot_parts(tmp_path, first), versioned_schema=TRICKY_SCHEMA, at=T0)
    parts, want = _incremental(tmp_path, first)
    dest.apply_incremental(parts, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(want), "postgres catalog, s3 files")
    table = load(dest)
    assert table.location() == f"{s3_location.uri}/canvas/tricky"
    assert table.metadata_location.startswith(f"{s3_location.uri}/canvas/tricky/metadata/")
    dest.close()
    # A new destination (another worker) reads the state from the catalog and the table alone.
    again = IcebergDestination(s3_location, "canvas", "tricky", catalog_uri=pg_catalog_uri)
    state = again.read_state()
    assert state is not None and state.watermark == T1 and state.schema_version == TRICKY_SCHEMA["version"]
    again.close()
    reader_catalog(dest).engine.dispose()


def test_a_concurrent_commit_fails_the_sync_cleanly(
    local_location: StorageLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer commits between the sync's reads and its commit: the catalog's optimistic
    check refuses the sync's commit, nothing of it is applied, the retry converges."""
    from airflow_provider_instructure.replication.errors import ConcurrentReplicationError
    from airflow_provider_instructure.replication.lake import iceberg as iceberg_module

    dest = IcebergDestination(local_location, "canvas", "tricky")
    first = _rows(0)
    dest.apply_snapshot(_snapshot_parts(tmp_path, first), versioned_schema=TRICKY_SCHEMA, at=T0)
    parts, want = _incremental(tmp_path, first)
    original = iceberg_module.merge

    def merge_then_race(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        table = load(dest)
        table.append(table.scan(limit=0).to_arrow())  # the other writer's commit lands first
        return out

    with monkeypatch.context() as patch:
        patch.setattr(iceberg_module, "merge", merge_then_race)
        with pytest.raises(ConcurrentReplicationError):
            dest.apply_incremental(parts, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(first), "after the refused commit")
    assert dest.read_state().watermark == T0  # type: ignore[union-attr]
    dest.apply_incremental(parts, versioned_schema=TRICKY_SCHEMA, since=T0, until=T1)
    assert_same_rows(iceberg_rows(dest, TRICKY_SCHEMA), _expected(want), "retry")
    dest.close()
