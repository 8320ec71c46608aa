"""Family: EC2 capacity reservations. Actions: ec2:CreateCapacityReservation, ec2:ModifyCapacityReservation,
ec2:CancelCapacityReservation, ec2:ModifyInstanceCapacityReservationAttributes.

A capacity reservation is billed at the on-demand rate of its instance type, for every instance it reserves, every
hour it is active, used or not, until it ends (its end date) or is cancelled. Hence:

- **The price.** The production role has no price API (the AWS Price List API is another service), so a plan states
  the on-demand price per instance-hour it was priced at (``on_demand_hourly_usd``). The worker cannot check that
  price against AWS; it checks what the reservation costs *at that price*, right before the call: hourly =
  price × count, total = hourly × billable hours until the end date (docs/actions/ec2-capacity-reservations.md).
- **An end date or an explicit hourly cap.** A limited reservation needs ``max_total_usd``; an open-ended one
  (no end date) needs ``max_hourly_usd``, has no total (``commitment_usd`` is only what a commitment duration
  holds it to), and its result says ``open_ended: true``.
- **Create** carries a ClientToken derived from the plan id. Its reconciling read finds the reservation by the
  plan's tag (where the customer granted ec2:CreateTags, tagged at creation) or by its attributes and a
  CreateDate at or after AWS's time of the intent; one plan at a time per identical request (the ``signature``),
  so two plans' reservations are never taken for each other. A reservation AWS is still provisioning (``pending``,
  future-dated ``assessing``) is followed to ``active``/``scheduled`` or ``failed``.
- **Modify, cancel and an instance's reservation settings** are declarative (the request names the target state),
  so a repeat is harmless and reconciliation checks whether the target state holds. Their signature is the
  reservation (or instance) id: two plans never change one reservation at once.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import EC2_CAPACITY_RESERVATIONS
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Nouns,
    Pending,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.execution import derive_token
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, Rfc3339Time, UsdAmount

CR_ID = r"^cr-[0-9a-f]{17}$"
INSTANCE_ID = r"^i-([0-9a-f]{8}|[0-9a-f]{17})$"
ZONE = r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$"
ZONE_ID = r"^[a-z]{2,5}\d-az\d{1,2}$"
HOUR_SECONDS = 3600
# "If the EndDateType is limited, the Capacity Reservation is cancelled within an hour from the specified time"
# (CreateCapacityReservation, EndDate): a limited reservation may bill one hour past its end date.
END_LATENCY_HOURS = 1
SAME_TIME = timedelta(seconds=1)
PLAN_TAG = "commitd:plan-id"

# CapacityReservationState: what each state means for a plan that created the reservation.
PROVISIONING = frozenset({"pending", "assessing", "delayed", "payment-pending"})  # AWS is still working on it
HOLDING = frozenset({"active", "scheduled"})  # made: capacity held, or scheduled for its start date
ENDED = frozenset({"cancelled", "expired"})
REFUSED = frozenset({"failed", "unsupported", "unavailable", "payment-failed"})  # AWS gave up on it

InstancePlatform = Literal[
    "Linux/UNIX", "Red Hat Enterprise Linux", "SUSE Linux", "Windows", "Windows with SQL Server",
    "Windows with SQL Server Enterprise", "Windows with SQL Server Standard", "Windows with SQL Server Web",
    "Linux with SQL Server Standard", "Linux with SQL Server Web", "Linux with SQL Server Enterprise",
    "RHEL with SQL Server Standard", "RHEL with SQL Server Enterprise", "RHEL with SQL Server Web", "RHEL with HA",
    "RHEL with HA and SQL Server Standard", "RHEL with HA and SQL Server Enterprise", "Ubuntu Pro",
]
Count = Annotated[int, NotBoolean, Field(ge=1, le=10_000)]


class NotConfirmed(Exception):
    """AWS answered a declarative call without confirming it (``Return: false``): the executor reconciles."""


# --- money ---------------------------------------------------------------------------------------------------------
def billable_hours(start: datetime, end: datetime) -> int:
    """Hours billed from ``start`` until a limited reservation ends: whole hours, plus the hour AWS may take to end
    it after its end date."""
    return max(0, math.ceil((end - start).total_seconds() / HOUR_SECONDS)) + END_LATENCY_HOURS


class Cost(BaseModel):
    """What a reservation costs at the plan's price: per hour (all instances), and in total when it has an end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    price_usd: Decimal  # on-demand, per instance-hour, as the plan states it
    instance_count: int
    hourly_usd: Decimal
    billable_hours: int | None  # None: open-ended
    total_usd: Decimal | None  # None: open-ended, no total

    @classmethod
    def of(cls, price: Decimal, count: int, start: datetime, end: datetime | None) -> Cost:
        hourly = price * count
        hours = billable_hours(start, end) if end is not None else None
        return cls(price_usd=price, instance_count=count, hourly_usd=hourly, billable_hours=hours,
                   total_usd=hourly * hours if hours is not None else None)

    @property
    def open_ended(self) -> bool:
        return self.total_usd is None

    def check(self, max_hourly: Decimal | None, max_total: Decimal | None, done: str) -> None:
        """The plan's ceilings against this cost (PlanFailed ``PriceAboveCeiling``); an open-ended reservation
        must have an hourly cap, and has no total that a ``max_total_usd`` could bound."""
        if self.open_ended and max_hourly is None:
            raise PlanFailed("OpenEndedWithoutHourlyCap", "the reservation would have no end date: an open-ended "
                             f"reservation needs max_hourly_usd; nothing was {done}")
        if max_hourly is not None and self.hourly_usd > max_hourly:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"{self.instance_count} × {self.price_usd} USD/hour = {self.hourly_usd} USD/hour exceeds "
                f"max_hourly_usd {max_hourly}; nothing was {done}",
                {"hourly_usd": str(self.hourly_usd), "max_hourly_usd": str(max_hourly)},
            )
        if max_total is None:
            return
        if self.total_usd is None:
            raise PlanFailed("PriceAboveCeiling", f"the reservation would have no end date, so no total: it cannot "
                             f"stay within max_total_usd {max_total}; nothing was {done}",
                             {"open_ended": True, "max_total_usd": str(max_total)})
        if self.total_usd > max_total:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"{self.hourly_usd} USD/hour × {self.billable_hours} hours until the end date = {self.total_usd} USD "
                f"exceeds max_total_usd {max_total}; nothing was {done}",
                {"total_usd": str(self.total_usd), "billable_hours": self.billable_hours,
                 "max_total_usd": str(max_total)},
            )

    def result(self) -> dict[str, Any]:
        return {"on_demand_hourly_usd": str(self.price_usd), "hourly_usd": str(self.hourly_usd),
                "billable_hours": self.billable_hours,
                "total_usd": str(self.total_usd) if self.total_usd is not None else None,
                "open_ended": self.open_ended}


