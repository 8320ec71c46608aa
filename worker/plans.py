"""The plan: commitd's public contract (version 1), and the states a plan moves through."""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal

import botocore.session
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PLAN_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# The same, for Python's ``re.fullmatch`` (in Python, ``$`` also matches before a final newline).
PLAN_ID_CHARS = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Versions of the envelope this build accepts. A producer that sends none means 1.
ACCEPTED_VERSIONS: tuple[int, ...] = (1,)
# ASCII digits only (\d matches Arabic-Indic and other digits), and \Z (``$`` also matches before a final newline).
RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                     r"([Zz]|[+-][0-9]{2}:[0-9]{2})\Z")
DECIMAL = re.compile(r"^[0-9]{1,14}(\.[0-9]{1,4})?\Z")


def _rfc3339_string(value: Any) -> Any:
    """Times are RFC 3339 strings with a zone; nothing else is parsed into a time (no epoch numbers)."""
    if isinstance(value, datetime):  # a value this process built, not input
        return value
    if not isinstance(value, str) or not RFC3339.match(value):
        raise ValueError('must be an RFC 3339 time with a timezone, e.g. "2026-12-01T00:00:00Z"')
    return value


def _decimal_string(value: Any) -> Any:
    """Money is a decimal string ("1200.00"): never a JSON number (binary floating point), never an exponent."""
    if isinstance(value, Decimal):  # a value this process built, not input
        return value
    if not isinstance(value, str) or not DECIMAL.match(value):
        raise ValueError('must be a decimal string of US dollars, e.g. "1200.00" (at most 4 decimals)')
    return value


def _not_a_boolean(value: Any) -> Any:
    """JSON's true/false are not the numbers 1/0 (Python's bool is an int, so a Literal[1, 3] would take True)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


NotBoolean = BeforeValidator(_not_a_boolean)
# The only strings parsed into other types anywhere in a plan (models are strict otherwise).
Rfc3339Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339_string), Field(strict=False)]
UsdAmount = Annotated[Decimal, BeforeValidator(_decimal_string), Field(strict=False, ge=0)]
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class PlanState(StrEnum):
    RECEIVED = "received"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"
    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    SUBMITTED = "submitted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL_STATES = frozenset(
    {PlanState.REJECTED, PlanState.SUCCEEDED, PlanState.FAILED, PlanState.CANCELLED, PlanState.EXPIRED}
)

# Which state may follow which. Anything else is refused by the ledger.
TRANSITIONS: dict[PlanState, frozenset[PlanState]] = {
    PlanState.RECEIVED: frozenset(
        {PlanState.REJECTED, PlanState.SCHEDULED, PlanState.AWAITING_APPROVAL, PlanState.QUEUED, PlanState.EXPIRED}
    ),
    PlanState.SCHEDULED: frozenset({PlanState.QUEUED, PlanState.CANCELLED, PlanState.EXPIRED}),
    PlanState.AWAITING_APPROVAL: frozenset({PlanState.QUEUED, PlanState.CANCELLED, PlanState.EXPIRED}),
    PlanState.QUEUED: frozenset({PlanState.RUNNING, PlanState.CANCELLED, PlanState.EXPIRED, PlanState.NEEDS_ATTENTION}),
    # running -> queued: given back before anything was sent (for example the account's signature lock is busy).
    # running -> awaiting_approval: the live price is above the account's approval threshold. running ->
    # cancelled: an operator cancelled it before its intent was recorded (nothing can have been sent).
    PlanState.RUNNING: frozenset(
        {PlanState.SUBMITTED, PlanState.SUCCEEDED, PlanState.FAILED, PlanState.NEEDS_ATTENTION, PlanState.QUEUED,
         PlanState.EXPIRED, PlanState.AWAITING_APPROVAL, PlanState.CANCELLED}
    ),
    # submitted -> expired: only when nothing was sent, or reads confirmed nothing exists.
    PlanState.SUBMITTED: frozenset(
        {PlanState.SUCCEEDED, PlanState.FAILED, PlanState.NEEDS_ATTENTION, PlanState.EXPIRED}
    ),
    # A person settles a plan that needs attention, after checking AWS.
    PlanState.NEEDS_ATTENTION: frozenset(
        {PlanState.SUCCEEDED, PlanState.FAILED, PlanState.CANCELLED, PlanState.QUEUED}
    ),
    PlanState.REJECTED: frozenset(),
    # succeeded -> needs_attention: a duplicate send detected after success (worker.verify, worker.settle).
    PlanState.SUCCEEDED: frozenset({PlanState.NEEDS_ATTENTION}),
    PlanState.FAILED: frozenset(),
    PlanState.CANCELLED: frozenset(),
    PlanState.EXPIRED: frozenset(),
}

Trigger = Literal["queued", "renewal", "resale", "operator"]


@cache
def _partition_regions(service: str) -> frozenset[str]:
    session = botocore.session.get_session()
    return frozenset(session.get_available_regions(service))


def regions_for(service: str) -> frozenset[str]:
    """Regions where botocore knows the service (global services answer in us-east-1)."""
    regions = _partition_regions(service)
    return regions or frozenset({"us-east-1"})


class PlanEnvelope(BaseModel):
    """Version 1 of a plan. ``params`` is checked separately by the action's own model."""

    model_config = STRICT

    version: Annotated[int, NotBoolean] = Field(1, description="the envelope's contract version (default 1)")
    plan_id: str = Field(pattern=PLAN_ID_PATTERN, description="unique id; the idempotency key of the plan")
    action: str = Field(description="IAM action name, e.g. ec2:PurchaseReservedInstancesOffering")
    account_id: str = Field(pattern=r"^\d{12}$", description="a registered customer account")
    region: str = Field(min_length=1)
    params: dict[str, Any] = Field(description="the action's parameters")
    requested_by: str = Field(min_length=1, max_length=256)
    trigger: Trigger
    not_before: Rfc3339Time | None = None
    expires_at: Rfc3339Time | None = None
    dry_run: bool = False
    notes: str | None = Field(None, max_length=4096)

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in ACCEPTED_VERSIONS:
            accepted = ", ".join(str(v) for v in ACCEPTED_VERSIONS)
            raise ValueError(f"version {value} is not one this build accepts (accepted: {accepted})")
        return value

    @field_validator("requested_by")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _window(self) -> PlanEnvelope:
        if self.not_before and self.expires_at and self.expires_at <= self.not_before:
            raise ValueError("expires_at must be after not_before")
        return self

    def canonical(self) -> str:
        """The plan's content as stable JSON, for detecting a resubmission with different content."""
        # Version 1 is canonicalised without its number, as it was before the field existed: a plan recorded then
        # and sent again now (with or without "version": 1) is the same plan, not a conflict.
        data = self.model_dump(mode="json", exclude={"version"} if self.version == 1 else None)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field: 'params.instance_count: must be ≥ 1'."""
    lines = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err["loc"])
        if prefix:
            location = f"{prefix}.{location}" if location else prefix
        message = err["msg"]
        if err["type"] == "greater_than_equal":
            message = f"must be ≥ {err['ctx']['ge']}"
        elif err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "is required"
        lines.append(f"{location}: {message}" if location else message)
    return "; ".join(lines)

