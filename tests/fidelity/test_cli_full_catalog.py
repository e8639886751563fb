"""The official ``dap`` CLI over the emulator's full catalog, once per run (issue 9 item 2, fidelity part).

Every table the emulator serves (the 90 ``canvas`` tables and ``canvas_logs.web_logs`` of the DAP
0.9.0 spec) goes through the official client, unchanged: ``dap list`` names exactly the emulator's
tables, ``dap schema`` writes the schema the emulator serves, and ``dap initdb``, an emulator commit
(updates, inserts, hard deletes) and ``dap syncdb`` leave PostgreSQL equal to the emulator, row by
row and column by column. A table the client rejects shows an emulator fidelity bug (schema shape,
value encoding); the failure names every such table with the client's reason.

Speed: the client handles the tables of one call one after the other, so the tables are split into
comma-separated batches run by a few CLI processes at a time (each start costs about 1 s of CPU).
Each batch replicates into a fresh database of its own: before every table the client inspects the
whole target schema, which costs time in proportion to the tables already there (measured: 0.1 s
for the first table, 3-6 s per table with the other 89 canvas tables beside it), so 90 tables in
one schema would take minutes, and parallel calls would also race to create the client's meta table.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shlex
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest

from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.conftest import POSTGRES_URL, unavailable
from tests.fidelity.conftest import CliRun, DapCli
from tests.fidelity.db_compare import Database, compare_table, normalize

pytestmark = [pytest.mark.fidelity, pytest.mark.postgres]

#: Rows per table: enough for updates, inserts and a delete in every table, few enough to stay fast.
ROWS = 6
#: CLI processes at a time (the machine may have 2 cores; the emulator serves from this process).
WORKERS = 3
#: Most tables per CLI call: start-up is amortized, the schema inspection stays small, and a batch
#: that fails fatally (the client skips the rest of a call after an auth or server error) hides few tables.
BATCH = 16


@dataclass(frozen=True)
class Batch:
    """Tables of one namespace for one CLI call."""

    namespace: str
    tables: tuple[str, ...]


@dataclass
class FullCatalog:
    server: EmulatorServer
    cli: DapCli
    batches: list[Batch]

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator


def make_batches(tables: dict[str, dict[str, object]]) -> list[Batch]:
    """Every table, in batches of at most :data:`BATCH` tables of one namespace, of about equal size."""
    out: list[Batch] = []
    for namespace in sorted(tables):
        names = sorted(tables[namespace])
        size = math.ceil(len(names) / math.ceil(len(names) / BATCH))
        out += [Batch(namespace, tuple(names[i : i + size])) for i in range(0, len(names), size)]
    return out


@pytest.fixture(scope="module")
def full(
    dap_binary: Path, start_server: Callable[..., EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> FullCatalog:
    server = start_server(rows=ROWS, catalog="full")
    cli = DapCli(dap_binary, server, tmp_path_factory.mktemp("dap-full"))
    return FullCatalog(server, cli, make_batches(server.emulator.dataset.tables))


@pytest.fixture(scope="module")
def databases(full: FullCatalog) -> Iterator[dict[Batch, Database]]:
    """A fresh PostgreSQL database per batch, dropped at the end (skips, or fails in CI, without a server).

    One admin connection for all of them: the server's connection slots are shared with parallel tests.
    """
    parts = urlparse(POSTGRES_URL)
    admin = Database("postgresql", parts.hostname or "127.0.0.1", parts.port, parts.username or "", parts.password, "")
    try:
        connection = admin.connect(database=None)
    except Exception as exc:  # any driver error means "no usable server here"
        unavailable(f"postgresql not reachable at {parts.hostname}:{parts.port} ({type(exc).__name__}: {exc})")
    names = [f"fidelity_full_{secrets.token_hex(4)}_{i}" for i in range(len(full.batches))]
    try:
        for name in names:
            admin.create_database(connection, name)
        yield {
            batch: Database(admin.dialect, admin.host, admin.port, admin.user, admin.password, name)
            for batch, name in zip(full.batches, names, strict=True)
        }
    finally:
        for name in names:
            admin.drop_database(connection, name)
        connection.close()


def failures(run: CliRun, command: str, tables: tuple[str, ...]) -> dict[str, str]:
    """``{table: the client's reason}`` for every table of one call that the client did not complete.

    The client logs ``Operation <command> failed. Reason: ...`` then ``... failed for table '<t>'``
    per failed table and carries on with the next one, except after fatal errors.
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


def run_batches(
    full: FullCatalog, command: str, args: Callable[[Batch], tuple[str, ...]]
) -> tuple[dict[str, str], str]:
    """``dap <command> --namespace NS --table a,b,... <args(batch)>`` for every batch, in parallel.

    :returns: ``{"namespace.table": reason}`` for every table the client failed on, and the
        output of all calls.
    """

    def one(batch: Batch) -> tuple[dict[str, str], str]:
        argv = (command, "--namespace", batch.namespace, "--table", ",".join(batch.tables), *args(batch))
        run = full.cli.run(*argv, check=False, timeout=400)
        found = failures(run, command, batch.tables)
        # The client logs some per-table problems at ERROR level without failing the command.
        if not found and " - ERROR - " in run.output:
            found[",".join(batch.tables)] = f"`dap {shlex.join(argv)}` logged errors: {run.output[-1500:]}"
        return {f"{batch.namespace}.{t}": reason for t, reason in found.items()}, run.output

    problems: dict[str, str] = {}
    outputs: list[str] = []
    with ThreadPoolExecutor(WORKERS) as pool:
        for found, output in pool.map(one, full.batches):
            problems.update(found)
            outputs.append(output)
    return problems, "\n".join(outputs)


def report(what: str, problems: dict[str, str] | list[str]) -> str:
    lines = [f"{name}: {reason}" for name, reason in problems.items()] if isinstance(problems, dict) else problems
    return f"{what} ({len(lines)}):\n" + "\n".join(lines)


def test_list_names_every_table(full: FullCatalog) -> None:
    tables = full.emulator.dataset.tables
    assert sum(len(t) for t in tables.values()) >= 91, "the emulator does not serve the full catalog"
    for namespace in sorted(tables):
        run = full.cli.run("list", "--namespace", namespace)
        assert run.stdout.split() == sorted(tables[namespace])


def test_schema_of_every_table(full: FullCatalog) -> None:
    out = full.cli.workdir / "schema"
    problems, _ = run_batches(full, "schema", lambda batch: ("--output-directory", str(out / batch.namespace)))
    assert not problems, report("`dap schema` failed", problems)
    wrong: list[str] = []
    for batch in full.batches:
        for table in batch.tables:
            versioned = full.emulator.dataset.table(batch.namespace, table).versioned_schema
            path = out / batch.namespace / f"{table}_schema_version_{versioned['version']}.json"
            if not path.is_file():
                wrong.append(f"{batch.namespace}.{table}: {path.name} not written")
            elif json.loads(path.read_text()) != {"schema": versioned["schema"], "version": versioned["version"]}:
                wrong.append(f"{batch.namespace}.{table}: {path.name} differs from the schema the emulator serves")
    assert not wrong, report("schemas", wrong)


def replica_problems(full: FullCatalog, databases: dict[Batch, Database]) -> list[str]:
    """Each table equals the emulator at its latest commit, and the client's meta table records that commit."""
    problems: list[str] = []
    for batch, db in databases.items():
        state = db.sync_state()
        for table in batch.tables:
            name = f"{batch.namespace}.{table}"
            tbl = full.emulator.dataset.table(batch.namespace, table)
            meta = state.get((batch.namespace, table))
            if meta is None:
                problems.append(f"{name}: no row in the client's meta table")
                continue
            if normalize("timestamp", meta["timestamp"]) != normalize("timestamp", tbl.latest_ts):
                problems.append(f"{name}: meta timestamp {meta['timestamp']} != until {tbl.latest_ts}")
            if meta["schema_version"] != tbl.schema_version:
                problems.append(f"{name}: meta schema_version {meta['schema_version']} != {tbl.schema_version}")
            expected = list(full.emulator.expected_rows(batch.namespace, table, tbl.latest_ts))
            problems += compare_table(db, batch.namespace, table, tbl.versioned_schema, expected, limit=3)
    return problems


# Generous: about a minute of CPU in all, but the CLI processes share the cores with whatever else runs.
@pytest.mark.timeout(900)
def test_initdb_then_syncdb_every_table_into_postgresql(full: FullCatalog, databases: dict[Batch, Database]) -> None:
    def connection(batch: Batch) -> tuple[str, ...]:
        return ("--connection-string", databases[batch].url)

    problems, _ = run_batches(full, "initdb", connection)
    assert not problems, report("`dap initdb` failed", problems)
    wrong = replica_problems(full, databases)
    assert not wrong, report("after initdb, tables differ from the emulator", wrong)

    full.emulator.advance(updates=2, inserts=2, deletes=1)
    problems, output = run_batches(full, "syncdb", connection)
    assert not problems, report("`dap syncdb` failed", problems)
    wrong = replica_problems(full, databases)
    assert not wrong, report("after syncdb, tables differ from the emulator", wrong)
    # advance() hard-deletes one row per table: every table's delete path must have run.
    deleted = sum(int(n) for n in re.findall(r"(\d+) rows have been deleted", output))
    tables = sum(len(batch.tables) for batch in full.batches)
    assert deleted >= tables, f"syncdb applied {deleted} deletes over {tables} tables"