def _end_rules(end_date_type: str | None, end_date: datetime | None) -> None:
    if end_date is not None and end_date_type != "limited":
        raise ValueError("end_date needs end_date_type 'limited'")
    if end_date_type == "limited" and end_date is None:
        raise ValueError("end_date_type 'limited' needs end_date")


# --- reads shared by the actions -------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _same_time(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= SAME_TIME


def _aws_time(aws: PlanHandle) -> datetime:
    """AWS's time (the Date header of the last read), or this worker's clock where AWS sent none."""
    return aws.aws_now() or aws.now()


def describe_reservations(aws: PlanHandle, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return aws.paginate("describe_capacity_reservations", "CapacityReservations", Filters=filters)


def one_reservation(aws: PlanHandle, cr_id: str) -> dict[str, Any] | None:
    """The reservation, or None (a filter, not CapacityReservationIds: an unknown id is an answer, not an error)."""
    found = describe_reservations(aws, [{"Name": "capacity-reservation-id", "Values": [cr_id]}])
    return found[0] if found else None


def existing_reservation(aws: PlanHandle, cr_id: str, done: str) -> dict[str, Any]:
    cr = one_reservation(aws, cr_id)
    if cr is None:
        raise PlanFailed("CapacityReservationNotFound", f"capacity reservation {cr_id} does not exist in account "
                         f"{aws.account.account_id} {aws.region}; nothing was {done}")
    return cr


def in_commitment(cr: dict[str, Any], now: datetime) -> datetime | None:
    """The end of the reservation's commitment duration while it lasts (no cancel, no decrease until then)."""
    end = (cr.get("CommitmentInfo") or {}).get("CommitmentEndDate")
    return end if isinstance(end, datetime) and now < end else None


def reservation_signature(aws: PlanHandle, cr_id: str) -> str:
    # One plan at a time changes a reservation (modify and cancel share it), so that reconciling one plan never
    # sees another plan's change as its own.
    return f"ec2-cr:{aws.account.account_id}:{aws.region}:{cr_id}"


# === ec2:CreateCapacityReservation ==================================================================================
class CreateCapacityReservationParams(BaseModel):
    """Parameters of ec2:CreateCapacityReservation (docs/actions/ec2-capacity-reservations.md)."""

    model_config = STRICT

    instance_type: str = Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", examples=["m5.large"])
    instance_platform: InstancePlatform
    availability_zone: str | None = Field(None, pattern=ZONE, description="the zone's name, e.g. us-east-1a")
    availability_zone_id: str | None = Field(None, pattern=ZONE_ID, description="or its id, e.g. use1-az6")
    tenancy: Literal["default", "dedicated"] = "default"
    instance_count: Count
    instance_match_criteria: Literal["open", "targeted"]
    end_date_type: Literal["limited", "unlimited"]
    end_date: Rfc3339Time | None = None
    start_date: Rfc3339Time | None = Field(None, description="a future-dated reservation (with a commitment)")
    commitment_duration_seconds: Annotated[int, NotBoolean, Field(ge=1, le=10 * 365 * 86400)] | None = None
    on_demand_hourly_usd: UsdAmount = Field(description="the on-demand price per instance-hour the plan assumes")
    max_hourly_usd: UsdAmount | None = Field(None, description="ceiling on the hourly cost of all instances")
    max_total_usd: UsdAmount | None = Field(None, description="ceiling on the hourly cost × hours until the end")

    @model_validator(mode="after")
    def _rules(self) -> CreateCapacityReservationParams:
        if self.availability_zone and self.availability_zone_id:
            raise ValueError("give availability_zone or availability_zone_id, not both")
        _end_rules(self.end_date_type, self.end_date)
        if self.end_date_type == "limited" and self.max_total_usd is None:
            raise ValueError("a limited reservation needs max_total_usd")
        if self.end_date_type == "unlimited":
            if self.max_hourly_usd is None:
                raise ValueError("an open-ended reservation (end_date_type 'unlimited') needs max_hourly_usd")
            if self.max_total_usd is not None:
                raise ValueError("an open-ended reservation has no total for max_total_usd to bound: give an end "
                                 "date, or bound it by the hour with max_hourly_usd alone")
        if (self.start_date is None) != (self.commitment_duration_seconds is None):
            raise ValueError("a future-dated reservation needs start_date and commitment_duration_seconds together")
        if self.start_date and self.end_date and self.end_date <= self.start_date:
            raise ValueError("end_date must be after start_date")
        return self


class CreateIntent(Intent):
    instance_type: str
    instance_platform: str
    availability_zone: str | None
    availability_zone_id: str | None
    tenancy: str
    instance_count: int
    instance_match_criteria: str
    end_date_type: str
    end_date: datetime | None
    start_date: datetime | None
    commitment_duration_seconds: int | None
    tag_on_create: bool
    cost: Cost
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


@register
class CreateCapacityReservation(Action[CreateCapacityReservationParams, CreateIntent]):
    action: ClassVar[str] = "ec2:CreateCapacityReservation"
    family = EC2_CAPACITY_RESERVATIONS
    service: ClassVar[str] = "ec2"
    params_model = CreateCapacityReservationParams
    intent_model = CreateIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="capacity reservations", done="reserved", claim_kind="ec2-cr")
    permissions = frozenset({
        "ec2:CreateCapacityReservation",
        "ec2:DescribeInstanceTypeOfferings",
        "ec2:DescribeCapacityReservations",
    })
    # Tag-on-create (TagSpecifications) needs ec2:CreateTags on AWS.
    optional_permissions = frozenset({"ec2:CreateTags"})

    def max_commitment_usd(self, params: CreateCapacityReservationParams) -> Decimal | None:
        if params.max_total_usd is not None:
            return params.max_total_usd
        if params.max_hourly_usd is not None and params.commitment_duration_seconds is not None:
            # Open-ended with a commitment: AWS holds the reservation (and its bill) for at least that long.
            return params.max_hourly_usd * math.ceil(params.commitment_duration_seconds / HOUR_SECONDS)
        return None  # open-ended, cancellable at any time: bounded by max_hourly_usd only

    # --- reads before ------------------------------------------------------------------------------------------
    def _zone(self, aws: PlanHandle, p: CreateCapacityReservationParams) -> tuple[str | None, str | None]:
        """The zone the reservation goes to, where AWS offers the instance type: the one named, or, when none is
        named, the only zone of the region that offers it."""
        by_id = p.availability_zone_id is not None
        wanted = p.availability_zone_id if by_id else p.availability_zone
        filters = [{"Name": "instance-type", "Values": [p.instance_type]}]
        if wanted:
            filters.append({"Name": "location", "Values": [wanted]})
        offerings = aws.paginate("describe_instance_type_offerings", "InstanceTypeOfferings",
                                 LocationType="availability-zone-id" if by_id else "availability-zone", Filters=filters)
        zones = sorted({o["Location"] for o in offerings if o.get("InstanceType") == p.instance_type})
        if not zones:
            raise PlanFailed("InstanceTypeNotOffered", f"{p.instance_type} is not offered in "
                             f"{wanted or aws.region}; nothing was reserved")
        if len(zones) > 1:
            raise PlanFailed("AmbiguousAvailabilityZone", f"{p.instance_type} is offered in {len(zones)} zones of "
                             f"{aws.region}; name one with availability_zone; nothing was reserved",
                             {"availability_zones": zones})
        return (None, zones[0]) if by_id else (zones[0], None)

    def prepare(self, aws: PlanHandle, params: CreateCapacityReservationParams) -> CreateIntent:
        p = params
        zone, zone_id = self._zone(aws, p)
        now = _aws_time(aws)
        if p.start_date is not None and p.start_date <= now:
            raise PlanFailed("StartDateInPast", f"start_date {p.start_date.isoformat()} is not in the future (AWS's "
                             f"time {now.isoformat()}); nothing was reserved")
        start = p.start_date or now
        if p.end_date is not None and p.end_date <= start:
            raise PlanFailed("EndDateInPast", f"end_date {p.end_date.isoformat()} is not after "
                             f"{start.isoformat()}; nothing was reserved")
        cost = Cost.of(p.on_demand_hourly_usd, p.instance_count, start, p.end_date)
        cost.check(p.max_hourly_usd, p.max_total_usd, "reserved")
        if cost.total_usd is not None:
            commitment: Decimal | None = cost.total_usd
        elif p.commitment_duration_seconds is not None:
            commitment = cost.hourly_usd * math.ceil(p.commitment_duration_seconds / HOUR_SECONDS)
        else:
            commitment = None  # open-ended: nothing beyond the hours it runs; max_hourly_usd bounds those
        started_after = aws.earliest_start()
        where = zone or zone_id
        return CreateIntent(
            instance_type=p.instance_type,
            instance_platform=p.instance_platform,
            availability_zone=zone,
            availability_zone_id=zone_id,
            tenancy=p.tenancy,
            instance_count=p.instance_count,
            instance_match_criteria=p.instance_match_criteria,
            end_date_type=p.end_date_type,
            end_date=p.end_date,
            start_date=p.start_date,
            commitment_duration_seconds=p.commitment_duration_seconds,
            tag_on_create=aws.account.granted("ec2:CreateTags"),
            cost=cost,
            started_after=started_after,
            commitment_usd=commitment,
            idempotency_value=derive_token(aws.plan_id),  # 48 ASCII characters; EC2 allows 64
            # Identical requests run one at a time, so that matching by attributes tells their reservations apart.
            signature=(f"ec2-cr-create:{aws.account.account_id}:{aws.region}:{p.instance_type}:{p.instance_platform}:"
                       f"{where}:{p.tenancy}:{p.instance_count}"),
        )

    # --- the call ----------------------------------------------------------------------------------------------
    def _request(self, aws: PlanHandle, intent: CreateIntent) -> dict[str, Any]:
        # Every field comes from the intent (never from the account's current configuration), so that a re-send
        # with the same ClientToken has the same parameters and AWS returns the first reservation.
        request: dict[str, Any] = {
            "ClientToken": intent.idempotency_value,
            "InstanceType": intent.instance_type,
            "InstancePlatform": intent.instance_platform,
            "Tenancy": intent.tenancy,
            "InstanceCount": intent.instance_count,
            "InstanceMatchCriteria": intent.instance_match_criteria,
            "EndDateType": intent.end_date_type,
        }
        if intent.availability_zone:
            request["AvailabilityZone"] = intent.availability_zone
        else:
            request["AvailabilityZoneId"] = intent.availability_zone_id
        if intent.end_date is not None:
            request["EndDate"] = intent.end_date
        if intent.start_date is not None:
            request.update(StartDate=intent.start_date, CommitmentDuration=intent.commitment_duration_seconds,
                           DeliveryPreference="incremental")  # the only value AWS supports
        if intent.tag_on_create:
            request["TagSpecifications"] = [{"ResourceType": "capacity-reservation", "Tags": [
                {"Key": PLAN_TAG, "Value": aws.plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}]}]
        return request

    def submit(self, aws: PlanHandle, params: CreateCapacityReservationParams, intent: CreateIntent) -> Submitted:
        cr = aws.send("create_capacity_reservation", **self._request(aws, intent))["CapacityReservation"]
        cr_id, state = cr["CapacityReservationId"], cr.get("State", "")
        result = self._result(intent, cr, "response")
        if state in PROVISIONING or state in REFUSED:
            return Submitted(result, (cr_id,), follow=f"capacity reservation {cr_id} is {state}")
        return Submitted(result, (cr_id,))

    def dry_run(self, aws: PlanHandle, params: CreateCapacityReservationParams, intent: CreateIntent) -> dict[str, Any]:
        answer = aws.dry_run("create_capacity_reservation", **self._request(aws, intent))
        would = {"instance_type": intent.instance_type, "availability_zone": intent.availability_zone
                 or intent.availability_zone_id, "instance_count": intent.instance_count,
                 "end_date": _iso(intent.end_date), **intent.cost.result(),
                 "commitment_usd": str(intent.commitment_usd) if intent.commitment_usd is not None else None}
        return {"would_reserve": would, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: CreateIntent, cr: dict[str, Any], found_by: str) -> dict[str, Any]:
        return {
            "capacity_reservation_id": cr["CapacityReservationId"],
            "capacity_reservation_arn": cr.get("CapacityReservationArn"),
            "state": cr.get("State"),
            "instance_type": cr.get("InstanceType", intent.instance_type),
            "instance_platform": cr.get("InstancePlatform", intent.instance_platform),
            "availability_zone": cr.get("AvailabilityZone", intent.availability_zone),
            "tenancy": cr.get("Tenancy", intent.tenancy),
            "instance_count": cr.get("TotalInstanceCount", intent.instance_count),
            "instance_match_criteria": cr.get("InstanceMatchCriteria", intent.instance_match_criteria),
            "end_date_type": intent.end_date_type,
            "end_date": _iso(intent.end_date),
            "start_date": _iso(intent.start_date),
            **intent.cost.result(),
            "found_by": found_by,
        }

    # --- reconciliation ----------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: CreateCapacityReservationParams, intent: CreateIntent) -> Reconciled:
        accepted = (aws.accepted or {}).get("capacity_reservation_id")
        if accepted:  # AWS answered with the reservation's id: follow that one
            cr = one_reservation(aws, accepted)
            return self._outcome(intent, cr, "response") if cr else Absent({"accepted": accepted})
        if intent.tag_on_create:
            # Tags given at creation are part of it: no tag, no reservation.
            tagged = describe_reservations(aws, [{"Name": f"tag:{PLAN_TAG}", "Values": [aws.plan_id]}])
            if len(tagged) > 1:
                return Ambiguous(tuple(c["CapacityReservationId"] for c in tagged), {"found_by": "tag"})
            return self._outcome(intent, tagged[0], "tag") if tagged else Absent({"found_by": "tag"})
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["CapacityReservationId"] for c in candidates])
        mine = [c for c in candidates if c["CapacityReservationId"] not in elsewhere]
        evidence = {"matched": [c["CapacityReservationId"] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        return self._outcome(intent, mine[0], "attributes")

    def _outcome(self, intent: CreateIntent, cr: dict[str, Any], found_by: str) -> Reconciled:
        cr_id, state = cr["CapacityReservationId"], cr.get("State", "")
        if state in PROVISIONING:
            return Pending(f"capacity reservation {cr_id} is {state}", {"capacity_reservation_id": cr_id})
        if state in REFUSED:
            return Failed("CapacityReservationFailed", f"AWS reports capacity reservation {cr_id} as {state}: it "
                          "holds no capacity and is not billed", {"capacity_reservation_id": cr_id, "state": state})
        # active or scheduled; or already cancelled/expired by someone else: it was made, and it is this plan's.
        return Found(self._result(intent, cr, found_by), (cr_id,))

    def _matching(self, aws: PlanHandle, intent: CreateIntent) -> list[dict[str, Any]]:
        """Reservations with the intent's attributes and count, created at or after the intent (AWS's clock)."""
        filters = [
            {"Name": "instance-type", "Values": [intent.instance_type]},
            {"Name": "instance-platform", "Values": [intent.instance_platform]},
            {"Name": "tenancy", "Values": [intent.tenancy]},
            {"Name": "end-date-type", "Values": [intent.end_date_type]},
            {"Name": "instance-match-criteria", "Values": [intent.instance_match_criteria]},
        ]
        if intent.availability_zone:
            filters.append({"Name": "availability-zone", "Values": [intent.availability_zone]})
        else:
            filters.append({"Name": "availability-zone-id", "Values": [str(intent.availability_zone_id)]})
        matched = []
        for cr in describe_reservations(aws, filters):
            if cr.get("TotalInstanceCount") != intent.instance_count or not _same_time(cr.get("EndDate"),
                                                                                         intent.end_date):
                continue
            if intent.start_date is not None and not _same_time(cr.get("StartDate"), intent.start_date):
                continue
            created = cr.get("CreateDate")
            if not isinstance(created, datetime) or created < intent.started_after:
                continue
            matched.append(cr)
        return matched


# === ec2:ModifyCapacityReservation ==================================================================================
class ModifyCapacityReservationParams(BaseModel):
    """Parameters of ec2:ModifyCapacityReservation: the target count, end and instance eligibility."""

    model_config = STRICT

    capacity_reservation_id: str = Field(pattern=CR_ID)
    instance_count: Count | None = None
    end_date_type: Literal["limited", "unlimited"] | None = None
    end_date: Rfc3339Time | None = None
    instance_match_criteria: Literal["open", "targeted"] | None = Field(
        None, description="which instances the reservation accepts: any matching one (open), or only those that "
                          "target it (targeted)")
    on_demand_hourly_usd: UsdAmount | None = Field(None, description="needed when the count or the end changes")
    max_hourly_usd: UsdAmount | None = None
    max_total_usd: UsdAmount | None = None

    @property
    def changes_cost(self) -> bool:
        return self.instance_count is not None or self.end_date_type is not None

    @model_validator(mode="after")
    def _rules(self) -> ModifyCapacityReservationParams:
        if not self.changes_cost and self.instance_match_criteria is None:
            raise ValueError("nothing to change: give instance_count, end_date_type/end_date or "
                             "instance_match_criteria")
        _end_rules(self.end_date_type, self.end_date)
        money = (self.on_demand_hourly_usd, self.max_hourly_usd, self.max_total_usd)
        if not self.changes_cost:
            if any(m is not None for m in money):
                raise ValueError("on_demand_hourly_usd, max_hourly_usd and max_total_usd apply only to a change of "
                                 "instance_count or end date (instance eligibility costs nothing)")
            return self
        if self.on_demand_hourly_usd is None:
            raise ValueError("a change of instance_count or end date needs on_demand_hourly_usd")
        if self.end_date_type == "limited" and self.max_total_usd is None:
            raise ValueError("a limited reservation needs max_total_usd")
        if self.end_date_type == "unlimited":
            if self.max_hourly_usd is None:
                raise ValueError("an open-ended reservation (end_date_type 'unlimited') needs max_hourly_usd")
            if self.max_total_usd is not None:
                raise ValueError("an open-ended reservation has no total for max_total_usd to bound")
        if self.max_hourly_usd is None and self.max_total_usd is None:
            raise ValueError("a change of instance_count needs max_total_usd (limited) or max_hourly_usd "
                             "(open-ended)")
        return self


class ModifyIntent(Intent):
    capacity_reservation_id: str
    instance_count: int | None
    end_date_type: str | None
    end_date: datetime | None
    instance_match_criteria: str | None
    before: dict[str, Any]
    cost: Cost | None  # None: the change costs nothing (instance eligibility only)


def _reservation_view(cr: dict[str, Any]) -> dict[str, Any]:
    return {"state": cr.get("State"), "instance_count": cr.get("TotalInstanceCount"),
            "end_date_type": cr.get("EndDateType"), "end_date": _iso(cr.get("EndDate")),
            "instance_match_criteria": cr.get("InstanceMatchCriteria")}


@register
class ModifyCapacityReservation(Action[ModifyCapacityReservationParams, ModifyIntent]):
    action: ClassVar[str] = "ec2:ModifyCapacityReservation"
    family = EC2_CAPACITY_RESERVATIONS
    service: ClassVar[str] = "ec2"
    params_model = ModifyCapacityReservationParams
    intent_model = ModifyIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="capacity reservation changes", done="changed", claim_kind="ec2-cr-modify")
    permissions = frozenset({"ec2:ModifyCapacityReservation", "ec2:DescribeCapacityReservations"})

    def max_commitment_usd(self, params: ModifyCapacityReservationParams) -> Decimal | None:
        return params.max_total_usd

    def prepare(self, aws: PlanHandle, params: ModifyCapacityReservationParams) -> ModifyIntent:
        p = params
        cr = existing_reservation(aws, p.capacity_reservation_id, "changed")
        if cr.get("State") != "active":
            raise PlanFailed("CapacityReservationNotModifiable", f"capacity reservation {p.capacity_reservation_id} "
                             f"is {cr.get('State')}: AWS changes only active reservations; nothing was changed")
        cost: Cost | None = None
        if p.changes_cost:
            assert p.on_demand_hourly_usd is not None  # the params' rules
            now = _aws_time(aws)
            count = p.instance_count or int(cr["TotalInstanceCount"])
            end = p.end_date if p.end_date_type is not None else cr.get("EndDate")
            if end is not None and end <= now:
                raise PlanFailed("EndDateInPast", f"end_date {end.isoformat()} is not in the future (AWS's time "
                                 f"{now.isoformat()}); nothing was changed")
            cost = Cost.of(p.on_demand_hourly_usd, count, now, end)
            if not cost.open_ended and p.max_total_usd is None:
                raise PlanFailed("MissingCeiling", f"capacity reservation {p.capacity_reservation_id} ends on "
                                 f"{end.isoformat() if end else None}: a limited reservation needs max_total_usd; "
                                 "nothing was changed")
            cost.check(p.max_hourly_usd, p.max_total_usd, "changed")
        return ModifyIntent(
            capacity_reservation_id=p.capacity_reservation_id,
            instance_count=p.instance_count,
            end_date_type=p.end_date_type,
            end_date=p.end_date,
            instance_match_criteria=p.instance_match_criteria,
            before=_reservation_view(cr),
            cost=cost,
            commitment_usd=cost.total_usd if cost is not None else None,
            signature=reservation_signature(aws, p.capacity_reservation_id),
        )

    def _request(self, intent: ModifyIntent) -> dict[str, Any]:
        request: dict[str, Any] = {"CapacityReservationId": intent.capacity_reservation_id}
        if intent.instance_count is not None:
            request["InstanceCount"] = intent.instance_count
        if intent.end_date_type is not None:
            request["EndDateType"] = intent.end_date_type
        if intent.end_date is not None:
            request["EndDate"] = intent.end_date
        if intent.instance_match_criteria is not None:
            request["InstanceMatchCriteria"] = intent.instance_match_criteria
        return request

    def submit(self, aws: PlanHandle, params: ModifyCapacityReservationParams, intent: ModifyIntent) -> Submitted:
        # Declarative: the request names the target count, end and eligibility, never a delta, so sending it again
        # (after a lost answer, or when the target already holds) changes nothing more. ``reconcile`` relies on it.
        response = aws.send("modify_capacity_reservation", **self._request(intent))
        if not response.get("Return"):
            raise NotConfirmed(f"ModifyCapacityReservation answered Return={response.get('Return')}")
        return Submitted(self._result(intent, None, "response"), ())

    def dry_run(self, aws: PlanHandle, params: ModifyCapacityReservationParams, intent: ModifyIntent) -> dict[str, Any]:
        answer = aws.dry_run("modify_capacity_reservation", **self._request(intent))
        return {"would_change": self._result(intent, None, "dry_run"), "permitted": answer == "DryRunOperation",
                "aws_answer": answer}

    def _result(self, intent: ModifyIntent, cr: dict[str, Any] | None, found_by: str) -> dict[str, Any]:
        target = {"instance_count": intent.instance_count, "end_date_type": intent.end_date_type,
                  "end_date": _iso(intent.end_date), "instance_match_criteria": intent.instance_match_criteria}
        result: dict[str, Any] = {
            "capacity_reservation_id": intent.capacity_reservation_id,
            "changed": {k: v for k, v in target.items() if v is not None},
            "before": intent.before,
            "found_by": found_by,
        }
        if cr is not None:
            result["now"] = _reservation_view(cr)
        if intent.cost is not None:
            result.update(intent.cost.result())
        return result

    def reconcile(self, aws: PlanHandle, params: ModifyCapacityReservationParams, intent: ModifyIntent) -> Reconciled:
        cr_id = intent.capacity_reservation_id
        cr = one_reservation(aws, cr_id)
        if cr is None:
            return Failed("CapacityReservationNotFound", f"capacity reservation {cr_id} no longer exists")
        if self._target_holds(intent, cr):
            # The target state holds: this plan's change, or one already in place (a declarative change is done
            # once its target holds, whoever made it).
            return Found(self._result(intent, cr, "describe"), ())
        if cr.get("State") != "active":
            return Failed("IncorrectState", f"capacity reservation {cr_id} is {cr.get('State')}: the change can no "
                          "longer be made", {"seen": _reservation_view(cr)})
        return Absent({"seen": _reservation_view(cr)})

    @staticmethod
    def _target_holds(intent: ModifyIntent, cr: dict[str, Any]) -> bool:
        if intent.instance_count is not None and cr.get("TotalInstanceCount") != intent.instance_count:
            return False
        if intent.end_date_type is not None and (cr.get("EndDateType") != intent.end_date_type
                                                 or not _same_time(cr.get("EndDate"), intent.end_date)):
            return False
        return intent.instance_match_criteria is None or cr.get("InstanceMatchCriteria") == \
            intent.instance_match_criteria


# === ec2:CancelCapacityReservation ==================================================================================
class CancelCapacityReservationParams(BaseModel):
    """Parameters of ec2:CancelCapacityReservation."""

    model_config = STRICT

    capacity_reservation_id: str = Field(pattern=CR_ID)


class CancelIntent(Intent):
    capacity_reservation_id: str
    state_before: str


@register
class CancelCapacityReservation(Action[CancelCapacityReservationParams, CancelIntent]):
    action: ClassVar[str] = "ec2:CancelCapacityReservation"
    family = EC2_CAPACITY_RESERVATIONS
    service: ClassVar[str] = "ec2"
    params_model = CancelCapacityReservationParams
    intent_model = CancelIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="capacity reservation cancellations", done="cancelled", claim_kind="ec2-cr-cancel")
    permissions = frozenset({"ec2:CancelCapacityReservation", "ec2:DescribeCapacityReservations"})
    # AWS refuses to cancel a reservation that is already cancelled (or expired): look, and a cancelled one is done.
    done_signals = frozenset({"IncorrectState"})

    def prepare(self, aws: PlanHandle, params: CancelCapacityReservationParams) -> CancelIntent:
        cr_id = params.capacity_reservation_id
        cr = existing_reservation(aws, cr_id, "cancelled")
        state = cr.get("State", "")
        refusal = self._not_cancellable(cr, _aws_time(aws))
        if refusal is not None:
            raise PlanFailed("CancelNotAllowed", f"{refusal}; nothing was cancelled", {"state": state})
        # An already cancelled (or expired) reservation is sent the cancel all the same: AWS refuses it with
        # IncorrectState (a done signal), and reconciliation reads the state that settles the plan.
        return CancelIntent(capacity_reservation_id=cr_id, state_before=state,
                            signature=reservation_signature(aws, cr_id))

    @staticmethod
    def _not_cancellable(cr: dict[str, Any], now: datetime) -> str | None:
        cr_id, state = cr["CapacityReservationId"], cr.get("State", "")
        if state == "scheduled":
            return f"capacity reservation {cr_id} is scheduled: AWS cancels it only after its commitment"
        if state == "active" and (commitment_end := in_commitment(cr, now)) is not None:
            return f"capacity reservation {cr_id} is inside its commitment until {commitment_end.isoformat()}"
        if state in REFUSED:
            return f"capacity reservation {cr_id} is {state}: it holds nothing to cancel"
        return None

    def submit(self, aws: PlanHandle, params: CancelCapacityReservationParams, intent: CancelIntent) -> Submitted:
        # Cancelling ends in a terminal state, so a repeat cannot do more: AWS refuses it (IncorrectState, a done
        # signal) and ``reconcile`` finds the reservation cancelled.
        response = aws.send("cancel_capacity_reservation", CapacityReservationId=intent.capacity_reservation_id)
        if not response.get("Return"):
            raise NotConfirmed(f"CancelCapacityReservation answered Return={response.get('Return')}")
        return Submitted({"capacity_reservation_id": intent.capacity_reservation_id, "state": "cancelled",
                          "state_before": intent.state_before, "found_by": "response"}, ())

    def dry_run(self, aws: PlanHandle, params: CancelCapacityReservationParams, intent: CancelIntent) -> dict[str, Any]:
        answer = aws.dry_run("cancel_capacity_reservation", CapacityReservationId=intent.capacity_reservation_id)
        return {"would_cancel": {"capacity_reservation_id": intent.capacity_reservation_id,
                                 "state_before": intent.state_before},
                "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def reconcile(self, aws: PlanHandle, params: CancelCapacityReservationParams, intent: CancelIntent) -> Reconciled:
        cr_id = intent.capacity_reservation_id
        cr = one_reservation(aws, cr_id)
        if cr is None:
            return Failed("CapacityReservationNotFound", f"capacity reservation {cr_id} no longer exists")
        state = cr.get("State", "")
        if state in ENDED:
            # Cancelled (by this plan, or before it): the target state holds. Expired: it ended on its own and
            # holds and bills nothing any more, which is what a cancel wants.
            return Found({"capacity_reservation_id": cr_id, "state": state, "state_before": intent.state_before,
                          "ended_at": _iso(cr.get("EndDate")), "found_by": "describe"}, ())
        refusal = self._not_cancellable(cr, _aws_time(aws))
        if refusal is not None:
            return Failed("IncorrectState", refusal, {"state": state})
        return Absent({"state": state})


# === ec2:ModifyInstanceCapacityReservationAttributes ================================================================
class ModifyInstanceCapacityReservationAttributesParams(BaseModel):
    """Parameters of ec2:ModifyInstanceCapacityReservationAttributes: one stopped instance, and either a preference
    or one capacity reservation to target."""

    model_config = STRICT

    instance_id: str = Field(pattern=INSTANCE_ID)
    capacity_reservation_preference: Literal["open", "none", "capacity-reservations-only"] | None = None
    capacity_reservation_id: str | None = Field(None, pattern=CR_ID, description="target this reservation")

    @model_validator(mode="after")
    def _one_target(self) -> ModifyInstanceCapacityReservationAttributesParams:
        if (self.capacity_reservation_preference is None) == (self.capacity_reservation_id is None):
            raise ValueError("give capacity_reservation_preference or capacity_reservation_id (one of them)")
        return self


class InstanceAttributesIntent(Intent):
    instance_id: str
    specification: dict[str, Any]  # the CapacityReservationSpecification sent
    before: dict[str, Any]  # the instance's specification as read before


# AWS shows an instance that was never given a specification as preferring open reservations.
DEFAULT_SPECIFICATION: dict[str, Any] = {"CapacityReservationPreference": "open"}


def _specification(instance: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = instance.get("CapacityReservationSpecification") or DEFAULT_SPECIFICATION
    target = (spec.get("CapacityReservationTarget") or {}).get("CapacityReservationId")
    if target:
        return {"CapacityReservationTarget": {"CapacityReservationId": target}}
    return {"CapacityReservationPreference": spec.get("CapacityReservationPreference") or "open"}


@register
class ModifyInstanceCapacityReservationAttributes(
    Action[ModifyInstanceCapacityReservationAttributesParams, InstanceAttributesIntent]
):
    action: ClassVar[str] = "ec2:ModifyInstanceCapacityReservationAttributes"
    family = EC2_CAPACITY_RESERVATIONS
    service: ClassVar[str] = "ec2"
    params_model = ModifyInstanceCapacityReservationAttributesParams
    intent_model = InstanceAttributesIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="instance capacity reservation settings", done="changed", claim_kind="ec2-instance-cr")
    permissions = frozenset({
        "ec2:ModifyInstanceCapacityReservationAttributes",
        "ec2:DescribeInstances",
        "ec2:DescribeCapacityReservations",
    })

    def _instance(self, aws: PlanHandle, instance_id: str) -> dict[str, Any] | None:
        reservations = aws.paginate("describe_instances", "Reservations",
                                    Filters=[{"Name": "instance-id", "Values": [instance_id]}])
        instances = [i for r in reservations for i in r.get("Instances", []) if i.get("InstanceId") == instance_id]
        return instances[0] if instances else None

    def prepare(
        self, aws: PlanHandle, params: ModifyInstanceCapacityReservationAttributesParams
    ) -> InstanceAttributesIntent:
        p = params
        instance = self._instance(aws, p.instance_id)
        if instance is None:
            raise PlanFailed("InstanceNotFound", f"instance {p.instance_id} does not exist in account "
                             f"{aws.account.account_id} {aws.region}; nothing was changed")
        state = (instance.get("State") or {}).get("Name")
        if state != "stopped":
            raise PlanFailed("InstanceNotStopped", f"instance {p.instance_id} is {state}: AWS changes an instance's "
                             "capacity reservation settings only while it is stopped; stop it first; nothing was "
                             "changed", {"instance_state": state})
        if p.capacity_reservation_id is not None:
            self._check_target(aws, instance, p.capacity_reservation_id)
            spec: dict[str, Any] = {"CapacityReservationTarget": {"CapacityReservationId": p.capacity_reservation_id}}
        else:
            spec = {"CapacityReservationPreference": p.capacity_reservation_preference}
        return InstanceAttributesIntent(
            instance_id=p.instance_id, specification=spec, before=_specification(instance),
            # One plan at a time changes an instance's settings.
            signature=f"ec2-instance-cr:{aws.account.account_id}:{aws.region}:{p.instance_id}",
        )

    @staticmethod
    def _check_target(aws: PlanHandle, instance: dict[str, Any], cr_id: str) -> None:
        """The targeted reservation exists, is live and fits the instance (else the instance could not use it)."""
        cr = existing_reservation(aws, cr_id, "changed")
        if cr.get("State") not in HOLDING | PROVISIONING:
            raise PlanFailed("CapacityReservationNotActive", f"capacity reservation {cr_id} is {cr.get('State')}; "
                             "nothing was changed")
        placement = instance.get("Placement") or {}
        wanted = {"instance type": (cr.get("InstanceType"), instance.get("InstanceType")),
                  "availability zone": (cr.get("AvailabilityZone"), placement.get("AvailabilityZone")),
                  "tenancy": (cr.get("Tenancy", "default"), placement.get("Tenancy", "default"))}
        misfits = {what: {"reservation": r, "instance": i} for what, (r, i) in wanted.items() if r != i}
        if misfits:
            raise PlanFailed("ReservationDoesNotFitInstance", f"capacity reservation {cr_id} does not fit instance "
                             f"{instance.get('InstanceId')} ({', '.join(misfits)} differ); nothing was changed",
                             misfits)

    def _request(self, intent: InstanceAttributesIntent) -> dict[str, Any]:
        return {"InstanceId": intent.instance_id, "CapacityReservationSpecification": intent.specification}

    def submit(
        self, aws: PlanHandle, params: ModifyInstanceCapacityReservationAttributesParams,
        intent: InstanceAttributesIntent,
    ) -> Submitted:
        # Declarative: the request names the instance's target setting, so a repeat (after a lost answer) changes
        # nothing more; ``reconcile`` reads the setting back.
        response = aws.send("modify_instance_capacity_reservation_attributes", **self._request(intent))
        if not response.get("Return"):
            raise NotConfirmed(f"ModifyInstanceCapacityReservationAttributes answered Return={response.get('Return')}")
        return Submitted(self._result(intent, "response"), ())

    def dry_run(
        self, aws: PlanHandle, params: ModifyInstanceCapacityReservationAttributesParams,
        intent: InstanceAttributesIntent,
    ) -> dict[str, Any]:
        answer = aws.dry_run("modify_instance_capacity_reservation_attributes", **self._request(intent))
        return {"would_change": self._result(intent, "dry_run"), "permitted": answer == "DryRunOperation",
                "aws_answer": answer}

    def _result(self, intent: InstanceAttributesIntent, found_by: str) -> dict[str, Any]:
        return {"instance_id": intent.instance_id, "capacity_reservation_specification": intent.specification,
                "before": intent.before, "found_by": found_by}

    def reconcile(
        self, aws: PlanHandle, params: ModifyInstanceCapacityReservationAttributesParams,
        intent: InstanceAttributesIntent,
    ) -> Reconciled:
        instance = self._instance(aws, intent.instance_id)
        if instance is None:
            return Failed("InstanceNotFound", f"instance {intent.instance_id} no longer exists")
        seen = _specification(instance)
        if seen == intent.specification:
            return Found(self._result(intent, "describe"), ())
        return Absent({"seen": seen})
