"""Whether a job's window may be applied to a replica with a given watermark.

The rules (dap-api.md section 10, incremental queries): an incremental must start at or before
the replica's watermark (a later ``since`` leaves a gap whose changes would be lost) and end at
or after it (an earlier ``until`` would bring back older values); an overlap is fine because
every key it carries gets its latest state. A snapshot must not be older than the watermark.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow_provider_instructure.replication.errors import SnapshotRequired, WatermarkError
from airflow_provider_instructure.replication.state import SyncState
from airflow_provider_instructure.timestamps import parse_timestamp


def aware_utc(value: datetime | str, name: str) -> datetime:
    """A job's ``at``/``since``/``until`` as an aware UTC datetime, the same for every destination.

    :param value: a datetime or DAP's RFC 3339 text (``Z``, any fraction: :func:`parse_timestamp`, since
        Python 3.10's ``fromisoformat`` rejects both).
    :param name: the argument's name, for the error.
    :raises ValueError: text that is not a timestamp, or a value without a zone (DAP timestamps are UTC;
        a naive one is a caller's mistake, not something to guess).
    """
    if isinstance(value, str):
        value = parse_timestamp(value)
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (DAP timestamps are UTC), got {value!r}")
    return value.astimezone(timezone.utc)


def check_snapshot_at(previous: SyncState | None, at: datetime, target_name: str) -> None:
    """Refuse a snapshot older than the live replica's watermark.

    :raises WatermarkError: ``at`` is before the watermark of an existing replica.
    """
    if previous is not None and previous.table_exists and at < previous.watermark:
        raise WatermarkError(
            f"snapshot at {at.isoformat()} is older than the watermark {previous.watermark.isoformat()} of "
            f"{target_name}; refusing to move the replica back in time",
            watermark=previous.watermark,
            until=at,
        )


def check_incremental_window(state: SyncState | None, since: datetime, until: datetime, target_name: str) -> SyncState:
    """The state an incremental ``since``..``until`` applies to, or why it cannot be applied.

    :raises SnapshotRequired: no state, or the state's table is gone.
    :raises WatermarkError: the window leaves a gap after the watermark, or ends before it.
    """
    if state is None:
        raise SnapshotRequired(f"{target_name} has no replication state; load a snapshot first")
    if not state.table_exists:
        raise SnapshotRequired(f"{target_name} has a state row but the table is missing; load a snapshot")
    if since > state.watermark:
        raise WatermarkError(
            f"the incremental starts at {since.isoformat()}, after the watermark {state.watermark.isoformat()} of "
            f"{target_name}: changes in between would be lost; query with since={state.watermark.isoformat()}",
            watermark=state.watermark,
            since=since,
            until=until,
        )
    if until < state.watermark:
        raise WatermarkError(
            f"the incremental ends at {until.isoformat()}, before the watermark {state.watermark.isoformat()} of "
            f"{target_name}: applying it would bring back older values",
            watermark=state.watermark,
            since=since,
            until=until,
        )
    return state
