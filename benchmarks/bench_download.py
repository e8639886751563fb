"""Download speed and peak memory: ``InstructureHook.download_objects`` vs the official ``dap snapshot``.

Issue: "Peak memory of downloading a job far larger than 100 MB stays flat". For each size
(default: results of at least 100 MB and 300 MB of gzip bytes):

1. the emulator runs in its own process with enough rows of one table to reach that size;
2. one snapshot job is created with exactly the body the official CLI sends
   (``{"format": "<fmt>"}``, no mode) and waited for, so both clients get that job (DAP and
   the emulator de-duplicate identical queries) and only client-side work is timed;
3. our hook (``start_query`` + ``download_objects``, 4 parallel downloads) runs in a child
   process, then ``dap snapshot --format <fmt> --table <t>`` (which downloads 4 at a time too);
4. each child's peak RSS comes from ``wait4`` (``ru_maxrss``); a baseline process that only
   imports the same modules gives the fixed cost, so "peak - baseline" is what downloading
   costs. That figure must not grow with the job size.

Run: ``.venv/bin/python benchmarks/bench_download.py`` (``--mb 20 60`` for a quick run).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the benchmarks folder is not a package: found through sys.path
    EmulatorProcess,
    Measured,
    airflow_home,
    baseline_rss,
    clean_env,
    dap_python,
    human_bytes,
    log,
    print_table,
    remove,
    run_measured,
    temp_dir,
)

HOOK_IMPORTS = ("airflow_provider_instructure.hooks.instructure",)
DAP_IMPORTS = ("dap.__main__", "dap.api")
HEADERS = (
    "job", "cap", "client", "conns", "files", "MB", "seconds", "MB/s", "in-process s", "in-process MB/s",
    "peak RSS MB", "baseline MB", "peak - baseline MB",
)  # fmt: skip
#: Parallel downloads of the official CLI (``dap snapshot`` has no option for it).
DAP_CONCURRENCY = 4


def bytes_per_row(namespace: str, table: str, fmt: str, sample: int = 3000) -> float:
    """Compressed bytes per row of ``table`` in ``fmt``, from a small in-process sample."""
    from airflow_provider_instructure.emulator.dataset import Dataset
    from airflow_provider_instructure.emulator.encoders import Layout, write_text_part
    from airflow_provider_instructure.emulator.jobs import _records

    dataset = Dataset(rows={f"{namespace}.{table}": sample})
    tbl = dataset.table(namespace, table)
    _, states = tbl.snapshot(tbl.latest_ts)
    folder = temp_dir("bench-sample-")
    try:
        path = folder / f"sample.{fmt}.gz"
        write_text_part(path, fmt, Layout(tbl.schema, "expanded", False), _records(tbl, states))
        size = path.stat().st_size
        with gzip.open(path, "rb") as fh:
            fh.read()  # a valid part
        return size / sample
    finally:
        remove(folder)


def files_on_disk(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def worker(args: argparse.Namespace) -> None:
    """Child process: our hook joins the warmed job and downloads every part."""
    from airflow_provider_instructure.hooks.instructure import InstructureHook

    hook = InstructureHook()
    started = time.perf_counter()
    job = hook.start_query(args.table, args.namespace, format=args.format)
    if job["status"] != "complete":
        job = hook.wait_for_job(job["id"], poll_interval=1.0)
    files = hook.download_objects(job, args.worker, concurrency=args.concurrency[0], inspect=args.inspect[0] == "on")
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "job_id": job["id"],
                "seconds": seconds,
                "files": len(files),
                "bytes": sum(f["size"] for f in files),
                "rows": sum(f["rows"] or 0 for f in files),
            }
        )
    )


def run_size(args: argparse.Namespace, target_mb: float, per_row: float) -> list[list[object]]:
    rows = args.rows or math.ceil(target_mb * 1e6 / per_row * 1.03)
    name = f"{args.namespace}.{args.table}"
    log(f"{target_mb:g} MB target: {rows:,} rows of {name} as {args.format} (~{per_row:.0f} B/row)")
    out: list[list[object]] = []
    with EmulatorProcess({name: rows}, rows_per_part=args.rows_per_part) as emulator:
        clock = time.perf_counter()
        # Exactly what `dap snapshot --format <fmt>` sends, so the job is shared.
        job = emulator.query(args.namespace, args.table, {"format": args.format})
        size = emulator.object_sizes(job)
        log(
            f"job {job['id']}: {len(job['objects'])} part(s), {human_bytes(size)}, "
            f"generated in {time.perf_counter() - clock:.0f} s (not timed)"
        )
        ours_dir = temp_dir("bench-download-ours-")
        dap_dir = temp_dir("bench-download-dap-")
        try:
            env = clean_env(AIRFLOW_CONN_INSTRUCTURE_DEFAULT=emulator.connection_json())
            ours_base = baseline_rss(sys.executable, HOOK_IMPORTS, env)
            dap_base = baseline_rss(dap_python(), DAP_IMPORTS, clean_env())
            measured: list[tuple[float, str, int, Measured, float, int, int, float | str]] = []
            for cap in args.bandwidth:
                emulator.configure(download_bandwidth=cap)
                for repeat in range(args.repeat):
                    for inspect, conns in itertools.product(args.inspect, args.concurrency):
                        remove(ours_dir)
                        label = f"ours: download_objects, inspect={inspect == 'on'}"
                        log(f"cap {_cap(cap)}: {label}, {conns} connections (run {repeat + 1})")
                        ours = run_measured(
                            [
                                sys.executable, __file__, "--worker", str(ours_dir), "--table", args.table,
                                "--namespace", args.namespace, "--format", args.format,
                                "--concurrency", str(conns), "--inspect", inspect,
                            ],
                            env=env,
                        ).check("our download")  # fmt: skip
                        result = ours.last_json()
                        if result["job_id"] != job["id"]:
                            sys.exit(f"our hook got job {result['job_id']}, not the warmed job {job['id']}")
                        n, b = files_on_disk(ours_dir)
                        measured.append((cap, label, conns, ours, ours_base, n, b, result["seconds"]))
                    if args.no_dap:
                        continue
                    remove(dap_dir)
                    dap_dir.mkdir(parents=True)
                    log(f"cap {_cap(cap)}: official, dap snapshot (run {repeat + 1})")
                    cli = run_measured(
                        emulator.dap_command(
                            "snapshot", "--namespace", args.namespace, "--table", args.table,
                            "--format", args.format, "--output-directory", str(dap_dir),
                        ),
                        env=clean_env(),
                        cwd=dap_dir,
                    ).check("dap snapshot")  # fmt: skip
                    n2, b2 = files_on_disk(dap_dir)
                    measured.append((cap, "official: dap snapshot", DAP_CONCURRENCY, cli, dap_base, n2, b2, "n/a"))
            jobs = emulator.stats()["jobs_created"]
            if jobs != 1:
                sys.exit(f"the emulator created {jobs} jobs: the clients did not share the warmed job")
        finally:
            for folder in (ours_dir, dap_dir):
                remove(folder)
    for cap, label, conns, m, base, n, b, inner in measured:
        if b != size:
            sys.exit(f"{label} wrote {b} bytes, the job has {size}")
        out.append(
            [
                f"{size / 1e6:.0f} MB",
                _cap(cap),
                label,
                conns,
                n,
                round(b / 1e6, 1),
                m.seconds,
                b / 1e6 / m.seconds,
                inner,
                b / 1e6 / inner if isinstance(inner, float) else "n/a",
                m.peak_rss_mb,
                base,
                m.peak_rss_mb - base,
            ]
        )
    return out


def _cap(bandwidth: float) -> str:
    return "none" if not bandwidth else f"{bandwidth / 1e6:g} MB/s/conn"


def ratios(rows: list[list[object]]) -> list[str]:
    """Per job and cap: each of our runs' in-process MB/s over the official CLI's whole-process MB/s."""
    lines = []
    for job, cap in dict.fromkeys((r[0], r[1]) for r in rows):
        same = [r for r in rows if r[0] == job and r[1] == cap]
        official = [float(r[7]) for r in same if str(r[2]).startswith("official")]  # type: ignore[arg-type]
        if not official:
            continue
        best = max(official)
        for r in same:
            if str(r[2]).startswith("ours"):
                lines.append(
                    f"{job}, cap {cap}: {str(r[2])[6:]}, {r[3]} connections, in-process {float(r[9]):.1f} MB/s = "  # type: ignore[arg-type]
                    f"{float(r[9]) / best:.2f}x the official CLI's whole-process {best:.1f} MB/s (4 connections)"  # type: ignore[arg-type]
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[100.0, 300.0], help="result sizes (gzip MB)")
    parser.add_argument("--rows", type=int, help="rows per run instead of sizing by --mb (one size)")
    parser.add_argument("--table", default="submissions")
    parser.add_argument("--namespace", default="canvas")
    parser.add_argument("--format", default="jsonl", choices=("jsonl", "tsv", "csv"))
    parser.add_argument("--rows-per-part", type=int, default=100_000, help="emulator: maximum rows per part")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[4], help="our parallel downloads, one run each (dap uses 4)"
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        nargs="+",
        default=[0.0],
        help="emulator cap per download connection in bytes/s, one run each (0: none), e.g. 0 5e6",
    )
    parser.add_argument(
        "--inspect",
        nargs="+",
        choices=("on", "off"),
        default=["on", "off"],
        help="ours with inspect=True (gzip CRC checked and rows counted: CD2DownloadOperator) and/or "
        "inspect=False (Content-Length only, like dap: what the sync uses); default both",
    )
    parser.add_argument("--no-dap", action="store_true", help="skip the official CLI")
    parser.add_argument("--repeat", type=int, default=1, help="runs per client and size")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    os.environ.setdefault("DAP_TRACKING", "false")
    os.environ["AIRFLOW_HOME"] = str(airflow_home())
    load_before = os.getloadavg()
    per_row = bytes_per_row(args.namespace, args.table, args.format)
    sizes = [args.mb[0]] if args.rows else args.mb
    rows: list[list[object]] = []
    for target in sizes:
        rows += run_size(args, target, per_row)
    print_table(
        HEADERS,
        rows,
        title=f"Download of one {args.format} snapshot of {args.namespace}.{args.table}. seconds and MB/s: the "
        "whole client process (start-up included); in-process s: start_query + download_objects inside it; "
        "peak RSS from wait4; baseline: a process that only imports the same modules",
    )
    for line in ratios(rows):
        print(line)
    print(
        "load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f} ({} cores)".format(
            *load_before, *os.getloadavg(), os.cpu_count()
        )
    )
    growth = {}
    for key in {(r[1], r[2], r[3]) for r in rows}:
        mine = [r for r in rows if (r[1], r[2], r[3]) == key]
        if len({r[0] for r in mine}) >= 2:
            growth[key] = (mine[-1][12] - mine[0][12], mine[0][0], mine[-1][0])  # type: ignore[operator]
    for (cap, label, conns), (delta, small, big) in sorted(growth.items(), key=str):
        print(
            f"{label} ({conns} connections, cap {cap}): peak - baseline grows by {delta:+.1f} MB "
            f"from the {small} job to the {big} job"
        )


if __name__ == "__main__":
    main()
