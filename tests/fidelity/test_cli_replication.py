"""``dap initdb`` and rounds of ``dap syncdb`` into PostgreSQL and MariaDB/MySQL, checked row by row.

After every sync the database must hold exactly the emulator's rows at that sync's ``until``
(the latest commit, since no ``--until`` is given), column for column, for every table of both
namespaces, and the client's meta table must record that ``until`` and the current schema version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.fidelity.conftest import DapCli
from tests.fidelity.db_compare import Database, compare_table, normalize

pytestmark = pytest.mark.fidelity

NAMESPACES = ["canvas", "canvas_logs"]

#: (description, change applied to the emulator before the next syncdb)
ROUNDS: list[tuple[str, Callable[[Emulator], object]]] = [
    ("updates, inserts and hard deletes in every table", lambda em: em.advance(updates=3, inserts=2, deletes=2)),
    (
        "two commits in one window: rows inserted and hard-deleted before the client saw them",
        lambda em: (em.advance(inserts=4, updates=1), em.advance(deletes=0.5)),
    ),
    (
        "a schema change (new nullable column) followed by updates",
        lambda em: (em.add_column("canvas.users", "nickname"), em.advance(["canvas.users"], updates=6, inserts=2)),
    ),
    ("no changes at all (empty incrementals)", lambda em: None),
    (
        "changes in some tables only",
        lambda em: em.advance(["canvas.courses", "canvas_logs.web_logs"], updates=2, inserts=1, deletes=1),
    ),
]


def check_replica(db: Database, server: EmulatorServer, when: str) -> None:
    """Every table equals the emulator at its latest commit; the meta table records it."""
    emulator = server.emulator
    state = db.sync_state()
    problems: list[str] = []
    for namespace in NAMESPACES:
        for table in sorted(emulator.dataset.tables[namespace]):
            tbl = emulator.dataset.table(namespace, table)
            until = tbl.latest_ts
            meta = state.get((namespace, table))
            if meta is None:
                problems.append(f"{namespace}.{table}: no row in the client's meta table")
                continue
            recorded = normalize("timestamp", meta["timestamp"], seconds_only=db.dialect == "mysql")
            if recorded != normalize("timestamp", until, seconds_only=db.dialect == "mysql"):
                problems.append(f"{namespace}.{table}: meta timestamp {meta['timestamp']} != until {until}")
            if meta["schema_version"] != tbl.schema_version:
                problems.append(f"{namespace}.{table}: meta schema_version {meta['schema_version']}")
            expected = list(emulator.expected_rows(namespace, table, until))
            problems += compare_table(db, namespace, table, tbl.versioned_schema, expected)
    assert not problems, f"{db.dialect} replica differs from the emulator {when}:\n" + "\n".join(problems[:30])


@pytest.mark.parametrize(
    "dialect",
    [pytest.param("postgresql", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)],
)
def test_initdb_then_syncdb_rounds_equal_the_emulator(
    dialect: str,
    request: pytest.FixtureRequest,
    dap_binary: Path,
    start_server: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    db: Database = request.getfixturevalue("postgres_db" if dialect == "postgresql" else "mysql_db")
    server = start_server(rows={"canvas.users": 40, "*": 12})
    cli = DapCli(dap_binary, server, tmp_path)
    for namespace in NAMESPACES:
        cli.run("initdb", "--namespace", namespace, "--table", "all", "--connection-string", db.url)
    check_replica(db, server, "after initdb")

    deletes_requested = 0
    for description, change in ROUNDS:
        change(server.emulator)
        for namespace in NAMESPACES:
            run = cli.run("syncdb", "--namespace", namespace, "--table", "all", "--connection-string", db.url)
            assert " - ERROR - " not in run.output, run.output[-4000:]
            deletes_requested += sum(int(n) for n in re.findall(r"(\d+) rows have been deleted", run.output))
        check_replica(db, server, f"after syncdb: {description}")
    assert deletes_requested > 0, "no syncdb ever applied a delete: the hard-delete path went untested"

    # `dap listdb` reads the same meta table back: every table synced, with the emulator's row counts.
    for namespace in NAMESPACES:
        listed = json.loads(cli.run("listdb", "--namespace", namespace, "--connection-string", db.url).stdout)
        emulator = server.emulator
        assert [entry["name"] for entry in listed] == sorted(emulator.dataset.tables[namespace])
        for entry in listed:
            table = emulator.dataset.table(namespace, entry["name"])
            assert entry["command"] == "syncdb" and entry["schema"] == table.schema_version, entry
            assert entry["records"] == len(list(emulator.expected_rows(namespace, entry["name"]))), entry
