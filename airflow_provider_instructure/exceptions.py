"""Errors raised by the Instructure provider.

Every DAP error keeps what support needs: the HTTP status, the DAP error ``type``, its
``uuid`` (quote it to Instructure support) and ``message``. None of them ever carries the
client secret, the JWT or a pre-signed URL signature.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_instructure._compat import AirflowException, AirflowFailException


class InstructureError(AirflowException):
    """Base class of every error this provider raises."""


class InstructureConfigError(InstructureError, AirflowFailException):
    """Bad connection settings or task arguments; retrying cannot help. Raised before any network call."""


class DestinationUnavailableError(InstructureError):
    """The sync destination could not be reached (refused, too many clients, restarting, network).

    Deliberately not an ``AirflowFailException``: these are transient, so Airflow's retries apply.
    """


class DapApiError(InstructureError):
    """An error answer from DAP or the Identity Service.

    :param message: human-readable summary (never contains secrets).
    :param status: HTTP status code.
    :param error_type: the DAP ``error.type`` (e.g. ``ValidationError``), if any.
    :param error_uuid: the DAP ``error.uuid`` to quote to Instructure support, if any.
    :param error_message: the DAP ``error.message``, if any.
    :param body: the parsed error object (``{"type", "uuid", "message", ...}``) when JSON.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        error_uuid: str | None = None,
        error_message: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error_uuid = error_uuid
        self.error_message = error_message
        self.body = body or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields would be lost by the default pickling (e.g. across processes).
        return (_rebuild, (type(self), self.args[0] if self.args else "", self.__dict__))


def _rebuild(cls: type[DapApiError], message: str, state: dict[str, Any]) -> DapApiError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class DapCredentialsError(DapApiError, AirflowFailException):
    """The Identity Service refused the ClientID/Secret (or the account is disabled); not retried."""


class DapAuthenticationError(DapApiError):
    """401 from a DAP route even after a fresh login."""


class DapAccountError(DapApiError, AirflowFailException):
    """403 account problems: not onboarded, disabled, under maintenance, request type forbidden."""


class DapValidationError(DapApiError, AirflowFailException):
    """400 ``ValidationError``: the request was malformed."""

    @property
    def location(self) -> dict[str, Any] | None:
        return self.body.get("location")


class DapNotFoundError(DapApiError, AirflowFailException):
    """404: the namespace, table, job or object does not exist (or has expired)."""

    @property
    def kind(self) -> str | None:
        return self.body.get("kind")


class DapOutOfRangeError(DapApiError):
    """400 ``OutOfRangeError``: ``since``/``until`` outside what DAP keeps; a new snapshot is needed."""

    @property
    def allowed_since(self) -> str | None:
        return self.body.get("since")

    @property
    def allowed_until(self) -> str | None:
        return self.body.get("until")


class DapSnapshotRequiredError(DapOutOfRangeError):
    """400 ``SnapshotRequiredError``: the table was reloaded upstream; take a new snapshot."""


class DapRateLimitError(DapApiError):
    """429: the per-endpoint rate limit was hit.

    :param retry_after: seconds the server asked us to wait, when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class DapServerError(DapApiError):
    """5xx (or an unparseable answer from a proxy): transient, retried."""


class DapNoDataYetError(DapApiError):
    """DAP has no data for the table yet: ``ProcessingError`` "There is no data available yet".

    DAP sends it for a table that exists but holds no rows, either as the error answer to
    ``POST .../data`` (HTTP 400/500) or as the ``error`` of a failed job (then ``job_id`` is
    set and ``status`` is None). It is not a failure of the run: the operators end with no
    rows and keep the stored watermark (see the README, "Empty tables"). Recognised by its
    message, case-insensitively (:func:`~airflow_provider_instructure.hooks.dap_protocol.is_no_data_yet`),
    as public pipelines do [user-needs.md section 3, finding 10].

    :param job_id: the failed job's id, when DAP reported it through a job.
    """

    def __init__(self, message: str, *, job_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job_id = job_id


class DapConnectionError(InstructureError):
    """DAP or the Identity Service could not be reached (after retries): network, DNS, TLS or timeouts."""


class DapUnexpectedResponse(DapApiError):
    """A 2xx answer that is not the JSON the API documents."""


class DapJobFailed(InstructureError):
    """A query job ended as ``failed``.

    :param job_id: the DAP job id.
    :param error: the job's ``error`` object (``type``, ``uuid``, ``message``).
    """

    def __init__(self, job_id: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.job_id = job_id
        self.error_type = error.get("type")
        self.error_uuid = error.get("uuid")
        self.error_message = error.get("message")
        super().__init__(
            f"DAP job {job_id} failed: {self.error_type or 'error'}: {self.error_message or 'no message'} "
            f"(error uuid {self.error_uuid or 'n/a'}; quote the job id and uuid to Instructure support)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            DapJobFailed,
            (self.job_id, {"type": self.error_type, "uuid": self.error_uuid, "message": self.error_message}),
        )


class DapJobTimeout(InstructureError):
    """A job did not finish within the allowed time."""


class DapDownloadError(InstructureError):
    """A result file could not be downloaded completely."""
