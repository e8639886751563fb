"""``download_bandwidth``: each download connection is paced like one S3 object stream.

Timing-tolerant: the cap gives a hard lower bound on a transfer's duration (the sender
sleeps until the bytes sent are due), and the upper bounds are loose multiples of it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.emulator.conftest import Serve


def _timed_get(url: str) -> tuple[float, bytes]:
    started = time.monotonic()
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    return time.monotonic() - started, response.content


def test_each_connection_is_paced_to_the_configured_rate(serve: Serve) -> None:
    server, api = serve(rows={"canvas.submissions": 400}, parts=2)
    job = api.run_job("canvas", "submissions", {"format": "jsonl"})
    ids = [o["id"] for o in job["objects"]]
    urls = api.object_urls(ids)
    free = [_timed_get(urls[i]) for i in ids]
    size = min(len(data) for _, data in free)
    assert size > 20_000, size  # big enough for the pacing to dominate the timings below

    # One transfer of the smaller part should take 0.8 s at this rate.
    rate = size / 0.8
    response = api.get("/_emulator/config", auth=False)
    assert response.json()["download_bandwidth"] == 0
    patched = requests.patch(f"{server.url}/_emulator/config", json={"download_bandwidth": rate}, timeout=10)
    assert patched.status_code == 200 and patched.json()["download_bandwidth"] == rate
    urls = api.object_urls(ids)

    seconds, data = _timed_get(urls[ids[0]])
    assert data == free[0][1]  # same bytes, only slower
    expected = len(data) / rate
    assert expected * 0.97 <= seconds < expected * 4 + 1, (seconds, expected)

    # The cap is per connection: two at once each get the full rate (not half of it each).
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        both = list(pool.map(_timed_get, [urls[i] for i in ids]))
        wall = time.monotonic() - started
    slowest = max(len(d) for _, d in both) / rate
    assert [d for _, d in both] == [d for _, d in free]
    assert slowest * 0.97 <= wall < slowest * 1.8 + 0.5, (wall, slowest)

    # 0 switches the cap off again.
    requests.patch(f"{server.url}/_emulator/config", json={"download_bandwidth": 0}, timeout=10)
    seconds, _ = _timed_get(api.object_urls(ids[:1])[ids[0]])
    assert seconds < expected / 2, seconds


def test_negative_bandwidth_is_refused(serve: Serve) -> None:
    server, _api = serve()
    response = requests.patch(f"{server.url}/_emulator/config", json={"download_bandwidth": -1}, timeout=10)
    assert response.status_code == 400 and "download_bandwidth" in response.json()["detail"]


def test_cli_flag_sets_the_cap() -> None:
    # --help lists it; an invalid value is refused by argparse before anything is served.
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_instructure.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--download-bandwidth" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_provider_instructure.emulator", "--download-bandwidth", "fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--download-bandwidth" in bad.stderr
