"""The full catalog (91 tables) replicates exactly into Iceberg, on a local directory and on S3
(moto over HTTP): a snapshot, then two incrementals with updates, inserts and deletes, each
table equal to the emulator row for row after every step, its watermark read back from the
table alone.

The emulator results are the full-catalog test's (downloaded once per module); one SQL catalog
per location; the tables run on a few threads (each is its own Iceberg table and commit).

Every table runs on both: the issue asks for the whole catalog on object storage too, and the
types, keys and column counts differ per table (all 91 on S3 took 99 s on a loaded 2-core machine).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_provider_instructure.replication.lake.iceberg import IcebergDestination
from airflow_provider_instructure.replication.lake.storage import StorageLocation
from tests.replication.lake.iceberg_helpers import iceberg_rows
from tests.replication.repl_helpers import assert_same_rows, expected_table
from tests.replication.test_full_catalog import Catalog, catalog  # noqa: F401 - the shared emulator fixture

THREADS = 2


def _sync_table(location: StorageLocation, catalog_uri: str | None, cat: Catalog, key: tuple[str, str]) -> None:
    ns, table = key
    moved = {"updated": 0, "deleted": 0}
    dest = IcebergDestination(location, ns, table, catalog_uri=catalog_uri)
    try:
        for step_no, result in enumerate(step[key] for step in cat.steps):
            what = f"iceberg {location.scheme} {ns}.{table} step {step_no}"
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
            expected = expected_table(cat.server, ns, table, result.watermark, result.versioned_schema)
            assert expected, f"{what}: the emulator has no rows, so nothing was compared"
            assert_same_rows(iceberg_rows(dest, result.versioned_schema), expected, what)
            if step_no == 0:
                assert outcome.rows_inserted == len(expected), what
            state = dest.read_state()
            assert state is not None and state.watermark == result.watermark, what
            assert state.schema_version == result.schema_version and state.job_id == result.job_id, what
            assert outcome.dialect == "iceberg" and outcome.target == f"{ns}.{table}", what
    finally:
        dest.close()
    assert moved["updated"] and moved["deleted"], f"{key}: incrementals without updates or deletes: {moved}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_every_table_of_the_catalog_replicates_into_iceberg(
    where: str,
    catalog: Catalog,  # noqa: F811 - the imported fixture
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    assert len(catalog.tables) == 91
    tables = catalog.tables
    location: StorageLocation = request.getfixturevalue(f"{where}_location")
    # Object storage needs a catalog database; a SQLite file stands in (PostgreSQL: test_iceberg.py).
    catalog_uri = None if where == "local" else f"sqlite:///{tmp_path / 'catalog.db'}"
    started = time.monotonic()
    chunks = [tables[i::THREADS] for i in range(THREADS)]

    def run(i: int) -> None:
        for key in chunks[i]:
            _sync_table(location, catalog_uri, catalog, key)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(run, range(THREADS)))
    took = time.monotonic() - started
    print(f"full catalog into Iceberg on {where}: {len(tables)} tables x {len(catalog.steps)} steps in {took:.1f}s")
