"""``python -m airflow_provider_instructure.emulator``: serve a local DAP emulator."""

from __future__ import annotations

import argparse
import signal
import sys

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.core import Emulator
from airflow_provider_instructure.emulator.dataset import CATALOGS, EXTRA_TABLE_ROWS
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.timestamps import parse_timestamp


def _rows(values: list[str]) -> int | dict[str, int]:
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    out: dict[str, int] = {}
    for item in values:
        name, _, count = item.partition("=")
        if not count:
            raise argparse.ArgumentTypeError(f"--rows expects N or TABLE=N, got {item!r}")
        out[name] = int(count)
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_instructure.emulator",
        description="Serve a local Instructure DAP (Canvas Data 2) emulator.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=["200"],
        help="rows per table: N, or TABLE=N pairs (e.g. canvas.users=1000000 *=100)",
    )
    parser.add_argument(
        "--catalog",
        choices=CATALOGS,
        default="full",
        help="tables to serve: full (every exposed DAP table, default) or core (the original 15)",
    )
    parser.add_argument(
        "--extra-rows",
        type=int,
        default=EXTRA_TABLE_ROWS,
        help=f"rows of each table outside the core 15 unless --rows names it (default {EXTRA_TABLE_ROWS}; "
        "-1: --rows applies to all tables)",
    )
    parser.add_argument("--clock-start", help="commit time of the initial rows (RFC 3339); default two days ago")
    parser.add_argument("--token-lifetime", type=float, default=3600.0, help="JWT lifetime in seconds")
    parser.add_argument(
        "--job-seconds",
        type=float,
        default=1.0,
        help="seconds a job spends waiting, and as many again running (complete after twice this)",
    )
    parser.add_argument("--parts", type=int, default=2, help="minimum gzip parts per result")
    parser.add_argument("--rows-per-part", type=int, default=100_000, help="maximum rows per part")
    parser.add_argument(
        "--download-bandwidth",
        type=float,
        default=0.0,
        metavar="BYTES_PER_S",
        help="cap each download connection at this many bytes/s, like one S3 object stream (0: unlimited)",
    )
    parser.add_argument("--rate-limits", action="store_true", help="enforce the documented per-minute limits")
    parser.add_argument(
        "--quirks",
        nargs="*",
        default=[],
        metavar="QUIRK=RATE",
        help="value quirks of real DAP results, e.g. empty_typed=0.1 timestamp_after_9999=0.05 (README)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    config = EmulatorConfig(
        token_lifetime=args.token_lifetime,
        job_waiting_seconds=args.job_seconds,
        job_running_seconds=args.job_seconds,
        parts=args.parts,
        rows_per_part=args.rows_per_part,
        download_bandwidth=args.download_bandwidth,
    )
    if args.rate_limits:
        config.enable_rate_limits()
    try:
        config.update({"quirks": {name: float(rate) for name, _, rate in (q.partition("=") for q in args.quirks)}})
    except ValueError as exc:
        parser.error(f"--quirks: {exc}")
    try:
        clock_start = parse_timestamp(args.clock_start) if args.clock_start else None
    except ValueError as exc:
        parser.error(f"--clock-start: {exc}")
    emulator = Emulator(
        config,
        seed=args.seed,
        rows=_rows(args.rows),
        clock_start=clock_start,
        catalog=args.catalog,
        extra_rows=None if args.extra_rows < 0 else args.extra_rows,
    )
    server = EmulatorServer(emulator, host=args.host, port=args.port, log_level=args.log_level)
    print(f"DAP emulator listening on {server.url}", flush=True)
    print(f"  ClientID: {server.client_id}", flush=True)
    print(f"  Secret:   {server.client_secret}", flush=True)
    print(f"  Control:  {server.url}/_emulator/stats (see README: 'The DAP emulator')", flush=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that an exception so the
    # result files are removed on `kill` as they are on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
