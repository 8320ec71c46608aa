"""Elasticsearch (`es`, /2015-01-01) and OpenSearch (`opensearch`, /2021-01-01) reserved instances.

The two APIs are the same operations under different names, so one set of handlers serves both, driven by an
:class:`Api` that names each field. moto has no route for any of them.

ReservationName is the customer's only label on a purchase. AWS models ResourceAlreadyExistsException for the
purchase call but does not document that names are unique; the sandbox enforces uniqueness per account (all
regions, per API), so that a replayed purchase is refused and can be detected. See docs/sandbox.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import YEAR_SECONDS, new_uuid, paginate, public
from sandbox.state import CreatedBy, Resource, SandboxState

PAYMENT_PENDING_SECONDS = 30
# Reserved instances (summed InstanceCount) an account may hold per region and API before
# LimitExceededException.
MAX_INSTANCES_PER_REGION = 100
_LIVE_STATES = ("payment-pending", "active")

REGIONS = {"us-east-1": 1.0, "us-west-2": 1.0, "eu-west-1": 1.12}
ON_DEMAND_HOURLY = {"m5.large": 0.142, "r5.large": 0.186, "c5.large": 0.125}
# Effective hourly rate as a share of on-demand, by (years, payment option).
DISCOUNT = {
    1: {"NO_UPFRONT": 0.69, "PARTIAL_UPFRONT": 0.66, "ALL_UPFRONT": 0.64},
    3: {"NO_UPFRONT": 0.50, "PARTIAL_UPFRONT": 0.47, "ALL_UPFRONT": 0.45},
}


@dataclass(frozen=True)
class Api:
    service: str
    resource_type: str
    section: str
    suffix: str  # instance type suffix: ".elasticsearch" or ".search"
    purchase_action: str  # the IAM action recorded as created_by
    describe_offerings_op: str
    purchase_op: str
    describe_op: str
    offering_id: str
    instance_type: str
    reservation_id: str
    instance_count: str
    offerings_list: str
    reservations_list: str
    billing_subscription: bool


ES = Api(
    "es",
    "reserved-elasticsearch-instance",
    "es_offerings",
    ".elasticsearch",
    "es:PurchaseReservedElasticsearchInstanceOffering",
    "DescribeReservedElasticsearchInstanceOfferings",
    "PurchaseReservedElasticsearchInstanceOffering",
    "DescribeReservedElasticsearchInstances",
    "ReservedElasticsearchInstanceOfferingId",
    "ElasticsearchInstanceType",
    "ReservedElasticsearchInstanceId",
    "ElasticsearchInstanceCount",
    "ReservedElasticsearchInstanceOfferings",
    "ReservedElasticsearchInstances",
    False,
)
OPENSEARCH = Api(
    "opensearch",
    "reserved-instance",
    "opensearch_offerings",
    ".search",
    "es:PurchaseReservedInstanceOffering",
    "DescribeReservedInstanceOfferings",
    "PurchaseReservedInstanceOffering",
    "DescribeReservedInstances",
    "ReservedInstanceOfferingId",
    "InstanceType",
    "ReservedInstanceId",
    "InstanceCount",
    "ReservedInstanceOfferings",
    "ReservedInstances",
    True,
)
APIS = (ES, OPENSEARCH)


# --- catalogue ----------------------------------------------------------------------------------------------
def _offering(api: Api, region: str, base_type: str, years: int, payment: str) -> dict[str, Any]:
    hourly = ON_DEMAND_HOURLY[base_type] * REGIONS[region] * DISCOUNT[years][payment]
    hours = 8760 * years
    fixed, recurring = {
        "NO_UPFRONT": (0.0, round(hourly, 4)),
        "PARTIAL_UPFRONT": (round(hourly * hours * 0.5, 2), round(hourly * 0.5, 4)),
        "ALL_UPFRONT": (round(hourly * hours, 2), 0.0),
    }[payment]
    return {
        api.offering_id: stable_uuid(api.service, "reserved", region, base_type, years, payment),
        "Region": region,
        api.instance_type: base_type + api.suffix,
        "Duration": years * YEAR_SECONDS,
        "FixedPrice": fixed,
        "UsagePrice": 0.0,
        "CurrencyCode": "USD",
        "PaymentOption": payment,
        "RecurringCharges": (
            [{"RecurringChargeAmount": recurring, "RecurringChargeFrequency": "Hourly"}] if recurring else []
        ),
    }


def _default_offerings(api: Api) -> list[dict[str, Any]]:
    return [
        _offering(api, region, base_type, years, payment)
        for region in REGIONS
        for base_type in ON_DEMAND_HOURLY
        for years in DISCOUNT
        for payment in DISCOUNT[years]
    ]


@catalogue_section("es_offerings")
def default_es_offerings() -> list[dict[str, Any]]:
    return _default_offerings(ES)


@catalogue_section("opensearch_offerings")
def default_opensearch_offerings() -> list[dict[str, Any]]:
    return _default_offerings(OPENSEARCH)


def offerings_in(api: Api, catalogue: Catalogue, region: str) -> list[dict[str, Any]]:
    return [o for o in catalogue.section(api.section) if o.get("Region", region) == region]


def find_offering(api: Api, catalogue: Catalogue, region: str, offering_id: str) -> dict[str, Any] | None:
    for offering in offerings_in(api, catalogue, region):
        if offering[api.offering_id] == offering_id:
            return offering
    return None


# --- handlers -----------------------------------------------------------------------------------------------
def _not_found(message: str) -> AwsError:
    return AwsError("ResourceNotFoundException", message)


def describe_offerings(api: Api, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = offerings_in(api, ctx.catalogue, ctx.region)
    wanted = params.get(api.offering_id)
    if wanted:
        items = [o for o in items if o[api.offering_id] == wanted]
        if not items:
            raise _not_found(f"Reserved instance offering {wanted} was not found.")
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {api.offerings_list: [{k: v for k, v in o.items() if k != "Region"} for o in page]}
    if next_token:
        out["NextToken"] = next_token
    return out


def reservation_record(
    api: Api,
    account_id: str,
    region: str,
    offering: dict[str, Any],
    count: int,
    name: str,
    start: datetime,
    operation: str,
    created_at: datetime,
    billing_id: int,
    reservation_id: str | None = None,
) -> Resource:
    reservation_id = reservation_id or new_uuid()
    data: dict[str, Any] = {
        "ReservationName": name,
        api.reservation_id: reservation_id,
        api.offering_id: offering[api.offering_id],
        api.instance_type: offering[api.instance_type],
        "StartTime": start,
        "Duration": offering["Duration"],
        "FixedPrice": offering["FixedPrice"],
        "UsagePrice": offering["UsagePrice"],
        "CurrencyCode": offering["CurrencyCode"],
        api.instance_count: count,
        "PaymentOption": offering["PaymentOption"],
        "RecurringCharges": list(offering.get("RecurringCharges", [])),
        "_end": start + timedelta(seconds=int(offering["Duration"])),
        "_pending_until": start + timedelta(seconds=PAYMENT_PENDING_SECONDS),
    }
    if api.billing_subscription:
        data["BillingSubscriptionId"] = billing_id
    return Resource(
        account_id,
        region,
        api.service,
        api.resource_type,
        reservation_id,
        "payment-pending",
        CreatedBy(operation, name, created_at),
        data,
    )


def advance_reservation(resource: Resource, now: datetime) -> bool:
    if resource.state == "payment-pending" and now >= resource.data["_pending_until"]:
        resource.state = "active"
    if resource.state == "active" and now >= resource.data["_end"]:
        resource.state = "retired"
    return resource.state in _LIVE_STATES


@on_state_setup
def _setup(state: SandboxState) -> None:
    for api in APIS:
        state.register_advancer(api.service, api.resource_type, advance_reservation)


def purchase(api: Api, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    name = str(params["ReservationName"])
    if not 5 <= len(name) <= 64:
        raise AwsError("ValidationException", "ReservationName must be between 5 and 64 characters long.")
    count = int(params.get("InstanceCount") or 1)
    if count < 1:
        raise AwsError("ValidationException", "InstanceCount must be at least 1.")
    offering_id = params[api.offering_id]
    offering = find_offering(api, ctx.catalogue, ctx.region, offering_id)
    if offering is None:
        raise _not_found(f"Reserved instance offering {offering_id} was not found.")
    with ctx.state.lock:
        mine = ctx.state.find(api.service, api.resource_type, ctx.account_id)
        if any(r.data["ReservationName"] == name for r in mine):
            raise AwsError(
                "ResourceAlreadyExistsException",
                f"A reservation named '{name}' already exists in this account.",
            )
        held = sum(r.data[api.instance_count] for r in mine if r.region == ctx.region and r.state in _LIVE_STATES)
        if held + count > MAX_INSTANCES_PER_REGION:
            raise AwsError(
                "LimitExceededException",
                f"Purchasing {count} more reserved instances would exceed the limit of "
                f"{MAX_INSTANCES_PER_REGION} per region ({held} held).",
            )
        now = ctx.now()
        resource = reservation_record(
            api,
            ctx.account_id,
            ctx.region,
            offering,
            count,
            name,
            now,
            api.purchase_action,
            now,
            1_000_000_000 + ctx.state.next_number(),
        )
        ctx.state.add(resource)
    return {api.reservation_id: resource.id, "ReservationName": name}


def reservation_view(api: Api, resource: Resource) -> dict[str, Any]:
    view = public(resource.data)
    view["State"] = resource.state
    return view


def describe_reservations(api: Api, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resources = ctx.state.find(api.service, api.resource_type, ctx.account_id, ctx.region)
    wanted = params.get(api.reservation_id)
    if wanted:
        resources = [r for r in resources if r.id == wanted]
        if not resources:
            raise _not_found(f"Reserved instance {wanted} was not found.")
    page, next_token = paginate([reservation_view(api, r) for r in resources], params)
    out: dict[str, Any] = {api.reservations_list: page}
    if next_token:
        out["NextToken"] = next_token
    return out


def _register(api: Api) -> None:
    handles(api.service, api.describe_offerings_op)(lambda ctx, params: describe_offerings(api, ctx, params))
    handles(api.service, api.purchase_op)(lambda ctx, params: purchase(api, ctx, params))
    handles(api.service, api.describe_op)(lambda ctx, params: describe_reservations(api, ctx, params))


for _api in APIS:
    _register(_api)


# --- seed ---------------------------------------------------------------------------------------------------
def _seed(api: Api, state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    region = entry["region"]
    if "offering_id" in entry:
        offering = find_offering(api, catalogue, region, entry["offering_id"])
    else:
        base = str(entry["instance_type"]).removesuffix(api.suffix)
        matches = [
            o
            for o in offerings_in(api, catalogue, region)
            if o[api.instance_type] == base + api.suffix
            and o["PaymentOption"] == entry.get("payment_option", "NO_UPFRONT")
            and int(o["Duration"]) == int(entry.get("duration_years", 1)) * YEAR_SECONDS
        ]
        offering = matches[0] if len(matches) == 1 else None
    if offering is None:
        raise ValueError(f"seed entry matches no single {api.service} reserved instance offering: {entry}")
    now = state.clock.now()
    start = now - timedelta(days=float(entry.get("start_days_ago", 0)))
    resource = reservation_record(
        api,
        entry["account_id"],
        region,
        offering,
        int(entry.get("instance_count", 1)),
        str(entry.get("reservation_name") or f"seeded-{state.next_number():04d}"),
        start,
        "seed",
        now,
        1_000_000_000 + state.next_number(),
        entry.get("id"),
    )
    resource.data["_pending_until"] = start
    advance_reservation(resource, now)
    state.add(resource)


@seeder("es:reserved-elasticsearch-instance")
def seed_es(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "es:reserved-elasticsearch-instance", "account_id", "region",
    "offering_id" | (instance_type, payment_option, duration_years), "instance_count", "reservation_name",
    "start_days_ago", "id"?}``"""
    _seed(ES, state, catalogue, entry)


@seeder("opensearch:reserved-instance")
def seed_opensearch(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """As ``es:reserved-elasticsearch-instance``, for the OpenSearch API (instance types ``*.search``)."""
    _seed(OPENSEARCH, state, catalogue, entry)
