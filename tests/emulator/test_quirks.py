"""Value quirks: off by default, switchable per emulator (Python and ``/_emulator/quirks``),
deterministic, visible in the files and in the ground truth alike."""

from __future__ import annotations

import gzip

import requests

from airflow_provider_instructure.emulator.config import EmulatorConfig
from airflow_provider_instructure.emulator.quirks import AFTER_9999, BEFORE_0001, PLACEHOLDER, QUIRKS
from tests.emulator.conftest import Serve


def _tsv_cells(api, table: str, body: dict) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    job = api.run_job("canvas", table, body)
    rows = []
    for data in api.download_objects(job):
        lines = gzip.decompress(data).decode().split("\n")
        header = lines[0].split("\t")
        rows += [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:] if line]
    return rows


def test_quirks_are_off_by_default_and_validated() -> None:
    config = EmulatorConfig()
    assert config.quirks == {}
    for bad in ({"no_such_quirk": 0.1}, {"empty_typed": 2}):
        try:
            config.update({"quirks": bad})
        except ValueError as exc:
            assert "quirk" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_every_quirk_shows_in_the_files_and_in_the_ground_truth(serve: Serve) -> None:
    server, api = serve(rows=30, seed=4)
    clean = _tsv_cells(api, "courses", {"format": "tsv", "mode": "condensed"})
    raw_values = {v for row in clean for k, v in row.items() if k.startswith("value.")}
    assert not raw_values & {AFTER_9999, BEFORE_0001}
    response = requests.post(
        f"{server.url}/_emulator/quirks", json=dict.fromkeys(QUIRKS, 0.3) | {"delete_empty_fields": 0.7}, timeout=5
    )
    assert response.status_code == 200 and set(response.json()["quirks"]) == set(QUIRKS)
    assert requests.post(f"{server.url}/_emulator/quirks", json={"nope": 1}, timeout=5).status_code == 400
    server.emulator.advance(["canvas.courses"], updates=3, inserts=2, deletes=15)
    rows = _tsv_cells(api, "courses", {"format": "tsv", "mode": "condensed"})
    values = [v for row in rows for k, v in row.items() if k.startswith("value.")]
    for quirk_value in (AFTER_9999, BEFORE_0001, PLACEHOLDER, ""):
        assert quirk_value in values, quirk_value
    truth = list(server.emulator.expected_rows("canvas", "courses"))
    by_id = {str(r["id"]): r for r in truth}
    for row in rows:
        for label, raw in row.items():
            name = label.split(".", 1)[1]
            if raw in (AFTER_9999, BEFORE_0001, PLACEHOLDER) or (raw == "" and name in ("start_at", "account_id")):
                assert by_id[row["key.id"]][name] == raw, (row["key.id"], name)
    since = server.emulator.dataset.table("canvas", "courses").base_ts.isoformat()
    changes = _tsv_cells(api, "courses", {"format": "tsv", "mode": "condensed", "since": since})
    deletes = [r for r in changes if r["meta.action"] == "D"]
    assert any(r["key.id"] == "" for r in deletes) and any(r["key.id"] and r["value.name"] == "" for r in deletes)
    # Deterministic: the same job again gives the same cells; switched off, they are gone.
    assert _tsv_cells(api, "courses", {"format": "tsv", "mode": "condensed", "since": since}) == changes
    requests.post(f"{server.url}/_emulator/quirks", json={}, timeout=5)
    assert server.emulator.config.quirks == {}
