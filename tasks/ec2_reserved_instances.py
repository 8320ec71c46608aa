"""Family: EC2 reserved instances. Action: ec2:PurchaseReservedInstancesOffering.

The purchase has no idempotency token (aws-commitment-apis.md §1), so exactly-once rests on three things:
one plan at a time per offering (the executor's signature lock), the intent written before the call, and a
reconciling DescribeReservedInstances that matches offering attributes, count and start time, skipping RIs
that another plan already claimed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tasks.families import EC2_RESERVED_INSTANCES
from worker.actions import Action, Idempotency, PlanFailed, Reconciliation
from worker.celery_app import family_task
from worker.errors import error_code
from worker.execution import ExecutionContext

YEAR_SECONDS = 31_536_000
# AWS's clock and ours may differ a little; an RI that started this long before the intent still counts.
CLOCK_SKEW = timedelta(seconds=120)
RECONCILE_STATES = ["payment-pending", "active", "queued"]
PLAN_TAG = "commitd:plan-id"


def _decimal_string(value: Any) -> Any:
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        raise ValueError("must be a decimal string, e.g. \"1200.00\"")
    return value


UsdAmount = Annotated[Decimal, BeforeValidator(_decimal_string), Field(ge=0, max_digits=14, decimal_places=4)]


class PurchaseReservedInstancesParams(BaseModel):
    """Parameters of ec2:PurchaseReservedInstancesOffering (docs/plans.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_type: str = Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", examples=["m5.large"])
    product_description: str = "Linux/UNIX"
    offering_class: Literal["standard", "convertible"]
    offering_type: Literal["No Upfront", "Partial Upfront", "All Upfront"]
    duration_years: Literal[1, 3]
    scope: Literal["Region", "Availability Zone"]
    availability_zone: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
    tenancy: Literal["default", "dedicated"] = "default"
    instance_count: int = Field(ge=1, le=10_000)
    offering_id: str | None = Field(None, min_length=1, description="pin one offering; it must match the fields")
    purchase_time: AwareDatetime | None = Field(None, description="queue the purchase (regional RIs only)")
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


def _hourly(offering: dict[str, Any]) -> Decimal:
    recurring = sum(
        (Decimal(str(c["Amount"])) for c in offering.get("RecurringCharges", []) if c.get("Frequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


class PurchaseReservedInstancesOffering(Action):
    action: ClassVar[str] = "ec2:PurchaseReservedInstancesOffering"
    family = EC2_RESERVED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model: ClassVar[type[BaseModel]] = PurchaseReservedInstancesParams
    idempotency = Idempotency.NONE

    def max_spend_usd(self, params: BaseModel) -> Decimal | None:
        assert isinstance(params, PurchaseReservedInstancesParams)
        return params.max_upfront_usd

    # --- reads before --------------------------------------------------------------------------------------
    def find_offerings(self, ctx: ExecutionContext, p: PurchaseReservedInstancesParams) -> list[dict[str, Any]]:
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
        return ctx.paginate("describe_reserved_instances_offerings", "ReservedInstancesOfferings", **request)

    def prepare(self, ctx: ExecutionContext, params: Any) -> dict[str, Any]:
        p: PurchaseReservedInstancesParams = params
        offerings = self.find_offerings(ctx, p)
        if not offerings:
            what = f"offering {p.offering_id}" if p.offering_id else "no offering"
            raise PlanFailed(
                "NoMatchingOffering",
                f"{what} matches {p.instance_type} {p.product_description} {p.offering_class} {p.offering_type} "
                f"{p.duration_years}y {p.scope} {p.availability_zone or ''} in {ctx.region}; nothing was bought",
            )
        if len(offerings) > 1:
            ids = [o["ReservedInstancesOfferingId"] for o in offerings]
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(offerings)} offerings match; pin one with params.offering_id; nothing was bought",
                {"offering_ids": ids, "marketplace": [o.get("Marketplace", False) for o in offerings]},
            )
        offering = offerings[0]
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
        signature = f"ec2-ri:{ctx.account.account_id}:{ctx.region}:{offering['ReservedInstancesOfferingId']}"
        return {
            "offering_id": offering["ReservedInstancesOfferingId"],
            "instance_count": p.instance_count,
            "limit_price_usd": str(upfront_total),
            "upfront_usd": str(upfront_total),
            "hourly_usd": str(hourly),
            "marketplace": bool(offering.get("Marketplace")),
            "offering": {
                "InstanceType": offering["InstanceType"],
                "ProductDescription": offering["ProductDescription"],
                "Duration": offering["Duration"],
                "Scope": offering.get("Scope", p.scope),
                "AvailabilityZone": offering.get("AvailabilityZone"),
                "OfferingClass": offering.get("OfferingClass", p.offering_class),
                "OfferingType": offering.get("OfferingType", p.offering_type),
                "FixedPrice": offering["FixedPrice"],
                "InstanceTenancy": offering.get("InstanceTenancy", p.tenancy),
            },
            "purchase_time": p.purchase_time.isoformat() if p.purchase_time else None,
            "signature": signature,
            "idempotency_value": signature,
        }

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, intent: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "ReservedInstancesOfferingId": intent["offering_id"],
            "InstanceCount": intent["instance_count"],
            # AWS never charges more than the price the ceilings were checked against.
            "LimitPrice": {"Amount": float(intent["limit_price_usd"]), "CurrencyCode": "USD"},
        }
        if intent.get("purchase_time"):
            request["PurchaseTime"] = datetime.fromisoformat(intent["purchase_time"])
        return request

    def submit(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> dict[str, Any]:
        response = ctx.call("write", "purchase_reserved_instances_offering", **self._request(intent))
        ri_id = response["ReservedInstancesId"]
        ctx.claim("ec2-ri", ri_id)
        self._tag(ctx, ri_id)
        return {
            "reserved_instances_id": ri_id,
            "offering_id": intent["offering_id"],
            "instance_count": intent["instance_count"],
            "upfront_usd": intent["upfront_usd"],
            "hourly_usd": intent["hourly_usd"],
            "request_id": response.get("ResponseMetadata", {}).get("RequestId"),
        }

    def dry_run(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> dict[str, Any]:
        try:
            ctx.call("write", "purchase_reserved_instances_offering", DryRun=True, **self._request(intent))
            permitted, answer = True, "accepted"  # not expected: AWS answers DryRunOperation
        except ClientError as exc:
            answer = error_code(exc) or "error"
            permitted = answer == "DryRunOperation"
        return {"would_buy": {k: intent[k] for k in ("offering_id", "instance_count", "upfront_usd", "hourly_usd")},
                "permitted": permitted, "aws_answer": answer}

    def _tag(self, ctx: ExecutionContext, ri_id: str) -> bool:
        """Stamp the plan id on the RI where the customer granted ec2:CreateTags (an opt-in extra)."""
        if not ctx.account.granted("ec2:CreateTags"):
            return False
        try:
            ctx.call(
                "write",
                "create_tags",
                Resources=[ri_id],
                Tags=[{"Key": PLAN_TAG, "Value": ctx.plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}],
            )
            return True
        except Exception:  # the purchase stands; without the tag, reconciliation falls back to attributes
            return False

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(self, ctx: ExecutionContext, params: Any, intent: dict[str, Any]) -> Reconciliation:
        if ctx.account.granted("ec2:CreateTags"):
            tagged = ctx.call(
                "read", "describe_reserved_instances", Filters=[{"Name": f"tag:{PLAN_TAG}", "Values": [ctx.plan_id]}]
            ).get("ReservedInstances", [])
            if tagged:
                ri = tagged[0]
                ctx.claim("ec2-ri", ri["ReservedInstancesId"])
                evidence = {"tagged": [ri["ReservedInstancesId"]]}
                return Reconciliation(found=self._found(ri, intent, "tag"), evidence=evidence)
        return self._reconcile_by_attributes(ctx, intent)

    def _found(self, ri: dict[str, Any], intent: dict[str, Any], found_by: str) -> dict[str, Any]:
        return {
            "reserved_instances_id": ri["ReservedInstancesId"],
            "offering_id": intent["offering_id"],
            "instance_count": ri["InstanceCount"],
            "upfront_usd": intent["upfront_usd"],
            "hourly_usd": intent["hourly_usd"],
            "state": ri.get("State"),
            "found_by": found_by,
        }

    def _reconcile_by_attributes(self, ctx: ExecutionContext, intent: dict[str, Any]) -> Reconciliation:
        offering = intent["offering"]
        filters = [
            {"Name": "instance-type", "Values": [offering["InstanceType"]]},
            {"Name": "product-description", "Values": [offering["ProductDescription"]]},
            {"Name": "duration", "Values": [str(offering["Duration"])]},
            {"Name": "scope", "Values": [offering["Scope"]]},
            {"Name": "state", "Values": RECONCILE_STATES},
        ]
        if offering.get("AvailabilityZone"):
            filters.append({"Name": "availability-zone", "Values": [offering["AvailabilityZone"]]})
        response = ctx.call(
            "read",
            "describe_reserved_instances",
            Filters=filters,
            OfferingClass=offering["OfferingClass"],
            OfferingType=offering["OfferingType"],
        )
        intent_time = datetime.fromisoformat(intent["intent_time"])
        queued_for = datetime.fromisoformat(intent["purchase_time"]) if intent.get("purchase_time") else None
        candidates = []
        for ri in response.get("ReservedInstances", []):
            if ri.get("InstanceCount") != intent["instance_count"]:
                continue
            if ri.get("InstanceTenancy", "default") != offering["InstanceTenancy"]:
                continue
            start = ri["Start"]
            if queued_for is not None:
                if abs((start - queued_for).total_seconds()) > CLOCK_SKEW.total_seconds():
                    continue
            elif start < intent_time - CLOCK_SKEW:
                continue
            holder = ctx.claimed_by("ec2-ri", ri["ReservedInstancesId"])
            if holder is not None and holder != ctx.plan_id:
                continue
            candidates.append(ri)
        evidence = {"matched": [c["ReservedInstancesId"] for c in candidates]}
        if not candidates:
            return Reconciliation(found=None, evidence=evidence)
        if len(candidates) > 1:
            raise PlanReconcileAmbiguous(evidence["matched"])
        ri = candidates[0]
        if not ctx.claim("ec2-ri", ri["ReservedInstancesId"]):
            raise PlanReconcileAmbiguous(evidence["matched"])
        self._tag(ctx, ri["ReservedInstancesId"])
        return Reconciliation(found=self._found(ri, intent, "attributes"), evidence=evidence)


class PlanReconcileAmbiguous(RuntimeError):
    """Several unclaimed RIs match: which one is this plan's cannot be told apart. A person decides."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"several reserved instances match the purchase: {ids}")
        self.ids = ids


ACTIONS: list[Action] = [PurchaseReservedInstancesOffering()]
run_plan = family_task(EC2_RESERVED_INSTANCES)
