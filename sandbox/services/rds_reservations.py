"""RDS reserved DB instances: the offering catalogue, PurchaseReservedDBInstancesOffering and the describes.

moto implements none of these calls. The purchase has no client token: the customer-chosen
``ReservedDBInstanceId`` is the idempotency handle, so a duplicate in the same account and region answers
``ReservedDBInstanceAlreadyExists`` (HTTP 404, as modeled) and creates nothing.

The ground-truth resource id is the reservation's ARN: ``ReservedDBInstanceId`` is unique only within an
account and region, while sandbox resource ids must be unique across accounts. The customer id is the
resource's token.

The small helpers at the top (pagination with RDS-family bounds, the ``Duration`` filter, generated ``ri-``
ids, prices) are shared with the ElastiCache and Redshift reservation modules, which follow the same API
pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import YEAR_SECONDS, new_uuid, paginate, term_advancer
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "rds"
RESOURCE_TYPE = "reserved-db-instance"
OPERATION = "rds:PurchaseReservedDBInstancesOffering"
# How long a new reservation stays payment-pending on the sandbox clock before it turns active.
PAYMENT_PENDING_SECONDS = 30
# AWS's default quota "Reserved DB instances" (per account and Region), counted in DB instances.
RESERVED_DB_INSTANCE_QUOTA = 40

REGIONS = {"us-east-1": 1.0, "us-west-2": 1.0, "eu-west-1": 1.1}
PAYMENT_OPTIONS = ("No Upfront", "Partial Upfront", "All Upfront")
# Effective hourly rate as a share of on-demand, by term in years and payment option.
DISCOUNT = {
    1: {"No Upfront": 0.69, "Partial Upfront": 0.64, "All Upfront": 0.62},
    3: {"No Upfront": 0.52, "Partial Upfront": 0.45, "All Upfront": 0.42},
}
# Single-AZ on-demand hourly prices (us-east-1); Multi-AZ costs twice as much.
ON_DEMAND_HOURLY = {
    ("db.m5.large", "mysql"): 0.171,
    ("db.m5.large", "postgresql"): 0.178,
    ("db.r5.large", "mysql"): 0.24,
    ("db.r5.large", "postgresql"): 0.25,
    ("db.t3.medium", "mysql"): 0.068,
    ("db.t3.medium", "postgresql"): 0.072,
}


# --- helpers shared with elasticache_reservations and redshift_reservations ----------------------------
def reservation_prices(hourly: float, years: int, payment: str) -> tuple[float, float]:
    """(upfront, recurring hourly) for one node of an offering whose effective hourly rate is ``hourly``."""
    hours = 8760 * years
    if payment == "No Upfront":
        return 0.0, round(hourly, 4)
    if payment == "Partial Upfront":
        return round(hourly * hours * 0.5, 2), round(hourly * 0.5, 4)
    return round(hourly * hours, 2), 0.0


def recurring_charges(hourly: float) -> list[dict[str, Any]]:
    return [{"RecurringChargeAmount": hourly, "RecurringChargeFrequency": "Hourly"}] if hourly else []


def duration_filter(value: str | None) -> int | None:
    """The ``Duration`` filter of RDS and ElastiCache: "in years or seconds" (1 | 3 | 31536000 | 94608000)."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("1", "3"):
        return int(text) * YEAR_SECONDS
    if text.isdigit() and int(text) in (YEAR_SECONDS, 3 * YEAR_SECONDS):
        return int(text)
    raise AwsError(
        "InvalidParameterValue",
        f"Invalid value {value!r} for Duration. Valid values: 1 | 3 | {YEAR_SECONDS} | {3 * YEAR_SECONDS}",
    )


