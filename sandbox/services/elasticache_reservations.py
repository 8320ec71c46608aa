"""ElastiCache reserved cache nodes: offerings, PurchaseReservedCacheNodesOffering and
DescribeReservedCacheNodes.

moto implements none of these calls. As with RDS, the customer-chosen ``ReservedCacheNodeId`` is the
idempotency handle: a duplicate in the same account and region answers ``ReservedCacheNodeAlreadyExists``
(HTTP 404, as modeled). Without one, ElastiCache generates an id of the form ``ri-2017-03-27-08-33-25-582``
(the example in botocore's documentation of ``ReservationARN``). The ground-truth resource id is the
``ReservationARN``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import YEAR_SECONDS, term_advancer
from sandbox.services.rds_reservations import (
    DISCOUNT,
    PAYMENT_OPTIONS,
    REGIONS,
    duration_filter,
    generated_reservation_id,
    marker_page,
    recurring_charges,
    reservation_prices,
    seed_offering,
    seed_reservation,
    with_marker,
)
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "elasticache"
RESOURCE_TYPE = "reserved-cache-node"
OPERATION = "elasticache:PurchaseReservedCacheNodesOffering"
PAYMENT_PENDING_SECONDS = 30
# A sandbox quota (reserved cache nodes per account and Region); AWS's own figure is account-specific.
RESERVED_CACHE_NODE_QUOTA = 300
MAX_TAGS = 50
# On-demand hourly prices (us-east-1); Redis OSS and Memcached cost the same per node.
ON_DEMAND_HOURLY = {"cache.m5.large": 0.156, "cache.r5.large": 0.216, "cache.t3.medium": 0.068}
PRODUCTS = ("redis", "memcached")


def _offering(region: str, node_type: str, product: str, years: int, payment: str) -> dict[str, Any]:
    hourly = ON_DEMAND_HOURLY[node_type] * REGIONS[region] * DISCOUNT[years][payment]
    fixed, recurring = reservation_prices(hourly, years, payment)
    return {
        "ReservedCacheNodesOfferingId": stable_uuid("elasticache", region, node_type, product, years, payment),
        "Region": region,
        "CacheNodeType": node_type,
        "Duration": years * YEAR_SECONDS,
        "FixedPrice": fixed,
        "UsagePrice": 0.0,
        "ProductDescription": product,
        "OfferingType": payment,
        "RecurringCharges": recurring_charges(recurring),
    }


@catalogue_section("elasticache_offerings")
def default_offerings() -> list[dict[str, Any]]:
    return [
        _offering(region, node_type, product, years, payment)
        for region in REGIONS
        for node_type in ON_DEMAND_HOURLY
        for product in PRODUCTS
        for years in DISCOUNT
        for payment in PAYMENT_OPTIONS
    ]


def offerings_in(catalogue: Catalogue, region: str) -> list[dict[str, Any]]:
    return [o for o in catalogue.section("elasticache_offerings") if o["Region"] == region]


def find_offering(catalogue: Catalogue, region: str, offering_id: str) -> dict[str, Any] | None:
    return next((o for o in offerings_in(catalogue, region) if o["ReservedCacheNodesOfferingId"] == offering_id), None)


def _offering_view(offering: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in offering.items() if k != "Region" and not k.startswith("_")}


def _filter(items: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The filter parameters common to both describes (exact matches, plus Duration in years or seconds)."""
    for key in ("CacheNodeType", "ProductDescription", "OfferingType"):
        if params.get(key) is not None:
            items = [i for i in items if i[key] == params[key]]
    duration = duration_filter(params.get("Duration"))
    if duration is not None:
        items = [i for i in items if i["Duration"] == duration]
    return items


@handles(SERVICE, "DescribeReservedCacheNodesOfferings")
def describe_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = offerings_in(ctx.catalogue, ctx.region)
    offering_id = params.get("ReservedCacheNodesOfferingId")
    if offering_id is not None:
        items = [o for o in items if o["ReservedCacheNodesOfferingId"] == offering_id]
        if not items:
            raise AwsError("ReservedCacheNodesOfferingNotFound", f"Offering {offering_id} not found.")
    page, marker = marker_page(_filter(items, params), params)
    return with_marker({"ReservedCacheNodesOfferings": [_offering_view(o) for o in page]}, marker)


def _arn(region: str, account_id: str, reservation_id: str) -> str:
    return f"arn:aws:elasticache:{region}:{account_id}:reserved-instance:{reservation_id}"


def reservation_record(
    account_id: str,
    region: str,
    offering: dict[str, Any],
    reservation_id: str,
    count: int,
    start: datetime,
    created_by: CreatedBy,
    tags: list[dict[str, str]],
) -> Resource:
    arn = _arn(region, account_id, reservation_id)
    data = {
        "ReservedCacheNodeId": reservation_id,
        "ReservedCacheNodesOfferingId": offering["ReservedCacheNodesOfferingId"],
        "CacheNodeType": offering["CacheNodeType"],
        "StartTime": start,
        "Duration": offering["Duration"],
        "FixedPrice": offering["FixedPrice"],
        "UsagePrice": offering["UsagePrice"],
        "CacheNodeCount": count,
        "ProductDescription": offering["ProductDescription"],
        "OfferingType": offering["OfferingType"],
        "RecurringCharges": offering["RecurringCharges"],
        "ReservationARN": arn,
        "_Tags": list(tags),
        "_PendingUntil": start + timedelta(seconds=PAYMENT_PENDING_SECONDS),
    }
    return Resource(account_id, region, SERVICE, RESOURCE_TYPE, arn, "payment-pending", created_by, data)


