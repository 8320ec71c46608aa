"""EC2 Reserved Instances: the offering catalogue, purchases (immediate and queued) and DescribeReservedInstances.

The offering catalogue is served here rather than by moto: moto's static list has no marketplace offerings,
ignores OfferingClass and scope filters, and has no prices the purchase side could agree with.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import (
    YEAR_SECONDS,
    apply_ec2_filters,
    dry_run,
    ec2_filters,
    new_uuid,
    paginate,
    price,
    public,
    refuse_over_limit,
)
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
RI_TYPE = "reserved-instances"
# How long a new purchase stays payment-pending on the sandbox clock before it turns active.
PAYMENT_PENDING_SECONDS = 30
MAX_QUEUE_AHEAD = timedelta(days=3 * 365)

REGIONS = {"us-east-1": 1.0, "us-west-2": 1.0, "eu-west-1": 1.11}
ON_DEMAND_HOURLY = {"m5.large": 0.096, "m5.xlarge": 0.192, "c5.large": 0.085, "r5.large": 0.126, "t3.medium": 0.0416}
# Effective hourly rate as a share of on-demand, by (class, years, payment option).
DISCOUNT = {
    ("standard", 1): {"No Upfront": 0.62, "Partial Upfront": 0.60, "All Upfront": 0.58},
    ("standard", 3): {"No Upfront": 0.43, "Partial Upfront": 0.40, "All Upfront": 0.38},
    ("convertible", 1): {"No Upfront": 0.73, "Partial Upfront": 0.71, "All Upfront": 0.69},
    ("convertible", 3): {"No Upfront": 0.55, "Partial Upfront": 0.52, "All Upfront": 0.50},
}


def _prices(hourly: float, years: int, offering_type: str) -> tuple[float, float]:
    """(upfront per instance, recurring hourly per instance)."""
    hours = 8760 * years
    if offering_type == "No Upfront":
        return 0.0, round(hourly, 4)
    if offering_type == "Partial Upfront":
        return round(hourly * hours * 0.5, 2), round(hourly * 0.5, 4)
    return round(hourly * hours, 2), 0.0


def _offering(
    region: str, instance_type: str, product: str, offering_class: str, years: int, offering_type: str,
    zone: str | None,
) -> dict[str, Any]:
    hourly = ON_DEMAND_HOURLY[instance_type] * REGIONS[region] * DISCOUNT[(offering_class, years)][offering_type]
    if product == "Windows":
        hourly += 0.046
    fixed, recurring = _prices(hourly, years, offering_type)
    return {
        "ReservedInstancesOfferingId": stable_uuid(
            "ri", region, instance_type, product, offering_class, years, offering_type, zone or "region"
        ),
        "Region": region,
        "AvailabilityZone": zone,
        "Duration": years * YEAR_SECONDS,
        "FixedPrice": fixed,
        "UsagePrice": 0.0,
        "RecurringCharges": [{"Amount": recurring, "Frequency": "Hourly"}] if recurring else [],
        "InstanceType": instance_type,
        "ProductDescription": product,
        "CurrencyCode": "USD",
        "InstanceTenancy": "default",
        "Marketplace": False,
        "OfferingClass": offering_class,
        "OfferingType": offering_type,
        "PricingDetails": [],
        "Scope": "Availability Zone" if zone else "Region",
    }


@catalogue_section("ec2_ri_offerings")
def default_offerings() -> list[dict[str, Any]]:
    offerings = []
    for region in REGIONS:
        for instance_type in ON_DEMAND_HOURLY:
            products = ["Linux/UNIX", "Windows"] if instance_type == "m5.large" else ["Linux/UNIX"]
            for product in products:
                for offering_class, years in DISCOUNT:
                    zones: list[str | None] = [None]
                    if offering_class == "standard":
                        zones += [f"{region}a", f"{region}b"]
                    for offering_type in DISCOUNT[(offering_class, years)]:
                        for zone in zones:
                            offerings.append(
                                _offering(region, instance_type, product, offering_class, years, offering_type, zone)
                            )
    # Marketplace offerings (third-party sellers): one with the same attributes as an AWS offering, so a
    # selector that does not exclude the marketplace sees two matches, and one with an odd remaining term.
    twin = _offering("us-east-1", "m5.large", "Linux/UNIX", "standard", 1, "All Upfront", "us-east-1a")
    twin.update(
        ReservedInstancesOfferingId=stable_uuid("ri-marketplace", 1),
        Marketplace=True,
        FixedPrice=round(twin["FixedPrice"] * 0.8, 2),
        PricingDetails=[{"Count": 2, "Price": round(twin["FixedPrice"] * 0.8, 2)}],
    )
    odd = _offering("us-east-1", "c5.large", "Linux/UNIX", "standard", 3, "All Upfront", "us-east-1b")
    odd.update(
        ReservedInstancesOfferingId=stable_uuid("ri-marketplace", 2),
        Marketplace=True,
        Duration=26 * 30 * 86400,
        FixedPrice=round(odd["FixedPrice"] * 0.6, 2),
        PricingDetails=[{"Count": 3, "Price": round(odd["FixedPrice"] * 0.6, 2)}],
    )
    return [*offerings, twin, odd]


def offerings_in(catalogue: Catalogue, region: str) -> list[dict[str, Any]]:
    return [o for o in catalogue.section("ec2_ri_offerings") if o["Region"] == region]


def find_offering(catalogue: Catalogue, region: str, offering_id: str) -> dict[str, Any] | None:
    for offering in offerings_in(catalogue, region):
        if offering["ReservedInstancesOfferingId"] == offering_id:
            return offering
    return None


_OFFERING_FILTERS = {
    "availability-zone": lambda o: o.get("AvailabilityZone") or "",
    "duration": lambda o: o["Duration"],
    "fixed-price": lambda o: o["FixedPrice"],
    "instance-type": lambda o: o["InstanceType"],
    "marketplace": lambda o: o["Marketplace"],
    "product-description": lambda o: o["ProductDescription"],
    "reserved-instances-offering-id": lambda o: o["ReservedInstancesOfferingId"],
    "scope": lambda o: o["Scope"],
    "usage-price": lambda o: o["UsagePrice"],
}


@handles(SERVICE, "DescribeReservedInstancesOfferings")
def describe_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    items = offerings_in(ctx.catalogue, ctx.region)
    ids = params.get("ReservedInstancesOfferingIds")
    if ids:
        items = [o for o in items if o["ReservedInstancesOfferingId"] in ids]
    if params.get("IncludeMarketplace") is False:
        items = [o for o in items if not o["Marketplace"]]
    exact = {
        "AvailabilityZone": "AvailabilityZone",
        "InstanceType": "InstanceType",
        "ProductDescription": "ProductDescription",
        "OfferingType": "OfferingType",
        "OfferingClass": "OfferingClass",
        "InstanceTenancy": "InstanceTenancy",
    }
    for param, key in exact.items():
        if params.get(param) is not None:
            items = [o for o in items if o.get(key) == params[param]]
    if params.get("MinDuration") is not None:
        items = [o for o in items if o["Duration"] >= params["MinDuration"]]
    if params.get("MaxDuration") is not None:
        items = [o for o in items if o["Duration"] <= params["MaxDuration"]]
    items = apply_ec2_filters(items, ec2_filters(params), _OFFERING_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {
        "ReservedInstancesOfferings": [
            {k: v for k, v in o.items() if k != "Region" and v is not None} for o in page
        ]
    }
    if next_token:
        out["NextToken"] = next_token
    return out


def ri_record(
    account_id: str, region: str, offering: dict[str, Any], count: int, start: datetime, state: str,
    operation: str, token: str | None, created_at: datetime, ri_id: str | None = None,
) -> Resource:
    ri_id = ri_id or new_uuid()
    recurring = offering.get("RecurringCharges", [])
    data = {
        "ReservedInstancesId": ri_id,
        "AvailabilityZone": offering.get("AvailabilityZone"),
        "Duration": offering["Duration"],
        "Start": start,
        "End": start + timedelta(seconds=offering["Duration"]),
        "FixedPrice": offering["FixedPrice"],
        "UsagePrice": offering["UsagePrice"],
        "RecurringCharges": recurring,
        "InstanceCount": count,
        "InstanceType": offering["InstanceType"],
        "ProductDescription": offering["ProductDescription"],
        "CurrencyCode": "USD",
        "InstanceTenancy": offering["InstanceTenancy"],
        "OfferingClass": offering["OfferingClass"],
        "OfferingType": offering["OfferingType"],
        "Scope": offering["Scope"],
        "Tags": [],
        "_OfferingId": offering["ReservedInstancesOfferingId"],
        "_PendingUntil": start + timedelta(seconds=PAYMENT_PENDING_SECONDS),
    }
    return Resource(account_id, region, SERVICE, RI_TYPE, ri_id, state, CreatedBy(operation, token, created_at), data)


def advance_ri(resource: Resource, now: datetime) -> bool:
    data = resource.data
    if resource.state == "queued" and now >= data["Start"]:
        resource.state = "payment-pending"
    if resource.state == "payment-pending" and now >= data["_PendingUntil"]:
        resource.state = "active"
    if resource.state == "active" and now >= data["End"]:
        resource.state = "retired"
    return resource.state in ("queued", "payment-pending", "active")


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, RI_TYPE, advance_ri)


def check_limit_price(limit: dict[str, Any], total: Decimal) -> None:
    """The purchase's ``LimitPrice`` against the total upfront price (``FixedPrice`` × count), in decimal."""
    currency = limit.get("CurrencyCode", "USD")
    if currency != "USD":
        # The model's enum has USD only, and botocore does not check enums: AWS refuses anything else.
        raise AwsError("InvalidParameterValue", f"Invalid value '{currency}' for LimitPrice.CurrencyCode: only USD.")
    if limit.get("Amount") is not None:  # the model makes Amount optional; without it there is no limit
        refuse_over_limit(total, price(limit["Amount"], "LimitPrice.Amount"), "total price")


