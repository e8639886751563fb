"""Storage for the lake tests: a local directory, and S3 served by moto over HTTP.

* ``s3_server``: one moto S3 server per session (a child process) on a free port of
  127.0.0.1; yields its endpoint URL. The libraries under test (delta-rs' Rust object_store, pyiceberg's
  FileIO) talk to it over real HTTP, so request signing, conditional puts and listing are
  exercised, not mocked in-process.
* ``s3_location``: a fresh bucket per test, as a :class:`StorageLocation`
  ``s3://<bucket>/lake`` with the endpoint, test keys, ``allow_http`` and the region.
* ``local_location``: ``<tmp_path>/lake``.
* ``s3_client``: boto3 client on the server (to look at objects from outside).
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_instructure.replication.lake.storage import StorageLocation

S3_REGION = "us-east-1"
S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}
_buckets = itertools.count(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 API on 127.0.0.1 in a child process (session scope); yields the endpoint URL.

    Not ``ThreadedMotoServer``: deltalake's writer holds the GIL while it waits on its HTTP
    requests, so a server on a thread of the same interpreter never answers (measured: the
    first ``write_deltalake`` hangs after reading ``_last_checkpoint``).
    """
    port = _free_port()
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto S3 server did not start on {url} (exit code {proc.poll()})")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    """A boto3 S3 client on the moto server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEYS["aws_access_key_id"],
        aws_secret_access_key=S3_KEYS["aws_secret_access_key"],
    )


def make_bucket(s3_client: Any) -> str:
    """A new, empty bucket with a unique name."""
    name = f"lake-{secrets.token_hex(3)}-{next(_buckets)}"
    s3_client.create_bucket(Bucket=name)
    return name


def s3_location_for(s3_server: str, bucket: str, prefix: str = "lake") -> StorageLocation:
    """``s3://<bucket>/<prefix>`` on the moto server, with test credentials."""
    return StorageLocation(
        f"s3://{bucket}/{prefix}",
        {**S3_KEYS, "endpoint_url": s3_server, "allow_http": "true", "region": S3_REGION},
    )


@pytest.fixture
def s3_location(s3_server: str, s3_client: Any) -> StorageLocation:
    """A fresh bucket on the moto server, as ``s3://<bucket>/lake``."""
    return s3_location_for(s3_server, make_bucket(s3_client))


@pytest.fixture
def local_location(tmp_path: Path) -> StorageLocation:
    """``<tmp_path>/lake`` (not created: the destination creates what it needs)."""
    return StorageLocation(str(tmp_path / "lake"))
