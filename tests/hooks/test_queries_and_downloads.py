"""Hook queries, jobs and downloads against the emulator over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator import Emulator, EmulatorConfig
from airflow_provider_instructure.emulator.server import EmulatorServer
from airflow_provider_instructure.exceptions import (
    DapDownloadError,
    DapJobFailed,
    DapJobTimeout,
    DapNotFoundError,
    DapOutOfRangeError,
    DapSnapshotRequiredError,
    InstructureConfigError,
)
from airflow_provider_instructure.hooks import downloads
from airflow_provider_instructure.hooks.dap_protocol import JobStatus
from airflow_provider_instructure.hooks.instructure import InstructureHook
from tests.dap_files import read_records
from tests.emulator.dap_wire import normalize

FAST = {"retry_delay": 0.01, "retry_max_delay": 0.05}
TABLES = [("canvas", "users"), ("canvas", "courses"), ("canvas", "assignment_groups"), ("canvas_logs", "web_logs")]


@pytest.fixture
def server(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """A private emulator (its change log is this test's own) with 3 parts per result."""
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(parts=3), rows=25))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    return srv


def run(hook: InstructureHook, table: str, namespace: str, **query) -> dict:
    job = hook.start_query(table, namespace, **query)
    return hook.wait_for_job(job["id"], poll_interval=0.05, timeout=30)


def download(hook: InstructureHook, job: dict, target: Path, **kwargs) -> list[dict]:
    files = hook.download_objects(job, target, **kwargs)
    assert len(files) == len(job["objects"]) >= 1
    return files


def as_rows(records: list[dict]) -> dict:
    return {tuple(r["key"].values()): {**r["key"], **(r["value"] or {})} for r in records}


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
@pytest.mark.parametrize(("namespace", "table"), TABLES)
def test_snapshot_downloads_every_row(
    server: EmulatorServer, tmp_path: Path, fmt: str, namespace: str, table: str
) -> None:
    hook = InstructureHook()
    job = run(hook, table, namespace, format=fmt)
    assert len(job["objects"]) == 3
    files = download(hook, job, tmp_path)
    schema = hook.get_table_schema(table, namespace)
    records = read_records([Path(f["path"]) for f in files], fmt, schema)
    expected = [normalize(e) for e in server.emulator.expected_rows(namespace, table)]
    assert len(records) == len(expected)
    assert as_rows(records) == {tuple([e[next(iter(e))]]): e for e in expected}
    if fmt in ("tsv", "jsonl", "parquet"):
        assert sum(f["rows"] for f in files) == len(expected)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
def test_incremental_has_updates_and_hard_deletes(server: EmulatorServer, tmp_path: Path, fmt: str) -> None:
    hook = InstructureHook()
    snapshot = run(hook, "users", "canvas", format=fmt)
    before = {r["id"]: normalize(r) for r in server.emulator.expected_rows("canvas", "users")}
    server.emulator.advance(["canvas.users"], updates=4, inserts=2, deletes=3)
    incremental = run(hook, "users", "canvas", format=fmt, since=snapshot["at"])
    assert incremental["since"] == snapshot["at"] and incremental["until"] > snapshot["at"]
    files = download(hook, incremental, tmp_path, decompress=fmt != "parquet")
    records = read_records([Path(f["path"]) for f in files], fmt, hook.get_table_schema("users"))
    after = {r["id"]: normalize(r) for r in server.emulator.expected_rows("canvas", "users")}
    deleted = set(before) - set(after)
    changed = {k for k, v in after.items() if before.get(k) != v}
    assert len(deleted) == 3 and len(changed) == 6
    assert {r["key"]["id"] for r in records if r["action"] == "D"} == deleted
    assert all(r["value"] is None for r in records if r["action"] == "D")
    upserts = {r["key"]["id"]: {**r["key"], **r["value"]} for r in records if r["action"] == "U"}
    assert upserts == {k: after[k] for k in changed}
    since = incremental["since"].replace("Z", "+00:00")
    assert all(r["ts"].isoformat() > since for r in records)


