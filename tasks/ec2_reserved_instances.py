"""Family: EC2 reserved instances. Action: ec2:PurchaseReservedInstancesOffering.

The purchase has no idempotency token (aws-commitment-apis.md §1), so it rests on the executor's protocol for
such calls (docs/exactly-once.md): one plan at a time per offering (the intent's ``signature``), the intent and a
durable send record before the call, and a reconciling DescribeReservedInstances that matches the offering's
attributes, the count, and a start at or after AWS's own time when the intent was made (never the worker's
clock). Where the customer granted ec2:CreateTags, each RI is tagged with its plan id and found by that tag first.

Money: the plan bounds the upfront total and the hourly price per instance; intake bounds the total commitment
(upfront + hourly × count × term hours) by the account's limit before any read, and the executor checks the
offering's real total against the account's current limits right before the send. ``LimitPrice`` is sent as well,
but AWS documents it for Marketplace offerings and it never covers the hourly part: the ceilings above do.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import EC2_RESERVED_INSTANCES
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Found,
    Idempotency,
    Intent,
    Nouns,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.handle import PlanHandle
from worker.plans import STRICT, NotBoolean, Rfc3339Time, UsdAmount

YEAR_SECONDS = 31_536_000
# AWS stamps an RI's Start with its own clock; the Date header we compare with has one-second resolution.
AWS_CLOCK_TOLERANCE = timedelta(seconds=10)
# Without a Date header (never seen on AWS), fall back to this worker's clock with a wide tolerance.
WORKER_CLOCK_TOLERANCE = timedelta(seconds=120)
RECONCILE_STATES = ["payment-pending", "active", "queued"]
PLAN_TAG = "commitd:plan-id"


class PurchaseReservedInstancesParams(BaseModel):
    """Parameters of ec2:PurchaseReservedInstancesOffering (docs/plans.md)."""

    model_config = STRICT

    instance_type: str = Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", examples=["m5.large"])
    product_description: str = "Linux/UNIX"
    offering_class: Literal["standard", "convertible"]
    offering_type: Literal["No Upfront", "Partial Upfront", "All Upfront"]
    duration_years: Annotated[Literal[1, 3], NotBoolean]
    scope: Literal["Region", "Availability Zone"]
    availability_zone: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
    tenancy: Literal["default", "dedicated"] = "default"
    instance_count: int = Field(ge=1, le=10_000)
    offering_id: str | None = Field(None, min_length=1, description="pin one offering; it must match the fields")
    purchase_time: Rfc3339Time | None = Field(None, description="queue the purchase (regional RIs only)")
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all instances")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the recurring hourly price per instance")

    @model_validator(mode="after")
    def _scope_rules(self) -> PurchaseReservedInstancesParams:
        if self.scope == "Availability Zone" and not self.availability_zone:
            raise ValueError("availability_zone is required when scope is 'Availability Zone'")
        if self.scope == "Region" and self.availability_zone:
            raise ValueError("availability_zone is only for scope 'Availability Zone'")
        if self.purchase_time is not None and self.scope != "Region":
            raise ValueError("purchase_time (a queued purchase) is only possible for regional RIs")
        return self

    @property
    def term_hours(self) -> int:
        return self.duration_years * YEAR_SECONDS // 3600


class OfferingAttributes(BaseModel):
    """The attributes a reconciling read matches an RI on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_type: str
    product_description: str
    duration: int
    scope: str
    availability_zone: str | None
    offering_class: str
    offering_type: str
    tenancy: str


class RiPurchaseIntent(Intent):
    offering_id: str
    instance_count: int
    upfront_usd: Decimal  # total for all instances; also the LimitPrice
    hourly_usd: Decimal  # recurring, per instance
    marketplace: bool
    offering: OfferingAttributes
    purchase_time: datetime | None
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


