"""The official ``dap`` CLI, unchanged, against the emulator: list, schema, snapshot and incremental downloads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.emulator.encoders import format_timestamp
from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.emulator.dap_wire import Rec, TableInfo, decode_part, first_difference
from tests.fidelity.conftest import DapCli

pytestmark = pytest.mark.fidelity

NAMESPACES = ["canvas", "canvas_logs"]
FORMATS = ["tsv", "csv", "jsonl", "parquet"]


@dataclass
class World:
    server: EmulatorServer
    cli: DapCli
    base: datetime  # the initial load
    changed: datetime  # one round of updates, inserts and deletes

    def tables(self, namespace: str) -> list[str]:
        return sorted(self.server.emulator.dataset.tables[namespace])

    def info(self, namespace: str, table: str) -> TableInfo:
        return TableInfo.from_schema(self.server.emulator.dataset.table(namespace, table).versioned_schema["schema"])

    def expected(self, namespace: str, table: str, at: datetime) -> dict[tuple, dict[str, Any]]:
        info = self.info(namespace, table)
        rows = self.server.emulator.expected_rows(namespace, table, at)
        return {tuple(r[c.name] for c in info.keys): r for r in rows}


@pytest.fixture(scope="module")
def world(
    dap_binary: Path, start_server: Callable[..., EmulatorServer], tmp_path_factory: pytest.TempPathFactory
) -> World:
    server = start_server(rows={"canvas.users": 30, "*": 8})
    base = server.emulator.latest("canvas", "users")
    changed = server.emulator.advance(updates=3, inserts=2, deletes=2)
    return World(server, DapCli(dap_binary, server, tmp_path_factory.mktemp("dap-cli")), base, changed)


def downloaded_jobs(world: World, out: Path, namespace: str, fmt: str, incremental: bool) -> dict[str, list[Rec]]:
    """Decode every ``job_<id>`` directory the CLI wrote; returns ``{table: records}``."""
    result: dict[str, list[Rec]] = {}
    for job_dir in sorted(out.glob("job_*")):
        job = world.server.emulator.jobs.get(job_dir.name[len("job_") :])
        assert job is not None, f"{job_dir} is not a job of this emulator"
        assert job.query.namespace == namespace and job.query.format == fmt
        assert job.query.incremental == incremental
        files = sorted(p.name for p in job_dir.iterdir())
        assert files == sorted(oid.rsplit("/", 1)[-1] for oid in job.objects), "files differ from the job's objects"
        info = world.info(namespace, job.query.table)
        records = [
            rec
            for name in files
            for rec in decode_part(fmt, (job_dir / name).read_bytes(), info, job.query.mode, incremental)
        ]
        assert job.query.table not in result, f"two jobs for {job.query.table}"
        result[job.query.table] = records
    return result


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_list(world: World, namespace: str) -> None:
    run = world.cli.run("list", "--namespace", namespace)
    assert run.stdout.split() == world.tables(namespace)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_schema_all_tables(world: World, namespace: str) -> None:
    out = world.cli.workdir / f"schema-{namespace}"
    world.cli.run("schema", "--namespace", namespace, "--table", "all", "--output-directory", str(out))
    for table in world.tables(namespace):
        versioned = world.server.emulator.dataset.table(namespace, table).versioned_schema
        path = out / f"{table}_schema_version_{versioned['version']}.json"
        assert path.is_file(), sorted(p.name for p in out.iterdir())
        assert json.loads(path.read_text()) == {"schema": versioned["schema"], "version": versioned["version"]}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_snapshot_every_table(world: World, namespace: str, fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = world.cli.workdir / f"snapshot-{namespace}-{fmt}"
    args = ("snapshot", "--namespace", namespace, "--table", "all", "--format", fmt)
    world.cli.run(*args, "--output-directory", str(out))
    jobs = downloaded_jobs(world, out, namespace, fmt, incremental=False)
    assert sorted(jobs) == world.tables(namespace)
    for table, records in jobs.items():
        actual = {tuple(r.key.values()): r.flat for r in records}
        assert len(actual) == len(records), f"{table}: duplicate keys"
        problem = first_difference(world.expected(namespace, table, world.changed), actual)
        assert problem is None, f"{namespace}.{table} ({fmt}):\n{problem}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_incremental_every_table(world: World, namespace: str, fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = world.cli.workdir / f"incremental-{namespace}-{fmt}"
    args = ("incremental", "--namespace", namespace, "--table", "all", "--format", fmt)
    world.cli.run(*args, "--since", format_timestamp(world.base), "--output-directory", str(out))
    jobs = downloaded_jobs(world, out, namespace, fmt, incremental=True)
    assert sorted(jobs) == world.tables(namespace)
    for table, records in jobs.items():
        before = world.expected(namespace, table, world.base)
        after = world.expected(namespace, table, world.changed)
        got = {tuple(r.key.values()): r for r in records}
        assert len(got) == len(records), f"{table}: duplicate keys"
        assert {k for k, r in got.items() if r.action == "D"} == set(before) - set(after), table
        upserted = {k for k in after if before.get(k) != after[k]}
        assert {k for k, r in got.items() if r.action == "U"} == upserted, table
        problem = first_difference({k: after[k] for k in upserted}, {k: got[k].flat for k in upserted})
        assert problem is None, f"{namespace}.{table} ({fmt}):\n{problem}"


def test_table_lists_until_and_offsets(world: World) -> None:
    """Comma-separated tables, an explicit ``--until``, and a ``+02:00`` offset the CLI converts to UTC."""
    out = world.cli.workdir / "comma-list"
    since = world.base.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert since.endswith("+02:00")
    world.cli.run(
        "incremental", "--namespace", "canvas", "--table", "users,courses", "--format", "jsonl",
        "--since", since, "--until", format_timestamp(world.changed), "--output-directory", str(out),
    )  # fmt: skip
    jobs = downloaded_jobs(world, out, "canvas", "jsonl", incremental=True)
    assert sorted(jobs) == ["courses", "users"]
    for job_dir in out.glob("job_*"):
        query = world.server.emulator.jobs.get(job_dir.name[len("job_") :]).query  # type: ignore[union-attr]
        assert (query.since, query.until) == (world.base, world.changed), query
