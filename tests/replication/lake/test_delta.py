"""The full catalog (91 tables) replicates exactly into Delta Lake, on a local directory and on
S3 (moto over HTTP): a snapshot, then two incrementals with updates, inserts and deletes, each
table equal to the emulator row for row after every step, its watermark and schema version
read back from the table's own commit log.

The emulator results are the full-catalog test's (downloaded once per module). The tables run
one after the other: :class:`DeltaDestination` serializes delta-rs calls within a process
(see ``delta._LOCK``), so threads would only wait on each other.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.replication.lake.delta import DeltaDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from tests.replication.lake.conftest import make_bucket, s3_location_for
from tests.replication.lake.delta_helpers import delta_rows, delta_table
from tests.replication.repl_helpers import assert_same_rows, expected_table
from tests.replication.test_full_catalog import Catalog, catalog  # noqa: F401 - the shared emulator fixture

THREADS = 1


def _sync_table(location: StorageLocation, cat: Catalog, key: tuple[str, str]) -> None:
    ns, table = key
    moved = {"updated": 0, "deleted": 0}
    dest = DeltaDestination(location, ns, table)
    for step_no, result in enumerate(step[key] for step in cat.steps):
        what = f"delta {location.scheme} {ns}.{table} step {step_no}"
        if step_no == 0:
            dest.check_target()
            assert dest.read_state() is None
            outcome = dest.apply_snapshot(
                result.files, versioned_schema=result.versioned_schema, at=result.at, job_id=result.job_id
            )
        else:
            outcome = dest.apply_incremental(
                result.files,
                versioned_schema=result.versioned_schema,
                since=result.since,
                until=result.until,
                job_id=result.job_id,
            )
            moved["updated"] += outcome.rows_updated
            moved["deleted"] += outcome.rows_deleted
        # Local: the rows after every step. S3 (every request goes through moto, ~6 ms each): after
        # the last step, which the snapshot and both merges must all have been right to reach.
        if location.is_local or step_no == len(cat.steps) - 1:
            expected = expected_table(cat.server, ns, table, result.watermark, result.versioned_schema)
            assert expected, f"{what}: the emulator has no rows, so nothing was compared"
            assert_same_rows(delta_rows(dest, result.versioned_schema), expected, what)
            if step_no == 0:
                assert outcome.rows_inserted == len(expected), what
        state = dest.read_state()
        assert state is not None and state.watermark == result.watermark, what
        assert state.schema_version == result.schema_version and state.job_id == result.job_id, what
        assert outcome.dialect == "delta" and outcome.target == dest.uri, what
    # one commit per sync: the snapshot is version 0, each incremental one more
    assert delta_table(dest).version() == len(cat.steps) - 1, key
    assert moved["updated"] and moved["deleted"], f"{key}: incrementals without updates or deletes: {moved}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_table_of_the_catalog_replicates_into_delta(
    where: str,
    catalog: Catalog,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    s3_server: str,
    s3_client: Any,
) -> None:
    assert len(catalog.tables) == 91 and ("canvas_logs", "web_logs") in catalog.tables
    if where == "local":
        location = StorageLocation(str(tmp_path / "lake"))
    else:
        location = s3_location_for(s3_server, make_bucket(s3_client))
    started = time.monotonic()
    chunks = [catalog.tables[i::THREADS] for i in range(THREADS)]

    def run(i: int) -> None:
        for key in chunks[i]:
            _sync_table(location, catalog, key)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(run, range(THREADS)))
    elapsed = time.monotonic() - started
    print(f"full catalog into Delta on {where}: 91 tables x {len(catalog.steps)} steps in {elapsed:.1f}s")