def marker_page(items: list[Any], params: dict[str, Any], bounded: bool = True) -> tuple[list[Any], str | None]:
    """Marker/MaxRecords pagination. RDS-family describes allow MaxRecords of 20 to 100 (default 100)."""
    size = params.get("MaxRecords")
    if bounded and size is not None and not 20 <= int(size) <= 100:
        raise AwsError("InvalidParameterValue", f"Invalid value {size} for MaxRecords. Must be between 20 and 100")
    if size is not None and int(size) < 1:
        raise AwsError("InvalidParameterValue", f"Invalid value {size} for MaxRecords.")
    marker = params.get("Marker")
    if marker is not None and not str(marker).isdigit():
        raise AwsError("InvalidParameterValue", f"Invalid marker: {marker!r}")
    return paginate(items, params, token_key="Marker", size_key="MaxRecords")


def with_marker(out: dict[str, Any], marker: str | None) -> dict[str, Any]:
    if marker:
        out["Marker"] = marker
    return out


def generated_reservation_id(state: SandboxState, taken: set[str]) -> str:
    """The id RDS and ElastiCache give a reservation bought without one: ``ri-YYYY-MM-DD-HH-MM-SS-mmm``."""
    at = state.clock.now()
    while True:
        candidate = f"ri-{at:%Y-%m-%d-%H-%M-%S}-{at.microsecond // 1000:03d}"
        if candidate not in taken:
            return candidate
        at += timedelta(milliseconds=1)


def seeded_start(state: SandboxState, entry: dict[str, Any]) -> datetime:
    return state.clock.now() - timedelta(days=float(entry.get("start_days_ago", 0)))


# --- catalogue ---------------------------------------------------------------------------------------------
def _offering(region: str, db_class: str, product: str, multi_az: bool, years: int, payment: str) -> dict[str, Any]:
    hourly = ON_DEMAND_HOURLY[(db_class, product)] * REGIONS[region] * (2 if multi_az else 1)
    fixed, recurring = reservation_prices(hourly * DISCOUNT[years][payment], years, payment)
    return {
        "ReservedDBInstancesOfferingId": stable_uuid("rds", region, db_class, product, multi_az, years, payment),
        "Region": region,
        "DBInstanceClass": db_class,
        "Duration": years * YEAR_SECONDS,
        "FixedPrice": fixed,
        "UsagePrice": 0.0,
        "CurrencyCode": "USD",
        "ProductDescription": product,
        "OfferingType": payment,
        "MultiAZ": multi_az,
        "RecurringCharges": recurring_charges(recurring),
    }


@catalogue_section("rds_offerings")
def default_offerings() -> list[dict[str, Any]]:
    return [
        _offering(region, db_class, product, multi_az, years, payment)
        for region in REGIONS
        for (db_class, product) in ON_DEMAND_HOURLY
        for multi_az in (False, True)
        for years in DISCOUNT
        for payment in PAYMENT_OPTIONS
    ]


def offerings_in(catalogue: Catalogue, region: str) -> list[dict[str, Any]]:
    return [o for o in catalogue.section("rds_offerings") if o["Region"] == region]


def find_offering(catalogue: Catalogue, region: str, offering_id: str) -> dict[str, Any] | None:
    return next(
        (o for o in offerings_in(catalogue, region) if o["ReservedDBInstancesOfferingId"] == offering_id),
        None,
    )


def _offering_view(offering: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in offering.items() if k != "Region" and not k.startswith("_")}


def _reject_filters(params: dict[str, Any]) -> None:
    # The model documents Filters as "not currently supported"; silently ignoring them would let a caller
    # believe it had narrowed the result.
    if params.get("Filters"):
        raise AwsError("InvalidParameterValue", "The Filters parameter is not supported for this operation.")


@handles(SERVICE, "DescribeReservedDBInstancesOfferings")
def describe_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    _reject_filters(params)
    items = offerings_in(ctx.catalogue, ctx.region)
    offering_id = params.get("ReservedDBInstancesOfferingId")
    if offering_id is not None:
        items = [o for o in items if o["ReservedDBInstancesOfferingId"] == offering_id]
        if not items:
            raise AwsError("ReservedDBInstancesOfferingNotFound", f"Specified offering {offering_id} not found.")
    duration = duration_filter(params.get("Duration"))
    if duration is not None:
        items = [o for o in items if o["Duration"] == duration]
    if params.get("DBInstanceClass") is not None:
        items = [o for o in items if o["DBInstanceClass"] == params["DBInstanceClass"]]
    if params.get("ProductDescription") is not None:
        # Documented: "The results show offerings that partially match the filter value."
        wanted = params["ProductDescription"].lower()
        items = [o for o in items if wanted in o["ProductDescription"].lower()]
    if params.get("OfferingType") is not None:
        items = [o for o in items if o["OfferingType"] == params["OfferingType"]]
    if params.get("MultiAZ") is not None:
        items = [o for o in items if o["MultiAZ"] == params["MultiAZ"]]
    page, marker = marker_page(items, params)
    return with_marker({"ReservedDBInstancesOfferings": [_offering_view(o) for o in page]}, marker)


