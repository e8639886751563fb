"""Replication speed into PostgreSQL: ``CD2SyncTableOperator`` vs the official ``dap initdb``/``dap syncdb``.

Issue: on the same emulator data (a table of at least 1 million rows, then an incremental of
10% updates and 1% deletes), run the official client and the operator into the same
PostgreSQL server and print rows per second for both, the ratio and peak memory. Target:
faster than the official client on both steps, and within 1.5x of a raw ``COPY`` of the
same rows.

1. The emulator runs in its own process with ``--rows`` rows of one table (``submissions``,
   46 columns, the largest Canvas table). Each job is created once and waited for *before*
   any client is timed (identical queries share one job), so only client-side work is timed:
   query, download, load, index, merge, commit.
2. Step 1 (snapshot): ``dap initdb`` into database A, the operator into database B.
   Step 2: ``advance(updates=0.10, inserts=0, deletes=0.01)``, then ``dap syncdb`` into A and
   the operator into B.
3. Raw COPY baseline per step: the same result parts, decompressed beforehand, streamed with
   a plain ``COPY ... FROM STDIN`` into an empty table with the same column types and no key
   (database C). Only the COPY and its commit are timed.
4. Every client runs in its own process; peak RSS comes from ``wait4`` (``ru_maxrss``) and the
   server's memory is not counted. A ``CHECKPOINT`` precedes every timed run.
5. Afterwards A and B must hold the same rows: count, key sum and a hash over key and value
   columns (timestamps compared as epochs, since ``dap`` stores naive UTC).

Run: ``.venv/bin/python benchmarks/bench_sync_postgres.py`` (``--rows 100000`` for a quick run).
PostgreSQL: ``--pg-host``/``--pg-port``/``--pg-user``/``--pg-password`` (default
127.0.0.1:5432, user postgres); databases ``bench_<random>_{dap,ours,raw}`` are created and
dropped (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the benchmarks folder is not a package: found through sys.path
    DiskSampler,
    EmulatorProcess,
    Measured,
    airflow_home,
    baseline_rss,
    clean_env,
    dap_python,
    log,
    print_table,
    remove,
    run_measured,
    temp_dir,
)

OURS_IMPORTS = (
    "airflow_provider_instructure.operators.cd2_sync",
    "airflow.providers.postgres.hooks.postgres",
    "psycopg",
)
DAP_IMPORTS = ("dap.__main__", "dap.replicator.sql", "asyncpg")
CONN_ID = "bench_pg"


# -- PostgreSQL ---------------------------------------------------------------------------------------


def connect(args: argparse.Namespace, dbname: str, *, autocommit: bool = True) -> Any:
    import psycopg

    return psycopg.connect(
        host=args.pg_host,
        port=args.pg_port,
        user=args.pg_user,
        password=args.pg_password or None,
        dbname=dbname,
        autocommit=autocommit,
        connect_timeout=10,
    )


def dap_url(args: argparse.Namespace, dbname: str) -> str:
    auth = quote(args.pg_user, safe="") + (f":{quote(args.pg_password, safe='')}" if args.pg_password else "")
    return f"postgresql://{auth}@{args.pg_host}:{args.pg_port}/{dbname}"


def airflow_conn(args: argparse.Namespace, dbname: str) -> str:
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": args.pg_host,
            "port": args.pg_port,
            "login": args.pg_user,
            "password": args.pg_password or None,
            "schema": dbname,
        }
    )


def checkpoint(args: argparse.Namespace) -> None:
    """Flush dirty buffers so that no timed run pays for an earlier run's writes."""
    with connect(args, "postgres") as conn:
        conn.execute("CHECKPOINT")


def table_columns(args: argparse.Namespace, dbname: str, schema: str, table: str) -> dict[str, str]:
    with connect(args, dbname) as conn:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (f'"{schema}"."{table}"',),
        ).fetchall()
    return dict(rows)


