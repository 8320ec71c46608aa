"""Structured logging: JSON lines in production, readable lines on a terminal, secrets always removed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values never reach a log line or an audit record.
SECRET_KEYS = re.compile(
    r"(secret|password|passwd|token|credential|external_?id|session_?token|authorization|access_?key)", re.I
)
# Keys that match SECRET_KEYS but carry no secret: idempotency tokens are derived from plan ids on purpose.
NOT_SECRET = {"client_token", "clienttoken", "idempotency_token", "token_kind"}
REDACTED = "[redacted]"
# Standard-library loggers of the AWS and HTTP stack. At DEBUG, botocore prints request and response bodies: the
# ExternalId sent to AssumeRole, the credentials it returns, signed headers. No level of commitd's shows them.
CHATTY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def redact(value: Any, key: str | None = None) -> Any:
    if key is not None and key.lower() not in NOT_SECRET and SECRET_KEYS.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: redact(v, k) for k, v in event_dict.items()}


def configure_logging(log_format: str = "auto", level: str = "INFO") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    # Exceptions as plain tracebacks: rich's pretty ones print local variables, which for a hostile entry (a plan
    # nested thousands deep) took minutes and stalled the intake.
    console = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    renderer: Any = structlog.processors.JSONRenderer() if use_json else console
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=getattr(logging, level.upper(), 20))
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, getattr(logging, level.upper(), 20)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