def _hourly(offering: dict[str, Any]) -> Decimal:
    recurring = sum(
        (Decimal(str(c["Amount"])) for c in offering.get("RecurringCharges", []) if c.get("Frequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


@register
class PurchaseReservedInstancesOffering(Action[PurchaseReservedInstancesParams, RiPurchaseIntent]):
    action: ClassVar[str] = "ec2:PurchaseReservedInstancesOffering"
    family = EC2_RESERVED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model = PurchaseReservedInstancesParams
    intent_model = RiPurchaseIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved instances", done="bought", claim_kind="ec2-ri")
    permissions = frozenset({
        "ec2:PurchaseReservedInstancesOffering",
        "ec2:DescribeReservedInstancesOfferings",
        "ec2:DescribeReservedInstances",
    })
    optional_permissions = frozenset({"ec2:CreateTags"})

    def max_commitment_usd(self, params: PurchaseReservedInstancesParams) -> Decimal:
        return params.max_upfront_usd + params.max_hourly_usd * params.instance_count * params.term_hours

    # --- reads before --------------------------------------------------------------------------------------
    def find_offerings(self, aws: PlanHandle, p: PurchaseReservedInstancesParams) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "InstanceType": p.instance_type,
            "ProductDescription": p.product_description,
            "OfferingClass": p.offering_class,
            "OfferingType": p.offering_type,
            "InstanceTenancy": p.tenancy,
            "Filters": [
                {"Name": "duration", "Values": [str(p.duration_years * YEAR_SECONDS)]},
                {"Name": "scope", "Values": [p.scope]},
            ],
        }
        if p.availability_zone:
            request["AvailabilityZone"] = p.availability_zone
        if p.offering_id:
            request["ReservedInstancesOfferingIds"] = [p.offering_id]
        return aws.paginate("describe_reserved_instances_offerings", "ReservedInstancesOfferings", **request)

    def prepare(self, aws: PlanHandle, params: PurchaseReservedInstancesParams) -> RiPurchaseIntent:
        p = params
        offering = self._one_offering(aws, p)
        if offering.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {offering['CurrencyCode']}, ceilings "
                             "are in USD; nothing was bought")
        if offering.get("Marketplace") and p.purchase_time is not None:
            raise PlanFailed("QueuedMarketplacePurchase", "marketplace offerings cannot be queued; nothing was bought")
        upfront_total = Decimal(str(offering["FixedPrice"])) * p.instance_count
        hourly = _hourly(offering)
        if upfront_total > p.max_upfront_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"upfront {upfront_total} USD for {p.instance_count} instances exceeds max_upfront_usd "
                f"{p.max_upfront_usd}; nothing was bought",
                {"upfront_usd": str(upfront_total), "max_upfront_usd": str(p.max_upfront_usd)},
            )
        if hourly > p.max_hourly_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"recurring {hourly} USD/hour per instance exceeds max_hourly_usd {p.max_hourly_usd}; "
                "nothing was bought",
                {"hourly_usd": str(hourly), "max_hourly_usd": str(p.max_hourly_usd)},
            )
        duration = int(offering["Duration"])
        aws_now = aws.aws_now()
        started_after = aws_now - AWS_CLOCK_TOLERANCE if aws_now else aws.now() - WORKER_CLOCK_TOLERANCE
        return RiPurchaseIntent(
            offering_id=offering["ReservedInstancesOfferingId"],
            instance_count=p.instance_count,
            upfront_usd=upfront_total,
            hourly_usd=hourly,
            commitment_usd=upfront_total + hourly * p.instance_count * (duration // 3600),
            marketplace=bool(offering.get("Marketplace")),
            offering=OfferingAttributes(
                instance_type=offering["InstanceType"],
                product_description=offering["ProductDescription"],
                duration=duration,
                scope=offering.get("Scope", p.scope),
                availability_zone=offering.get("AvailabilityZone"),
                offering_class=offering.get("OfferingClass", p.offering_class),
                offering_type=offering.get("OfferingType", p.offering_type),
                tenancy=offering.get("InstanceTenancy", p.tenancy),
            ),
            purchase_time=p.purchase_time,
            started_after=started_after,
            signature=f"ec2-ri:{aws.account.account_id}:{aws.region}:{offering['ReservedInstancesOfferingId']}",
        )

    def _one_offering(self, aws: PlanHandle, p: PurchaseReservedInstancesParams) -> dict[str, Any]:
        offerings = self.find_offerings(aws, p)
        if not offerings:
            what = f"offering {p.offering_id}" if p.offering_id else "no offering"
            raise PlanFailed(
                "NoMatchingOffering",
                f"{what} matches {p.instance_type} {p.product_description} {p.offering_class} {p.offering_type} "
                f"{p.duration_years}y {p.scope} {p.availability_zone or ''} in {aws.region}; nothing was bought",
            )
        if len(offerings) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(offerings)} offerings match; pin one with params.offering_id; nothing was bought",
                {"offering_ids": [o["ReservedInstancesOfferingId"] for o in offerings],
                 "marketplace": [o.get("Marketplace", False) for o in offerings]},
            )
        return offerings[0]

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, intent: RiPurchaseIntent) -> dict[str, Any]:
        request: dict[str, Any] = {
            "ReservedInstancesOfferingId": intent.offering_id,
            "InstanceCount": intent.instance_count,
            # For Marketplace offerings AWS charges no more than this in total upfront; never the hourly part.
            "LimitPrice": {"Amount": float(intent.upfront_usd), "CurrencyCode": "USD"},
        }
        if intent.purchase_time:
            request["PurchaseTime"] = intent.purchase_time
        return request

    def submit(self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent) -> Submitted:
        response = aws.send("purchase_reserved_instances_offering", **self._request(intent))
        ri_id = response["ReservedInstancesId"]
        return Submitted(self._result(intent, ri_id, intent.instance_count, "response"), (ri_id,))

    def dry_run(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("purchase_reserved_instances_offering", **self._request(intent))
        would_buy = {"offering_id": intent.offering_id, "instance_count": intent.instance_count,
                     "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd),
                     "commitment_usd": str(intent.commitment_usd)}
        return {"would_buy": would_buy, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def after_success(self, aws: PlanHandle, resource_ids: tuple[str, ...]) -> None:
        """Stamp the plan id on the RI where the customer granted ec2:CreateTags (an opt-in extra)."""
        if aws.account.granted("ec2:CreateTags"):
            aws.write_idempotent("create_tags", Resources=list(resource_ids), Tags=[
                {"Key": PLAN_TAG, "Value": aws.plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}])

    def _result(self, intent: RiPurchaseIntent, ri_id: str, count: int, found_by: str) -> dict[str, Any]:
        return {"reserved_instances_id": ri_id, "offering_id": intent.offering_id, "instance_count": count,
                "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd), "found_by": found_by}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent
    ) -> Reconciled:
        if aws.account.granted("ec2:CreateTags"):
            tagged = aws.read("describe_reserved_instances", Filters=[
                {"Name": f"tag:{PLAN_TAG}", "Values": [aws.plan_id]}]).get("ReservedInstances", [])
            if len(tagged) > 1:  # two RIs carry this plan's id: it was bought twice
                return Ambiguous(tuple(ri["ReservedInstancesId"] for ri in tagged), {"found_by": "tag"})
            if tagged:
                ri = tagged[0]
                return Found(self._result(intent, ri["ReservedInstancesId"], ri["InstanceCount"], "tag"),
                             (ri["ReservedInstancesId"],))
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["ReservedInstancesId"] for c in candidates])
        mine = [c for c in candidates if c["ReservedInstancesId"] not in elsewhere]
        evidence = {"matched": [c["ReservedInstancesId"] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        ri = mine[0]
        return Found(self._result(intent, ri["ReservedInstancesId"], ri["InstanceCount"], "attributes"),
                     (ri["ReservedInstancesId"],), evidence)

    def look_alikes(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent,
        own: tuple[str, ...],
    ) -> dict[str, datetime]:
        return {c["ReservedInstancesId"]: c["Start"] for c in self._matching(aws, intent)}

    def _matching(self, aws: PlanHandle, intent: RiPurchaseIntent) -> list[dict[str, Any]]:
        """RIs with the intent's attributes and count that started at or after the intent (AWS's clock), or at
        the queued purchase time."""
        o = intent.offering
        filters = [
            {"Name": "instance-type", "Values": [o.instance_type]},
            {"Name": "product-description", "Values": [o.product_description]},
            {"Name": "duration", "Values": [str(o.duration)]},
            {"Name": "scope", "Values": [o.scope]},
            {"Name": "state", "Values": RECONCILE_STATES},
        ]
        if o.availability_zone:
            filters.append({"Name": "availability-zone", "Values": [o.availability_zone]})
        response = aws.read("describe_reserved_instances", Filters=filters, OfferingClass=o.offering_class,
                            OfferingType=o.offering_type)
        matched = []
        for ri in response.get("ReservedInstances", []):
            if ri.get("InstanceCount") != intent.instance_count or ri.get("InstanceTenancy", "default") != o.tenancy:
                continue
            start = ri["Start"]
            if intent.purchase_time is not None:
                if abs((start - intent.purchase_time).total_seconds()) > AWS_CLOCK_TOLERANCE.total_seconds():
                    continue
            elif start < intent.started_after:
                continue
            matched.append(ri)
        return matched