@handles(SERVICE, "PurchaseReservedInstancesOffering")
def purchase(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    offering_id = params["ReservedInstancesOfferingId"]
    offering = find_offering(ctx.catalogue, ctx.region, offering_id)
    if offering is None:
        raise AwsError("InvalidReservedInstancesOfferingId", f"The offering ID '{offering_id}' is not valid.")
    count = int(params["InstanceCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be at least 1.")
    if offering["Marketplace"]:
        available = sum(d["Count"] for d in offering.get("PricingDetails", []))
        if count > available:
            raise AwsError("ReservedInstancesUnavailable", f"Only {available} instances are available.")
    limit = params.get("LimitPrice")
    if limit is not None:
        check_limit_price(limit, price(offering["FixedPrice"], "FixedPrice") * count)
    now = ctx.now()
    start, state = now, "payment-pending"
    purchase_time = params.get("PurchaseTime")
    if purchase_time is not None and purchase_time.tzinfo is None:  # the query protocol's parser drops the zone
        purchase_time = purchase_time.replace(tzinfo=UTC)
    if purchase_time is not None and purchase_time > now:
        if offering["Scope"] != "Region" or offering["Marketplace"]:
            raise AwsError(
                "InvalidParameterCombination",
                "Queued purchases are supported only for regional Reserved Instances sold by AWS.",
            )
        if purchase_time - now > MAX_QUEUE_AHEAD:
            raise AwsError("InvalidParameterValue", "PurchaseTime can be at most three years in the future.")
        start, state = purchase_time, "queued"
    resource = ri_record(
        ctx.account_id, ctx.region, offering, count, start, state, "ec2:PurchaseReservedInstancesOffering",
        None, now,
    )
    ctx.state.add(resource)
    return {"ReservedInstancesId": resource.id}


_RI_FILTERS = {
    "availability-zone": lambda r: r.get("AvailabilityZone") or "",
    "duration": lambda r: r["Duration"],
    "end": lambda r: r["End"],
    "fixed-price": lambda r: r["FixedPrice"],
    "instance-type": lambda r: r["InstanceType"],
    "scope": lambda r: r["Scope"],
    "product-description": lambda r: r["ProductDescription"],
    "reserved-instances-id": lambda r: r["ReservedInstancesId"],
    "start": lambda r: r["Start"],
    "state": lambda r: r["State"],
    "usage-price": lambda r: r["UsagePrice"],
}


def ri_view(resource: Resource) -> dict[str, Any]:
    view = {k: v for k, v in public(resource.data).items() if v is not None}
    view["State"] = resource.state
    return view


@handles(SERVICE, "DescribeReservedInstances")
def describe_reserved_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    resources = ctx.state.find(SERVICE, RI_TYPE, ctx.account_id, ctx.region)
    items = [ri_view(r) for r in resources]
    ids = params.get("ReservedInstancesIds")
    if ids:
        known = {i["ReservedInstancesId"] for i in items}
        missing = [i for i in ids if i not in known]
        if missing:
            raise AwsError("InvalidReservedInstancesId", f"Invalid id: \"{missing[0]}\"")
        items = [i for i in items if i["ReservedInstancesId"] in ids]
    if params.get("OfferingClass"):
        items = [i for i in items if i["OfferingClass"] == params["OfferingClass"]]
    if params.get("OfferingType"):
        items = [i for i in items if i["OfferingType"] == params["OfferingType"]]
    items = apply_ec2_filters(items, ec2_filters(params), _RI_FILTERS)
    return {"ReservedInstances": items}


@seeder("ec2:reserved-instances")
def seed_reserved_instances(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:reserved-instances", "account_id", "region", "offering_id" | (instance_type,
    offering_class, offering_type, duration_years, availability_zone?, product_description?),
    "instance_count", "start_days_ago", "id"?}``"""
    region = entry["region"]
    if "offering_id" in entry:
        offering = find_offering(catalogue, region, entry["offering_id"])
    else:
        zone = entry.get("availability_zone")
        matches = [
            o
            for o in offerings_in(catalogue, region)
            if not o["Marketplace"]
            and o["InstanceType"] == entry["instance_type"]
            and o["OfferingClass"] == entry.get("offering_class", "standard")
            and o["OfferingType"] == entry.get("offering_type", "No Upfront")
            and o["Duration"] == int(entry.get("duration_years", 1)) * YEAR_SECONDS
            and o["ProductDescription"] == entry.get("product_description", "Linux/UNIX")
            and o.get("AvailabilityZone") == zone
        ]
        offering = matches[0] if len(matches) == 1 else None
    if offering is None:
        raise ValueError(f"seed entry matches no single RI offering: {entry}")
    now = state.clock.now()
    start = now - timedelta(days=float(entry.get("start_days_ago", 0)))
    resource = ri_record(
        entry["account_id"], region, offering, int(entry.get("instance_count", 1)), start, "active", "seed",
        None, now, entry.get("id"),
    )
    resource.data["_PendingUntil"] = start
    advance_ri(resource, now)
    state.add(resource)