def test_validation_happens_before_any_call(server: EmulatorServer) -> None:
    hook = InstructureHook()
    cases = [
        ({"format": "xml"}, "format 'xml' is not supported"),
        ({"mode": "compact"}, "mode 'compact' is not supported"),
        ({"since": "2024-01-01T00:00:00"}, "has no time zone"),
        ({"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "must be earlier than until"),
        ({"until": "2024-01-01T00:00:00Z"}, "until was given without since"),
        ({"since": "yesterday"}, "not an ISO-8601 timestamp"),
    ]
    for query, message in cases:
        with pytest.raises(InstructureConfigError, match=message):
            hook.start_query("users", **query)
    assert server.emulator.stats.count("login") == 0


def test_out_of_range_and_snapshot_required(server: EmulatorServer) -> None:
    hook = InstructureHook(**FAST)
    snapshot = run(hook, "users", "canvas", format="tsv")
    server.emulator.reload("canvas.users")
    with pytest.raises(DapSnapshotRequiredError) as info:
        hook.start_query("users", since=snapshot["at"])
    assert info.value.allowed_since and info.value.error_uuid
    with pytest.raises(DapOutOfRangeError):
        hook.start_query("users", since="2999-01-01T00:00:00Z")
    assert server.emulator.stats.count("create_job") == 3  # not retried


def test_failed_job_names_job_and_uuid(server: EmulatorServer) -> None:
    server.emulator.faults.inject("create_job", "fail_job")
    hook = InstructureHook()
    job = hook.start_query("users")
    with pytest.raises(DapJobFailed) as info:
        hook.wait_for_job(job["id"], poll_interval=0.05)
    assert info.value.job_id == job["id"] and info.value.error_uuid
    assert job["id"] in str(info.value) and info.value.error_uuid in str(info.value)


def test_wait_for_job_times_out(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_running_seconds=60), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    hook = InstructureHook()
    job = hook.start_query("users")
    with pytest.raises(DapJobTimeout, match="still running"):
        hook.wait_for_job(job["id"], poll_interval=0.1, timeout=0.5)


def test_job_status_enum() -> None:
    assert [s.is_terminal for s in JobStatus] == [False, False, True, True]


def test_object_urls_are_batched(server: EmulatorServer, tmp_path: Path) -> None:
    server.emulator.config.parts = 7
    hook = InstructureHook()
    job = run(hook, "users", "canvas", format="jsonl")
    hook.url_batch = 3
    urls = hook.get_object_urls([o["id"] for o in job["objects"]])
    assert len(urls) == 7
    assert server.emulator.stats.count("object_url") == 3  # 3 + 3 + 1
    server.emulator.stats.reset()
    hook.url_batch = 100
    download(hook, job, tmp_path, concurrency=4)
    assert server.emulator.stats.count("object_url") == 1
    assert server.emulator.stats.count("download") == 7


def test_urls_expiring_during_a_long_download_are_refetched(
    dap_emulator_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(parts=6, url_ttl=1), rows=30))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="tsv")
    slow = downloads.ObjectDownloader._transfer

    def slow_transfer(self, *args, **kwargs):
        time.sleep(0.4)  # the whole download (6 x 0.4 s) outlives the 1 s URLs
        return slow(self, *args, **kwargs)

    monkeypatch.setattr(downloads.ObjectDownloader, "_transfer", slow_transfer)
    files = download(hook, job, tmp_path, concurrency=1)
    refused = [c for c in srv.emulator.stats.recent if c.route == "download" and c.status == 403]
    assert refused, "the test should have outlived the URL lifetime"
    assert srv.emulator.stats.count("object_url") >= 2
    records = read_records([Path(f["path"]) for f in files], "tsv", hook.get_table_schema("users"))
    assert len(records) == 30


def test_expired_url_is_refetched(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="jsonl")
    server.emulator.faults.inject("object_url", "expired_url")
    files = download(hook, job, tmp_path)
    assert sum(f["rows"] for f in files) == 25
    assert server.emulator.stats.count("object_url") >= 2


def test_truncated_download_is_retried(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="tsv")
    server.emulator.faults.inject("download", "truncate", count=2)
    files = download(hook, job, tmp_path, concurrency=1)
    assert server.emulator.stats.count("download") == 3 + 2
    records = read_records([Path(f["path"]) for f in files], "tsv", hook.get_table_schema("users"))
    assert len(records) == 25


def test_interrupted_download_leaves_no_partial_file(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook(retry_limit=1, **FAST)
    job = run(hook, "users", "canvas", format="jsonl")
    server.emulator.faults.inject("download", "truncate", count=10)
    with pytest.raises((DapDownloadError, OSError)):
        hook.download_objects(job, tmp_path, concurrency=1)
    assert list(tmp_path.iterdir()) == []  # neither a final name nor a leftover .part


@pytest.mark.parametrize("kind", ["500", "drop", "429"])
def test_download_server_errors_are_retried(server: EmulatorServer, tmp_path: Path, kind: str) -> None:
    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="jsonl")
    server.emulator.faults.inject("download", kind, count=1, retry_after=1)
    files = download(hook, job, tmp_path)
    assert sum(f["rows"] for f in files) == 25


