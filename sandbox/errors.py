"""AWS-style errors raised by sandbox handlers and rendered in each service's wire format."""

from __future__ import annotations


class AwsError(Exception):
    """An error AWS would return: its code, message and HTTP status.

    ``status`` defaults to the status botocore's model gives the error, or 400 when the error is not modeled.
    ``code`` must be the service's real error code (for example ``IdempotentParameterMismatch`` for EC2 or
    ``ReservedDBInstanceAlreadyExists`` for RDS), so that botocore maps it to the modeled exception class.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"AwsError({self.code!r}, {self.message!r}, {self.status})"


def invalid_parameter(message: str, service: str = "ec2") -> AwsError:
    """The 'bad input' error of each service family."""
    if service == "ec2":
        return AwsError("InvalidParameterValue", message)
    if service in ("rds", "redshift", "elasticache"):
        return AwsError("InvalidParameterValue", message)
    if service == "organizations":
        return AwsError("InvalidInputException", message)
    return AwsError("ValidationException", message)


def missing_parameter(service: str, name: str) -> AwsError:
    """A required parameter is absent (for example an empty structure, which the query protocols drop)."""
    if service in ("ec2", "rds", "redshift", "elasticache", "sts"):
        return AwsError("MissingParameter", f"The request must contain the parameter {name}")
    if service == "organizations":
        return AwsError("InvalidInputException", f"{name} is required.")
    return AwsError("ValidationException", f"{name} is required.")


# Per service: the throttling error AWS really returns, and a server-side failure (5xx).
THROTTLE_ERRORS: dict[str, AwsError] = {
    "ec2": AwsError("RequestLimitExceeded", "Request limit exceeded.", 503),
    "rds": AwsError("Throttling", "Rate exceeded", 400),
    "redshift": AwsError("Throttling", "Rate exceeded", 400),
    "elasticache": AwsError("Throttling", "Rate exceeded", 400),
    "sts": AwsError("Throttling", "Rate exceeded", 400),
    "organizations": AwsError(
        "TooManyRequestsException", "You have sent too many requests in too short a period of time.", 400
    ),
    "savingsplans": AwsError("ThrottlingException", "Rate exceeded", 429),
    "es": AwsError("ThrottlingException", "Rate exceeded", 429),
    "opensearch": AwsError("ThrottlingException", "Rate exceeded", 429),
}

SERVER_ERRORS: dict[str, AwsError] = {
    "ec2": AwsError("InternalError", "An internal error has occurred.", 500),
    "rds": AwsError("InternalFailure", "An internal error has occurred.", 500),
    "redshift": AwsError("InternalFailure", "An internal error has occurred.", 500),
    "elasticache": AwsError("InternalFailure", "An internal error has occurred.", 500),
    "sts": AwsError("InternalFailure", "An internal error has occurred.", 500),
    "organizations": AwsError("ServiceException", "AWS Organizations can't complete your request.", 500),
    "savingsplans": AwsError("InternalServerException", "An internal error has occurred.", 500),
    "es": AwsError("InternalException", "An internal error has occurred.", 500),
    "opensearch": AwsError("InternalException", "An internal error has occurred.", 500),
}

ACCESS_DENIED_CODES: dict[str, tuple[str, int]] = {
    "ec2": ("UnauthorizedOperation", 403),
    "rds": ("AccessDenied", 403),
    "redshift": ("AccessDenied", 403),
    "elasticache": ("AccessDenied", 403),
    "sts": ("AccessDenied", 403),
    "organizations": ("AccessDeniedException", 400),
    "savingsplans": ("AccessDeniedException", 403),
    "es": ("AccessDeniedException", 403),
    "opensearch": ("AccessDeniedException", 403),
}
