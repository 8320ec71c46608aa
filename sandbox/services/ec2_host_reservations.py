"""EC2 Dedicated Host Reservations: offerings, purchase preview, purchase and DescribeHostReservations.

Dedicated hosts themselves stay moto's (AllocateHosts, DescribeHosts, ReleaseHosts); this module reads them
from moto's EC2 backend in-process, and on purchase writes the reservation id onto moto's host object so that
moto's DescribeHosts shows ``HostReservationId`` as AWS does. moto has no host reservations at all.

The seed kind ``ec2:dedicated-host`` allocates hosts a customer already holds, optionally with fixed ids (moto
draws random ones), so that example plans can name them.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import (
    YEAR_SECONDS,
    apply_ec2_filters,
    ec2_filters,
    ec2_id,
    paginate,
    price,
    public,
    refuse_over_limit,
)
from sandbox.services.ec2_capacity_reservations import check_tag_specifications, moto_backend
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
HR_TYPE = "host-reservation"
PAYMENT_PENDING_SECONDS = 30
REGIONS = {"us-east-1": 1.0, "us-west-2": 1.0, "eu-west-1": 1.11}
# On-demand price of one whole Dedicated Host per hour, by instance family (us-east-1).
HOST_HOURLY = {"m5": 5.069, "c5": 4.08, "r5": 6.653}
# Effective hourly rate as a share of on-demand, by (years, payment option).
DISCOUNT = {
    1: {"NoUpfront": 0.70, "PartialUpfront": 0.66, "AllUpfront": 0.63},
    3: {"NoUpfront": 0.50, "PartialUpfront": 0.45, "AllUpfront": 0.42},
}
_HOST_ID = re.compile(r"^h-([0-9a-f]{8}|[0-9a-f]{17})$")
_OFFERING_ID = re.compile(r"^hro-[0-9a-f]{17}$")


def _money(value: float | Decimal) -> str:
    return f"{value:.3f}"


def offering_id(*parts: object) -> str:
    return "hro-" + stable_uuid("host-reservation", *parts).replace("-", "")[:17]


@catalogue_section("ec2_host_reservation_offerings")
def default_offerings() -> list[dict[str, Any]]:
    offerings = []
    for region, factor in REGIONS.items():
        for family, on_demand in HOST_HOURLY.items():
            for years, options in DISCOUNT.items():
                for option, share in options.items():
                    hourly = on_demand * factor * share
                    hours = 8760 * years
                    if option == "NoUpfront":
                        upfront, recurring = 0.0, hourly
                    elif option == "PartialUpfront":
                        upfront, recurring = hourly * hours * 0.5, hourly * 0.5
                    else:
                        upfront, recurring = hourly * hours, 0.0
                    offerings.append(
                        {
                            "OfferingId": offering_id(region, family, years, option),
                            "Region": region,
                            "CurrencyCode": "USD",
                            "Duration": years * YEAR_SECONDS,
                            "HourlyPrice": _money(recurring),
                            "InstanceFamily": family,
                            "PaymentOption": option,
                            "UpfrontPrice": _money(round(upfront, 2)),
                        }
                    )
    return offerings


def offerings_in(ctx: CallContext) -> list[dict[str, Any]]:
    return [o for o in ctx.catalogue.section("ec2_host_reservation_offerings") if o["Region"] == ctx.region]


def offering_view(offering: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in offering.items() if k != "Region"}


_OFFERING_FILTERS = {
    "instance-family": lambda o: o["InstanceFamily"],
    "payment-option": lambda o: o["PaymentOption"],
}


@handles(SERVICE, "DescribeHostReservationOfferings")
def describe_host_reservation_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = offerings_in(ctx)
    if params.get("OfferingId"):
        items = [o for o in items if o["OfferingId"] == params["OfferingId"]]
    if params.get("MinDuration") is not None:
        items = [o for o in items if o["Duration"] >= int(params["MinDuration"])]
    if params.get("MaxDuration") is not None:
        items = [o for o in items if o["Duration"] <= int(params["MaxDuration"])]
    # This API names its filter list "Filter" (singular).
    items = apply_ec2_filters(items, ec2_filters({"Filters": params.get("Filter")}), _OFFERING_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"OfferingSet": [offering_view(o) for o in page]}
    if next_token:
        out["NextToken"] = next_token
    return out


# --- hosts (moto's) and the checks a purchase makes ---------------------------------------------------------
def host_family(host: Any) -> str:
    return str(host.instance_family or (host.instance_type or "").split(".")[0])


def covering_reservation(ctx: CallContext, host_id: str) -> Resource | None:
    for reservation in ctx.state.find(SERVICE, HR_TYPE, ctx.account_id, ctx.region):
        if reservation.state in ("payment-pending", "active") and host_id in reservation.data["HostIdSet"]:
            return reservation
    return None


def resolve(ctx: CallContext, params: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The offering and the hosts of a preview or purchase, with AWS's checks."""
    oid = params["OfferingId"]
    offering = next((o for o in offerings_in(ctx) if o["OfferingId"] == oid), None)
    if not _OFFERING_ID.match(oid) or offering is None:
        raise AwsError("InvalidHostReservationOfferingId.Malformed", f"The offering ID '{oid}' is not valid.")
    host_ids = list(params.get("HostIdSet") or [])
    if not host_ids:
        raise AwsError("MissingParameter", "The request must contain the parameter HostIdSet.")
    if len(set(host_ids)) != len(host_ids):
        raise AwsError("InvalidParameterValue", "HostIdSet contains duplicate host IDs.")
    backend = moto_backend(ctx.account_id, ctx.region)
    backend_hosts = backend.hosts if backend is not None else {}
    hosts = []
    for host_id in host_ids:
        if not _HOST_ID.match(host_id):
            raise AwsError("InvalidHostId.Malformed", f'Invalid id: "{host_id}" (expecting "h-...")')
        host = backend_hosts.get(host_id)
        if host is None or host.state == "released":
            raise AwsError("InvalidHostId.NotFound", f"The host ID '{host_id}' was not found")
        if host_family(host) != offering["InstanceFamily"]:
            raise AwsError(
                "InvalidInstanceFamily",
                f"The host {host_id} supports instance family '{host_family(host)}', but the offering is for "
                f"'{offering['InstanceFamily']}'.",
            )
        covered = covering_reservation(ctx, host_id)
        if covered is not None:
            raise AwsError(
                "HostAlreadyCoveredByReservation",
                f"The host {host_id} is already covered by the reservation {covered.id}.",
            )
        hosts.append(host)
    return offering, hosts


