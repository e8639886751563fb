"""The bad-value policy without a database: timestamp ranges, and the block fixer that leaves
clean blocks alone (the same object, so the bulk paths pay only for the byte searches)."""

from __future__ import annotations

import pytest

from airflow_provider_instructure.replication.errors import BadValueError
from airflow_provider_instructure.replication.values import (
    JSON,
    MYSQL_RANGE,
    POSTGRES_RANGE,
    PYTHON_RANGE,
    TEXT,
    TIMESTAMP,
    TYPED,
    ChunkFixer,
    FieldFixer,
    TimestampRange,
    ValueTally,
)


@pytest.mark.parametrize(
    ("rng", "text", "expected"),
    [
        (POSTGRES_RANGE, "+10000-01-01T00:00:00Z", ("10000-01-01T00:00:00Z", False)),
        (POSTGRES_RANGE, "-0001-01-01T00:00:00.5Z", ("0002-01-01T00:00:00.5Z BC", False)),
        (POSTGRES_RANGE, "0000-06-01T00:00:00Z", ("0001-06-01T00:00:00Z BC", False)),
        (POSTGRES_RANGE, "+300000-01-01T00:00:00Z", ("294276-12-31T23:59:59.999999Z", True)),
        (POSTGRES_RANGE, "-5000-01-01T00:00:00Z", ("4714-11-24T00:00:00Z BC", True)),
        (MYSQL_RANGE, "+10000-01-01T00:00:00Z", ("9999-12-31T23:59:59.999999Z", True)),
        (MYSQL_RANGE, "-0001-01-01T00:00:00Z", ("1000-01-01T00:00:00Z", True)),
        (MYSQL_RANGE, "0999-12-31T23:59:59Z", ("1000-01-01T00:00:00Z", True)),
        (PYTHON_RANGE, "+10000-01-01T00:00:00Z", ("9999-12-31T23:59:59.999999Z", True)),
        (PYTHON_RANGE, "-0001-01-01T00:00:00Z", ("0001-01-01T00:00:00Z", True)),
        (PYTHON_RANGE, "not a timestamp", None),
    ],
)
def test_timestamps_are_stored_exactly_or_clamped(
    rng: TimestampRange, text: str, expected: tuple[str, bool] | None
) -> None:
    assert not rng.ordinary(text)
    assert rng.fix(text) == expected


def test_ordinary_timestamps_skip_the_parser() -> None:
    assert POSTGRES_RANGE.ordinary("2024-01-01T00:00:00Z") and POSTGRES_RANGE.ordinary("0500-01-01T00:00:00Z")
    assert not MYSQL_RANGE.ordinary("0500-01-01T00:00:00Z") and MYSQL_RANGE.ordinary("1000-01-01T00:00:00Z")


NAMES = ["meta.ts", "meta.action", "id", "name", "n", "at", "doc"]
ROLES = [None, None, TYPED, TEXT, TYPED, TIMESTAMP, JSON]


def _fixer(rng: TimestampRange = MYSQL_RANGE) -> tuple[ChunkFixer, ValueTally]:
    tally = ValueTally()
    fields = FieldFixer(
        where="canvas.t -> x.t",
        part="part-1.tsv.gz",
        names=[None, None, *NAMES[2:]],
        roles=ROLES,
        keys=[2],
        action=1,
        timestamps=rng,
        tally=tally,
        null="\\N",
    )
    return ChunkFixer(fields, ROLES), tally


CLEAN = (
    b"2024-01-01T00:00:00Z\tU\t1\t\t-5\t2024-01-01T00:00:00Z\t{}\n"  # an empty text field is fine
    b"2024-01-01T00:00:00Z\tU\t2\t__dap_oversized_truncated__\t7\t\\N\t[1]\n"
)


def test_a_clean_block_is_returned_as_it_is_and_text_placeholders_are_counted() -> None:
    fixer, tally = _fixer()
    assert fixer(CLEAN) is CLEAN
    assert tally.oversized == {"name": 1} and not tally.coerced
    assert fixer.next_line == 4


def test_only_the_lines_that_need_it_are_rewritten() -> None:
    fixer, tally = _fixer()
    block = (
        CLEAN
        + b"2024-01-01T00:00:00Z\tU\t3\tx\t\t+10000-01-01T00:00:00Z\t__cd2_oversized_truncated__\n"
        + b"2024-01-01T00:00:00Z\tD\t\t\\N\t\\N\t\\N\t\\N\n"
        + b"2024-01-01T00:00:00Z\tD\t5\t\t\t\t\n"
        + b"2024-01-01T00:00:00Z\tU\t6\tx\t__dap_oversized_truncated__\t\\N\t\\N\n"
    )
    out = fixer(block)
    assert out == (
        CLEAN
        + b'2024-01-01T00:00:00Z\tU\t3\tx\t\\N\t9999-12-31T23:59:59.999999Z\t"__cd2_oversized_truncated__"\n'
        + b"2024-01-01T00:00:00Z\tD\t5\t\t\\N\t\\N\t\\N\n"
        + b"2024-01-01T00:00:00Z\tU\t6\tx\t\\N\t\\N\t\\N\n"
    )
    assert tally.coerced == {"n": 1, "at": 1, "id": 1}
    assert tally.oversized == {"name": 1, "doc": 1, "n": 1}
    assert tally.skipped_deletes == 1 and fixer.dropped == [5]
    assert tally.samples[("coerced", "at")] == "id=3"
    # Record 4 of the fixed stream is line 6 of the part (header, and the dropped line 5).
    assert [fixer.file_line(n) for n in (1, 3, 4, 5)] == [2, 4, 6, 7]


def test_an_upsert_without_a_key_cannot_load() -> None:
    fixer, _ = _fixer()
    with pytest.raises(BadValueError) as info:
        fixer(CLEAN + b"2024-01-01T00:00:00Z\tU\t\tx\t1\t\\N\t\\N\n")
    assert info.value.line == 4 and info.value.column == "id"
    assert "part-1.tsv.gz, line 4, column id" in str(info.value)
