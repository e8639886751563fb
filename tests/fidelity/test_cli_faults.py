"""How the official client copes with the emulator's injected faults (dap-api.md sections 5 and 6.2).

Transient faults must be absorbed by the client's own retries (so their wire shapes are right);
the ones it does not retry must fail the command visibly.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_provider_instructure.emulator.server import EmulatorServer
from tests.fidelity.conftest import DapCli

pytestmark = pytest.mark.fidelity


@pytest.fixture
def cli(dap_binary: Path, start_server: Callable[..., EmulatorServer], tmp_path: Path) -> DapCli:
    return DapCli(dap_binary, start_server(rows=10), tmp_path)


def snapshot(cli: DapCli, check: bool = True) -> tuple[int, str, list[Path]]:
    out = cli.workdir / "out"
    run = cli.run(
        "snapshot", "--namespace", "canvas", "--table", "users", "--format", "tsv", "--output-directory", str(out),
        check=check,
    )  # fmt: skip
    return run.returncode, run.output, sorted(out.glob("job_*/*"))


def test_retried_faults_are_absorbed(cli: DapCli) -> None:
    emulator = cli.server.emulator
    emulator.faults.inject("create_job", "429", retry_after=1)
    emulator.faults.inject("get_job", "503")
    emulator.faults.inject("object_url", "500")
    emulator.faults.inject("object_url", "504")
    emulator.faults.inject("download", "502_html")
    emulator.faults.inject("download", "drop")
    _, _, files = snapshot(cli)
    assert len(files) == emulator.config.parts
    rows = sum(len(gzip.decompress(f.read_bytes()).decode().splitlines()) - 1 for f in files)
    assert rows == len(list(emulator.expected_rows("canvas", "users")))
    assert emulator.faults.pending() == {}
    calls = emulator.stats.snapshot()
    assert calls["create_job"] == 2 and calls["get_job"] == 2
    assert calls["object_url"] == emulator.config.parts + 2 and calls["download"] == emulator.config.parts + 2


def test_expired_url_fails_the_command(cli: DapCli) -> None:
    cli.server.emulator.faults.inject("object_url", "expired_url")
    code, output, _ = snapshot(cli, check=False)
    assert code != 0
    assert "403" in output


def test_bad_credentials_fail_the_command(cli: DapCli) -> None:
    cli.server.emulator.config.clients = {cli.server.client_id: "another-secret"}
    run = cli.run("list", "--namespace", "canvas", check=False)
    assert run.returncode != 0
    assert "credentials" in run.output.lower()
    assert cli.server.emulator.stats.count("login") == 1  # the client never retries a login


def test_short_tokens_are_refreshed_before_each_call(cli: DapCli) -> None:
    """Tokens that expire within the client's 5-minute margin make it log in again before every call."""
    cli.server.emulator.config.token_lifetime = 60
    snapshot(cli)
    calls = cli.server.emulator.stats.snapshot()
    dap_calls = calls["create_job"] + calls["get_job"] + calls["object_url"]
    assert calls["login"] == dap_calls
