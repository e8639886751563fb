"""The request bodies the Airflow 3.3.2 UI sends to save and to test a connection, reproduced field by field.

Read from the installed UI bundle (``airflow/ui/dist/assets/index-*.js``, minified names quoted):

* The Add Connection dialog starts from ``{conn_type: "", connection_id: "", description: "",
  extra: "{}", host: "", login: "", password: "", port: "", schema: "", team_name: ""}``. Standard
  fields the connection type declares hidden (``hook_meta`` ``standard_fields.<f>.hidden``) are not
  rendered, so they keep ``""``.
* The extra fields (``hook_meta`` ``extra_fields``) are a flexible form whose store, on mount, holds
  each field's ``value`` (the ``conn-fields`` schema default) and writes the extra as
  ``JSON.stringify({name: value, ...}, undefined, 2)``.
* Save (``POST /api/v2/connections``): ``""`` becomes ``undefined`` (the key is left out) for
  description, host, login, password, schema and team_name; ``port: e.port === "" ? undefined :
  Number(e.port)``; an extra of ``"{}"`` is left out too.
* Test: the only Test button of 3.3.2 is in the connection list's row. Its body is built from the
  row of ``GET /api/v2/connections`` (password redacted to ``***``, extra re-dumped by the server):
  ``{conn_type, connection_id, description: d ?? "", extra: (x === "" || x === null) ? "{}" : x,
  host: h ?? "", login: l ?? "", password: p ?? "", port: Number(port), schema: s ?? ""}`` (no
  ``team_name``). ``Number(null)`` is ``0``: a connection stored without a port is tested with
  ``"port": 0``, which 3.3.2's ``test_connection`` compares with the stored NULL and answers 400
  ("The host or port to test differs from the stored connection...").
"""

from __future__ import annotations

import json
from typing import Any

STANDARD_FIELDS = ("description", "host", "login", "password", "port", "schema")


def js_number(value: Any) -> int | float:
    """JavaScript's ``Number(value)`` for what a form field or an API row can hold."""
    if value is None or value == "":
        return 0
    number = float(value)
    return int(number) if number.is_integer() else number


def visible_fields(hook_meta: dict[str, Any]) -> set[str]:
    """Standard fields the form renders (``url_schema`` is the form's name for ``schema``)."""
    standard = hook_meta.get("standard_fields") or {}
    shown = set()
    for name in STANDARD_FIELDS:
        meta = standard.get("url_schema" if name == "schema" else name)
        if not (meta or {}).get("hidden", False):
            shown.add(name)
    return shown


def form_extra(hook_meta: dict[str, Any], typed: dict[str, Any] | None = None) -> str:
    """The extra string the flexible form produces: every extra field's value, 2-space indented like JS."""
    values = {name: field.get("value") for name, field in (hook_meta.get("extra_fields") or {}).items()}
    values.update(typed or {})
    return json.dumps(values, indent=2, ensure_ascii=False) if values else "{}"


def ui_save_body(
    hook_meta: dict[str, Any], connection_id: str, typed: dict[str, Any], typed_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``POST /api/v2/connections`` body for a form where the user typed ``typed`` into the visible fields.

    :param typed: standard field name to what the user typed (only visible fields can be typed into).
    :raises ValueError: a value is given for a field the form does not show.
    """
    shown = visible_fields(hook_meta)
    hidden_typed = set(typed) - shown
    if hidden_typed:
        raise ValueError(f"the form does not show {sorted(hidden_typed)}; a user cannot type there")
    form = {name: "" for name in STANDARD_FIELDS} | {k: str(v) for k, v in typed.items()}
    body: dict[str, Any] = {"conn_type": hook_meta["connection_type"], "connection_id": connection_id}
    for name in ("description", "host", "login", "password", "schema"):
        if form[name] != "":
            body[name] = form[name]
    if form["port"] != "":
        body["port"] = js_number(form["port"])
    extra = form_extra(hook_meta, typed_extra)
    if extra != "{}":
        body["extra"] = extra
    return body


def ui_test_body(row: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/v2/connections/test`` body the list row's Test button sends for ``row`` (from the list API)."""
    extra = row.get("extra")
    return {
        "conn_type": row["conn_type"],
        "connection_id": row["connection_id"],
        "description": row.get("description") or "",
        "extra": "{}" if extra in ("", None) else extra,
        "host": row.get("host") or "",
        "login": row.get("login") or "",
        "password": row.get("password") or "",
        "port": js_number(row.get("port")),
        "schema": row.get("schema") or "",
    }
