"""Delta destination behaviour on handcrafted parts: atomicity, checks, state, schema changes,
the bad-value policy, watermarks, duplicate keys, plain Parquet files, S3 errors.

Fast: small parts written here, a local directory (S3 only where the storage matters).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

import airflow_provider_instructure.replication.lake.delta as delta_module
from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.replication.errors import (
    BadValueError,
    ReplicationConfigError,
    SchemaChangeRequiresSnapshot,
    SnapshotRequired,
    WatermarkError,
)
from airflow_provider_instructure.replication.lake.arrow import arrow_schema
from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from airflow_provider_instructure.replication.part_feed import StreamedParts
from tests.replication.lake.conftest import S3_KEYS
from tests.replication.lake.delta_helpers import read_delta
from tests.replication.repl_helpers import write_part

T0, T1, T2, T3 = (f"2024-05-0{d}T00:00:00Z" for d in (1, 2, 3, 4))


def versioned(version: int = 1, *, extra: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": {"type": "string"},
        "score": {"type": "number", "multipleOf": 0.01, "maximum": 1000},
        "seen_at": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": ["active", "deleted"]},
        "settings": {"type": "object"},
        "count": {"type": "integer", "format": "int32"},
    }
    values.update(extra or {})
    for name in drop:
        values.pop(name)
    return {
        "version": version,
        "schema": {
            "properties": {
                "key": {"properties": {"id": {"type": "integer", "format": "int64"}}, "required": ["id"]},
                "value": {"properties": values, "required": ["name"]},
            }
        },
    }


HEADER = [
    "meta.ts",
    "key.id",
    "value.name",
    "value.score",
    "value.seen_at",
    "value.state",
    "value.settings",
    "value.count",
]


def row(i: int, name: str = "n", **kw: Any) -> list[Any]:
    values = {
        "score": "1.50",
        "seen_at": "2024-01-01T10:00:00.5Z",
        "state": "active",
        "settings": '{"a": 1}',
        "count": 3,
    }
    values.update(kw)
    return [T0, i, name, values["score"], values["seen_at"], values["state"], values["settings"], values["count"]]


def snapshot_part(tmp_path: Path, rows: list[list[Any]], name: str = "part-00000.tsv.gz") -> Path:
    return write_part(tmp_path / name, HEADER, rows)


def incremental_part(
    tmp_path: Path, rows: list[tuple[str, list[Any]]], name: str = "inc-00000.tsv.gz", header: list[str] | None = None
) -> Path:
    head = header or HEADER
    return write_part(tmp_path / name, [head[0], "meta.action", *head[1:]], [[r[0], op, *r[1:]] for op, r in rows])


def rows_of(dest: DeltaDestination) -> dict[int, dict[str, Any]]:
    table = read_delta(DeltaTable(dest.uri, storage_options=dest.location.for_deltalake()))
    return {r["id"]: r for r in table.to_pylist()}


def version_of(dest: DeltaDestination) -> int:
    return DeltaTable(dest.uri, storage_options=dest.location.for_deltalake()).version()


@pytest.fixture
def dest(local_location: StorageLocation) -> DeltaDestination:
    return DeltaDestination(local_location, "canvas", "accounts")


@pytest.fixture
def loaded(dest: DeltaDestination, tmp_path: Path) -> DeltaDestination:
    """A table with rows 1..4 at watermark T1."""
    dest.check_target()
    dest.apply_snapshot([snapshot_part(tmp_path, [row(i) for i in range(1, 5)])], versioned_schema=versioned(), at=T1)
    return dest


# -- atomicity ------------------------------------------------------------------------------------


def _fail_at_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch handed to the writer (one row each, a file per batch), then the stream fails:
    the last moment before the commit that the source can reach."""
    original = delta_module.record_batches
    real_write = delta_module.__dict__.get("write_deltalake") or write_deltalake

    def failing(*args: Any, **kwargs: Any) -> Iterator[Any]:
        kwargs["batch_rows"] = 1
        yield from original(*args, **kwargs)
        raise RuntimeError("injected failure after the data files, before the commit")

    def small_files(*args: Any, **kwargs: Any) -> None:
        kwargs["target_file_size"] = 1  # close a Parquet file after every batch
        return real_write(*args, **kwargs)

    monkeypatch.setattr(delta_module, "record_batches", failing)
    monkeypatch.setattr("deltalake.write_deltalake", small_files)


