"""Settings a test, benchmark or demo can steer on one emulator instance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_instructure.emulator.quirks import check_quirks

DEMO_CLIENT_ID = "us-east-1#demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret"

#: Route names used by counters, faults and rate limits.
ROUTES = ("login", "list_tables", "get_schema", "create_job", "get_job", "object_url", "download")

#: Per-minute limits from Instructure's limits page (Nov 2024); dap-api.md section 6.5.
DOCUMENTED_RATE_LIMITS: dict[str, int] = {
    "create_job": 5,
    "list_tables": 5,
    "get_job": 500,
    "get_schema": 500,
    "object_url": 200,
}


#: How a table without data is announced: as the answer to ``POST .../data``, or as a failed job.
NO_DATA_VARIANTS = ("post", "job")
#: DAP's message for a table without data (user-needs.md section 3, finding 10).
NO_DATA_MESSAGE = "There is no data available yet"


@dataclass
class EmulatorConfig:
    """Mutable knobs of one emulator; every field can be changed while the server runs.

    :param clients: ClientID to Secret of the accounts that may log in.
    :param disabled_clients: ClientIDs whose login answers 403 ``AccountDisabled``.
    :param token_lifetime: seconds until an issued JWT expires (``exp``).
    :param login_reject_status: status for refused credentials; 403 is what Instructure
        documents, 401 exercises the other code path.
    :param job_waiting_seconds: minimum time a new job reports ``waiting``.
    :param job_running_seconds: minimum time it then reports ``running`` (it also stays
        running until its files are written).
    :param job_progress: ``"time"`` (wall clock) or ``"polls"`` (one state per poll).
    :param post_wait_seconds: how long ``POST .../data`` may wait for a fast job to finish
        so that it can answer 200 ``complete`` straight away (0 disables).
    :param job_ttl: seconds from creation until a job and its objects expire (24 h upstream).
    :param url_ttl: seconds a pre-signed URL stays valid (15 min upstream).
    :param parts: minimum number of gzip parts per result.
    :param rows_per_part: maximum rows per part; bigger results get more parts.
    :param rate_limits: route name to ``(calls, window_seconds)``; empty means no limits.
    :param tables_without_data: ``"namespace.table"`` to how DAP says the table has no data
        yet: ``"post"`` (``POST .../data`` answers 400 ``ProcessingError`` "There is no data
        available yet") or ``"job"`` (a job is created and fails with that error). The table's
        schema and listing are unaffected. Empty (every table has data) by default.
    :param quirks: value quirks of real DAP results, as ``{quirk: rate}`` with the rate the
        fraction (0 to 1) of eligible cells or delete records that get it: out-of-range
        timestamps, the oversized placeholder in text/JSON/typed columns, empty fields in
        typed columns and in deletes (:mod:`.quirks` lists them). Off (empty) by default.
    :param download_bandwidth: bytes per second each download connection may stream, like
        one S3 object stream (which is far slower than a local disk); 0 means unlimited (the
        default). Applies to downloads that start after the change.
    """

    clients: dict[str, str] = field(default_factory=lambda: {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET})
    disabled_clients: set[str] = field(default_factory=set)
    token_lifetime: float = 3600.0
    login_reject_status: int = 403
    job_waiting_seconds: float = 0.0
    job_running_seconds: float = 0.0
    job_progress: str = "time"
    post_wait_seconds: float = 0.0
    job_ttl: float = 24 * 3600.0
    url_ttl: float = 900.0
    parts: int = 2
    rows_per_part: int = 100_000
    rate_limits: dict[str, tuple[int, float]] = field(default_factory=dict)
    tables_without_data: dict[str, str] = field(default_factory=dict)
    quirks: dict[str, float] = field(default_factory=dict)
    download_bandwidth: float = 0.0

    def enable_rate_limits(self, scale: float = 1.0) -> None:
        """Turn on the documented per-endpoint limits; ``scale`` shrinks the 60 s window.

        ``scale=0.05`` allows 5 job creations per 3 seconds: the same shape, test-sized.
        """
        self.rate_limits = {route: (calls, 60.0 * scale) for route, calls in DOCUMENTED_RATE_LIMITS.items()}

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a mapping, rejecting unknown names."""
        known = set(asdict(self))
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown emulator setting(s): {sorted(unknown)}; known: {sorted(known)}")
        for name, value in values.items():
            if name == "rate_limits":
                value = {route: (int(c), float(w)) for route, (c, w) in value.items()}
            if name == "disabled_clients":
                value = set(value)
            if name == "tables_without_data":
                value = dict(value)
                bad = {t: v for t, v in value.items() if v not in NO_DATA_VARIANTS or "." not in t}
                if bad:
                    raise ValueError(
                        f"tables_without_data wants 'namespace.table': one of {NO_DATA_VARIANTS}, got {bad}"
                    )
            if name == "quirks":
                value = check_quirks(value)
            if name == "download_bandwidth":
                value = float(value)
                if value < 0:
                    raise ValueError(f"download_bandwidth is bytes per second (0: unlimited), got {value}")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disabled_clients"] = sorted(self.disabled_clients)
        data["clients"] = sorted(self.clients)  # never echo secrets
        return data
