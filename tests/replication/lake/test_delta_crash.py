"""A real crash of a Delta sync between "data files written" and "commit" (issue 11).

delta-rs writes a sync's Parquet files and then its ``_delta_log`` commit inside one Rust call,
so Python cannot fail in between; ``test_delta_behaviour`` fails the batch stream instead, which
delta-rs answers by leaving no data file at all. Here the sync runs in a child process and the
parent watches the table: as soon as a *new* data file (a ``*.parquet`` no commit references) is
there while the log has not advanced, the child gets SIGKILL. Then the table must be exactly the
previous version (version, rows, :meth:`DeltaDestination.read_state`; the orphan file present,
unreferenced, a plain Parquet file), and the same window rerun in-process must give the expected
rows and move the watermark. Done for a snapshot over an existing table and for an incremental
(MERGE) on a local directory, and for the MERGE on S3 (moto over HTTP) too.

Why the window is wide enough to hit: delta-rs writes every data file of a sync at the end, in a
burst that lasts as long as the bytes take to encode and store, then commits (measured with
deltalake 1.6.6: ~20 ms for 100k narrow rows in one file). The rows here carry a 2 kB text
column and the table sets ``delta.targetFileSize`` (a documented table property; the writer
then closes a file every 1 MB, 4 MB on S3), so the burst is many files over 100+ ms. A run
whose commit still lands before the kill is retried with more rows (:data:`SCALES`), and its
commit must then be the whole sync.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from tests.replication.lake.conftest import make_bucket, s3_location_for

REPO = Path(__file__).parents[3]
T0, T1, T2 = "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"
#: Rows of the first attempt; a retry (the commit beat the kill) multiplies them by the next scale.
#: Fewer on S3, where each data file is an HTTP upload to moto and the burst lasts longer.
ROWS = {"local": 12_000, "s3": 8_000}
SCALES = (1, 2, 4)
NOTE = 2_000  # characters of incompressible text per row: what makes the write burst last
#: ``delta.targetFileSize`` set on the previous table. On S3 (moto) the burst from the first
#: visible data file to the commit measured 20-120 ms at 1 MB files but ~400 ms at 4 MB.
TARGET_FILE_SIZE = {"local": 1 << 20, "s3": 4 << 20}
NAMESPACE, TABLE = "canvas", "accounts"

SCHEMA: dict[str, Any] = {
    "version": 1,
    "schema": {
        "properties": {
            "key": {"properties": {"id": {"type": "integer", "format": "int64"}}, "required": ["id"]},
            "value": {
                "properties": {
                    "name": {"type": "string"},
                    "score": {"type": "number", "multipleOf": 0.01, "maximum": 1000},
                    "seen_at": {"type": "string", "format": "date-time"},
                    "count": {"type": "integer", "format": "int32"},
                    "note": {"type": "string"},
                },
                "required": ["name"],
            },
        }
    },
}
HEADER = ["meta.ts", "key.id", "value.name", "value.score", "value.seen_at", "value.count", "value.note"]

#: The sync the child runs: a spec file names the location, parts and window. It prints nothing
#: until the commit returned, so a killed child has said nothing.
CHILD = """
import json, sys
from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
spec = json.loads(open(sys.argv[1]).read())
dest = DeltaDestination(StorageLocation(spec["uri"], spec["options"]), spec["namespace"], spec["table"])
if spec["mode"] == "snapshot":
    dest.apply_snapshot(spec["parts"], versioned_schema=spec["schema"], at=spec["at"])
else:
    dest.apply_incremental(spec["parts"], versioned_schema=spec["schema"], since=spec["since"], until=spec["until"])
