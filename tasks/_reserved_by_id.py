"""Shared by the RDS and ElastiCache reservation purchases: one API shape under two sets of names.

Both services sell reservations the same way (aws-commitment-apis.md §1): a catalogue of offerings paged by
``Marker``, a purchase that takes a customer-chosen reservation id, and a describe of reservations by that id.
The id is the idempotency handle: AWS refuses a second reservation with an id already taken
(``...AlreadyExists``), so a plan derives its id from its plan id (``derive_token``), records it in the intent
before the call, and a re-send can never buy twice. "Already exists" is only a reason to look
(``done_signals``): the describe by id decides, and a reservation under this id that is not this plan's
purchase (another offering or count, or one that started before the plan's intent) is a conflict, never taken
for success (``ReservationIdTaken``: AWS refuses the duplicate, so this plan cannot have bought anything under
that id).

Money: the plan bounds the total upfront (``max_upfront_usd``, all units), the hourly price per unit
(``max_hourly_usd``: recurring charges plus the usage price) and the total commitment (``max_total_usd``:
upfront + hourly × count × term hours), each checked against the live offering in ``prepare``. Intake bounds
``max_total_usd`` and ``max_upfront_usd`` by the account's limits before any read; the executor re-checks the
intent's real figures right before the send.

A module whose name starts with "_" registers nothing: the actions are in rds_reservations.py and
elasticache_reservations.py.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, model_validator

from worker.actions import (
    YEAR_SECONDS,
    Absent,
    Action,
    Failed,
    Found,
    Idempotency,
    Intent,
    PlanFailed,
    Reconciled,
    Submitted,
)
from worker.errors import error_code
from worker.execution import derive_token
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, UsdAmount

OfferingType = Literal["No Upfront", "Partial Upfront", "All Upfront"]
# A reservation that exists but whose payment failed bought nothing.
PAYMENT_FAILED = "payment-failed"


def hourly_usd(offering: dict[str, Any]) -> Decimal:
    """The hourly price of one unit: the hourly recurring charges plus the usage price."""
    recurring = sum(
        (Decimal(str(c["RecurringChargeAmount"])) for c in offering.get("RecurringCharges", [])
         if c.get("RecurringChargeFrequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


@dataclass(frozen=True)
class ReservationApi:
    """The names one service gives the shared shape (boto3 operations, request and response members)."""

    offerings_operation: str  # describe_reserved_db_instances_offerings
    offerings_key: str  # ReservedDBInstancesOfferings
    offering_id_key: str  # ReservedDBInstancesOfferingId
    purchase_operation: str  # purchase_reserved_db_instances_offering
    purchased_key: str  # ReservedDBInstance (the purchase's response member)
    reservation_id_key: str  # ReservedDBInstanceId (the customer-chosen id)
    count_key: str  # DBInstanceCount
    reservations_operation: str  # describe_reserved_db_instances
    reservations_key: str  # ReservedDBInstances
    arn_key: str  # ReservedDBInstanceArn
    not_found_code: str  # ReservedDBInstanceNotFound: the describe by id found nothing
    currency_key: str | None  # CurrencyCode; ElastiCache offerings carry none (USD)
    # Names of the result fields: {"id": "reserved_db_instance_id", "arn": ..., "count": "db_instance_count"}.
    result_names: dict[str, str]


class ReservationParams(BaseModel):
    """The parameters both purchases share. Subclasses add the service's selector fields and unit count, and
    map their selector fields to AWS's request members (``AWS_NAMES``)."""

    model_config = STRICT

    AWS_NAMES: ClassVar[dict[str, str]]  # selector field -> the describe-offerings request member

    offering_id: str | None = Field(None, min_length=1, max_length=255,
                                    description="pin one offering; selector fields given must match it")
    duration_years: Annotated[Literal[1, 3], NotBoolean] | None = None
    offering_type: OfferingType | None = None
    product_description: str | None = Field(None, min_length=1, max_length=255)
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all units")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the hourly price per unit (recurring + usage)")
    max_total_usd: UsdAmount = Field(description="ceiling on upfront + hourly × count × term hours")

    @property
    @abstractmethod
    def count(self) -> int: ...

    @model_validator(mode="after")
    def _offering_or_selector(self) -> ReservationParams:
        if self.offering_id is None:
            missing = [name for name in self.AWS_NAMES if getattr(self, name) is None]
            if missing:
                raise ValueError(f"without offering_id, the selector needs {', '.join(missing)}")
        return self

    def offerings_request(self) -> dict[str, Any]:
        """The describe-offerings request: the pinned offering and every selector field given."""
        request: dict[str, Any] = {}
        for name, member in self.AWS_NAMES.items():
            value = getattr(self, name)
            if value is not None:
                # "Duration ... specified in years or seconds": seconds are unambiguous.
                request[member] = str(value * YEAR_SECONDS) if name == "duration_years" else value
        return request


