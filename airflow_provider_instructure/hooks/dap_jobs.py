"""The job half of the DAP wire protocol, without I/O: names, timestamps, query bodies, the job
model and the poll schedule. Shared by the sync hook and the async trigger; re-exported by
:mod:`~airflow_provider_instructure.hooks.dap_protocol`, which holds the token and error half.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from airflow_provider_instructure.exceptions import DapUnexpectedResponse
from airflow_provider_instructure.timestamps import parse_timestamp as parse_timestamp_text

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# -- names, timestamps, queries, jobs ---------------------------------------------------------


def check_name(value: Any, what: str) -> str:
    """Validate a namespace or table name before it goes into a URL."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid DAP name: use lower-case letters, digits and underscores "
            "(e.g. 'canvas', 'web_logs')"
        )
    return value


def format_timestamp(value: datetime) -> str:
    """RFC 3339 UTC with ``Z``, microseconds only when non-zero (what the official client sends)."""
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def parse_timestamp(value: datetime | str, what: str) -> datetime:
    """Accept an aware datetime or an ISO-8601 string with a zone; reject naive values.

    Strings are read by :func:`~airflow_provider_instructure.timestamps.parse_timestamp` (the same
    on Python 3.10, whose ``datetime.fromisoformat`` rejects ``Z`` and 1-9 digit fractions).
    """
    if isinstance(value, str):
        try:
            # Read as UTC when naive only to tell "not a timestamp" from "no zone" (rejected below).
            parsed = parse_timestamp_text(value.strip(), naive_is_utc=True)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not an ISO-8601 timestamp (e.g. 2024-05-01T12:00:00Z)") from None
        try:
            parse_timestamp_text(value.strip())
        except ValueError:
            parsed = parsed.replace(tzinfo=None)
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValueError(f"{what} must be a datetime or an ISO-8601 string, got {type(value).__name__}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(
            f"{what} {value!s} has no time zone; DAP needs an aware timestamp (add 'Z' or '+00:00', "
            "or pass a timezone-aware datetime)"
        )
    return parsed.astimezone(timezone.utc)


FORMATS = ("jsonl", "tsv", "csv", "parquet")
MODES = ("expanded", "condensed")


def build_query(
    format: str = "jsonl",
    mode: str | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> dict[str, Any]:
    """The request body of ``POST .../data``; snapshot when ``since`` is None.

    :raises ValueError: with a message naming the bad argument, before any network call.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not supported; use one of {', '.join(FORMATS)}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode {mode!r} is not supported; use one of {', '.join(MODES)} (or None)")
    body: dict[str, Any] = {"format": format}
    if mode is not None:
        body["mode"] = mode
    if since is None:
        if until is not None:
            raise ValueError("until was given without since; a snapshot has no time window (pass since too)")
        return body
    start = parse_timestamp(since, "since")
    body["since"] = format_timestamp(start)
    if until is not None:
        end = parse_timestamp(until, "until")
        if start >= end:
            raise ValueError(f"since ({body['since']}) must be earlier than until ({format_timestamp(end)})")
        body["until"] = format_timestamp(end)
    return body


class JobStatus(str, Enum):
    """Status of a DAP query job."""

    WAITING = "waiting"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETE, JobStatus.FAILED)

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobStatus:
        try:
            return cls(job.get("status"))
        except ValueError:
            raise DapUnexpectedResponse(f"DAP returned a job with unknown status {job.get('status')!r}") from None


def job_expires_within(job: dict[str, Any], seconds: float, now: float | None = None) -> bool:
    """True when the job's ``expires_at`` is less than ``seconds`` away."""
    expires = job.get("expires_at")
    if not expires:
        return False
    try:
        when = parse_timestamp(expires, "expires_at").timestamp()
    except ValueError:
        return False
    return when - (time.time() if now is None else now) < seconds


# -- polling a job ----------------------------------------------------------------------------

#: seconds to the first status check of a job [chosen by us: DAP documents no job duration;
#: small tables finish in about 2 s, so a fixed 30 s wait cost 30 s per table]
POLL_FIRST = 1.0
#: each wait is this many times the previous one, up to ``poll_interval`` [chosen by us]
POLL_FACTOR = 2.0
#: seconds a deferrable task keeps checking a job in the worker before it defers: the checks
#: at 1, 3 and 7 s [chosen by us]. A job done by then never reaches the triggerer, where an
#: Airflow 3.3 race (apache/airflow issues 66374 and 72716) can set a task ``up_for_retry``
#: when its trigger fires before the scheduler has processed the deferral.
DEFAULT_DEFER_AFTER = 7.0
#: seconds a trigger waits before its first check [chosen by us]: in a real deployment, jobs
#: released about 8 s after the deferral no longer hit that race; 10 s leaves a margin.
DEFAULT_TRIGGER_FIRST_DELAY = 10.0


@dataclass
class PollSchedule:
    """When to check a job's status next: ``first`` seconds, then ``factor`` times longer each
    time, never longer than ``maximum`` (the task's ``poll_interval``): 1, 2, 4, 8, 16, 30, 30...

    ``step`` counts the waits already taken, so a schedule handed from the worker to a trigger
    (as ``poll_step`` in its serialized kwargs) continues where it was instead of restarting.
    No I/O and no clock: callers sleep, so the same object serves the hook and the trigger.

    :raises ValueError: a non-positive ``first``, a negative ``maximum`` (0 means no wait at
        all), a ``factor`` below 1, or a negative ``step``.
    """

    maximum: float = 30.0
    first: float = POLL_FIRST
    factor: float = POLL_FACTOR
    step: int = 0

    def __post_init__(self) -> None:
        if not self.maximum >= 0 or not self.first > 0:
            raise ValueError(
                f"poll intervals must be numbers of seconds, the first one positive "
                f"(maximum={self.maximum!r}, first={self.first!r})"
            )
        if not self.factor >= 1:
            raise ValueError(f"the poll back-off factor must be at least 1, got {self.factor!r}")
        if self.step < 0:
            raise ValueError(f"the poll step must not be negative, got {self.step!r}")

    def delay(self, step: int) -> float:
        """Seconds of the wait number ``step`` (0-based), capped at ``maximum``."""
        # Past 64 doublings every realistic schedule is at its cap; avoid float overflow.
        return min(self.maximum, self.first * self.factor ** min(step, 64))

    def peek(self) -> float:
        """Seconds of the next wait, without taking it."""
        return self.delay(self.step)

    def next(self) -> float:
        """Seconds of the next wait; the schedule moves on by one."""
        seconds = self.peek()
        self.step += 1
        return seconds

    def skip_past(self, seconds: float) -> None:
        """Move on past the waits no longer than ``seconds``: after a longer wait than planned
        (the trigger's first delay) the next one is longer still, not back to short."""
        while self.peek() <= seconds and self.peek() < self.maximum:
            self.step += 1
