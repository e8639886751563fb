"""``POST /dap/object/url`` and the pre-signed downloads standing in for S3 (dap-api.md sections 3.5 and 5)."""

from __future__ import annotations

import gzip
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import requests

from tests.emulator.conftest import Serve, Shared
from tests.emulator.dap_wire import DapApi


def complete_job(api: DapApi, table: str = "users", fmt: str = "tsv") -> dict:
    job = api.run_job("canvas", table, {"format": fmt})
    assert job["status"] == "complete"
    return job


def s3_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/xml")
    assert response.text.startswith("<?xml")
    assert f"<Code>{code}</Code>" in response.text


def test_batch_of_ids_in_one_call(shared: Shared) -> None:
    server, api = shared
    ids = [o["id"] for o in complete_job(api)["objects"] + complete_job(api, "accounts", "csv")["objects"]]
    assert len(ids) >= 4
    calls = server.emulator.stats.count("object_url")
    response = api.post("/dap/object/url", json=[{"id": i} for i in ids])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"urls"}
    assert set(body["urls"]) == set(ids)
    for entry in body["urls"].values():
        assert set(entry) == {"url"}
        assert entry["url"].startswith(server.url + "/")
    assert server.emulator.stats.count("object_url") == calls + 1


def test_unknown_object_is_404(shared: Shared) -> None:
    _server, api = shared
    known = complete_job(api)["objects"][0]["id"]
    response = api.post("/dap/object/url", json=[{"id": known}, {"id": "no-such-job/part-00000.tsv.gz"}])
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"type", "uuid", "message", "id", "kind"}
    assert (error["kind"], error["id"]) == ("object", "no-such-job/part-00000.tsv.gz")


def test_malformed_object_requests_are_400(shared: Shared) -> None:
    _server, api = shared
    for raw in ('{"id": "x"}', '[{"id": 1}]', '[{"id": "x", "extra": 1}]', "[{"):
        response = api.post("/dap/object/url", data=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, raw
        error = response.json()["error"]
        assert error["type"] == "ValidationError"
        assert set(error["location"]) == {"line", "column", "character"}


def test_presigned_download_needs_no_authorization(shared: Shared) -> None:
    server, api = shared
    job = complete_job(api)
    urls = api.object_urls(o["id"] for o in job["objects"])
    for url in urls.values():
        response = requests.get(url, timeout=5)  # no Authorization header at all
        assert response.status_code == 200
        assert gzip.decompress(response.content).startswith(b"meta.ts\t")
    assert "authorization" not in server.emulator.stats.recent[-1].headers


def test_url_expires_after_url_ttl(serve: Serve) -> None:
    _server, api = serve(url_ttl=1)
    job = complete_job(api)
    url = next(iter(api.object_urls([job["objects"][0]["id"]]).values()))
    assert requests.get(url, timeout=5).status_code == 200
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["1"]
    issued = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    time.sleep(max(0.0, issued + 2 - time.time()) + 0.05)  # past the last whole second of validity
    s3_error(requests.get(url, timeout=5), 403, "AccessDenied")
    # a fresh URL for the same object works again
    fresh = next(iter(api.object_urls([job["objects"][0]["id"]]).values()))
    assert requests.get(fresh, timeout=5).status_code == 200


def test_tampered_or_stripped_urls_are_403(shared: Shared) -> None:
    _server, api = shared
    job = complete_job(api)
    url = next(iter(api.object_urls([job["objects"][0]["id"]]).values()))
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def with_query(q: dict[str, str], path: str = parts.path) -> str:
        return urlunparse(parts._replace(query=urlencode(q), path=path))

    signature = query["X-Amz-Signature"]
    tampered = {**query, "X-Amz-Signature": ("0" if signature[0] != "0" else "1") + signature[1:]}
    s3_error(requests.get(with_query(tampered), timeout=5), 403, "SignatureDoesNotMatch")
    longer = {**query, "X-Amz-Expires": "999999"}
    s3_error(requests.get(with_query(longer), timeout=5), 403, "SignatureDoesNotMatch")
    other_object = job["objects"][1]["id"]
    s3_error(requests.get(with_query(query, "/files/" + other_object), timeout=5), 403, "SignatureDoesNotMatch")
    s3_error(requests.get(url.split("?")[0], timeout=5), 403, "AccessDenied")
