"""The official ``dap`` CLI over the emulator's full catalog, once per run (issue 9 item 2, fidelity part).

Every table the emulator serves (the 90 ``canvas`` tables and ``canvas_logs.web_logs`` of the DAP
0.9.0 spec) goes through the official client, unchanged: ``dap list`` names exactly the emulator's
tables, ``dap schema`` writes the schema the emulator serves, and ``dap initdb``, an emulator commit
(updates, inserts, hard deletes) and ``dap syncdb`` leave a fresh PostgreSQL database equal to the
emulator, row by row and column by column. A table the client rejects shows an emulator fidelity
bug (schema shape, value encoding); the failure names every such table with the client's reason.

Speed: the client handles the tables of one call one after the other, so the tables are split into
comma-separated batches run by a few CLI processes at a time (each start costs 1-2 s).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.conftest import POSTGRES_URL
from tests.fidelity.conftest import CliRun, DapCli, _database
from tests.fidelity.db_compare import Database, compare_table, normalize

pytestmark = [pytest.mark.fidelity, pytest.mark.postgres]

#: Rows per table: enough for updates, inserts and a delete in every table, few enough to stay fast.
ROWS = 6
#: CLI processes at a time (the machine may have 2 cores; the emulator serves from this process).
WORKERS = 3
#: Tables per CLI call: start-up is amortized, and a batch that fails fatally hides few tables.
BATCH = 16

Name = tuple[str, str]  # (namespace, table)


@dataclass
class FullCatalog:
    server: EmulatorServer
    cli: DapCli

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def tables(self, namespace: str | None = None) -> list[Name]:
        tables = self.emulator.dataset.tables
        return [(ns, t) for ns in sorted(tables) if namespace in (None, ns) for t in sorted(tables[ns])]


@pytest.fixture(scope="module")
def full(
    dap_binary: Path, start_server: Callable[..., EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> FullCatalog:
    server = start_server(rows=ROWS, catalog="full")
    return FullCatalog(server, DapCli(dap_binary, server, tmp_path_factory.mktemp("dap-full")))


@pytest.fixture(scope="module")
def full_db() -> Iterator[Database]:
    """A database of this module's own: ``test_cli_replication`` initdb's tables into the session's one."""
    yield from _database(POSTGRES_URL, "postgresql")


def batches(tables: list[Name]) -> list[tuple[str, list[str]]]:
    """``(namespace, [table, ...])`` batches of at most :data:`BATCH` tables, one namespace each."""
    out: list[tuple[str, list[str]]] = []
    for namespace in sorted({ns for ns, _ in tables}):
        names = [t for ns, t in tables if ns == namespace]
        out += [(namespace, names[i : i + BATCH]) for i in range(0, len(names), BATCH)]
    return out


def failures(run: CliRun, command: str, tables: list[str]) -> dict[str, str]:
    """``{table: the client's reason}`` for every table of one call that the client did not complete.

    The client logs ``Operation <command> failed. Reason: ...`` then ``... failed for table '<t>'``
    per failed table and carries on with the next one; after a fatal error it skips the rest.
    """
    failed: dict[str, str] = {}
    reason = ""
    for line in run.output.splitlines():
        if f"Operation {command} failed. Reason:" in line or f"Operation {command} was interrupted" in line:
            reason = line.split(" - ", 3)[-1].strip()
        match = re.search(rf"Operation {command} failed for table '([^']+)'", line)
        if match:
            failed[match.group(1)] = reason or "(no reason logged)"
    finished = set(re.findall(rf"Finished {command} of table '([^']+)'", run.output))
    for table in tables:
        if table not in finished and table not in failed:
            failed[table] = f"not completed (exit {run.returncode}): {run.output[-1500:]}"
    if run.returncode != 0 and not failed:
        failed[",".join(tables)] = f"exit {run.returncode} although every table finished: {run.output[-1500:]}"
    return failed


