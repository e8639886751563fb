"""Regenerate the emulator's table schemas from the public DAP OpenAPI 0.9.0 document.

The OpenAPI document describes each table as a *flat* record. The DAP schema endpoint
serves a *wrapped* schema (``meta``/``key``/``value``) that the official client parses
strictly, so this script rewrites each chosen table into that wire shape and keeps only
the JSON-Schema keywords the official client accepts (dap-api.md section 8.1).

The tables are chosen by rule, not by hand: see :func:`select_tables`.

Usage (dev only; PyYAML is needed here and nowhere else)::

    python scripts/extract_dap_schemas.py ../shared/docs/reference/dap-openapi-0.9.0.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: The ``x-tagGroups`` of the OpenAPI document that hold tables, and the DAP namespace that
#: serves each (dap-api.md section 12.1: ``canvas_logs`` carries the log tables).
TABLE_GROUPS: dict[str, str] = {
    "Canvas tables": "canvas",
    "Canvas tables not exposed": "canvas",
    "Log tables": "canvas_logs",
}

#: How the document says a table has no data of its own: the title of each of the 23
#: "Canvas tables not exposed" starts with this (they exist only as foreign-key targets).
NOT_EXPOSED_TITLE = "Data in this table is not exposed"

#: Tables the document describes whose data DAP does not serve yet. ``canvas_logs`` lists only
#: ``web_logs`` (dap-api.md section 12.1), and ``web_logs.user_agent_id``'s description says
#: user agents "will be available in the user_agent table once exposed". Empty this to serve it.
NOT_YET_EXPOSED: frozenset[str] = frozenset({"canvas_logs.user_agents"})


def select_tables(document: dict[str, Any]) -> dict[str, list[str]]:
    """The tables the emulator serves, per namespace, in the document's order.

    Every tag of a table group whose component schema exists, minus the tables whose title
    says their data is not exposed, the nested column schemas (``x__y``, the "Auxiliary types"
    group, never listed here but excluded by name too) and :data:`NOT_YET_EXPOSED`.
    """
    components = document["components"]["schemas"]
    out: dict[str, list[str]] = {}
    for group in document.get("x-tagGroups", []):
        namespace = TABLE_GROUPS.get(group["name"])
        if namespace is None:
            continue
        for table in group["tags"]:
            flat = components.get(table)
            if flat is None or "__" in table or f"{namespace}.{table}" in NOT_YET_EXPOSED:
                continue
            if str(flat.get("title", "")).startswith(NOT_EXPOSED_TITLE):
                continue
            out.setdefault(namespace, []).append(table)
    return out


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
    # The first column is the primary key (dap-api.md section 12.3): ``id`` everywhere except
    # ``enrollment_states``, keyed by ``enrollment_id``.
    key_name = next(iter(flat["properties"]))
    if key_name not in required:
        raise ValueError(f"{table}: first column {key_name!r} is not required, so it cannot be the key")
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
    for namespace, tables in select_tables(document).items():
        wrapped = {table: wrap(table, components[table], components) for table in tables}
        path = target / f"{namespace}.json"
        path.write_text(json.dumps(wrapped, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(wrapped)} tables)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/docs/reference/dap-openapi-0.9.0.yaml")