class ReservationIntent(Intent):
    offering_id: str
    reservation_id: str  # the customer-chosen id sent with the purchase (also the intent's idempotency_value)
    count: int
    upfront_usd: Decimal  # total for all units
    hourly_usd: Decimal  # per unit: recurring + usage
    duration_seconds: int
    offering: dict[str, Any]  # the offering's attributes as AWS described them (for the record)
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


ParamsT = TypeVar("ParamsT", bound=ReservationParams)


class ReservedByIdAction(Action[ParamsT, ReservationIntent]):
    """A purchase of reservations identified by a customer-chosen id (RDS, ElastiCache)."""

    api: ClassVar[ReservationApi]
    intent_model = ReservationIntent
    idempotency = Idempotency.CUSTOMER_ID
    # Attributes of an offering kept in the intent, as AWS names them.
    offering_attributes: ClassVar[tuple[str, ...]]

    def max_commitment_usd(self, params: ParamsT) -> Decimal:
        return params.max_total_usd

    # --- reads before --------------------------------------------------------------------------------------
    def _one_offering(self, aws: PlanHandle, p: ParamsT) -> dict[str, Any]:
        request = p.offerings_request()
        if p.offering_id is not None:
            request[self.api.offering_id_key] = p.offering_id
        try:
            offerings = aws.paginate(self.api.offerings_operation, self.api.offerings_key, **request)
        except ClientError as exc:
            if p.offering_id is None or not (error_code(exc) or "").endswith("OfferingNotFound"):
                raise
            offerings = []  # AWS answers "not found" for an unknown pinned offering: no match
        # Exact matches only: RDS's ProductDescription filter also returns partial matches ("mysql" would
        # return "aurora-mysql" too).
        matching = [o for o in offerings if _matches(o, request)]
        if not matching:
            raise PlanFailed(
                "NoMatchingOffering",
                f"no {self.nouns.resource} offering matches {request} in {aws.region}; nothing was bought",
                {"request": request, "near_misses": [o[self.api.offering_id_key] for o in offerings]},
            )
        if len(matching) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(matching)} offerings match {request}; pin one with params.offering_id; nothing was bought",
                {"offering_ids": [o[self.api.offering_id_key] for o in matching]},
            )
        return matching[0]

    def prepare(self, aws: PlanHandle, params: ParamsT) -> ReservationIntent:
        p = params
        offering = self._one_offering(aws, p)
        currency = offering.get(self.api.currency_key, "USD") if self.api.currency_key else "USD"
        if currency != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {currency}, ceilings are in USD; "
                             "nothing was bought")
        count = p.count
        upfront_total = Decimal(str(offering["FixedPrice"])) * count
        hourly = hourly_usd(offering)
        duration = int(offering["Duration"])
        total = upfront_total + hourly * count * (duration // 3600)
        figures = {"upfront_usd": str(upfront_total), "hourly_usd": str(hourly), "total_usd": str(total),
                   "count": count}
        for value, ceiling, what in (
            (upfront_total, p.max_upfront_usd, f"upfront {upfront_total} USD for {count} units exceeds "
                                               f"max_upfront_usd {p.max_upfront_usd}"),
            (hourly, p.max_hourly_usd, f"hourly {hourly} USD per unit exceeds max_hourly_usd {p.max_hourly_usd}"),
            (total, p.max_total_usd, f"total commitment {total} USD exceeds max_total_usd {p.max_total_usd}"),
        ):
            if value > ceiling:
                raise PlanFailed("PriceAboveCeiling", f"{what}; nothing was bought", figures)
        reservation_id = derive_token(aws.plan_id)
        return ReservationIntent(
            offering_id=offering[self.api.offering_id_key],
            reservation_id=reservation_id,
            count=count,
            upfront_usd=upfront_total,
            hourly_usd=hourly,
            duration_seconds=duration,
            offering={k: offering[k] for k in self.offering_attributes if k in offering},
            started_after=aws.earliest_start(),
            idempotency_value=reservation_id,
            commitment_usd=total,
        )

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: ParamsT, intent: ReservationIntent) -> Submitted:
        response = aws.send(self.api.purchase_operation, **{
            self.api.offering_id_key: intent.offering_id,
            self.api.reservation_id_key: intent.reservation_id,
            self.api.count_key: intent.count,
        })
        reservation = response[self.api.purchased_key]
        return Submitted(self._result(intent, reservation, "response"), (reservation[self.api.arn_key],))

    def _result(self, intent: ReservationIntent, reservation: dict[str, Any], found_by: str) -> dict[str, Any]:
        names = self.api.result_names
        return {
            names["id"]: reservation[self.api.reservation_id_key],
            names["arn"]: reservation[self.api.arn_key],
            names["count"]: reservation[self.api.count_key],
            "offering_id": intent.offering_id,
            "upfront_usd": str(intent.upfront_usd),
            "hourly_usd": str(intent.hourly_usd),
            "state": reservation.get("State"),
            "found_by": found_by,
        }

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: ParamsT, intent: ReservationIntent) -> Reconciled:
        try:
            found = aws.paginate(self.api.reservations_operation, self.api.reservations_key,
                                 **{self.api.reservation_id_key: intent.reservation_id})
        except ClientError as exc:
            if error_code(exc) == self.api.not_found_code:
                return Absent({"reservation_id": intent.reservation_id, "aws": self.api.not_found_code})
            raise
        mine = [r for r in found if r.get(self.api.reservation_id_key) == intent.reservation_id]
        if not mine:
            return Absent({"reservation_id": intent.reservation_id})
        reservation = mine[0]
        evidence = {
            "reservation_id": intent.reservation_id,
            "arn": reservation.get(self.api.arn_key),
            "offering_id": reservation.get(self.api.offering_id_key),
            "count": reservation.get(self.api.count_key),
            "start": str(reservation.get("StartTime")),
            "state": reservation.get("State"),
        }
        start = reservation.get("StartTime")
        if (reservation.get(self.api.offering_id_key) != intent.offering_id
                or reservation.get(self.api.count_key) != intent.count
                or not isinstance(start, datetime) or start < intent.started_after):
            return Failed(
                "ReservationIdTaken",
                f"{self.api.reservation_id_key} {intent.reservation_id} is held by another reservation "
                f"({reservation.get(self.api.offering_id_key)} × {reservation.get(self.api.count_key)}, started "
                f"{start}), not this plan's {intent.offering_id} × {intent.count} started after "
                f"{intent.started_after.isoformat()}; AWS refuses a duplicate id, so nothing was bought",
                evidence,
            )
        if reservation.get("State") == PAYMENT_FAILED:
            return Failed("PaymentFailed", f"AWS made reservation {reservation.get(self.api.arn_key)} but its "
                          "payment failed: nothing was bought", evidence)
        return Found(self._result(intent, reservation, "reservation_id"), (reservation[self.api.arn_key],),
                     evidence)


def _matches(offering: dict[str, Any], request: dict[str, Any]) -> bool:
    for member, wanted in request.items():
        actual = offering.get(member)
        if member == "Duration":
            if actual is None or int(actual) != int(wanted):
                return False
        elif isinstance(wanted, str):
            if not isinstance(actual, str) or actual.lower() != wanted.lower():
                return False
        elif actual != wanted:
            return False
    return True

