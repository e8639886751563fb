"""``parse_timestamp``: DAP's timestamp spellings read the same on every supported Python.

Python 3.10's ``datetime.fromisoformat`` rejects ``Z`` and fractions other than 3 or 6 digits;
these cases are the ones it rejects, so the test fails on 3.10 if the parser falls back to it.
The module has no Airflow import: on a bare 3.10 interpreter run
``python -m pytest tests/test_timestamps.py --noconftest`` (the matrix's py3.10 cell runs it too).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_instructure.timestamps import parse_timestamp

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # What DAP sends: "Z", with or without a fraction of any length (RFC 3339).
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5Z", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.12Z", datetime(2024, 5, 1, 12, 0, 0, 120000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123Z", datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.1234Z", datetime(2024, 5, 1, 12, 0, 0, 123400, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        # Nanoseconds: truncated (not rounded) to microseconds.
        ("2024-05-01T12:00:00.1234567Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T12:00:00.999999999Z", datetime(2024, 5, 1, 12, 0, 0, 999999, tzinfo=UTC)),
        ("2024-05-01T12:00:00,25Z", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        # Offsets are converted to UTC; what isoformat() writes reads back.
        ("2024-05-01T14:30:00+02:30", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T07:00:00-0500", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T13:00:00+01", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.500000+00:00", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01T12:00:00-00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-12-31T23:30:00-01:00", datetime(2025, 1, 1, 0, 30, tzinfo=UTC)),
    ],
)
def test_dap_spellings(text: str, expected: datetime) -> None:
    value = parse_timestamp(text)
    assert value == expected
    assert value.tzinfo is UTC  # UTC itself, not an equal fixed offset: isoformat() writes +00:00


def test_naive_is_an_error_unless_asked_for_utc() -> None:
    with pytest.raises(ValueError, match=r"'2024-05-01T12:00:00' has no time zone"):
        parse_timestamp("2024-05-01T12:00:00")
    assert parse_timestamp("2024-05-01T12:00:00.25", naive_is_utc=True) == datetime(
        2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC
    )
    assert parse_timestamp("2024-05-01", naive_is_utc=True) == datetime(2024, 5, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-05-01T12:00:00.Z",  # a dot without digits
        "2024-05-01T12:00:00.1234567890Z",  # 10 fraction digits
        "2024-05-01T12Z",  # hours alone
        "2024-5-1T12:00:00Z",
        " 2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00Z ",
        "2024-05-01T12:00:00ZZ",
        "2024-02-30T12:00:00Z",  # no such day
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:60Z",  # leap second
        "2024-05-01T12:00:00+24:00",
        "2024-05-01T12:00:00+01:60",
        "2024-W18-3T12:00:00Z",
        "\uff12\uff10\uff12\uff14-05-01T12:00:00Z",  # full-width digits (\d under re.ASCII)
    ],
)
def test_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text, naive_is_utc=True)


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="datetime"):
        parse_timestamp(datetime(2024, 5, 1, tzinfo=UTC))  # type: ignore[arg-type]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10's fromisoformat is the reason this parser exists")
@pytest.mark.parametrize("fraction", ["", ".1", ".12", ".123", ".1234", ".12345", ".123456"])
@pytest.mark.parametrize("zone", ["Z", "+00:00", "+05:45", "-03:30"])
def test_agrees_with_fromisoformat_of_311(fraction: str, zone: str) -> None:
    """Where Python 3.11+ reads a value, the parser reads the same instant."""
    text = f"2024-02-29T23:59:58{fraction}{zone}"
    assert parse_timestamp(text) == datetime.fromisoformat(text)
    assert parse_timestamp(text).utcoffset() == timedelta(0)