def purchase_entry(offering: dict[str, Any], host_ids: list[str]) -> dict[str, Any]:
    """One Purchase item; its prices cover all of its hosts."""
    count = len(host_ids)
    return {
        "CurrencyCode": "USD",
        "Duration": offering["Duration"],
        "HostIdSet": host_ids,
        "HourlyPrice": _money(price(offering["HourlyPrice"], "HourlyPrice") * count),
        "InstanceFamily": offering["InstanceFamily"],
        "PaymentOption": offering["PaymentOption"],
        "UpfrontPrice": _money(price(offering["UpfrontPrice"], "UpfrontPrice") * count),
    }


@handles(SERVICE, "GetHostReservationPurchasePreview")
def get_host_reservation_purchase_preview(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    offering, hosts = resolve(ctx, params)
    entry = purchase_entry(offering, [h.id for h in hosts])
    return {
        "CurrencyCode": "USD",
        "Purchase": [entry],
        "TotalHourlyPrice": entry["HourlyPrice"],
        "TotalUpfrontPrice": entry["UpfrontPrice"],
    }


# --- PurchaseHostReservation ------------------------------------------------------------------------------
def advance_hr(resource: Resource, now: datetime) -> bool:
    data = resource.data
    if resource.state == "payment-pending" and now >= data["_PendingUntil"]:
        resource.state = "active"
    if resource.state == "active" and now >= data["End"]:
        resource.state = "retired"
        _uncover_hosts(resource)
    return resource.state in ("payment-pending", "active")


def _uncover_hosts(resource: Resource) -> None:
    backend = moto_backend(resource.account_id, resource.region)
    if backend is None:
        return
    hosts = backend.hosts
    for host_id in resource.data["HostIdSet"]:
        host = hosts.get(host_id)
        if host is not None and getattr(host, "host_reservation_id", None) == resource.id:
            setattr(host, "host_reservation_id", None)  # noqa: B010


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, HR_TYPE, advance_hr)


