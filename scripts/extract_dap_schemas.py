"""Regenerate the emulator's table schemas from the public DAP OpenAPI 0.9.0 document.

The OpenAPI document describes each table as a *flat* record. The DAP schema endpoint
serves a *wrapped* schema (``meta``/``key``/``value``) that the official client parses
strictly, so this script rewrites each chosen table into that wire shape and keeps only
the JSON-Schema keywords the official client accepts (dap-api.md section 8.1).

Usage (dev only; PyYAML is needed here and nowhere else)::

    python scripts/extract_dap_schemas.py ../shared/docs/reference/dap-openapi-0.9.0.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: Tables served by the emulator, per namespace. Chosen to cover every column type the
#: reference schemas use: int16/int32/int64, float64, decimal, boolean, date, date-time,
#: enums (string and integer), uuid, ipv4/ipv6 via $ref, arrays, nested objects and the
#: oversized-value placeholder.
TABLES: dict[str, list[str]] = {
    "canvas": [
        "accounts",
        "assignment_groups",
        "assignments",
        "calendar_events",
        "course_sections",
        "courses",
        "enrollment_terms",
        "enrollments",
        "late_policies",
        "learning_outcomes",
        "pseudonyms",
        "scores",
        "submissions",
        "users",
    ],
    "canvas_logs": ["web_logs"],
}

ALLOWED = {
    "title", "description", "type", "format", "const", "default", "examples",
    "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minLength", "maxLength", "items", "properties", "additionalProperties", "required",
    "$ref", "oneOf",
}  # fmt: skip

META = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["U", "D"]},
        "ts": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
    "required": ["action", "ts"],
}


def _clean(node: Any, refs: set[str]) -> Any:
    if isinstance(node, list):
        return [_clean(item, refs) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in ALLOWED:
            continue
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            refs.add(name)
            out[key] = f"#/definitions/{name}"
        elif key == "properties":
            out[key] = {name: _clean(sub, refs) for name, sub in value.items()}
        else:
            out[key] = _clean(value, refs)
    if "properties" in out and out.get("type") == "object":
        out["additionalProperties"] = False
    return out


def wrap(table: str, flat: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Turn one flat OpenAPI table schema into the versioned, wrapped wire schema."""
    refs: set[str] = set()
    props = {name: _clean(sub, refs) for name, sub in flat["properties"].items()}
    required = list(flat.get("required", []))
    key_name = "id"
    key_props = {key_name: props.pop(key_name)}
    value_required = [name for name in required if name != key_name]
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "title": flat.get("title", table),
        "properties": {
            "meta": META,
            "key": {
                "type": "object",
                "properties": key_props,
                "additionalProperties": False,
                "required": [key_name],
            },
            "value": {
                "type": "object",
                "properties": props,
                "additionalProperties": False,
                "required": value_required,
            },
        },
        "additionalProperties": False,
        "required": ["meta", "key"],
    }
    if refs:
        schema["definitions"] = {name: _clean(components[name], set()) for name in sorted(refs)}
    return {"schema": schema, "version": 1}


def main(source: str) -> None:
    document = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    components = document["components"]["schemas"]
    target = Path(__file__).resolve().parent.parent / "airflow_provider_instructure" / "emulator" / "schemas"
    target.mkdir(parents=True, exist_ok=True)
    for namespace, tables in TABLES.items():
        wrapped = {table: wrap(table, components[table], components) for table in tables}
        path = target / f"{namespace}.json"
        path.write_text(json.dumps(wrapped, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(wrapped)} tables)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/docs/reference/dap-openapi-0.9.0.yaml")
