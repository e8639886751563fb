"""MySQL/MariaDB: any path given to ``LOAD DATA LOCAL INFILE`` works, and a load error shows
the driver's own cause (issue 8, finding 9)."""

from __future__ import annotations

import contextlib
import gzip
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.replication import DataLoadError, TableReplicator
from tests.replication.conftest import Database, Scenario
from tests.replication.repl_helpers import assert_same_rows, expected_table, replica_table

KEY = ("canvas", "accounts")


@pytest.fixture
def my_db(new_db: Any) -> Database:
    return new_db("mysql")


@pytest.mark.parametrize("name", ["back\\slash", "it's", "both 'single' and \"double\" \\ too"])
def test_a_workdir_with_a_backslash_or_quotes_loads(
    my_db: Database, scenario: Scenario, tmp_path: Path, name: str
) -> None:
    snapshot = scenario.steps[0][KEY]
    workdir = tmp_path / name
    workdir.mkdir()
    files = [Path(shutil.copy(p, workdir / p.name)) for p in snapshot.files]
    # One part gzip (loaded through a temporary file beside it), one plain (loaded as it is).
    plain = files[-1].with_name(files[-1].name.removesuffix(".gz"))
    plain.write_bytes(gzip.decompress(files[-1].read_bytes()))
    files[-1].unlink()
    files[-1] = plain
    conn = my_db.connect()
    replicator = TableReplicator(conn, "mysql", *KEY)
    replicator.apply_snapshot(files, versioned_schema=snapshot.versioned_schema, at=snapshot.at)
    expected = expected_table(scenario.server, *KEY, snapshot.at, snapshot.versioned_schema)
    actual = replica_table(conn, "mysql", my_db.qualified(replicator.target), snapshot.versioned_schema)
    assert_same_rows(actual, expected, f"workdir {name!r}")


def test_a_load_error_shows_the_drivers_cause(
    my_db: Database, scenario: Scenario, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file vanishes before the server asks for it: the driver's "does not exist" is
    shown, not the "MySQL Connection not available" of the statements after it."""
    from airflow_provider_instructure.replication.dialects import mysql_load

    missing = tmp_path / "gone" / "part.tsv"

    @contextlib.contextmanager
    def vanished(*args: Any, **kwargs: Any) -> Iterator[tuple[Path, int]]:
        yield missing, 0

    monkeypatch.setattr(mysql_load, "loadable_file", vanished)
    snapshot = scenario.steps[0][KEY]
    conn = my_db.connect()
    replicator = TableReplicator(conn, "mysql", *KEY)
    started = time.monotonic()
    with pytest.raises(DataLoadError) as info:
        replicator.apply_snapshot(snapshot.files, versioned_schema=snapshot.versioned_schema, at=snapshot.at)
    # the desynced connection is closed, not pinged: no wait for the driver's read timeout (60 s)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "does not exist" in message and str(missing) in message, message
    assert "Connection not available" not in message
    assert "canvas.accounts" in message and snapshot.files[0].name in message