def _parquet_files(dest: DeltaDestination) -> set[str]:
    return {n for n in os.listdir(dest.uri) if n.endswith(".parquet")}


def test_a_failed_snapshot_leaves_the_previous_version_and_the_rerun_converges(
    loaded: DeltaDestination, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_rows, before_state, files_before = rows_of(loaded), loaded.read_state(), _parquet_files(loaded)
    part = snapshot_part(tmp_path, [row(i, "new") for i in range(10, 16)], "part-00001.tsv.gz")
    with monkeypatch.context() as patch:
        _fail_at_end(patch)
        with pytest.raises(RuntimeError, match="injected"):
            loaded.apply_snapshot([part], versioned_schema=versioned(), at=T2)
    # Whatever data files the writer left are referenced by no commit (delta-rs 1.6 was measured
    # to drop them when the source fails, even at one batch per file); the table is where it was.
    assert DeltaTable(loaded.uri).file_uris() == [f"{loaded.uri}/{n}" for n in sorted(files_before)]
    assert version_of(loaded) == 0 and rows_of(loaded) == before_rows and loaded.read_state() == before_state
    result = loaded.apply_snapshot([part], versioned_schema=versioned(), at=T2)
    assert result.rows_inserted == 6 and set(rows_of(loaded)) == set(range(10, 16)) and version_of(loaded) == 1
    assert loaded.read_state().watermark.isoformat() == "2024-05-03T00:00:00+00:00"  # type: ignore[union-attr]


def test_a_failed_incremental_leaves_the_previous_version_and_the_rerun_converges(
    loaded: DeltaDestination, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_rows, before_state = rows_of(loaded), loaded.read_state()
    part = incremental_part(tmp_path, [("U", row(1, "changed")), ("D", [T1, 2, *[None] * 6]), ("U", row(9))])
    with monkeypatch.context() as patch:
        _fail_at_end(patch)
        with pytest.raises(RuntimeError, match="injected"):
            loaded.apply_incremental([part], versioned_schema=versioned(), since=T1, until=T2)
    assert version_of(loaded) == 0 and rows_of(loaded) == before_rows and loaded.read_state() == before_state
    for _ in range(2):  # the rerun, and the same window again: same result
        loaded.apply_incremental([part], versioned_schema=versioned(), since=T1, until=T2)
        rows = rows_of(loaded)
        assert set(rows) == {1, 3, 4, 9} and rows[1]["name"] == "changed"
    assert version_of(loaded) == 2 and loaded.read_state().watermark.day == 3  # type: ignore[union-attr]


# -- files and state --------------------------------------------------------------------------------


def test_data_files_are_plain_parquet_and_the_op_column_is_not_stored(loaded: DeltaDestination, tmp_path: Path) -> None:
    part = incremental_part(tmp_path, [("U", row(7, "seven"))])
    loaded.apply_incremental([part], versioned_schema=versioned(), since=T1, until=T2)
    dt = DeltaTable(loaded.uri)
    tables = [pq.read_table(uri.removeprefix("file://")) for uri in dt.file_uris()]
    assert sum(t.num_rows for t in tables) == 5
    names = set(tables[0].column_names)
    assert names == {"id", "name", "score", "seen_at", "state", "settings", "count"}
    record = next(r for t in tables for r in t.to_pylist() if r["id"] == 7)
    assert record["name"] == "seven" and str(record["score"]) == "1.50" and record["settings"] == '{"a": 1}'
    assert record["seen_at"].isoformat() == "2024-01-01T10:00:00.500000+00:00"
    assert not dt.schema().to_arrow().field("id").nullable


def test_state_is_the_newest_commit_of_ours_past_optimize_and_vacuum(loaded: DeltaDestination, tmp_path: Path) -> None:
    loaded.apply_incremental(
        [incremental_part(tmp_path, [("U", row(5))])], versioned_schema=versioned(), since=T1, until=T2, job_id="j-2"
    )
    dt = DeltaTable(loaded.uri)
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert dt.history(1)[0]["operation"].startswith("VACUUM")
    state = loaded.read_state()
    assert state is not None and state.watermark.day == 3 and state.job_id == "j-2" and state.last_mode == "incremental"
    assert state.schema_version == 1 and state.versioned_schema == versioned()
    commit = next(c for c in dt.history() if c.get("dap.mode") == "incremental")
    assert commit["dap.writer"].startswith("airflow-provider-instructure ")
    assert commit["dap.namespace"] == "canvas" and commit["dap.table"] == "accounts"


def test_an_incremental_without_parts_still_commits_the_watermark(loaded: DeltaDestination) -> None:
    result = loaded.apply_incremental([], versioned_schema=versioned(), since=T1, until=T3)
    assert (result.rows_inserted, result.rows_updated, result.rows_deleted) == (0, 0, 0)
    assert version_of(loaded) == 1 and len(rows_of(loaded)) == 4
    assert loaded.read_state().watermark.day == 4  # type: ignore[union-attr]


def test_deletes_of_unknown_keys_change_nothing_but_move_the_watermark(
    loaded: DeltaDestination, tmp_path: Path
) -> None:
    part = incremental_part(tmp_path, [("D", [T1, 99, *[None] * 6])])
    result = loaded.apply_incremental([part], versioned_schema=versioned(), since=T1, until=T2)
    assert result.rows_deleted == 0 and version_of(loaded) == 1
    assert loaded.read_state().watermark.day == 3  # type: ignore[union-attr]


# -- checks ---------------------------------------------------------------------------------------


def test_check_target_refuses_a_table_of_another_dap_table(dest: DeltaDestination) -> None:
    schema = arrow_schema(parse_table_schema(versioned()))
    other = {"dap.namespace": "canvas", "dap.table": "courses", "dap.watermark": "2024-01-01T00:00:00+00:00"}
    write_deltalake(dest.uri, schema.empty_table(), commit_properties=CommitProperties(custom_metadata=other))
    with pytest.raises(ReplicationConfigError, match=r"already replicates canvas\.courses"):
        dest.check_target()
    with pytest.raises(ReplicationConfigError, match=r"canvas\.courses"):
        dest.read_state()


def test_check_target_refuses_a_non_delta_directory_and_a_foreign_table(dest: DeltaDestination) -> None:
    os.makedirs(dest.uri)
    Path(dest.uri, "notes.txt").write_text("mine")
    with pytest.raises(ReplicationConfigError, match="not a Delta table"):
        dest.check_target()
    os.unlink(Path(dest.uri, "notes.txt"))
    schema = arrow_schema(parse_table_schema(versioned()))
    write_deltalake(dest.uri, schema.empty_table())  # someone else's, no dap.* commit
    with pytest.raises(ReplicationConfigError, match="not written by this provider"):
        dest.check_target()
    # ... unless it is an empty table with exactly the schema's columns
    dest.check_target(empty_table_schema=versioned)


def test_create_empty_makes_an_owned_table_without_state(dest: DeltaDestination, tmp_path: Path) -> None:
    assert dest.create_empty(versioned()) is True
    assert dest.create_empty(versioned()) is False
    dt = DeltaTable(dest.uri)
    assert dt.count() == 0 and {f.name for f in dt.schema().to_arrow()} == {
        c.name for c in parse_table_schema(versioned()).columns
    }
    assert dest.read_state() is None
    assert "dap.watermark" not in dt.history(1)[0] and dt.history(1)[0]["dap.table"] == "accounts"
    dest.check_target()
    with pytest.raises(SnapshotRequired):
        dest.apply_incremental([], versioned_schema=versioned(), since=T0, until=T1)
    dest.apply_snapshot([snapshot_part(tmp_path, [row(1)])], versioned_schema=versioned(), at=T1)
    assert set(rows_of(dest)) == {1} and dest.read_state() is not None


# -- schema changes -------------------------------------------------------------------------------


def test_additive_changes_evolve_the_table_in_the_merge_commit(loaded: DeltaDestination, tmp_path: Path) -> None:
    v2 = versioned(
        2, extra={"nickname": {"type": "string"}, "state": {"type": "string", "enum": ["active", "deleted", "new"]}}
    )
    header = [*HEADER, "value.nickname"]
    part = incremental_part(tmp_path, [("U", [*row(5, state="new"), "nick"])], header=header)
    result = loaded.apply_incremental([part], versioned_schema=v2, since=T1, until=T2)
    assert version_of(loaded) == 1 and result.schema_version == 2
    rows = rows_of(loaded)
    assert rows[5]["nickname"] == "nick" and rows[5]["state"] == "new" and rows[1]["nickname"] is None
    state = loaded.read_state()
    assert state is not None and state.schema_version == 2 and "nickname" in {c.name for c in state.schema().columns}
    # a new column with no rows to merge still arrives, in the metadata-only commit
    v3 = versioned(3, extra={"nickname": {"type": "string"}, "alias": {"type": "string"}})
    loaded.apply_incremental([], versioned_schema=v3, since=T2, until=T3)
    assert "alias" in DeltaTable(loaded.uri).schema().to_arrow().names and version_of(loaded) == 2


def test_other_changes_need_a_snapshot_which_replaces_the_table_in_one_commit(
    loaded: DeltaDestination, tmp_path: Path
) -> None:
    v2 = versioned(2, drop=("count",), extra={"score": {"type": "string"}})
    with pytest.raises(SchemaChangeRequiresSnapshot) as caught:
        loaded.apply_incremental([], versioned_schema=v2, since=T1, until=T2)
    assert any("count was removed" in r for r in caught.value.reasons) and version_of(loaded) == 0
    header = [h for h in HEADER if h != "value.count"]
    part = write_part(tmp_path / "p2.tsv.gz", header, [row(8, score="high")[:-1]])
    loaded.apply_snapshot([part], versioned_schema=v2, at=T2)
    dt = DeltaTable(loaded.uri)
    assert dt.version() == 1 and "count" not in dt.schema().to_arrow().names
    assert rows_of(loaded) == {8: rows_of(loaded)[8]} and rows_of(loaded)[8]["score"] == "high"


# -- values, windows, duplicates, streaming -------------------------------------------------------


def test_bad_values_follow_the_policy(dest: DeltaDestination, tmp_path: Path) -> None:
    rows = [
        row(1, seen_at="+10000-01-01T00:00:00Z", settings="__dap_oversized_truncated__", score=""),
        row(2, name="__dap_oversized_truncated__", seen_at="-0001-01-01T00:00:00Z"),
    ]
    result = dest.apply_snapshot([snapshot_part(tmp_path, rows)], versioned_schema=versioned(), at=T1)
    got = rows_of(dest)
    assert got[1]["seen_at"].isoformat() == "9999-12-31T23:59:59.999999+00:00"
    assert got[2]["seen_at"].isoformat() == "0001-01-01T00:00:00+00:00"
    assert got[1]["settings"] == '"__dap_oversized_truncated__"' and got[1]["score"] is None
    assert got[2]["name"] == "__dap_oversized_truncated__"
    assert result.coerced_values == {"score": 1, "seen_at": 2}
    assert result.oversized_values == {"name": 1, "settings": 1}
    bad = snapshot_part(tmp_path, [row(3), row(4, count="abc")], "bad.tsv.gz")
    with pytest.raises(BadValueError) as caught:
        dest.apply_snapshot([bad], versioned_schema=versioned(), at=T2)
    err = caught.value
    assert (err.part, err.line, err.column, err.key, err.value) == ("bad.tsv.gz", 3, "count", "id=4", "abc")
    assert version_of(dest) == 0 and set(rows_of(dest)) == {1, 2}


def test_windows_are_checked_against_the_stored_watermark(loaded: DeltaDestination, tmp_path: Path) -> None:
    with pytest.raises(WatermarkError, match="after the watermark"):
        loaded.apply_incremental([], versioned_schema=versioned(), since=T2, until=T3)
    with pytest.raises(WatermarkError, match="older than the watermark"):
        loaded.apply_snapshot([snapshot_part(tmp_path, [row(1)])], versioned_schema=versioned(), at=T0)
    assert version_of(loaded) == 0


def test_web_logs_keep_the_last_occurrence_of_a_key(local_location: StorageLocation, tmp_path: Path) -> None:
    dest = DeltaDestination(local_location, "canvas_logs", "web_logs")
    first = snapshot_part(tmp_path, [row(1, "old"), row(2, "two"), row(1, "middle")], "part-00000.tsv.gz")
    second = snapshot_part(tmp_path, [row(1, "last")], "part-00001.tsv.gz")
    result = dest.apply_snapshot([second, first], versioned_schema=versioned(), at=T1)
    assert {k: v["name"] for k, v in rows_of(dest).items()} == {1: "last", 2: "two"} and result.rows_inserted == 2
    inc = incremental_part(tmp_path, [("U", row(2, "a")), ("D", [T1, 2, *[None] * 6]), ("U", row(2, "b"))])
    dest.apply_incremental([inc], versioned_schema=versioned(), since=T1, until=T2)
    assert rows_of(dest)[2]["name"] == "b"


def test_streamed_parts_are_released_as_they_are_loaded(dest: DeltaDestination, tmp_path: Path) -> None:
    paths = [snapshot_part(tmp_path, [row(i)], f"part-0000{i}.tsv.gz") for i in range(3)]
    released: list[str] = []
    dest.apply_snapshot(
        StreamedParts(iter(paths), total=3, loaded=lambda p: released.append(p.name)),
        versioned_schema=versioned(),
        at=T1,
    )
    assert released == [p.name for p in paths] and set(rows_of(dest)) == {0, 1, 2}


# -- storage --------------------------------------------------------------------------------------


def test_s3_errors_are_config_errors_without_secrets(s3_server: str, s3_location: StorageLocation) -> None:
    missing = StorageLocation("s3://no-such-bucket-here/lake", {**s3_location.options})
    with pytest.raises(ReplicationConfigError) as caught:
        DeltaDestination(missing, "canvas", "accounts").check_target()
    assert S3_KEYS["aws_secret_access_key"] not in str(caught.value)
    assert S3_KEYS["aws_secret_access_key"] not in repr(missing) and "***" in repr(missing)
    s3 = DeltaDestination(s3_location, "canvas", "accounts")
    s3.check_target()
    assert s3.read_state() is None and s3.uri.startswith("s3://") and s3.uri.endswith("/lake/canvas/accounts")


def test_importing_the_lake_package_imports_no_table_format_library() -> None:
    code = (
        "import sys, airflow_provider_instructure.replication.lake as lake, "
        "airflow_provider_instructure.replication.lake.storage, airflow_provider_instructure.replication.lake.metadata;"
        "assert 'deltalake' not in sys.modules and 'pyiceberg' not in sys.modules, sorted(sys.modules);"
        "lake.DeltaDestination; assert 'deltalake' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
