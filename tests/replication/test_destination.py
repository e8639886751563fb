"""The destination seam (:mod:`airflow_provider_instructure.replication.destination`).

Every destination must satisfy :class:`Destination` to the letter (the operator calls it with
keywords), so the check compares signatures, not only attribute names.
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.replication import Destination, TableReplicator, open_table_format
from airflow_provider_instructure.replication.errors import ReplicationConfigError

LOG = logging.getLogger(__name__)


def protocol_mismatches(cls: type, protocol: type = Destination) -> list[str]:
    """What ``cls`` lacks or declares differently from ``protocol``: a missing member, or a
    method whose parameters (names, kinds, defaults) differ. Empty when it conforms."""
    problems: list[str] = []
    for name, member in vars(protocol).items():
        if name.startswith("_") or name in ("kind",):
            continue
        if not hasattr(cls, name):
            problems.append(f"{cls.__name__} has no {name}")
            continue
        theirs = getattr(cls, name)
        if isinstance(member, property):
            if not isinstance(theirs, property):
                problems.append(f"{cls.__name__}.{name} is not a property")
            continue
        want = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        have = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
        if want != have:
            problems.append(f"{cls.__name__}.{name}{inspect.signature(theirs)} != {inspect.signature(member)}")
    return problems


def test_the_sql_replicator_is_a_destination(tmp_path: Path) -> None:
    assert protocol_mismatches(TableReplicator) == []
    conn = sqlite3.connect(tmp_path / "replica.db")
    replicator = TableReplicator(conn, "sqlite", "canvas", "users", log=LOG)
    assert isinstance(replicator, Destination)
    assert replicator.kind == "sqlite"
    assert replicator.target_name == "main.canvas__users"
    replicator.close()
    with pytest.raises(sqlite3.ProgrammingError):  # close() closed the connection it was given
        conn.execute("SELECT 1")
    replicator.close()  # idempotent


def test_the_checker_finds_a_wrong_signature() -> None:
    class Wrong:
        kind = "x"
        target_name = "t"  # not a property

        def check_target(self) -> None: ...  # no empty_table_schema

    problems = protocol_mismatches(Wrong)
    assert any("target_name is not a property" in p for p in problems)
    assert any("check_target" in p for p in problems)
    assert any("has no apply_incremental" in p for p in problems)


@pytest.mark.parametrize(
    ("fmt", "kwargs", "message"),
    [
        ("parquet", {}, "unknown table format 'parquet'; use one of: delta, iceberg"),
        ("delta", {"catalog_uri": "sqlite:///x.db"}, "a Delta table needs no catalog"),
    ],
)
def test_open_table_format_refuses_what_it_cannot_open(fmt: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ReplicationConfigError, match=message):
        open_table_format(fmt, object(), "canvas", "users", **kwargs)  # type: ignore[arg-type]


def test_importing_the_seam_imports_no_table_format_library() -> None:
    code = (
        "import sys, airflow_provider_instructure.replication, airflow_provider_instructure.replication.destination;"
        "print(sorted(m for m in ('deltalake', 'pyiceberg', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "library", "kind"),
    [("DeltaDestination", "deltalake", "delta"), ("IcebergDestination", "pyiceberg", "iceberg")],
)
def test_the_lake_destinations_are_destinations(name: str, library: str, kind: str) -> None:
    pytest.importorskip(library, reason=f"the [{kind}] extra is not installed")
    from airflow_provider_instructure.replication import lake

    cls = getattr(lake, name)
    assert protocol_mismatches(cls) == [] and cls.kind == kind
