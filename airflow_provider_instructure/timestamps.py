"""One RFC 3339 / ISO 8601 timestamp parser with the same result on every supported Python.

``datetime.fromisoformat`` changed in Python 3.11: on 3.10 it reads only what ``isoformat()``
writes, so it rejects the ``Z`` suffix and any fraction that is not exactly 3 or 6 digits -
both of which DAP sends (``2024-05-01T12:00:00Z``, ``2024-05-01T12:00:00.5Z``; RFC 3339 allows
any number of fraction digits). This module parses those spellings itself, so the hook, the
emulator and the replication layer read DAP's timestamps the same way on Python 3.10 to 3.13.

No Airflow imports and no I/O: the replication layer and the emulator use it too.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["parse_timestamp"]

# Date, then optionally a time (after "T", "t" or a space) with optional seconds and a fraction
# of 1 to 9 digits ("." or ","), then optionally a zone: "Z"/"z" or +hh:mm, +hhmm, +hh.
_TIMESTAMP = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    (?:
        [Tt\ ]
        (?P<hour>\d{2}):(?P<minute>\d{2})
        (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?
        (?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?
    )?
    """,
    re.VERBOSE | re.ASCII,
)


def _zone(text: str) -> timezone:
    if text in ("Z", "z"):
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_timestamp(text: str, *, naive_is_utc: bool = False) -> datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp into an aware UTC :class:`~datetime.datetime`.

    Accepted (on every Python the package supports, 3.10 included):

    * ``YYYY-MM-DD`` followed optionally by ``T``/``t``/space and ``hh:mm``, ``hh:mm:ss`` or
      ``hh:mm:ss.f`` with **1 to 9 fraction digits** (``.`` or ``,``). Digits beyond the 6th
      (nanoseconds, as DAP and RFC 3339 allow) are **truncated** to microseconds, never rounded,
      so a parsed value is never later than the instant written.
    * a zone ``Z``/``z`` (UTC) or an offset ``+hh:mm``, ``+hhmm``, ``+hh`` (``-`` likewise).
      The result is converted to UTC (``tzinfo`` is :data:`datetime.timezone.utc`).
    * a date alone means midnight of that day.

    A timestamp **without a zone is an error** by default: DAP always sends one, and a naive
    value from a user is ambiguous (local time or UTC?). Pass ``naive_is_utc=True`` where the
    source is known to store UTC without a zone (e.g. a database column the provider wrote).

    Leading or trailing whitespace, leap seconds (``:60``) and week or ordinal dates are rejected.

    :param text: the timestamp, e.g. ``"2024-05-01T12:00:00.123456789Z"``.
    :param naive_is_utc: read a timestamp without a zone as UTC instead of raising.
    :returns: an aware datetime in UTC, microsecond precision.
    :raises ValueError: when ``text`` is not such a timestamp, a field is out of range, or it
        has no zone and ``naive_is_utc`` is false. The message quotes ``text``.
    :raises TypeError: when ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"timestamp must be a str, got {type(text).__name__}")
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)")
    fields = match.groupdict()
    fraction = fields["fraction"] or ""
    try:
        value = datetime(
            int(fields["year"]),
            int(fields["month"]),
            int(fields["day"]),
            int(fields["hour"] or 0),
            int(fields["minute"] or 0),
            int(fields["second"] or 0),
            int(fraction[:6].ljust(6, "0")),  # truncation, not rounding: see the docstring
            tzinfo=_zone(fields["zone"]) if fields["zone"] else None,
        )
    except ValueError as error:
        raise ValueError(f"{text!r} is not a valid timestamp: {error}") from None
    if value.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(
                f"timestamp {text!r} has no time zone; add 'Z' or an offset such as '+00:00' (DAP timestamps are UTC)"
            )
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
