"""The bad-value policy, the same on every target: a bad value never aborts a table and never
passes silently.

What DAP sends that a typed column cannot take as it is, and what is stored instead:

* **A timestamp outside the target's range** (DAP writes e.g. ``+10000-01-01T00:00:00Z`` or
  ``-0001-01-01T00:00:00Z``; ISO 8601 expanded years, astronomical numbering, so ``-0001`` is
  2 BC and ``0000`` is 1 BC) is stored exactly where the target can represent it and clamped
  to the target's limit otherwise (:data:`POSTGRES_RANGE`, :data:`MYSQL_RANGE`,
  :data:`PYTHON_RANGE`). Only clamped values count as coerced.
* **The oversized-value placeholder** (``__dap_oversized_truncated__``, or
  ``__cd2_oversized_truncated__``; dap-api.md section 7.1) stays as it is in text columns,
  becomes the JSON string ``"<placeholder as received>"`` in JSON columns and NULL in every
  other typed column. Every placeholder counts in ``oversized_values``, whatever it became.
* **An empty field** (not ``\\N``) in a non-text column (integer, float, decimal, boolean,
  timestamp, date, time, uuid, ip, enum, JSON) is NULL. In a text column it is the empty string.
* **A delete record with an empty key** cannot delete anything: it is skipped, counted in
  ``coerced_values`` under its key column and in ``skipped_deletes``, and logged. The value
  fields of a delete (``\\N``, or empty in some results) are ignored, as a delete uses only its key.
* Anything else that still cannot load (an upsert without a key, ``abc`` in an integer
  column...) fails the sync with :class:`~.errors.BadValueError`, which names the table, the
  part file, the line, the column, the key and the value cut to 80 characters.

Speed: clean data is never parsed in Python on the bulk paths (PostgreSQL ``COPY``, MySQL
``LOAD DATA``). :class:`ChunkFixer` looks at each ~1 MiB block with a few byte searches (the
placeholder's tail, an empty field, a timestamp with a sign or a year that is not four digits
from 1000 on) and splits only the lines that contain one. SQLite, which parses every row
anyway, applies the same per-field rule to decoded rows (:meth:`FieldFixer.fix`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_provider_instructure.dap_schema import Column
from airflow_provider_instructure.replication.errors import BadValueError

#: Both spellings of the oversized-value placeholder (dap-api.md section 7.1).
PLACEHOLDERS = frozenset({"__dap_oversized_truncated__", "__cd2_oversized_truncated__"})
_PLACEHOLDER_TAIL = b"_oversized_truncated__"

#: What a column does with a bad value: ``text`` keeps it, ``json`` wraps a placeholder in a
#: JSON string, ``timestamp`` applies the range policy, ``typed`` stores NULL.
TEXT, JSON, TIMESTAMP, TYPED = "text", "json", "timestamp", "typed"


def role_of(column: Column, *, native_array: bool = False) -> str:
    """The bad-value role of ``column``.

    :param native_array: the target column is a native array (an enum array of a ``dap initdb``
        table on PostgreSQL): a JSON string would not convert to it, so a placeholder is NULL.
    """
    kind = column.type.kind
    if kind == "string":
        return TEXT
    if kind == "json":
        return TYPED if native_array else JSON
    if kind == "timestamp":
        return TIMESTAMP
    return TYPED


# -- timestamps -----------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"([+-]?)(\d{4,})-(\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?\Z")


@dataclass(frozen=True)
class TimestampRange:
    """The timestamps a target can store, and how it wants them spelled.

    :param name: what the limits are (for messages).
    :param low: earliest storable instant as ``(astronomical year, "MM-DDTHH:MM:SS.ffffff")``.
    :param high: latest storable instant, same form.
    :param low_text: what a value before ``low`` becomes.
    :param high_text: what a value after ``high`` becomes.
    :param bc_suffix: the target reads years before 1 as ``<1 - year> ... BC`` (PostgreSQL).
    """

    name: str
    low: tuple[int, str]
    high: tuple[int, str]
    low_text: str
    high_text: str
    bc_suffix: bool = False

    def ordinary(self, text: str) -> bool:
        """True for the common case the target takes as it is: a four-digit year from 1000
        (or from 0001 where the range starts there). A cheap test, no regular expression."""
        if text[4:5] != "-" or not text[:1].isdigit():
            return False
        if text[0] != "0":
            return True
        return self.low[0] <= 1 and text[:4] != "0000"

    def fix(self, text: str) -> tuple[str, bool] | None:
        """``(text to store, clamped)`` for a timestamp that needs a new spelling or a clamp;
        ``None`` when ``text`` is not a timestamp at all (the database then reports it)."""
        m = _TIMESTAMP.match(text)
        if m is None:
            return None
        sign, digits, day, clock, fraction, _zone = m.groups()
        year = -int(digits) if sign == "-" else int(digits)
        moment = (year, f"{day}T{clock}.{(fraction or '.')[1:7].ljust(6, '0')}")
        if moment < self.low:
            return self.low_text, True
        if moment > self.high:
            return self.high_text, True
        rest = text[m.end(2) :]
        if year >= 1:
            return f"{year:04d}{rest}", False
        if not self.bc_suffix:  # pragma: no cover - only PostgreSQL's range reaches before year 1
            return self.low_text, True
        return f"{1 - year:04d}{rest} BC", False


#: PostgreSQL ``timestamp``/``timestamptz``: 4714-11-24 BC to 294276-12-31 (PostgreSQL manual,
#: "Date/Time Types"); years after 9999 are read without a ``+`` and years before 1 as ``BC``.
POSTGRES_RANGE = TimestampRange(
    "PostgreSQL",
    low=(-4713, "11-24T00:00:00.000000"),
    high=(294276, "12-31T23:59:59.999999"),
    low_text="4714-11-24T00:00:00Z BC",
    high_text="294276-12-31T23:59:59.999999Z",
    bc_suffix=True,
)
#: MySQL/MariaDB ``DATETIME``: the documented range is 1000-01-01 to 9999-12-31 23:59:59.999999.
MYSQL_RANGE = TimestampRange(
    "MySQL DATETIME",
    low=(1000, "01-01T00:00:00.000000"),
    high=(9999, "12-31T23:59:59.999999"),
    low_text="1000-01-01T00:00:00Z",
    high_text="9999-12-31T23:59:59.999999Z",
)
#: Python's ``datetime`` (SQLite stores ISO text that ``datetime.fromisoformat`` must read).
#: These are the official client's limits: instructure-dap-client 2.3.1 defines
#: ``dap.timestamp.clamp_naive_datetime``, which maps an expanded year (``+YYYYY``, ``-YYYY``)
#: to ``datetime.max``/``datetime.min``. MySQL's documented range is narrower, so MySQL clamps
#: to its own; PostgreSQL can store more, so it clamps only beyond its own range.
PYTHON_RANGE = TimestampRange(
    "Python datetime",
    low=(1, "01-01T00:00:00.000000"),
    high=(9999, "12-31T23:59:59.999999"),
    low_text="0001-01-01T00:00:00Z",
    high_text="9999-12-31T23:59:59.999999Z",
)


# -- counting ---------------------------------------------------------------------------------


@dataclass
class ValueTally:
    """What the policy did during one sync: per column, how many values and why, with one
    sample key each. Filled by the loaders, read by :class:`~.replicator.SyncResult`."""

    coerced: Counter[str] = field(default_factory=Counter)
    oversized: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    samples: dict[tuple[str, str], str] = field(default_factory=dict)
    skipped_deletes: int = 0

    def coerce(self, column: str, reason: str, key: str) -> None:
        self.coerced[column] += 1
        self.reasons.setdefault(column, Counter())[reason] += 1
        self.samples.setdefault(("coerced", column), key)

    def oversize(self, column: str, key: str) -> None:
        self.oversized[column] += 1
        self.samples.setdefault(("oversized", column), key)

    def merge(self, other: ValueTally) -> None:
        """Add ``other``'s counts (samples already taken are kept)."""
        self.coerced.update(other.coerced)
        self.oversized.update(other.oversized)
        for column, reasons in other.reasons.items():
            self.reasons.setdefault(column, Counter()).update(reasons)
        for key, sample in other.samples.items():
            self.samples.setdefault(key, sample)
        self.skipped_deletes += other.skipped_deletes

    def log(self, log: logging.Logger, what: str) -> None:
        """One WARNING line per affected column (count, reasons, one sample key)."""
        for column, count in sorted(self.coerced.items()):
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons[column].items()))
            log.warning(
                "%s: column %s: %d value(s) coerced (%s), e.g. key %s",
                what,
                column,
                count,
                why,
                self.samples[("coerced", column)],
            )
        for column, count in sorted(self.oversized.items()):
            log.warning(
                "%s: column %s: %d oversized value(s) replaced upstream by DAP's placeholder (stored as the "
                "placeholder text in text columns, a JSON string in JSON columns, NULL in other typed columns), "
                "e.g. key %s",
                what,
                column,
                count,
                self.samples[("oversized", column)],
            )
        if self.skipped_deletes:
            log.warning("%s: %d delete record(s) with an empty key skipped", what, self.skipped_deletes)


