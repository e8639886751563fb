"""Turn a database's refusal of a bulk load into a :class:`~.errors.BadValueError` that names
the table, the part file, the line, the column, the key and the value (cut to 80 characters).

Databases say where a value was refused in different ways: PostgreSQL's ``COPY`` gives the
line and the column (``COPY t, line 3, column x: "..."``), MySQL's warnings give the column
and a row number, MariaDB's JSON check gives only the column. What is missing is found by
reading the part again; this runs only on the failure path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from airflow_provider_instructure.replication.errors import BadValueError
from airflow_provider_instructure.replication.tsv import Part, iter_numbered_rows, read_record
from airflow_provider_instructure.replication.values import cut, shorten

_PG_COPY_CONTEXT = re.compile(r"COPY [^,]+, line (\d+)(?:, column ([^:]+))?")


def pg_copy_location(exc: BaseException) -> tuple[int, str | None] | None:
    """``(record number in the COPY stream, column)`` from a psycopg/psycopg2 error's context."""
    diag = getattr(exc, "diag", None)
    context = getattr(diag, "context", None) or ""
    m = _PG_COPY_CONTEXT.search(context) or _PG_COPY_CONTEXT.search(str(exc))
    if m is None:
        return None
    return int(m.group(1)), m.group(2)


def _key_text(part: Part, fields: list[str | None]) -> str:
    return ", ".join(
        f"{f.name}={cut(fields[i], 40)}"
        for i, f in enumerate(part.fields)
        if f.column is not None and f.column.is_key and i < len(fields)
    )


def at_line(where: str, part: Part, line: int, column: str | None, reason: str) -> BadValueError:
    """The error for line ``line`` (header = 1) and ``column`` of ``part``."""
    fields = read_record(part, line) or []
    names = [f.name for f in part.fields]
    value: str | None = None
    if column is not None and column in names and names.index(column) < len(fields):
        value = fields[names.index(column)]
    key = _key_text(part, fields)
    return BadValueError(
        f"{where}: {part.path.name}, line {line}, column {column or '?'}, key {key or '?'}: "
        f"value {cut(value)!r} cannot be loaded: {shorten(reason, value)}",
        table=where,
        part=part.path.name,
        line=line,
        column=column or "",
        key=key,
        value=cut(value),
    )


def first_match(
    where: str, part: Part, columns: list[str], bad: Callable[[str], bool], reason: str
) -> BadValueError | None:
    """The error for the first non-NULL value of ``columns`` for which ``bad(value)`` holds."""
    index = [i for i, f in enumerate(part.fields) if f.name in columns]
    if not index:
        return None
    for line, fields in iter_numbered_rows(part):
        for i in index:
            value = fields[i]
            if value is not None and bad(value):
                return at_line(where, part, line, part.fields[i].name, reason)
    return None


def invalid_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return True
    return False