# --- reservations -------------------------------------------------------------------------------------------
def _arn(region: str, account_id: str, reservation_id: str) -> str:
    return f"arn:aws:rds:{region}:{account_id}:ri:{reservation_id}"


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
        "ReservedDBInstanceId": reservation_id,
        "ReservedDBInstancesOfferingId": offering["ReservedDBInstancesOfferingId"],
        "DBInstanceClass": offering["DBInstanceClass"],
        "StartTime": start,
        "Duration": offering["Duration"],
        "FixedPrice": offering["FixedPrice"],
        "UsagePrice": offering["UsagePrice"],
        "CurrencyCode": offering["CurrencyCode"],
        "DBInstanceCount": count,
        "ProductDescription": offering["ProductDescription"],
        "OfferingType": offering["OfferingType"],
        "MultiAZ": offering["MultiAZ"],
        "RecurringCharges": offering["RecurringCharges"],
        "ReservedDBInstanceArn": arn,
        "LeaseId": new_uuid(),
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


def _reserved_count(resources: list[Resource]) -> int:
    return sum(r.data["DBInstanceCount"] for r in resources if r.state in ("payment-pending", "active"))


def _view(resource: Resource) -> dict[str, Any]:
    view = {k: v for k, v in resource.data.items() if not k.startswith("_")}
    view["State"] = resource.state
    return view