# -- the per-field rule -----------------------------------------------------------------------

#: Reasons, as they appear in the WARNING lines.
EMPTY = "empty field stored as NULL"
CLAMPED = "timestamp clamped to the target's range"
PLACEHOLDER_NULL = "oversized placeholder stored as NULL"
EMPTY_DELETE_KEY = "delete with an empty key skipped"


def cut(value: str | None, limit: int = 80) -> str:
    """``value`` for a message, cut to ``limit`` characters."""
    if value is None:
        return "NULL"
    return value if len(value) <= limit else value[: limit - 3] + "..."


def shorten(reason: str, value: str | None, limit: int = 300) -> str:
    """A driver's message for an error text: the whole value it may quote is cut like the
    value itself, and the message to ``limit`` characters."""
    reason = reason.strip()
    if value and len(value) > 80:
        reason = reason.replace(value, cut(value))
    return cut(reason, limit)


class FieldFixer:
    """Applies the policy to the fields of one record, in the header order of one part.

    Works on raw COPY text (NULL is ``\\N``) and on decoded fields (NULL is ``None``) alike:
    every value it inspects or writes (empty, placeholder, timestamp) contains no escape.

    :param where: ``namespace.table -> target`` for messages.
    :param part: the part's file name.
    :param names: column name per header field (``None`` for ``meta.*`` fields).
    :param roles: role per header field (``None`` for ``meta.*``).
    :param keys: header indices of the key columns.
    :param action: header index of ``meta.action`` (incremental parts), else ``None``.
    :param timestamps: the target's range.
    :param tally: where counts go.
    :param null: how the caller spells NULL (``"\\N"`` or ``None``).
    """

    def __init__(
        self,
        *,
        where: str,
        part: str,
        names: Sequence[str | None],
        roles: Sequence[str | None],
        keys: Sequence[int],
        action: int | None,
        timestamps: TimestampRange,
        tally: ValueTally,
        null: str | None,
    ) -> None:
        self.where = where
        self.part = part
        self.names = list(names)
        self.width = len(names)
        self.keys = list(keys)
        self.action = action
        self.range = timestamps
        self.tally = tally
        self.null = null
        self._typed = [(i, r) for i, r in enumerate(roles) if r is not None and r != TEXT]
        self._text = [i for i, r in enumerate(roles) if r == TEXT]
        self._key_set = set(keys)

    def key_text(self, fields: Sequence[str | None]) -> str:
        return ", ".join(f"{self.names[i]}={cut(fields[i], 40)}" for i in self.keys)

    def error(self, line: int, column: int, value: str | None, fields: Sequence[str | None], why: str) -> BadValueError:
        return BadValueError(
            f"{self.where}: {self.part}, line {line}, column {self.names[column]}, key {self.key_text(fields)}: "
            f"value {cut(value)!r} {shorten(why, value)}",
            table=self.where,
            part=self.part,
            line=line,
            column=self.names[column] or "",
            key=self.key_text(fields),
            value=cut(value),
        )

    def fix(self, fields: list[str | None], line: int) -> list[str | None] | None:
        """Apply the policy to ``fields`` in place; returns them, or ``None`` to skip the record.

        :raises BadValueError: a key that is empty or a placeholder in a record that is not a delete.
        """
        null = self.null
        tally = self.tally
        key: str | None = None
        deleting = self.action is not None and fields[self.action] == "D"
        for i, role in self._typed:
            value = fields[i]
            if value is None or value == null:
                continue
            if deleting and i not in self._key_set:
                # A delete uses only its key; its value fields (empty in some results) are not data.
                fields[i] = null
                continue
            if value == "":
                if i in self._key_set:
                    if deleting:
                        tally.coerce(self.names[i], EMPTY_DELETE_KEY, key or self.key_text(fields))  # type: ignore[arg-type]
                        tally.skipped_deletes += 1
                        return None
                    raise self.error(line, i, value, fields, "is empty in a key column; the record has no key")
                key = key or self.key_text(fields)
                tally.coerce(self.names[i], EMPTY, key)  # type: ignore[arg-type]
                fields[i] = null
            elif value in PLACEHOLDERS:
                if i in self._key_set:
                    raise self.error(line, i, value, fields, "cannot be a key")
                key = key or self.key_text(fields)
                tally.oversize(self.names[i], key)  # type: ignore[arg-type]
                fields[i] = f'"{value}"' if role == JSON else null
            elif role == TIMESTAMP and not self.range.ordinary(value):
                fixed = self.range.fix(value)
                if fixed is not None:
                    fields[i] = fixed[0]
                    if fixed[1]:
                        key = key or self.key_text(fields)
                        tally.coerce(self.names[i], CLAMPED, key)  # type: ignore[arg-type]
        return fields

    def count_text_placeholders(self, fields: Sequence[str | None]) -> None:
        """Count placeholders in text columns, where they are kept as they are."""
        for i in self._text:
            if fields[i] in PLACEHOLDERS:
                self.tally.oversize(self.names[i], self.key_text(fields))  # type: ignore[arg-type]


