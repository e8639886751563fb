"""Per-dialect SQL types for DAP columns (from :class:`~airflow_provider_instructure.dap_schema.ColumnType`).

Tables this package creates use these types:

=============================  ====================  ===============================  ==========================
DAP column                     PostgreSQL            MySQL / MariaDB                  SQLite
=============================  ====================  ===============================  ==========================
integer int16 / int32 / int64  smallint / integer /  SMALLINT / INT / BIGINT          INTEGER
                               bigint
integer enum (``http_status``) by width, as above    by width                         INTEGER
number float32 / float64       double precision      DOUBLE                           REAL
number + multipleOf (decimal)  numeric(p,s)          DECIMAL(p,s)                     TEXT (exact digits)
boolean                        boolean               BOOLEAN (TINYINT(1))             INTEGER 0/1
date-time                      timestamptz           DATETIME(6), UTC                 TEXT ISO-8601 UTC (below)
date / time                    date / time           DATE / TIME(6)                   TEXT
uuid                           uuid                  CHAR(36)                         TEXT
ipv4 / ipv6                    inet                  VARCHAR(45)                      TEXT
string enum                    text                  VARCHAR(255)                     TEXT
string with maxLength n        varchar(n)            VARCHAR(n) (LONGTEXT if > 16383) TEXT
string, unbounded              text                  LONGTEXT                         TEXT
oversized placeholder column   text                  LONGTEXT                         TEXT
nested object, array, free     jsonb                 JSON                             TEXT (JSON text)
=============================  ====================  ===============================  ==========================

Why these choices:

* float32 is stored as double: the wire carries decimal text and a 4-byte float would
  round it; the replica keeps what DAP sent.
* String enums are text, not native enums: adding a member to a PostgreSQL enum cannot run
  inside the data transaction, and a MySQL ``ENUM`` change rebuilds the table. With text, a
  new enum member needs no DDL at all.
* Value columns are created nullable even when the schema marks them required: a replica
  does not need to enforce the source's constraints, and "column became nullable" (the
  April 2026 change to 40 columns) then needs no DDL. Key columns are ``NOT NULL``.
* Oversized-placeholder columns are unbounded text: ``__dap_oversized_truncated__`` may be
  longer than the column's ``maxLength``.
* SQLite timestamps are fixed-width text, ``2024-01-01T10:00:00.500000+00:00``, so they sort
  chronologically and ``datetime.fromisoformat`` reads them.
* SQLite decimals are TEXT because SQLite's NUMERIC affinity would turn ``1.50`` into a
  float; SQLite arithmetic still converts them on the fly.

Tables created by the official ``dap initdb`` keep their own types (native enums, naive
``timestamp``, ``jsonb``/``json``, enum arrays); :func:`dap_cli_type` gives the type for a
column added to such a table in place.
"""

from __future__ import annotations

from airflow_provider_instructure.dap_schema import Column, ColumnType

#: The longest VARCHAR we create on MySQL (utf8mb4: 4 bytes a character, 65535 bytes a row).
MYSQL_MAX_VARCHAR = 16383
#: InnoDB's row-size limit applies to the sum of VARCHAR widths; stay safely below it.
MYSQL_ROW_BUDGET = 60000

#: Per dialect: integer types by width, the decimal type, and the types that depend on the
#: kind alone. What is left (strings, enums) is decided per dialect below.
_INTEGER = {
    "postgres": {16: "smallint", 32: "integer", 64: "bigint"},
    "mysql": {16: "SMALLINT", 32: "INT", 64: "BIGINT"},
}
_DECIMAL = {"postgres": "numeric({p},{s})", "mysql": "DECIMAL({p},{s})"}
_BY_KIND = {
    "postgres": {
        "float": "double precision",
        "boolean": "boolean",
        "timestamp": "timestamp with time zone",
        "date": "date",
        "time": "time",
        "uuid": "uuid",
        "ip": "inet",
        "json": "jsonb",
    },
    "mysql": {
        "float": "DOUBLE",
        "boolean": "BOOLEAN",
        "timestamp": "DATETIME(6)",
        "date": "DATE",
        "time": "TIME(6)",
        "uuid": "CHAR(36)",
        "ip": "VARCHAR(45)",
        "json": "JSON",
    },
}