@handles(SERVICE, "PurchaseHostReservation")
def purchase_host_reservation(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    token = params.get("ClientToken")
    if params.get("CurrencyCode") not in (None, "USD"):
        raise AwsError("InvalidParameterValue", "CurrencyCode must be USD.")

    def create() -> dict[str, Any]:
        offering, hosts = resolve(ctx, params)
        host_ids = [h.id for h in hosts]
        entry = purchase_entry(offering, host_ids)
        limit = params.get("LimitPrice")
        if limit is not None:
            total = price(entry["UpfrontPrice"], "UpfrontPrice")
            refuse_over_limit(total, price(limit, "LimitPrice"), "total upfront price")
        tags = check_tag_specifications(params, HR_TYPE)
        now = ctx.now()
        reservation_id = ec2_id("hr")
        data = {
            **{k: v for k, v in entry.items()},
            "HostReservationId": reservation_id,
            "Count": len(host_ids),
            "OfferingId": offering["OfferingId"],
            "Start": now,
            "End": now + timedelta(seconds=offering["Duration"]),
            "Tags": tags,
            "_PendingUntil": now + timedelta(seconds=PAYMENT_PENDING_SECONDS),
        }
        resource = Resource(
            ctx.account_id,
            ctx.region,
            SERVICE,
            HR_TYPE,
            reservation_id,
            "payment-pending",
            CreatedBy("ec2:PurchaseHostReservation", token, now),
            data,
        )
        ctx.state.add(resource)
        for host in hosts:
            # moto's DescribeHosts serializer reads this attribute (Host.HostReservationId).
            setattr(host, "host_reservation_id", reservation_id)  # noqa: B010
        response: dict[str, Any] = {
            "CurrencyCode": "USD",
            "Purchase": [{**entry, "HostReservationId": reservation_id}],
            "TotalHourlyPrice": entry["HourlyPrice"],
            "TotalUpfrontPrice": entry["UpfrontPrice"],
        }
        if token:
            response["ClientToken"] = token
        return response

    with ctx.state.lock:
        return ctx.state.idempotent(ctx.scope, token, params, create)


# --- seeded hosts -----------------------------------------------------------------------------------------
@seeder("ec2:dedicated-host")
def seed_dedicated_hosts(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:dedicated-host", "account_id", "region", "availability_zone", "instance_family"? (or
    "instance_type"), "quantity"?: 1, "host_ids"?: ["h-<17 hex>", ...], "tags"?: {key: value}}``: Dedicated
    Hosts in moto's backend, as AllocateHosts makes them, with the given ids when ``host_ids`` is set."""
    from moto.ec2.models import ec2_backends

    family, instance_type = entry.get("instance_family"), entry.get("instance_type")
    if bool(family) == bool(instance_type):
        raise ValueError("a dedicated host needs instance_family or instance_type (one of them)")
    wanted_ids = list(entry.get("host_ids") or [])
    quantity = int(entry.get("quantity", len(wanted_ids) or 1))
    if wanted_ids and len(wanted_ids) != quantity:
        raise ValueError("host_ids must name exactly quantity hosts")
    for host_id in wanted_ids:
        if not _HOST_ID.match(host_id):
            raise ValueError(f"host id {host_id!r} is not h- followed by 8 or 17 hex digits")
    backend: Any = ec2_backends[entry["account_id"]][entry["region"]]
    taken = [h for h in wanted_ids if h in backend.hosts]
    if taken:
        raise ValueError(f"hosts {taken} already exist")
    allocated = backend.allocate_hosts(quantity, "off", entry["availability_zone"], instance_type, family, "on", {})
    for index, host_id in enumerate(allocated):
        host = backend.hosts.pop(host_id)
        if wanted_ids:
            host.id = wanted_ids[index]
        backend.hosts[host.id] = host
        if entry.get("tags"):
            host.add_tags(dict(entry["tags"]))


# --- DescribeHostReservations -----------------------------------------------------------------------------
_HR_FILTERS = {
    "instance-family": lambda r: r["InstanceFamily"],
    "payment-option": lambda r: r["PaymentOption"],
    "state": lambda r: r["State"],
}


@handles(SERVICE, "DescribeHostReservations")
def describe_host_reservations(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resources = ctx.state.find(SERVICE, HR_TYPE, ctx.account_id, ctx.region)
    ids = params.get("HostReservationIdSet") or []
    for hr_id in ids:
        if not re.match(r"^hr-[0-9a-f]{17}$", hr_id):
            raise AwsError("InvalidHostReservationId.Malformed", f'Invalid id: "{hr_id}" (expecting "hr-...")')
    if ids:
        resources = [r for r in resources if r.id in ids]
    items = [{**public(r.data), "State": r.state} for r in resources]
    items = apply_ec2_filters(items, ec2_filters({"Filters": params.get("Filter")}), _HR_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"HostReservationSet": page}
    if next_token:
        out["NextToken"] = next_token
    return out