def run_batched(full: FullCatalog, command: str, tables: list[Name], *args: str) -> tuple[dict[Name, str], str]:
    """Run ``dap <command> --namespace NS --table a,b,... <args>`` over ``tables`` in parallel batches.

    :returns: ``{(namespace, table): reason}`` for every table the client failed on, and the
        output of all calls.
    """

    def one(batch: tuple[str, list[str]]) -> tuple[dict[Name, str], str]:
        namespace, names = batch
        argv = (command, "--namespace", namespace, "--table", ",".join(names), *args)
        run = full.cli.run(*argv, check=False, timeout=400)
        found = failures(run, command, names)
        # The client logs some per-table problems at ERROR level without failing the command.
        if not found and " - ERROR - " in run.output:
            found[",".join(names)] = f"`dap {shlex.join(argv)}` logged errors: {run.output[-1500:]}"
        return {(namespace, t): reason for t, reason in found.items()}, run.output

    problems: dict[Name, str] = {}
    outputs: list[str] = []
    with ThreadPoolExecutor(WORKERS) as pool:
        for found, output in pool.map(one, batches(tables)):
            problems.update(found)
            outputs.append(output)
    return problems, "\n".join(outputs)


def report(what: str, problems: dict[Name, str] | list[str]) -> str:
    lines = [f"{ns}.{t}: {reason}" for (ns, t), reason in problems.items()] if isinstance(problems, dict) else problems
    return f"{what} ({len(lines)}):\n" + "\n".join(lines)


def test_list_names_every_table(full: FullCatalog) -> None:
    assert len(full.tables()) >= 91, "the emulator does not serve the full catalog"
    for namespace in full.emulator.dataset.namespaces():
        run = full.cli.run("list", "--namespace", namespace)
        assert run.stdout.split() == [t for _, t in full.tables(namespace)]


def test_schema_of_every_table(full: FullCatalog) -> None:
    out = full.cli.workdir / "schema"
    problems, _ = run_batched(full, "schema", full.tables(), "--output-directory", str(out))
    assert not problems, report("`dap schema` failed", problems)
    wrong: list[str] = []
    for namespace, table in full.tables():
        versioned = full.emulator.dataset.table(namespace, table).versioned_schema
        path = out / f"{table}_schema_version_{versioned['version']}.json"
        if not path.is_file():
            wrong.append(f"{namespace}.{table}: {path.name} not written")
        elif json.loads(path.read_text()) != {"schema": versioned["schema"], "version": versioned["version"]}:
            wrong.append(f"{namespace}.{table}: {path.name} differs from the schema the emulator serves")
    assert not wrong, report("schemas", wrong)


def replica_problems(db: Database, emulator: Emulator, tables: list[Name]) -> list[str]:
    """Each table equals the emulator at its latest commit, and the client's meta table records that commit."""
    state = db.sync_state()
    problems: list[str] = []
    for namespace, table in tables:
        tbl = emulator.dataset.table(namespace, table)
        meta = state.get((namespace, table))
        if meta is None:
            problems.append(f"{namespace}.{table}: no row in the client's meta table")
            continue
        if normalize("timestamp", meta["timestamp"]) != normalize("timestamp", tbl.latest_ts):
            problems.append(f"{namespace}.{table}: meta timestamp {meta['timestamp']} != until {tbl.latest_ts}")
        if meta["schema_version"] != tbl.schema_version:
            problems.append(f"{namespace}.{table}: meta schema_version {meta['schema_version']}")
        expected = list(emulator.expected_rows(namespace, table, tbl.latest_ts))
        problems += compare_table(db, namespace, table, tbl.versioned_schema, expected, limit=3)
    return problems


# Generous: about 40 s of CPU in all, but the CLI processes share the cores with whatever else runs.
@pytest.mark.timeout(900)
def test_initdb_then_syncdb_every_table_into_postgresql(full: FullCatalog, full_db: Database) -> None:
    tables = full.tables()
    connection = ("--connection-string", full_db.url)
    # One table first, alone: it creates the client's meta table, which parallel first calls would race for.
    problems, _ = run_batched(full, "initdb", tables[:1], *connection)
    more, _ = run_batched(full, "initdb", tables[1:], *connection)
    problems |= more
    assert not problems, report("`dap initdb` failed", problems)
    wrong = replica_problems(full_db, full.emulator, tables)
    assert not wrong, report("after initdb, tables differ from the emulator", wrong)

    full.emulator.advance(updates=2, inserts=2, deletes=1)
    problems, output = run_batched(full, "syncdb", tables, *connection)
    assert not problems, report("`dap syncdb` failed", problems)
    wrong = replica_problems(full_db, full.emulator, tables)
    assert not wrong, report("after syncdb, tables differ from the emulator", wrong)
    deleted = sum(int(n) for n in re.findall(r"(\d+) rows have been deleted", output))
    # advance() hard-deletes one row per table: every table's delete path must have run.
    assert deleted >= len(tables), f"syncdb applied {deleted} deletes over {len(tables)} tables"
