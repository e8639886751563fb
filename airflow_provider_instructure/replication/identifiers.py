"""Names that must fit the target's identifier limit: shortened deterministically.

PostgreSQL truncates identifiers longer than 63 **bytes** (``NAMEDATALEN - 1``) silently, so
two long names with a common 63-byte prefix become one; MySQL and MariaDB refuse names longer
than 64 **characters** (error 1059, "Identifier name ... is too long"); SQLite has no limit
[PostgreSQL 16 docs, "Identifiers and Key Words"; MySQL 8.0 reference manual, "Identifier
Length Limits"]. DAP names fit (the longest table of schema 0.9.0 has 34 characters, the
longest column 39), but names this package derives from them (``<prefix><table>``,
``<table>__dap_new``, ``<table>_pkey``) and custom schemas may not.

A name that does not fit becomes ``<readable prefix>_<8 hex digits of SHA-1 of the whole
name>``, cut to the limit (:func:`shorten`). The rule depends only on the name and the
dialect, so every run (and ``schema_changes``) derives the same name again; the state table
records the table's and its columns' shortened names (column ``name_map``, see :mod:`.state`)
for people and tools reading the replica.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

from airflow_provider_instructure.dap_schema import TableSchema
from airflow_provider_instructure.replication.errors import ReplicationConfigError
from airflow_provider_instructure.replication.tsv import HeaderField, Part

#: Length of the hash suffix, in hex digits: 32 bits, so two long names of one table
#: sharing their readable prefix collide with a chance of about 1 in 4 billion (and a
#: collision is refused, never merged: :func:`column_names`).
HASH_DIGITS = 8


def utf8_length(name: str) -> int:
    """PostgreSQL's measure: bytes in the database encoding (UTF-8)."""
    return len(name.encode())


def char_length(name: str) -> int:
    """MySQL's measure: characters."""
    return len(name)


def _cut(name: str, budget: int, measure: Callable[[str], int]) -> str:
    """The longest prefix of ``name`` whose ``measure`` is at most ``budget`` (whole characters)."""
    out = name[:budget]  # both measures count a character as at least 1
    while out and measure(out) > budget:
        out = out[:-1]
    return out


def shorten(name: str, limit: int | None, measure: Callable[[str], int] = utf8_length, *, suffix: str = "") -> str:
    """``name + suffix`` if it fits ``limit``, else ``<prefix of name>_<hash of name><suffix>``.

    :param name: the wanted name (a table, a column, a table name a suffix is appended to).
    :param limit: the longest identifier, in the units of ``measure``; ``None``: no limit.
    :param measure: :func:`utf8_length` (PostgreSQL) or :func:`char_length` (MySQL).
    :param suffix: kept whole at the end (``__dap_new``, ``_pkey``), so derived names stay
        recognisable.
    :returns: a name of at most ``limit``; the same for the same arguments, on every run.
    """
    whole = name + suffix
    if limit is None or measure(whole) <= limit:
        return whole
    # The hash is of ``name`` alone, as side tables and key constraints were named before
    # there was a general rule: names already in databases stay the same.
    digest = hashlib.sha1(name.encode()).hexdigest()[:HASH_DIGITS]
    tail = f"_{digest}{suffix}"
    budget = limit - measure(tail)
    if budget < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room under the identifier limit {limit}")
    return _cut(name, budget, measure) + tail


def column_names(schema: TableSchema, fit: Callable[[str], str]) -> dict[str, str]:
    """Every column's name in the target (``fit(name)``), by DAP name.

    :raises ReplicationConfigError: two columns would get the same name in the target (a
        shortened name equal to another column's name): refused rather than merged.
    """
    names = {c.name: fit(c.name) for c in schema.columns}
    used: dict[str, str] = {}
    for original, name in names.items():
        if name in used:
            raise ReplicationConfigError(
                f"columns {used[name]!r} and {original!r} would both be named {name!r} in the target "
                "(identifier limit); this table cannot be replicated to this database"
            )
        used[name] = original
    return names


def mapped_schema(schema: TableSchema, names: dict[str, str]) -> TableSchema:
    """``schema`` with every column renamed to its target name (``names`` from :func:`column_names`).

    The dialects only ever see this schema, so every statement they build (DDL, COPY/LOAD
    column lists, staging tables, merges, schema changes) uses the target's names.
    """
    if all(names.get(c.name, c.name) == c.name for c in schema.columns):
        return schema
    columns = tuple(dataclasses.replace(c, name=names.get(c.name, c.name)) for c in schema.columns)
    return dataclasses.replace(schema, columns=columns)


def remap_parts(parts: list[Part], schema: TableSchema, mapped: TableSchema) -> list[Part]:
    """``parts`` (headers read with the DAP ``schema``) pointing at the ``mapped`` columns, so
    every field's :attr:`~.tsv.HeaderField.name` is the target's column name."""
    if mapped is schema:
        return parts
    target_column = dict(zip((c.name for c in schema.columns), mapped.columns, strict=True))
    return [
        dataclasses.replace(
            part,
            fields=tuple(
                HeaderField(f.label, None if f.column is None else target_column[f.column.name]) for f in part.fields
            ),
        )
        for part in parts
    ]


def shortened(names: dict[str, str]) -> dict[str, str]:
    """Only the entries of ``names`` whose target name differs from the original."""
    return {original: name for original, name in names.items() if original != name}


__all__ = [
    "HASH_DIGITS",
    "char_length",
    "column_names",
    "mapped_schema",
    "remap_parts",
    "shorten",
    "shortened",
    "utf8_length",
]