# -- the bulk path: whole blocks of COPY text -------------------------------------------------

# A timestamp whose year has a sign or five digits, or is 0000 (0000 to 0999 where the range
# starts at 1000). The search looks for the literal "-MM-DDT" part and checks what precedes it
# with a fixed-width look-behind: about 250 MB/s, five times faster than a pattern that starts
# at the field boundary.
_ODD_YEAR = re.compile(rb"-\d\d-\d\d[T ](?<=[\d+-]\d\d\d\d-\d\d-\d\d[T ]|[\t\n]0000-\d\d-\d\d[T ])")
_ODD_OR_EARLY_YEAR = re.compile(rb"-\d\d-\d\d[T ](?<=[\d+-]\d\d\d\d-\d\d-\d\d[T ]|[\t\n]0\d\d\d-\d\d-\d\d[T ])")


class ChunkFixer:
    """Applies a :class:`FieldFixer` to blocks of COPY text that end on a line boundary.

    A block without any of the few byte patterns that can need fixing is returned as it is
    (the same object). Each pattern found is placed in its field by counting tabs; only lines
    where it sits in a non-text column are split and rebuilt (a placeholder in a text column
    is only counted). Skipped lines (deletes with an empty key) are removed; :meth:`file_line`
    maps a record number of the output stream back to the part's line number.

    :param fields: the per-record fixer.
    :param roles: role per header field, as given to ``fields``.
    :param first_line: line number in the part of the first record (2: after the header).
    """

    def __init__(self, fields: FieldFixer, roles: Sequence[str | None], first_line: int = 2) -> None:
        self.fields = fields
        self.roles = list(roles)
        self.next_line = first_line
        self.first_line = first_line
        self.dropped: list[int] = []
        # Years 0001-0999 are out of range where the range starts at 1000 (MySQL).
        self._years = _ODD_OR_EARLY_YEAR if fields.range.low[0] > 1 else _ODD_YEAR
        typed = [r is not None and r != TEXT for r in roles]
        self._has_typed = any(typed)
        self._has_timestamps = TIMESTAMP in roles
        # An empty first (last) field is only worth a search when that column is typed; the
        # first is normally meta.ts, which is not checked.
        self._needles = [b"\t\t"] if self._has_typed else []
        if typed and typed[-1]:
            self._needles.append(b"\t\n")
        self._first_typed = bool(typed and typed[0])
        if self._first_typed:
            self._needles.append(b"\n\t")

    def file_line(self, stream_line: int) -> int:
        """The part's line number of record ``stream_line`` (1-based) of the fixed stream."""
        line = stream_line + self.first_line - 1
        for dropped in self.dropped:
            if dropped <= line:
                line += 1
        return line

    def _lines_to_fix(self, chunk: bytes) -> list[int]:
        """Start offsets of the lines with a pattern in a non-text column; counts the
        placeholders found in text columns on the way."""
        positions: list[int] = []
        find = chunk.find
        pos = find(_PLACEHOLDER_TAIL)
        while pos >= 0:
            positions.append(pos)
            pos = find(_PLACEHOLDER_TAIL, pos + 1)
        for needle in self._needles:
            pos = find(needle)
            while pos >= 0:
                positions.append(pos + 1)  # the empty field starts after the first byte
                pos = find(needle, pos + 1)
        if self._first_typed and chunk[:1] == b"\t":
            positions.append(0)
        if self._has_timestamps:
            positions.extend(m.start() for m in self._years.finditer(chunk))
        if not positions:
            return []
        lines: set[int] = set()
        roles = self.roles
        width = len(roles)
        for pos in positions:
            line_start = chunk.rfind(b"\n", 0, pos) + 1
            field_start = max(line_start, chunk.rfind(b"\t", line_start, pos) + 1)
            index = chunk.count(b"\t", line_start, field_start)
            role = roles[index] if index < width else None
            if role is not None and role != TEXT:
                lines.add(line_start)
            elif role == TEXT:
                self._count_text_placeholder(chunk, line_start, field_start, index)
        return sorted(lines)

    def _count_text_placeholder(self, chunk: bytes, line_start: int, field_start: int, index: int) -> None:
        ends = [e for e in (chunk.find(b"\t", field_start), chunk.find(b"\n", field_start)) if e >= 0]
        value = chunk[field_start : min(ends) if ends else len(chunk)]
        if value.decode("utf-8", "replace") not in PLACEHOLDERS:
            return
        fixer = self.fields
        name = fixer.names[index] or ""
        if ("oversized", name) in fixer.tally.samples:
            fixer.tally.oversized[name] += 1
            return
        end = chunk.find(b"\n", line_start)
        fields = chunk[line_start : end if end >= 0 else len(chunk)].decode("utf-8", "replace").split("\t")
        fixer.tally.oversize(name, fixer.key_text(fields) if len(fields) == fixer.width else "?")

    def __call__(self, chunk: bytes) -> bytes:
        starts = self._lines_to_fix(chunk)
        first = self.next_line
        self.next_line += chunk.count(b"\n")
        if not starts:
            return chunk
        out: list[bytes] = []
        done = 0
        line = first
        counted_to = 0
        fixer = self.fields
        for start in starts:
            line += chunk.count(b"\n", counted_to, start)
            counted_to = start
            end = chunk.find(b"\n", start)
            end = len(chunk) if end < 0 else end
            raw = chunk[start:end]
            fields: list[str | None] = raw.decode("utf-8", "surrogateescape").split("\t")  # type: ignore[assignment]
            if len(fields) != fixer.width:
                continue  # the database reports the field count, with the line
            fixed = fixer.fix(fields, line)
            if fixed is None:
                self.dropped.append(line)
                out.append(chunk[done:start])
                done = end + 1
                continue
            new = "\t".join(fixed).encode("utf-8", "surrogateescape")  # type: ignore[arg-type]
            if new != raw:
                out.append(chunk[done:start])
                out.append(new)
                done = end
        if not out:
            return chunk
        out.append(chunk[done:])
        return b"".join(out)