@handles(SERVICE, "PurchaseReservedDBInstancesOffering")
def purchase(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    offering_id = params["ReservedDBInstancesOfferingId"]
    offering = find_offering(ctx.catalogue, ctx.region, offering_id)
    if offering is None:
        raise AwsError("ReservedDBInstancesOfferingNotFound", f"Specified offering {offering_id} not found.")
    count = 1 if params.get("DBInstanceCount") is None else int(params["DBInstanceCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "DBInstanceCount must be at least 1.")
    with ctx.state.lock:
        existing = reservations(ctx)
        taken = {r.data["ReservedDBInstanceId"] for r in existing}
        customer_id = params.get("ReservedDBInstanceId")
        if customer_id is not None and customer_id in taken:
            raise AwsError("ReservedDBInstanceAlreadyExists", f"Reserved DB instance {customer_id} already exists.")
        if _reserved_count(existing) + count > RESERVED_DB_INSTANCE_QUOTA:
            raise AwsError(
                "ReservedDBInstanceQuotaExceeded",
                f"Purchasing {count} reserved DB instances would exceed the quota of "
                f"{RESERVED_DB_INSTANCE_QUOTA} reserved DB instances for this account in {ctx.region}.",
            )
        now = ctx.now()
        reservation_id = customer_id or generated_reservation_id(ctx.state, taken)
        resource = reservation_record(
            ctx.account_id,
            ctx.region,
            offering,
            reservation_id,
            count,
            now,
            CreatedBy(OPERATION, customer_id, now),
            params.get("Tags") or [],
        )
        ctx.state.add(resource)
    return {"ReservedDBInstance": _view(resource)}


@handles(SERVICE, "DescribeReservedDBInstances")
def describe_reserved_db_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    _reject_filters(params)
    items = [_view(r) for r in reservations(ctx)]
    reservation_id = params.get("ReservedDBInstanceId")
    if reservation_id is not None:
        items = [i for i in items if i["ReservedDBInstanceId"] == reservation_id]
        if not items:
            raise AwsError("ReservedDBInstanceNotFound", f"Reserved DB instance {reservation_id} not found.")
    exact = (
        "ReservedDBInstancesOfferingId",
        "DBInstanceClass",
        "ProductDescription",
        "OfferingType",
        "MultiAZ",
        "LeaseId",
    )
    for key in exact:
        if params.get(key) is not None:
            items = [i for i in items if i[key] == params[key]]
    duration = duration_filter(params.get("Duration"))
    if duration is not None:
        items = [i for i in items if i["Duration"] == duration]
    page, marker = marker_page(items, params)
    return with_marker({"ReservedDBInstances": page}, marker)


@handles(SERVICE, "ListTagsForResource")
def list_tags_for_resource(ctx: CallContext, params: dict[str, Any]) -> Any:
    """Tags of reserved DB instances (set at purchase); every other ARN is moto's."""
    arn = params.get("ResourceName", "")
    if ":ri:" not in arn:
        return ctx.call_moto()
    resource = ctx.state.get(SERVICE, RESOURCE_TYPE, arn)
    if resource is None or resource.account_id != ctx.account_id:
        raise AwsError("ReservedDBInstanceNotFound", f"Reserved DB instance {arn.rsplit(':', 1)[-1]} not found.")
    return {"TagList": resource.data["_Tags"]}


@seeder("rds:reserved-db-instance")
def seed_reserved_db_instance(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "rds:reserved-db-instance", "account_id", "region", "offering_id" | (db_instance_class,
    product_description, multi_az?, offering_type?, duration_years?), "db_instance_count"?, "start_days_ago"?,
    "id"?, "tags"?}``"""
    region = entry["region"]
    offering = seed_offering(
        entry,
        find_offering(catalogue, region, entry["offering_id"]) if "offering_id" in entry else None,
        [
            o
            for o in offerings_in(catalogue, region)
            if o["DBInstanceClass"] == entry.get("db_instance_class")
            and o["ProductDescription"] == entry.get("product_description", "mysql")
            and o["MultiAZ"] == bool(entry.get("multi_az", False))
            and o["OfferingType"] == entry.get("offering_type", "No Upfront")
            and o["Duration"] == int(entry.get("duration_years", 1)) * YEAR_SECONDS
        ],
        "RDS",
    )
    seed_reservation(
        state, entry, offering, SERVICE, RESOURCE_TYPE, "ReservedDBInstanceId", "db_instance_count",
        "reserved DB instance", reservation_record, advance_reservation,
    )


def seed_offering(
    entry: dict[str, Any], by_id: dict[str, Any] | None, matches: list[dict[str, Any]], label: str
) -> dict[str, Any]:
    """The one offering a seed entry names: by ``offering_id``, or the single match of its attributes."""
    offering = by_id if "offering_id" in entry else (matches[0] if len(matches) == 1 else None)
    if offering is None:
        raise ValueError(f"seed entry matches no single {label} offering: {entry}")
    return offering


def seed_reservation(
    state: SandboxState,
    entry: dict[str, Any],
    offering: dict[str, Any],
    service: str,
    resource_type: str,
    id_key: str,
    count_key: str,
    label: str,
    make_record: Callable[..., Resource],
    advance: Callable[[Resource, datetime], bool],
) -> None:
    """Add a pre-existing reservation identified by a customer id (RDS, ElastiCache), already paid for."""
    account_id, region = entry["account_id"], entry["region"]
    taken = {r.data[id_key] for r in state.find(service, resource_type, account_id, region)}
    reservation_id = entry.get("id") or generated_reservation_id(state, taken)
    if reservation_id in taken:
        raise ValueError(f"seed entry: {label} {reservation_id} already exists")
    start = seeded_start(state, entry)
    resource = make_record(
        account_id,
        region,
        offering,
        reservation_id,
        int(entry.get(count_key, 1)),
        start,
        CreatedBy("seed", None, state.clock.now()),
        list(entry.get("tags", [])),
    )
    resource.data["_PendingUntil"] = start
    advance(resource, state.clock.now())
    state.add(resource)