def test_downloads_send_no_authorization(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook()
    download(hook, run(hook, "users", "canvas"), tmp_path)
    fetched = [c for c in server.emulator.stats.recent if c.route == "download"]
    assert fetched and all("authorization" not in c.headers for c in fetched)


def test_decompress_writes_plain_files(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook()
    files = download(hook, run(hook, "users", "canvas", format="tsv"), tmp_path, decompress=True)
    for f in files:
        assert f["path"].endswith(".tsv") and Path(f["path"]).read_text(encoding="utf-8").startswith("meta.ts\t")
    with pytest.raises(InstructureConfigError, match="parquet"):
        hook.download_objects(run(hook, "users", "canvas", format="parquet"), tmp_path / "p", decompress=True)


def test_download_to_object_storage_path(server: EmulatorServer, tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    hook = InstructureHook()
    target = ObjectStoragePath(f"file://{tmp_path}/lake/users")
    files = download(hook, run(hook, "users", "canvas", format="jsonl"), target)
    assert all(f["path"].startswith("file://") for f in files)
    on_disk = sorted(p.name for p in (tmp_path / "lake" / "users").iterdir())
    assert on_disk == sorted(Path(f["path"].removeprefix("file://")).name for f in files)


def test_reused_job_about_to_expire_is_requeried(dap_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = dap_emulator_factory(emulator=Emulator(EmulatorConfig(job_ttl=4, post_wait_seconds=2), rows=5))
    monkeypatch.setenv("AIRFLOW_CONN_INSTRUCTURE_DEFAULT", srv.connection_json())
    hook = InstructureHook()
    hook.reuse_expiry_margin = 2.5  # expires_at has whole seconds: a new job has 3-4 s left
    first = hook.start_query("users")
    time.sleep(2)  # the identical query now returns the same job, expiring within the margin
    second = hook.start_query("users")
    assert second["id"] != first["id"]
    assert srv.emulator.jobs.created_count == 2


def test_expired_job_is_404(server: EmulatorServer) -> None:
    server.emulator.config.job_ttl = 0.5
    hook = InstructureHook()
    job = hook.start_query("users")
    time.sleep(0.7)
    with pytest.raises(DapNotFoundError):
        hook.get_job(job["id"])
    with pytest.raises(InstructureConfigError):
        hook.get_job("../etc/passwd")


def test_inspect_off_keeps_files_compressed_and_skips_counting(server: EmulatorServer, tmp_path: Path) -> None:
    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="tsv")
    files = hook.download_objects(job, tmp_path, inspect=False)
    assert all(f["rows"] is None and f["path"].endswith(".tsv.gz") for f in files)
    records = read_records([Path(f["path"]) for f in files], "tsv", hook.get_table_schema("users"))
    assert len(records) == 25
    server.emulator.faults.inject("download", "truncate", count=1)  # Content-Length still catches it
    again = hook.download_objects(job, tmp_path / "again", inspect=False)
    assert len(read_records([Path(f["path"]) for f in again], "tsv", hook.get_table_schema("users"))) == 25


def test_unreachable_file_server_error_hides_the_url_signature(
    server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed: connection refused
    hook = InstructureHook(retry_limit=2, **FAST)
    job = run(hook, "users", "canvas", format="jsonl")
    signed = "X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef0123456789"
    monkeypatch.setattr(
        hook, "get_object_urls", lambda ids: {i: f"http://127.0.0.1:{port}/files/{i}?{signed}" for i in ids}
    )
    with pytest.raises(DapDownloadError) as info:
        hook.download_objects(job, tmp_path)
    assert "deadbeef0123456789" not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    assert "X-Amz-Signature=***" in str(info.value)


def test_only_the_secret_part_of_a_presigned_url_is_masked() -> None:
    """Whole URLs in Airflow's masker made masking quadratic in the parts a process downloads."""
    from airflow_provider_instructure.hooks.instructure_jobs import url_secrets

    url = (
        "https://bucket.s3.amazonaws.com/part-0.tsv.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20261130&X-Amz-Date=20261130T000000Z&X-Amz-Expires=900"
        "&X-Amz-Security-Token=tok%2Ben%3D&X-Amz-Signature=0123abcd"
    )
    assert set(url_secrets(url)) == {"AKIA%2F20261130", "AKIA/20261130", "tok%2Ben%3D", "tok+en=", "0123abcd"}
    assert url_secrets("https://files.example/x?token=t1") == ["token=t1"]  # unknown form: the whole query


def test_presigned_url_signatures_are_masked_in_logs(server: EmulatorServer) -> None:
    from urllib.parse import parse_qs, urlsplit

    from airflow.sdk.log import redact

    hook = InstructureHook(**FAST)
    job = run(hook, "users", "canvas", format="tsv")
    for url in hook.get_object_urls([o["id"] for o in job["objects"]]).values():
        signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
        shown = redact(f"GET {url}")
        assert signature not in shown and "X-Amz-Signature=***" in shown