def _common_type(typ: ColumnType, dialect: str) -> str | None:
    """The type of ``typ`` on ``dialect`` when the table above decides it, else None."""
    if typ.kind == "integer":
        widths = _INTEGER[dialect]
        return widths.get(typ.bits, widths[64])
    if typ.kind == "decimal":
        return _DECIMAL[dialect].format(p=typ.precision, s=typ.scale)
    return _BY_KIND[dialect].get(typ.kind)


def postgres_type(typ: ColumnType) -> str:
    """The PostgreSQL type of a column in a table this package creates."""
    common = _common_type(typ, "postgres")
    if common is not None:
        return common
    if typ.kind == "string" and typ.max_length and not typ.oversized:
        return f"varchar({typ.max_length})"
    return "text"  # enums, unbounded and oversized strings


def mysql_type(typ: ColumnType, *, is_key: bool = False) -> str:
    """The MySQL/MariaDB type of a column in a table this package creates."""
    common = _common_type(typ, "mysql")
    if common is not None:
        return common
    if typ.kind == "enum":
        longest = max((len(str(v)) for v in typ.values), default=0)
        return "VARCHAR(255)" if longest <= 255 else "LONGTEXT"
    if typ.max_length and not typ.oversized and typ.max_length <= MYSQL_MAX_VARCHAR:
        return f"VARCHAR({typ.max_length})"
    # A primary key cannot be LONGTEXT; DAP keys are integers or UUIDs, but stay safe.
    return "VARCHAR(255)" if is_key else "LONGTEXT"


def sqlite_type(typ: ColumnType) -> str:
    """The SQLite declared type (and so the affinity) of a column."""
    if typ.kind in ("integer", "boolean"):
        return "INTEGER"
    if typ.kind == "float":
        return "REAL"
    return "TEXT"


def mysql_column_types(columns: tuple[Column, ...]) -> dict[str, str]:
    """MySQL types for a whole table, widening VARCHARs to LONGTEXT if the row would be too wide.

    InnoDB counts every VARCHAR's maximum byte width against a 65535-byte row limit, so a
    table with hundreds of ``VARCHAR(255)`` columns could not be created at all.
    """
    types = {c.name: mysql_type(c.type, is_key=c.is_key) for c in columns}

    def width(sql: str) -> int:
        if sql.startswith("VARCHAR("):
            return int(sql[8:-1]) * 4 + 2
        return 0

    while sum(width(t) for t in types.values()) > MYSQL_ROW_BUDGET:
        candidates = [c for c in columns if not c.is_key and width(types[c.name])]
        if not candidates:
            break
        widest = max(candidates, key=lambda c: width(types[c.name]))
        types[widest.name] = "LONGTEXT"
    return types


def sql_type(column: Column, dialect: str) -> str:
    """The type of ``column`` in a table this package creates on ``dialect``."""
    if dialect == "postgres":
        return postgres_type(column.type)
    if dialect == "mysql":
        return mysql_type(column.type, is_key=column.is_key)
    if dialect == "sqlite":
        return sqlite_type(column.type)
    raise ValueError(f"unknown dialect {dialect!r}")


def dap_cli_type(column: Column, dialect: str) -> str:
    """The type for a column added in place to a table created by the official ``dap initdb``.

    Follows what ``dap`` itself creates where it matters for later ``dap syncdb`` runs: naive
    timestamps (dap stores UTC without a zone). Enums are handled by the dialect, which
    creates dap-style native enum types.
    """
    if column.type.kind == "timestamp":
        return "timestamp without time zone" if dialect == "postgres" else "DATETIME(6)"
    return sql_type(column, dialect)


#: The state table's columns (:mod:`.state`) by role, as DAP types: each dialect types them
#: with the same mapping as the data (``key``: ``varchar(255)`` / ``VARCHAR(255)`` / ``TEXT``...).
STATE_ROLES: dict[str, ColumnType] = {
    "key": ColumnType("string", max_length=255),
    "name": ColumnType("string", max_length=64),
    "short": ColumnType("string", max_length=16),
    "ts": ColumnType("timestamp"),
    "int": ColumnType("integer", bits=32),
    "long_text": ColumnType("string"),
}


def state_column_types(dialect: str) -> dict[str, str]:
    """The SQL type of each state-table role (:data:`STATE_ROLES`) on ``dialect``.

    :raises ValueError: an unknown dialect.
    """
    return {role: sql_type(Column(role, "value", typ, True), dialect) for role, typ in STATE_ROLES.items()}