print("committed", flush=True)
"""

Row = tuple[str, Decimal, datetime, int, str]


class Rows:
    """Generated rows: ``id`` -> (name, score, seen_at, count, note), and their TSV lines.

    The note of row ``i`` is its own slice of random base64 text (no tab, newline or
    backslash to escape), so Parquet cannot compress it away.
    """

    def __init__(self, count: int) -> None:
        self.text = base64.b64encode(os.urandom((count + 1) * NOTE * 3 // 4)).decode("ascii")

    def value(self, i: int, tag: str) -> Row:
        seen = datetime(2024, 1, 1, 10, 0, i % 60, tzinfo=timezone.utc)
        return f"{tag}-{i}", Decimal(f"{i % 1000}.25"), seen, i % 100, self.text[i * NOTE : (i + 1) * NOTE]

    def line(self, i: int, tag: str, op: str | None = None) -> str:
        name, score, seen, count, note = self.value(i, tag)
        lead = f"{T0}\t{op}" if op else T0
        return f"{lead}\t{i}\t{name}\t{score}\t{seen:%Y-%m-%dT%H:%M:%S}Z\t{count}\t{note}\n"


def write_lines(path: Path, header: list[str], lines: list[str]) -> Path:
    """An uncompressed TSV part (parts are read by magic bytes, not by name)."""
    path.write_text("\t".join(header) + "\n" + "".join(lines), encoding="utf-8")
    return path


@dataclass
class Case:
    """The previous table (``n`` rows tagged ``old``, watermark T1) and the sync to crash."""

    mode: str  # "snapshot" | "incremental"
    parts: list[Path]
    expected: dict[int, Row]
    watermark: str


def make_case(mode: str, n: int, rows: Rows, folder: Path) -> Case:
    folder.mkdir(parents=True)
    if mode == "snapshot":  # half the old keys stay (renamed), half go, as many are new
        ids = range(n // 2, n + n // 2)
        part = write_lines(folder / "part-00000.tsv", HEADER, [rows.line(i, "new") for i in ids])
        return Case(mode, [part], {i: rows.value(i, "new") for i in ids}, T2)
    expected = {i: rows.value(i, "old") for i in range(n)}
    upserts = range(0, n + n // 4, 2)  # every even key: updates of old rows, inserts past n
    deletes = range(1, n, 4)
    lines = [rows.line(i, "chg", "U") for i in upserts] + [f"{T0}\tD\t{i}\t\t\t\t\t\n" for i in deletes]
    expected.update({i: rows.value(i, "chg") for i in upserts})
    for i in deletes:
        del expected[i]
    part = write_lines(folder / "part-00000.tsv", [HEADER[0], "meta.action", *HEADER[1:]], lines)
    return Case(mode, [part], expected, T2)


# -- looking at the table from outside ------------------------------------------------------------


@dataclass
class Watch:
    """What the parent sees of the table while the child writes.

    ``look(version)``: the data file names at the table's root, and whether the commit after
    ``version`` exists, from as few requests as possible (on S3 one listing, so no commit slips
    in between the two answers). ``read(name)``: a file's bytes.
    """

    look: Callable[[int], tuple[set[str], bool]]
    read: Callable[[str], bytes]


def local_watch(uri: str) -> Watch:
    def look(version: int) -> tuple[set[str], bool]:
        # a file being written is "<name>.parquet#<n>" until object_store renames it, complete
        files = {n for n in os.listdir(uri) if n.endswith(".parquet")}
        return files, os.path.exists(f"{uri}/_delta_log/{version + 1:020d}.json")

    return Watch(look, lambda name: Path(uri, name).read_bytes())


def s3_watch(s3_client: Any, uri: str) -> Watch:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")

    def look(version: int) -> tuple[set[str], bool]:
        # a multipart upload is invisible until it completes, so a listed object is a whole file
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
        files = {k.rsplit("/", 1)[1] for k in keys if k.endswith(".parquet") and k.count("/") == prefix.count("/") + 1}
        return files, f"{prefix}/_delta_log/{version + 1:020d}.json" in keys

    def read(name: str) -> bytes:
        return bytes(s3_client.get_object(Bucket=bucket, Key=f"{prefix}/{name}")["Body"].read())

    return Watch(look, read)


def open_table(dest: DeltaDestination) -> DeltaTable:
    return DeltaTable(dest.uri, storage_options=dest.location.for_deltalake())


def referenced(dt: DeltaTable) -> set[str]:
    return {uri.rsplit("/", 1)[1] for uri in dt.file_uris()}


def table_rows(dt: DeltaTable) -> dict[int, Row]:
    """The rows by key, read through delta-rs' own query engine (pyarrow's scanner on S3 can
    abort at interpreter exit, delta-rs#2184)."""
    from deltalake import QueryBuilder

    table = pa.RecordBatchReader.from_stream(QueryBuilder().register("t", dt).execute("SELECT * FROM t")).read_all()
    out: dict[int, Row] = {}
    for r in table.to_pylist():
        out[r["id"]] = (r["name"], r["score"], r["seen_at"], r["count"], r["note"])
    return out


def crash(dest: DeltaDestination, case: Case, watch: Watch, spec_path: Path) -> tuple[str, set[str], int]:
    """Run ``case`` in a child; SIGKILL it once a new data file is there and the log has not
    moved. Returns ("killed" | "finished", the data files new since the start, version before)."""
    dt = open_table(dest)
    version = dt.version()
    before = watch.look(version)[0]
    spec = {
        "uri": dest.location.uri,
        "options": dest.location.options,
        "namespace": dest.namespace,
        "table": dest.table,
        "mode": case.mode,
        "parts": [str(p) for p in case.parts],
        "schema": SCHEMA,
        "at": case.watermark,
        "since": T1,
        "until": case.watermark,
    }
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    log_path = spec_path.with_suffix(".log")
    with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec_path)], cwd=REPO, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    try:
        while True:
            done = child.poll() is not None
            files, committed = watch.look(version)
            new = files - before
            if new and not committed:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return "killed", new, version
            if done:
                output = log_path.read_text(errors="replace")[-2000:]
                assert child.returncode == 0, f"the child sync failed ({child.returncode}): {output}"
                return "finished", watch.look(version)[0] - before, version
            assert time.monotonic() < deadline, "the child sync did not finish in 120 s"
            time.sleep(0.001)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


