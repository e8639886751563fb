"""Schema versions: additive changes in place, anything else through a snapshot rebuild."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from airflow_provider_instructure.dap_schema import parse_table_schema
from airflow_provider_instructure.emulator.dataset import load_bundled_schemas
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.replication import SchemaChangeRequiresSnapshot, TableReplicator
from airflow_provider_instructure.replication.schema_changes import diff_schemas
from tests.replication.conftest import Database
from tests.replication.repl_helpers import DapFetcher, assert_same_rows, bump_schema, expected_table, replica_table

KEY = ("canvas", "accounts")


def _value(versioned: dict[str, Any]) -> dict[str, Any]:
    return versioned["schema"]["properties"]["value"]


def _table_identity(db: Database, rep: TableReplicator) -> Any:
    if db.dialect == "postgres":
        return db.query("SELECT to_regclass(%s)::oid", (db.qualified(rep.target),))[0][0]
    if db.dialect == "sqlite":
        return db.query("SELECT rootpage FROM sqlite_master WHERE name = ?", (rep.target.table,))[0][0]
    return None  # MySQL has no cheap stable table identity; the DDL list shows what happened


def test_new_column_and_enum_member_are_applied_in_place(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    server, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    identity = _table_identity(db, rep)

    server.emulator.add_column("canvas.accounts", "emulator_added_note")

    def grow(versioned: dict[str, Any]) -> None:
        value = _value(versioned)
        value["properties"]["workflow_state"]["enum"].append("archived")
        value["required"].remove("workflow_state")  # required -> nullable: nothing to do for our tables

    server.emulator.advance(updates=0, inserts=0, deletes=1)
    version = bump_schema(server, *KEY, grow)
    # A grown enum list changes what the emulator draws for every row: re-commit them all so
    # its ground truth does not rewrite history.
    server.emulator.advance(updates=1.0, inserts=4, deletes=0)
    inc = fetch.incremental(*KEY, snap.at)  # type: ignore[arg-type]
    assert inc.schema_version == version == 3

    result = rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    assert len(result.schema_changes) == 1 and "emulator_added_note" in result.schema_changes[0]
    assert result.schema_version == 3 and rep.read_state().schema_version == 3  # type: ignore[union-attr]
    assert _table_identity(db, rep) == identity, "the table was rebuilt instead of altered"
    expected = expected_table(server, *KEY, inc.until, inc.versioned_schema)  # type: ignore[arg-type]
    assert any(r["workflow_state"] == "archived" for r in expected.values()), "seed no longer draws the new member"
    assert any(r["emulator_added_note"] is not None for r in expected.values())
    actual = replica_table(conn, db.dialect, db.qualified(rep.target), inc.versioned_schema)
    assert_same_rows(actual, expected, "after the in-place schema change")

    # Rerunning the window finds the column present and adds nothing.
    again = rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    assert again.schema_changes == ()


def test_incompatible_change_needs_a_snapshot_which_rebuilds_the_table(
    db: Database, fresh_server: tuple[EmulatorServer, DapFetcher]
) -> None:
    server, fetch = fresh_server
    conn = db.connect()
    rep = TableReplicator(conn, db.dialect, *KEY)
    snap = fetch.snapshot(*KEY)
    rep.apply_snapshot(snap.files, versioned_schema=snap.versioned_schema, at=snap.at)
    # The emulator regenerates history with its current schema, so "untouched" is checked
    # against the replica's own rows from before the change.
    before = replica_table(conn, db.dialect, db.qualified(rep.target), snap.versioned_schema)

    def retype(versioned: dict[str, Any]) -> None:
        _value(versioned)["properties"]["storage_quota"] = {"type": "string", "maxLength": 64}

    bump_schema(server, *KEY, retype)
    server.emulator.advance(updates=3, inserts=2, deletes=1)
    inc = fetch.incremental(*KEY, snap.at)  # type: ignore[arg-type]
    with pytest.raises(SchemaChangeRequiresSnapshot) as caught:
        rep.apply_incremental(inc.files, versioned_schema=inc.versioned_schema, since=inc.since, until=inc.until)
    assert caught.value.old_version == 1 and caught.value.new_version == 2
    assert any("storage_quota" in reason for reason in caught.value.reasons)
    unchanged = replica_table(conn, db.dialect, db.qualified(rep.target), snap.versioned_schema)
    assert_same_rows(unchanged, before, "untouched after the refused incremental")
    assert rep.read_state().watermark == snap.at  # type: ignore[union-attr]

    rebuilt = fetch.snapshot(*KEY)
    rep.apply_snapshot(rebuilt.files, versioned_schema=rebuilt.versioned_schema, at=rebuilt.at)
    actual = replica_table(conn, db.dialect, db.qualified(rep.target), rebuilt.versioned_schema)
    assert_same_rows(actual, expected_table(server, *KEY, rebuilt.at, rebuilt.versioned_schema), "rebuilt")  # type: ignore[arg-type]
    assert all(isinstance(r["storage_quota"], (str, type(None))) for r in actual.values())
    assert rep.read_state().schema_version == 2  # type: ignore[union-attr]


def _accounts() -> dict[str, Any]:
    return copy.deepcopy(load_bundled_schemas()["canvas"]["accounts"])


def _bumped(mutate: Any) -> dict[str, Any]:
    versioned = _accounts()
    mutate(versioned)
    versioned["version"] += 1
    return versioned


@pytest.mark.parametrize(
    ("mutate", "in_place", "expect"),
    [
        (lambda v: _value(v)["properties"].update(note={"type": "string"}), True, "add column note"),
        (lambda v: _value(v)["properties"]["workflow_state"]["enum"].append("x"), True, "enum workflow_state"),
        (lambda v: _value(v)["required"].remove("created_at"), True, "created_at became nullable"),
        (lambda v: _value(v)["required"].append("name"), True, None),
        (lambda v: _value(v)["properties"]["workflow_state"]["enum"].remove("suspended"), True, None),
        (lambda v: _value(v)["properties"].pop("uuid"), False, "uuid was removed"),
        (lambda v: _value(v)["properties"]["storage_quota"].update(format="int32"), False, "storage_quota changed"),
        (lambda v: _value(v)["properties"]["name"].update(maxLength=100), False, "name changed"),
        (
            lambda v: (_value(v)["properties"].update(note={"type": "string"}), _value(v)["required"].append("note")),
            False,
            "new required column note",
        ),
        (
            lambda v: v["schema"]["properties"]["key"]["properties"]["id"].update(type="string", format="uuid"),
            False,
            "primary key changed",
        ),
    ],
    ids=[
        "new-nullable-column",
        "new-enum-member",
        "became-nullable",
        "became-required",
        "enum-member-removed",
        "column-removed",
        "int-width",
        "string-length",
        "new-required-column",
        "key-type",
    ],
)
def test_diff_schemas_classifies_changes(mutate: Any, in_place: bool, expect: str | None) -> None:
    change = diff_schemas(parse_table_schema(_accounts()), parse_table_schema(_bumped(mutate)))
    assert change.in_place is in_place
    text = " | ".join(change.describe() + change.blocking)
    if expect is None:
        assert change.empty or not change.blocking
    else:
        assert expect in text