# payment → active after the payment delay; active → retired at the end of the term.
advance_reservation = term_advancer("payment-pending")


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, RESOURCE_TYPE, advance_reservation)


def reservations(ctx: CallContext) -> list[Resource]:
    return ctx.state.find(SERVICE, RESOURCE_TYPE, ctx.account_id, ctx.region)


def _view(resource: Resource) -> dict[str, Any]:
    view = {k: v for k, v in resource.data.items() if not k.startswith("_")}
    view["State"] = resource.state
    return view


@handles(SERVICE, "PurchaseReservedCacheNodesOffering")
def purchase(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    offering_id = params["ReservedCacheNodesOfferingId"]
    offering = find_offering(ctx.catalogue, ctx.region, offering_id)
    if offering is None:
        raise AwsError("ReservedCacheNodesOfferingNotFound", f"Offering {offering_id} not found.")
    count = 1 if params.get("CacheNodeCount") is None else int(params["CacheNodeCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "CacheNodeCount must be at least 1.")
    tags = params.get("Tags") or []
    if len(tags) > MAX_TAGS:
        raise AwsError("TagQuotaPerResourceExceeded", f"A resource can have at most {MAX_TAGS} tags.")
    with ctx.state.lock:
        existing = reservations(ctx)
        taken = {r.data["ReservedCacheNodeId"] for r in existing}
        customer_id = params.get("ReservedCacheNodeId")
        if customer_id is not None and customer_id in taken:
            raise AwsError("ReservedCacheNodeAlreadyExists", f"Reserved cache node {customer_id} already exists.")
        reserved = sum(r.data["CacheNodeCount"] for r in existing if r.state in ("payment-pending", "active"))
        if reserved + count > RESERVED_CACHE_NODE_QUOTA:
            raise AwsError(
                "ReservedCacheNodeQuotaExceeded",
                f"Purchasing {count} reserved cache nodes would exceed the quota of "
                f"{RESERVED_CACHE_NODE_QUOTA} "
                f"reserved cache nodes for this account in {ctx.region}.",
            )
        now = ctx.now()
        resource = reservation_record(
            ctx.account_id,
            ctx.region,
            offering,
            customer_id or generated_reservation_id(ctx.state, taken),
            count,
            now,
            CreatedBy(OPERATION, customer_id, now),
            tags,
        )
        ctx.state.add(resource)
    return {"ReservedCacheNode": _view(resource)}


@handles(SERVICE, "DescribeReservedCacheNodes")
def describe_reserved_cache_nodes(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = [_view(r) for r in reservations(ctx)]
    reservation_id = params.get("ReservedCacheNodeId")
    if reservation_id is not None:
        items = [i for i in items if i["ReservedCacheNodeId"] == reservation_id]
        if not items:
            raise AwsError("ReservedCacheNodeNotFound", f"Reserved cache node {reservation_id} not found.")
    if params.get("ReservedCacheNodesOfferingId") is not None:
        items = [i for i in items if i["ReservedCacheNodesOfferingId"] == params["ReservedCacheNodesOfferingId"]]
    page, marker = marker_page(_filter(items, params), params)
    return with_marker({"ReservedCacheNodes": page}, marker)


@handles(SERVICE, "ListTagsForResource")
def list_tags_for_resource(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Tags of reserved cache nodes (set at purchase); every other ARN is moto's."""
    arn = params.get("ResourceName", "")
    if ":reserved-instance:" not in arn:
        return ctx.call_moto()
    resource = ctx.state.get(SERVICE, RESOURCE_TYPE, arn)
    if resource is None or resource.account_id != ctx.account_id:
        raise AwsError("ReservedCacheNodeNotFound", f"Reserved cache node {arn.rsplit(':', 1)[-1]} not found.")
    return {"TagList": resource.data["_Tags"]}


@seeder("elasticache:reserved-cache-node")
def seed_reserved_cache_node(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "elasticache:reserved-cache-node", "account_id", "region", "offering_id" | (cache_node_type,
    product_description?, offering_type?, duration_years?), "cache_node_count"?, "start_days_ago"?, "id"?,
    "tags"?}``"""
    region = entry["region"]
    offering = seed_offering(
        entry,
        find_offering(catalogue, region, entry["offering_id"]) if "offering_id" in entry else None,
        [
            o
            for o in offerings_in(catalogue, region)
            if o["CacheNodeType"] == entry.get("cache_node_type")
            and o["ProductDescription"] == entry.get("product_description", "redis")
            and o["OfferingType"] == entry.get("offering_type", "No Upfront")
            and o["Duration"] == int(entry.get("duration_years", 1)) * YEAR_SECONDS
        ],
        "ElastiCache",
    )
    seed_reservation(
        state, entry, offering, SERVICE, RESOURCE_TYPE, "ReservedCacheNodeId", "cache_node_count",
        "reserved cache node", reservation_record, advance_reservation,
    )
