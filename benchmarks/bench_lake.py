"""Replication into Delta Lake and Apache Iceberg tables beside the PostgreSQL path, on the same data.

Issue 11: replicate 1,000,000 rows of ``submissions`` and then an incremental of 10% updates
and 1% deletes into each table format and print seconds, rows per second, peak memory and
bytes written, beside the PostgreSQL path on the same data.

1. The emulator (its own process, :class:`_common.EmulatorProcess`) serves ``canvas.submissions``
   with ``--rows`` rows. The snapshot job (``{"format": "tsv", "mode": "condensed"}``, what the
   operator sends) is created, waited for and its gzip parts downloaded once; then
   ``advance(updates, deletes)`` and the incremental job (``since`` = the snapshot's ``at``) the
   same way. None of that is timed, and the emulator is stopped before the first timed run.
2. Each path then runs the snapshot in one child process and the incremental in another, from
   the same part files: ``Destination.check_target`` + ``apply_snapshot`` /
   ``apply_incremental`` (the seam every sync goes through; download is left out, it is the
   same for every path and measured by ``bench_download.py``). Paths: ``postgres``
   (:class:`TableReplicator` into a fresh database), ``delta`` and ``iceberg`` (local folder,
   Iceberg's SQL catalog a SQLite file), and with ``--s3`` ``delta-s3`` and ``iceberg-s3``
   (moto's S3 server in its own process on 127.0.0.1).
3. Per run: wall seconds of the whole child process and of the apply call inside it, rows/s,
   peak RSS (``ru_maxrss`` from ``wait4``) and the same minus an import-only baseline, bytes
   written (lake: bytes of the files (objects) that are new or changed after the run, the
   Iceberg SQLite catalog included; PostgreSQL: WAL generated, which is server-wide - other
   sessions' writes count too - and the table's pages, written again at checkpoint, are not in
   it) and the table's size afterwards (lake: every file of the table, older versions
   included, nothing is vacuumed; PostgreSQL: ``pg_total_relation_size``).
4. Afterwards every path must hold the same rows (count, key sum, sum of ``updated_at`` epoch
   seconds), and each lake table's watermark is read back from the table alone; the script
   fails otherwise.

Run: ``.venv/bin/python benchmarks/bench_lake.py --rows 1000000`` (default 200,000 rows);
``--paths postgres delta`` picks paths; ``--s3`` adds the S3 paths.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _lake_paths as paths
from _common import (  # the benchmarks folder is not a package: found through sys.path
    EmulatorProcess,
    baseline_rss,
    clean_env,
    log,
    print_table,
    remove,
    run_measured,
    temp_dir,
)
from bench_sync_postgres import checkpoint, connect

LOCAL_PATHS = ("postgres", "delta", "iceberg")


# -- preparing the data (not timed) -------------------------------------------------------------------


def download_job(emulator: EmulatorProcess, job: dict[str, Any], folder: Path) -> int:
    """Save a job's parts as served (gzip) into ``folder``; returns their bytes."""
    folder.mkdir(parents=True)
    total = 0
    for oid, url in emulator.object_urls([o["id"] for o in job["objects"]]).items():
        with emulator._session.get(url, stream=True, timeout=300) as response:
            response.raise_for_status()
            response.raw.decode_content = False  # keep the gzip bytes: every path reads them the same way
            with open(folder / Path(oid).name, "wb") as out:
                while block := response.raw.read(1 << 20):
                    out.write(block)
                    total += len(block)
    return total


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both jobs' parts and the versioned schema under ``work``; returns the jobs' metadata."""
    name = f"{args.namespace}.{args.table}"
    with EmulatorProcess({name: args.rows}, rows_per_part=args.rows_per_part) as emulator:
        clock = time.perf_counter()
        snap = emulator.query(args.namespace, args.table, {"format": "tsv", "mode": "condensed"})
        snap_bytes = download_job(emulator, snap, work / "snapshot")
        log(
            f"snapshot job: {args.rows:,} rows in {len(snap['objects'])} part(s), {snap_bytes / 1e6:.1f} MB gzip, "
            f"generated and downloaded in {time.perf_counter() - clock:.0f} s (not timed)"
        )
        response = emulator._session.get(
            f"{emulator.url}/dap/query/{args.namespace}/table/{args.table}/schema", headers=emulator._auth(), timeout=60
        )
        response.raise_for_status()
        schema = response.json()
        (work / "schema.json").write_text(json.dumps({"schema": schema["schema"], "version": schema["version"]}))
        emulator.advance([name], updates=args.updates, inserts=0, deletes=args.deletes)
        clock = time.perf_counter()
        inc = emulator.query(args.namespace, args.table, {"format": "tsv", "mode": "condensed", "since": snap["at"]})
        inc_bytes = download_job(emulator, inc, work / "incremental")
        log(
            f"incremental job: {len(inc['objects'])} part(s), {inc_bytes / 1e6:.1f} MB gzip, generated and "
            f"downloaded in {time.perf_counter() - clock:.0f} s (not timed)"
        )
    jobs = {
        "snapshot": {"id": snap["id"], "at": snap["at"], "bytes": snap_bytes},
        "incremental": {"id": inc["id"], "since": inc["since"], "until": inc["until"], "bytes": inc_bytes},
    }
    (work / "jobs.json").write_text(json.dumps(jobs))
    return jobs


# -- the benchmark ------------------------------------------------------------------------------------


class MotoServer:
    """moto's S3 API in its own process on a free 127.0.0.1 port (its CPU and memory are not
    counted against any path)."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=clean_env(),
        )
        import requests

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/moto-api/", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto's server did not start")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=15)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = temp_dir("bench-lake-")
        self.db = f"bench_{secrets.token_hex(3)}_lake"
        lake = [p for p in args.paths if p != "postgres"]
        self.paths = list(args.paths) + ([f"{p}-s3" for p in lake] if args.s3 else [])
        self.s3: MotoServer | None = None
        self.results: list[list[object]] = []
        self.phases: list[list[object]] = []

    def spec(self, path: str) -> paths.PathSpec:
        a = self.args
        return paths.PathSpec(
            path=path,
            namespace=a.namespace,
            table=a.table,
            work=str(self.work),
            pg={"host": a.pg_host, "port": a.pg_port, "user": a.pg_user, "password": a.pg_password, "db": self.db},
            s3_endpoint=self.s3.url if self.s3 else "",
            bucket=f"bench-lake-{path}",
        )

    def worker(self, spec: paths.PathSpec, mode: str) -> tuple[list[str], dict[str, str]]:
        """A child's command and environment (the spec travels in the environment: no password in argv)."""
        return [sys.executable, paths.__file__, mode], clean_env(**spec.env())

    def run(self) -> None:
        a = self.args
        try:
            jobs = prepare(a, self.work)
            if "postgres" in self.paths:
                with connect(a, "postgres") as conn:
                    conn.execute(f"CREATE DATABASE \"{self.db}\" ENCODING 'UTF8' TEMPLATE template0")
            if any(p.endswith("-s3") for p in self.paths):
                self.s3 = MotoServer()
            changed = round(a.rows * a.updates) + round(a.rows * a.deletes)
            for path in self.paths:
                spec = self.spec(path)
                paths.prepare_target(spec)
                base = baseline_rss(sys.executable, paths.IMPORTS[spec.kind], clean_env())
                for step, rows in (("snapshot", a.rows), ("incremental", changed)):
                    self.measure(spec, step, rows, base, jobs)
            self.verify(jobs)
        finally:
            if self.s3 is not None:
                self.s3.stop()
            if "postgres" in self.paths and not a.keep:
                with connect(a, "postgres") as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            if a.keep:
                log(f"kept {self.work}" + (f" and database {self.db}" if "postgres" in self.paths else ""))
            else:
                remove(self.work)

    def measure(self, spec: paths.PathSpec, step: str, rows: int, base: float, jobs: dict[str, Any]) -> None:
        if spec.kind == "postgres":
            checkpoint(self.args)  # no run pays for an earlier run's dirty buffers
        before = paths.written_state(spec)
        log(f"{spec.path}: {step}")
        command, env = self.worker(spec, step)
        measured = run_measured(command, env=env).check(f"{spec.path} {step}")
        out = measured.last_json()
        written, size = paths.written_since(spec, before)
        inner = float(out["seconds"])
        self.results.append(
            [
                step, spec.path, rows, measured.seconds, inner, rows / inner, measured.peak_rss_mb,
                measured.peak_rss_mb - base, written / 1e6, size / 1e6,
            ]
        )  # fmt: skip
        log(
            f"{spec.path} {step}: apply {inner:.1f} s ({rows / inner:,.0f} rows/s), process {measured.seconds:.1f} s, "
            f"peak RSS {measured.peak_rss_mb:.0f} MB, {written / 1e6:.1f} MB written"
        )  # a failure in a later path still leaves this path's figures in the log
        seconds = out["result"]["seconds"]
        self.phases.append([step, spec.path, ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())])
        result = out["result"]
        expected = jobs[step]["at"] if step == "snapshot" else jobs[step]["until"]
        if paths.as_utc(result["watermark"]) != paths.as_utc(expected):
            sys.exit(f"{spec.path} {step}: watermark {result['watermark']}, expected {expected}")

    def verify(self, jobs: dict[str, Any]) -> None:
        rows = []
        for path in self.paths:
            command, env = self.worker(self.spec(path), "verify")
            out = run_measured(command, env=env).check(f"verify {path}")
            got = out.last_json()
            rows.append([path, got["rows"], got["key_sum"], got["updated_at_sum"], got["watermark"]])
        a = self.args
        print_table(
            ["step", "path", "rows", "process s", "apply s", "rows/s (apply)", "peak RSS MB", "peak - baseline MB",
             "MB written", "table MB after"],
            self.results,
            title=f"{a.namespace}.{a.table}: {a.rows:,} rows ({a.rows_per_part:,} per part), then {a.updates:.0%} "
            f"updates and {a.deletes:.0%} deletes, from the same gzip TSV parts "
            f"(snapshot {jobs['snapshot']['bytes'] / 1e6:.1f} MB, incremental {jobs['incremental']['bytes'] / 1e6:.1f}"
            " MB); process = the child process, start-up and imports included; apply = check_target + apply_*",
        )  # fmt: skip
        print_table(["step", "path", "phases (s)"], self.phases, title="Where the time goes (SyncResult.seconds)")
        same = len({tuple(r[1:4]) for r in rows}) == 1
        print_table(
            ["path", "rows", "sum(id)", "sum(updated_at s)", "watermark read from the table"],
            rows,
            title=f"Same rows on every path: {'yes' if same else 'NO'}",
        )
        print(
            "MB written: lake = new or changed files/objects (Iceberg's SQLite catalog included); postgres = WAL "
            "generated (server-wide), the table's own pages are written again at checkpoint. Load average "
            "(1/5/15 min) at the end: {:.2f} {:.2f} {:.2f} ({} cores)".format(*os.getloadavg(), os.cpu_count())
        )
        if not same:
            sys.exit("the paths hold different rows: the comparison is not valid")
        until = paths.as_utc(jobs["incremental"]["until"])
        if any(paths.as_utc(r[4]) != until for r in rows):
            sys.exit(f"a table's watermark is not the incremental's until {until}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the table (default 200,000)")
    parser.add_argument("--table", default="submissions")
    parser.add_argument("--namespace", default="canvas")
    parser.add_argument("--updates", type=float, default=0.10, help="fraction of rows updated before step 2")
    parser.add_argument("--deletes", type=float, default=0.01, help="fraction of rows deleted before step 2")
    parser.add_argument("--rows-per-part", type=int, default=100_000, help="emulator: maximum rows per part")
    parser.add_argument("--paths", nargs="+", choices=LOCAL_PATHS, default=list(LOCAL_PATHS))
    parser.add_argument(
        "--s3", action="store_true", help="also each lake path on S3 (delta-s3, iceberg-s3; moto's S3 server)"
    )
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--pg-password", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and the database")
    Bench(parser.parse_args()).run()


if __name__ == "__main__":
    main()