# -- the test ---------------------------------------------------------------------------------------


# S3 for the MERGE only: it reads and rewrites files there and commits the same way the
# snapshot does; the snapshot on S3 adds ~5 s for no other path.
@pytest.mark.parametrize(("mode", "where"), [("snapshot", "local"), ("incremental", "local"), ("incremental", "s3")])
def test_a_sync_killed_after_its_data_files_before_its_commit(
    mode: str, where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    late: list[str] = []
    for attempt, scale in enumerate(SCALES):
        n = ROWS[where] * scale
        rows = Rows(n + n // 2)
        if where == "local":
            location = StorageLocation(str(tmp_path / f"lake{attempt}"))
            watch_of: Callable[[str], Watch] = local_watch
        else:
            s3_client = request.getfixturevalue("s3_client")
            location = s3_location_for(request.getfixturevalue("s3_server"), make_bucket(s3_client))

            def watch_of(uri: str, client: Any = s3_client) -> Watch:
                return s3_watch(client, uri)

        dest = DeltaDestination(location, NAMESPACE, TABLE)
        # the previous table: n old rows at T1, then the file size property (a commit not ours)
        old = write_lines(tmp_path / f"old{attempt}.tsv", HEADER, [rows.line(i, "old") for i in range(n)])
        dest.check_target()
        dest.apply_snapshot([old], versioned_schema=SCHEMA, at=T1)
        open_table(dest).alter.set_table_properties({"delta.targetFileSize": str(TARGET_FILE_SIZE[where])})
        case = make_case(mode, n, rows, tmp_path / f"case{attempt}")
        previous = open_table(dest)
        previous_rows, previous_state, previous_files = table_rows(previous), dest.read_state(), referenced(previous)
        assert previous_rows == {i: rows.value(i, "old") for i in range(n)}
        assert previous_state is not None and previous_state.watermark.isoformat() == "2024-05-02T00:00:00+00:00"

        started = time.monotonic()
        watch = watch_of(dest.uri)
        outcome, new_files, version = crash(dest, case, watch, tmp_path / f"spec{attempt}.json")
        after = open_table(dest)
        if outcome == "finished" or after.version() != version:
            # The commit landed before the kill (a fast run): then it is the whole sync, in one
            # commit (rows and watermark together); no crash to look at, so again with more rows.
            late.append(f"{n} rows: {outcome}, version {version} -> {after.version()}")
            assert after.version() == version + 1 and table_rows(after) == case.expected, late[-1]
            assert dest.read_state().watermark.isoformat() == "2024-05-03T00:00:00+00:00", late[-1]  # type: ignore[union-attr]
            continue

        # The crash: exactly the previous table, the orphan files present and referenced by no commit.
        assert version == previous.version() == 1
        assert referenced(after) == previous_files and not new_files & previous_files
        assert new_files <= watch.look(version)[0], "the killed sync's data files are gone"
        assert table_rows(after) == previous_rows and dest.read_state() == previous_state
        orphan = pq.read_table(pa.BufferReader(watch.read(sorted(new_files)[0])))  # a whole, plain Parquet file
        assert orphan.num_rows > 0 and orphan.column_names == ["id", "name", "score", "seen_at", "count", "note"]
        took = time.monotonic() - started
        print(f"{mode} on {where}: attempt {attempt}, {n} rows, killed {took:.2f}s in, {len(new_files)} orphans")

        # The rerun of the same window converges, in one commit, and moves the watermark.
        if mode == "snapshot":
            result = dest.apply_snapshot(case.parts, versioned_schema=SCHEMA, at=case.watermark)
            assert result.rows_inserted == len(case.expected)
        else:
            dest.apply_incremental(case.parts, versioned_schema=SCHEMA, since=T1, until=case.watermark)
        rerun = open_table(dest)
        assert rerun.version() == version + 1
        assert not referenced(rerun) & new_files, "a file of the killed sync became part of the table"
        assert table_rows(rerun) == case.expected
        state = dest.read_state()
        assert state is not None and state.watermark.isoformat() == "2024-05-03T00:00:00+00:00"
        assert state.last_mode == mode
        return
    pytest.fail(f"every run committed before the kill could land: {late}")