def fingerprint(args: argparse.Namespace, dbname: str, schema: str, table: str, key: str) -> tuple[Any, ...]:
    """Row count, key sum and an order-independent hash of every row's key and value columns.

    Values are rendered type-neutrally: timestamps as epochs (``dap`` stores naive UTC,
    we store ``timestamptz``), enums/json/uuid/inet as text.
    """
    columns = table_columns(args, dbname, schema, table)
    parts = []
    for name, typ in columns.items():
        col = f'"{name}"'
        if typ.startswith("timestamp"):
            parts.append(f"extract(epoch from {col})::text")
        elif typ in ("json", "jsonb"):
            parts.append(f"({col})::jsonb::text")
        else:
            parts.append(f"({col})::text")
    row_text = "concat_ws('|', " + ", ".join(f"coalesce({p}, '<null>')" for p in parts) + ")"
    sql = (
        f'SELECT count(*), coalesce(sum("{key}"), 0), coalesce(sum(hashtextextended({row_text}, 0)::numeric), 0) '
        f'FROM "{schema}"."{table}"'
    )
    with connect(args, dbname) as conn:
        return tuple(conn.execute(sql).fetchone())


# -- workers (child processes) ------------------------------------------------------------------------


def worker_sync(args: argparse.Namespace) -> None:
    """Child: one ``CD2SyncTableOperator.execute`` (snapshot on the first run, incremental after)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from airflow_provider_instructure.operators.cd2_sync import CD2SyncTableOperator

    op = CD2SyncTableOperator(
        task_id="bench_sync",
        table=args.table,
        namespace=args.namespace,
        destination_conn_id=CONN_ID,
        poll_interval=1.0,
        deferrable=False,
        workdir=args.workdir,
        download_concurrency=args.download_concurrency,
    )
    started = time.perf_counter()
    summary = op.execute({})
    print(json.dumps({"seconds": time.perf_counter() - started, "summary": summary}, default=str))


def worker_raw_copy(args: argparse.Namespace) -> None:
    """Child: plain ``COPY ... FROM STDIN`` of decompressed parts into a fresh table without a key."""
    import psycopg

    from airflow_provider_instructure.dap_schema import parse_table_schema
    from airflow_provider_instructure.replication.types import sql_type

    folder = Path(args.worker_arg)
    schema = parse_table_schema(json.loads((folder / "schema.json").read_text()))
    files = sorted(folder.glob("*.tsv"))
    with open(files[0], "rb") as fh:
        header = fh.readline().rstrip(b"\n").decode().split("\t")
    by_header = {c.header: c for c in schema.columns}
    defs = []
    for label in header:
        if label == "meta.ts":
            defs.append('"meta.ts" timestamp with time zone')
        elif label.startswith("meta."):
            defs.append(f'"{label}" text')
        else:
            column = by_header[label]
            defs.append(f'"{column.name}" {sql_type(column, "postgres")}')
    with psycopg.connect(
        host=args.pg_host, port=args.pg_port, user=args.pg_user, password=args.pg_password or None, dbname=args.db
    ) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_copy")
        conn.execute(f"CREATE TABLE raw_copy ({', '.join(defs)})")
        conn.commit()
        rows = 0
        started = time.perf_counter()
        with conn.cursor() as cur:
            for path in files:
                with open(path, "rb") as fh, cur.copy("COPY raw_copy FROM STDIN WITH (FORMAT text)") as copy:
                    fh.readline()  # the header
                    while block := fh.read(1 << 20):
                        copy.write(block)
                rows += cur.rowcount
        conn.commit()
        seconds = time.perf_counter() - started
        size = conn.execute("SELECT pg_total_relation_size('raw_copy')").fetchone()[0]
        conn.execute("DROP TABLE raw_copy")
        conn.commit()
    print(json.dumps({"seconds": seconds, "rows": rows, "table_bytes": size}))


# -- the benchmark ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tag = secrets.token_hex(3)
        self.db_dap = f"bench_{tag}_dap"
        self.db_ours = f"bench_{tag}_ours"
        self.db_raw = f"bench_{tag}_raw"
        # The snapshot under the bandwidth cap goes into two more fresh databases.
        self.db_dap_cap = f"bench_{tag}_dap_cap"
        self.db_ours_cap = f"bench_{tag}_ours_cap"
        self.work = temp_dir("bench-sync-")
        self.results: list[list[object]] = []
        self.ratios: list[list[object]] = []
        self.phases: list[list[object]] = []
        self.overlap: list[list[object]] = []

    # -- databases ------------------------------------------------------------------------------

    @property
    def databases(self) -> tuple[str, ...]:
        capped = (self.db_dap_cap, self.db_ours_cap) if self.args.bandwidth else ()
        return (self.db_dap, self.db_ours, self.db_raw, *capped)

    def create_databases(self) -> None:
        with connect(self.args, "postgres") as conn:
            for name in self.databases:
                conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0")

    def drop_databases(self) -> None:
        with connect(self.args, "postgres") as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- runs -----------------------------------------------------------------------------------

    def run_dap(self, emulator: EmulatorProcess, command: str, db: str) -> tuple[Measured, DiskSampler]:
        checkpoint(self.args)
        log(f"official: dap {command}")
        # dap downloads into a TemporaryDirectory: point TMPDIR at a folder whose size is sampled.
        tmp = self.work / "dap-tmp"
        tmp.mkdir(exist_ok=True)
        with DiskSampler(tmp) as disk:
            measured = run_measured(
                emulator.dap_command(
                    command, "--namespace", self.args.namespace, "--table", self.args.table,
                    "--connection-string", dap_url(self.args, db),
                ),
                env=clean_env(TMPDIR=str(tmp)),
                cwd=self.work,
            ).check(f"dap {command}")  # fmt: skip
        return measured, disk

    def run_ours(self, emulator: EmulatorProcess, db: str) -> tuple[Measured, dict[str, Any], DiskSampler]:
        checkpoint(self.args)
        log(f"ours: CD2SyncTableOperator.execute (download_concurrency={self.args.download_concurrency})")
        env = clean_env(
            AIRFLOW_CONN_INSTRUCTURE_DEFAULT=emulator.connection_json(),
            **{f"AIRFLOW_CONN_{CONN_ID.upper()}": airflow_conn(self.args, db)},
        )
        parts = self.work / "ours-parts"
        parts.mkdir(exist_ok=True)
        with DiskSampler(parts) as disk:
            measured = run_measured(self.worker_command("sync", "--workdir", str(parts)), env=env)
        measured.check("CD2SyncTableOperator")
        return measured, measured.last_json(), disk

    def run_raw_copy(
        self, emulator: EmulatorProcess, job: dict[str, Any], label: str
    ) -> tuple[Measured, dict[str, Any]]:
        folder = self.work / f"raw-{label}"
        remove(folder)
        folder.mkdir()
        urls = emulator.object_urls([o["id"] for o in job["objects"]])
        for oid, url in urls.items():
            target = folder / Path(oid).name.removesuffix(".gz")
            with emulator._session.get(url, stream=True, timeout=300) as response:
                response.raise_for_status()
                response.raw.decode_content = False
                with gzip.open(response.raw, "rb") as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        response = emulator._session.get(
            f"{emulator.url}/dap/query/{self.args.namespace}/table/{self.args.table}/schema",
            headers=emulator._auth(),
            timeout=60,
        )
        response.raise_for_status()
        (folder / "schema.json").write_text(response.text)
        checkpoint(self.args)
        log(f"raw COPY of the {label} parts")
        measured = run_measured(
            self.worker_command("raw-copy", "--worker-arg", str(folder), "--db", self.db_raw), env=clean_env()
        )
        measured.check("raw COPY")
        remove(folder)
        return measured, measured.last_json()

    def worker_command(self, kind: str, *extra: str) -> list[str]:
        a = self.args
        return [
            sys.executable, __file__, "--worker", kind, "--table", a.table,
            "--namespace", a.namespace, "--pg-host", a.pg_host, "--pg-port", str(a.pg_port),
            "--pg-user", a.pg_user, "--pg-password", a.pg_password,
            "--download-concurrency", str(a.download_concurrency), *extra,
        ]  # fmt: skip

    # -- steps ----------------------------------------------------------------------------------

    def step(
        self,
        emulator: EmulatorProcess,
        name: str,
        command: str,
        job: dict[str, Any],
        rows: int,
        bases: tuple[float, float],
        *,
        dbs: tuple[str, str] | None = None,
        raw_copy: bool = True,
    ) -> None:
        db_dap, db_ours = dbs or (self.db_dap, self.db_ours)
        if self.args.order == "dap-first":
            dap, dap_disk = self.run_dap(emulator, command, db_dap)
            ours, result, ours_disk = self.run_ours(emulator, db_ours)
        else:
            ours, result, ours_disk = self.run_ours(emulator, db_ours)
            dap, dap_disk = self.run_dap(emulator, command, db_dap)
        summary = result["summary"]
        if summary["job_id"] != job["id"]:
            sys.exit(f"the operator used job {summary['job_id']}, not the warmed job {job['id']}")
        inner = float(result["seconds"])
        ours_base, dap_base = bases
        mb = 1e6
        self.results += [
            [name, f"official: dap {command} (process)", rows, dap.seconds, rows / dap.seconds, dap.peak_rss_mb,
             dap.peak_rss_mb - dap_base, dap_disk.peak / mb, dap_disk.peak_files],
            [name, "ours: CD2SyncTableOperator (process)", rows, ours.seconds, rows / ours.seconds,
             ours.peak_rss_mb, ours.peak_rss_mb - ours_base, ours_disk.peak / mb, ours_disk.peak_files],
            [name, "ours: op.execute() inside it", rows, inner, rows / inner, "", "", "", ""],
        ]  # fmt: skip
        self.ratios += [
            [name, "ours (process) / official (process)", ours.seconds / dap.seconds, "< 1.00",
             "met" if ours.seconds < dap.seconds else "MISSED"],
            [name, "ours execute() / official (process)", inner / dap.seconds, "< 1.00",
             "met" if inner < dap.seconds else "MISSED"],
        ]  # fmt: skip
        if raw_copy:
            raw, raw_result = self.run_raw_copy(emulator, job, name.split()[0])
            if raw_result["rows"] != rows:
                sys.exit(f"raw COPY loaded {raw_result['rows']} rows, the job has {rows}")
            raw_s = float(raw_result["seconds"])
            self.results.append(
                [name, "raw COPY, no key (COPY + commit)", rows, raw_s, rows / raw_s, raw.peak_rss_mb, "", "", ""]
            )
            met = "met" if inner <= 1.5 * raw_s else "MISSED"
            self.ratios.append([name, "ours execute() / raw COPY", inner / raw_s, "<= 1.50", met])
        seconds = summary["seconds"]
        self.phases.append([name, ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())])
        if command == "initdb" and "waiting_for_parts" in seconds:
            # The snapshot is pipelined: download and load overlap. The load's own work is its
            # phases minus the time it waited for parts; the wall time of both together tends to
            # the larger of the two, not their sum (what downloading first would cost).
            work = (
                seconds.get("prepare", 0)
                + seconds["load"]
                - seconds["waiting_for_parts"]
                + seconds.get("index", 0)
                + seconds.get("swap", 0)
                + seconds.get("commit", 0)
            )
            download = seconds["download"]
            self.overlap.append(
                [name, download, work, download + work, max(download, work), inner - seconds.get("query", 0)]
            )

    def run(self) -> None:
        a = self.args
        name = f"{a.namespace}.{a.table}"
        self.create_databases()
        try:
            with EmulatorProcess({name: a.rows}, rows_per_part=a.rows_per_part) as emulator:
                bases = (
                    baseline_rss(sys.executable, OURS_IMPORTS, clean_env()),
                    baseline_rss(dap_python(), DAP_IMPORTS, clean_env()),
                )
                clock = time.perf_counter()
                # What both `dap initdb` and the operator send: TSV, condensed, no since.
                snap = emulator.query(a.namespace, a.table, {"format": "tsv", "mode": "condensed"})
                log(
                    f"snapshot job {snap['id']}: {a.rows:,} rows in {len(snap['objects'])} part(s), "
                    f"generated in {time.perf_counter() - clock:.0f} s (not timed)"
                )
                self.step(emulator, "1 snapshot", "initdb", snap, a.rows, bases)
                for cap in a.bandwidth:
                    # The same snapshot job again, each download connection capped like an S3 stream.
                    emulator.configure(download_bandwidth=cap)
                    self.step(
                        emulator,
                        f"1c snapshot, cap {cap / 1e6:g} MB/s/conn",
                        "initdb",
                        snap,
                        a.rows,
                        bases,
                        dbs=(self.db_dap_cap, self.db_ours_cap),
                        raw_copy=False,
                    )
                    emulator.configure(download_bandwidth=0)
                    with connect(a, "postgres") as conn:  # fresh databases for the next cap
                        for db in (self.db_dap_cap, self.db_ours_cap):
                            conn.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
                            conn.execute(f"CREATE DATABASE \"{db}\" ENCODING 'UTF8' TEMPLATE template0")

                emulator.advance([name], updates=a.updates, inserts=0, deletes=a.deletes)
                clock = time.perf_counter()
                inc = emulator.query(a.namespace, a.table, {"format": "tsv", "mode": "condensed", "since": snap["at"]})
                changed = round(a.rows * a.updates) + round(a.rows * a.deletes)
                log(
                    f"incremental job {inc['id']}: ~{changed:,} changed rows in {len(inc['objects'])} part(s), "
                    f"generated in {time.perf_counter() - clock:.0f} s (not timed)"
                )
                self.step(emulator, "2 incremental", "syncdb", inc, changed, bases)
                jobs = emulator.stats()["jobs_created"]
            self.report(jobs, bases)
        finally:
            if a.keep:
                log(f"kept databases {self.db_dap}, {self.db_ours}, {self.db_raw}")
            else:
                self.drop_databases()
            remove(self.work)

    def report(self, jobs: int, bases: tuple[float, float]) -> None:
        a = self.args
        print_table(
            ["step", "tool", "rows", "seconds", "rows/s", "peak RSS MB", "peak - baseline MB", "peak disk MB", "files"],
            self.results,
            title=f"{a.namespace}.{a.table} into PostgreSQL ({a.rows:,} rows, then {a.updates:.0%} updates and "
            f"{a.deletes:.0%} deletes); (process) = the whole client process, start-up included; baselines "
            f"(import only): ours {bases[0]:.0f} MB, dap {bases[1]:.0f} MB",
        )
        print_table(["step", "ratio (seconds)", "value", "target", "result"], self.ratios, title="Ratios")
        print_table(["step", "operator phases (s)"], self.phases, title="Where the operator's time goes")
        if self.overlap:
            print_table(
                ["step", "download s", "load work s", "sum", "max", "wall s (both)"],
                self.overlap,
                title=f"Pipelined snapshot (download_concurrency={a.download_concurrency}): download = until the "
                "last part landed; load work = prepare + load + index + swap + commit minus the time the load "
                "waited for parts; wall = execute() minus the query. Pipelined, the wall tends to max, not sum",
            )
        print(
            "peak disk: bytes under dap's TMPDIR / the operator's workdir, sampled every 50 ms; load average "
            "(1/5/15 min) at the end: {:.2f} {:.2f} {:.2f} ({} cores)".format(*os.getloadavg(), os.cpu_count())
        )
        key = "id"
        fp_dap = fingerprint(a, self.db_dap, a.namespace, a.table, key)
        fp_ours = fingerprint(a, self.db_ours, a.namespace, a.table, key)
        same = fp_dap == fp_ours
        print_table(
            ["database", "rows", "sum(id)", "row hash"],
            [["A (dap)", *fp_dap], ["B (ours)", *fp_ours]],
            title=f"Same rows in A and B: {'yes' if same else 'NO'}; jobs created by the emulator: {jobs} "
            "(2 = both clients shared every job)",
        )
        if not same:
            sys.exit("databases A and B differ: the comparison is not valid")
        if jobs != 2:
            sys.exit(f"the emulator created {jobs} jobs instead of 2: the clients did not share the warmed jobs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the table (default 200,000)")
    parser.add_argument("--table", default="submissions")
    parser.add_argument("--namespace", default="canvas")
    parser.add_argument("--updates", type=float, default=0.10, help="fraction of rows updated before step 2")
    parser.add_argument("--deletes", type=float, default=0.01, help="fraction of rows deleted before step 2")
    parser.add_argument(
        "--rows-per-part", type=int, default=10_000, help="emulator: maximum rows per part (default 10,000)"
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        nargs="*",
        default=[2e6],
        help="emulator cap per download connection in bytes/s for an extra snapshot run each (default 2e6; "
        "none: no capped run)",
    )
    parser.add_argument(
        "--download-concurrency", type=int, default=8, help="the operator's download_concurrency (default 8)"
    )
    parser.add_argument("--order", choices=("ours-first", "dap-first"), default="dap-first")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--pg-password", default="")
    parser.add_argument("--keep", action="store_true", help="keep the bench_* databases")
    parser.add_argument("--worker", choices=("sync", "raw-copy"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-arg", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker:
        os.environ["AIRFLOW_HOME"] = str(airflow_home())
    if args.worker == "sync":
        worker_sync(args)
    elif args.worker == "raw-copy":
        worker_raw_copy(args)
    else:
        Bench(args).run()


if __name__ == "__main__":
    main()
