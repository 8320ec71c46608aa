"""How an AWS error is read: retry it, settle by reconciling, or stop."""

from __future__ import annotations

from enum import StrEnum

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "SlowDown",
    }
)
# Server-side errors AWS documents as worth retrying even though some arrive with a 4xx status.
RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "ServerInternal",
        "InsufficientReservedInstanceCapacity",
        "ServiceException",
        "InternalServerException",
        "InternalException",
        "DependentServiceUnavailableFault",
        "ConcurrentModificationException",
    }
)


class Outcome(StrEnum):
    THROTTLED = "throttled"  # AWS answered and did nothing; wait and retry
    SERVER_ERROR = "server_error"  # AWS answered 5xx; for calls without a token the effect may exist
    UNKNOWN = "unknown"  # no answer (connection dropped, read timeout): the effect may exist
    NOT_SENT = "not_sent"  # the connection never opened: nothing reached AWS
    TERMINAL = "terminal"  # AWS refused; retrying will not help


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def classify(exc: BaseException) -> Outcome:
    if isinstance(exc, ClientError):
        code = error_code(exc) or ""
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLING_CODES or status == 429:
            return Outcome.THROTTLED
        if code in RETRYABLE_CODES or status >= 500:
            return Outcome.SERVER_ERROR
        return Outcome.TERMINAL
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return Outcome.NOT_SENT
    if isinstance(exc, (ConnectionClosedError, ReadTimeoutError)):
        return Outcome.UNKNOWN
    return Outcome.UNKNOWN


def describe(exc: BaseException) -> dict[str, str]:
    """An error for the ledger: its code and a message, with nothing secret in it."""
    code = error_code(exc)
    described: dict[str, str] = {}
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))
        # Organizations gives the precise cause beside the code (WAIT_PERIOD_ACTIVE, EMAIL_ALREADY_EXISTS, ...).
        reason = exc.response.get("Reason") or exc.response.get("Error", {}).get("Reason")
        if reason:
            described["reason"] = str(reason)[:200]
    else:
        message = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return {"code": code or type(exc).__name__, "message": message[:1000], **described}
