"""List tables, table schemas and 404s (dap-api.md sections 3.1, 3.2, 6.1 and 8)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.emulator.conftest import Shared

NOT_FOUND_KEYS = {"type", "uuid", "message", "id", "kind"}

#: Keywords the official client's JSON-Schema model accepts (dap-api.md section 8.1).
ALLOWED_KEYWORDS = {
    "title", "description", "type", "format", "const", "default", "examples",
    "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength",
    "items", "properties", "additionalProperties", "required", "$ref", "oneOf",
}  # fmt: skip
TOP_LEVEL_KEYWORDS = ALLOWED_KEYWORDS | {"$schema", "definitions"}


def assert_not_found(response: requests.Response, kind: str, ident: str) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == NOT_FOUND_KEYS, body
    assert body["error"]["kind"] == kind
    assert body["error"]["id"] == ident
    uuid.UUID(body["error"]["uuid"])


def namespaces(shared: Shared) -> list[str]:
    return shared[0].emulator.dataset.namespaces()


def test_list_tables_of_every_namespace(shared: Shared) -> None:
    server, api = shared
    assert set(namespaces(shared)) == {"canvas", "canvas_logs"}
    for namespace in namespaces(shared):
        response = api.get(f"/dap/query/{namespace}/table")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"tables"}
        assert body["tables"] == sorted(server.emulator.dataset.tables[namespace])
        assert all(isinstance(t, str) for t in body["tables"])
    assert "web_logs" in api.get("/dap/query/canvas_logs/table").json()["tables"]


def test_unknown_namespace_is_404_kind_namespace(shared: Shared) -> None:
    _server, api = shared
    assert_not_found(api.get("/dap/query/nope/table"), "namespace", "nope")
    assert_not_found(api.get("/dap/query/nope/table/users/schema"), "namespace", "nope")
    assert_not_found(api.create_job("nope", "users", {"format": "tsv"}), "namespace", "nope")


def test_unknown_table_is_404_kind_table(shared: Shared) -> None:
    _server, api = shared
    assert_not_found(api.get("/dap/query/canvas/table/nope/schema"), "table", "nope")
    assert_not_found(api.create_job("canvas", "nope", {"format": "tsv"}), "table", "nope")
    assert_not_found(api.get("/dap/query/canvas_logs/table/users/schema"), "table", "users")


def walk(node: Any, path: str, definitions: dict[str, Any], problems: list[str]) -> None:
    """Collect every keyword the official client would reject, anywhere below ``node``."""
    if not isinstance(node, dict):
        problems.append(f"{path}: not an object")
        return
    for keyword, value in node.items():
        if keyword.startswith("x-"):
            problems.append(f"{path}: vendor keyword {keyword}")
        elif keyword not in ALLOWED_KEYWORDS:
            problems.append(f"{path}: keyword {keyword} not accepted by the client")
        if keyword == "type" and not isinstance(value, str):
            problems.append(f"{path}: type must be a single string, got {value!r}")
    if "properties" in node:
        if node.get("additionalProperties") is not False:
            problems.append(f"{path}: object with properties lacks additionalProperties: false")
        missing = set(node.get("required", [])) - set(node["properties"])
        if missing:
            problems.append(f"{path}: required names unknown properties {sorted(missing)}")
        for name, sub in node["properties"].items():
            walk(sub, f"{path}.{name}", definitions, problems)
    if "items" in node:
        walk(node["items"], f"{path}[]", definitions, problems)
    for i, option in enumerate(node.get("oneOf", [])):
        walk(option, f"{path}.oneOf[{i}]", definitions, problems)
    if "$ref" in node:
        prefix = "#/definitions/"
        ref = node["$ref"]
        if not ref.startswith(prefix) or ref[len(prefix) :] not in definitions:
            problems.append(f"{path}: unresolvable $ref {ref}")


@pytest.mark.parametrize("namespace", ["canvas", "canvas_logs"])
def test_every_schema_is_wrapped_versioned_and_client_safe(shared: Shared, namespace: str) -> None:
    _server, api = shared
    tables = api.get(f"/dap/query/{namespace}/table").json()["tables"]
    for table in tables:
        response = api.get(f"/dap/query/{namespace}/table/{table}/schema")
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"schema", "version"}, f"{table}: {set(body)}"
        assert type(body["version"]) is int and body["version"] >= 1
        schema = body["schema"]
        assert isinstance(schema["$schema"], str) and schema["$schema"]
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema) <= TOP_LEVEL_KEYWORDS, set(schema) - TOP_LEVEL_KEYWORDS
        assert set(schema["properties"]) == {"meta", "key", "value"}
        assert schema["properties"]["key"]["properties"], f"{table}: no key column"
        assert set(schema["properties"]["meta"]["properties"]) == {"ts", "action"}
        definitions = schema.get("definitions", {})
        problems: list[str] = []
        for section in ("meta", "key", "value"):
            walk(schema["properties"][section], f"{table}.{section}", definitions, problems)
        for name, definition in definitions.items():
            walk(definition, f"{table}#/definitions/{name}", definitions, problems)
        assert not problems, "\n".join(problems[:20])
        # Nullability is expressed only by absence from `required`.
        text = response.text
        assert '"null"' not in text and "anyOf" not in text and "allOf" not in text, table


def test_schema_version_matches_emulator_and_jobs(shared: Shared) -> None:
    server, api = shared
    version = api.get("/dap/query/canvas/table/users/schema").json()["version"]
    assert version == server.emulator.dataset.table("canvas", "users").schema_version
    job = api.run_job("canvas", "users", {"format": "jsonl"})
    assert job["schema_version"] == version
