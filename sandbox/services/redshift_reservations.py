"""Redshift reserved nodes: offerings, purchases, DescribeReservedNodes and the DC1 → DC2 exchange.

moto implements none of these calls. ``PurchaseReservedNodeOffering`` has no client token and no customer id:
every call creates a new reservation, so a blind retry buys twice (the worker must reconcile with
``DescribeReservedNodes`` instead). New reservations are ``pending-payment`` (the spelling botocore's model
documents for Redshift, unlike RDS's ``payment-pending``), then ``active``, then ``retired`` at the end of the
term.

The exchange (``GetReservedNodeExchangeOfferings`` / ``AcceptReservedNodeExchange``) takes an active DC1 node
to the DC2 offering of the matching size (dc1.large → dc2.large, dc1.8xlarge → dc2.8xlarge, node count 1:1)
with the same term and payment option, at no cost. The source is retired; replaying the exchange, or asking
for exchange offerings of it again, answers ``ReservedNodeAlreadyMigrated``.
``DescribeReservedNodeExchangeStatus`` reports the exchange as ``SUCCEEDED``.

Exchanges are synchronous unless the source node was seeded with ``exchange_seconds`` (and optionally
``exchange_outcome``: ``"FAILED"``): its exchange is then ``IN_PROGRESS`` for that many sandbox seconds, with the
source and the new node both ``exchanging``; it ends ``SUCCEEDED`` (source ``retired``, new node ``active``) or
``FAILED`` (AWS reverts it: the source is ``active`` again and may be exchanged anew, the new node ``retired``).

DC1 offerings: AWS no longer sells DC1 nodes to most accounts, but the catalogue lists them (marked
``_Legacy``) and the sandbox sells them by default, so that a client holding only the documented API can reach
a DC1 node and rehearse its exchange. A catalogue file may mark any offering ``"_Purchasable": false``: it is
then hidden from ``DescribeReservedNodeOfferings``, its purchase is refused with ``UnsupportedOperation``, and
it can still be seeded with the ``redshift:reserved-node`` kind and exchanged.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import YEAR_SECONDS, new_uuid, term_advancer
from sandbox.services.rds_reservations import (
    DISCOUNT,
    PAYMENT_OPTIONS,
    REGIONS,
    marker_page,
    recurring_charges,
    reservation_prices,
    seeded_start,
    with_marker,
)
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "redshift"
RESOURCE_TYPE = "reserved-node"
PAYMENT_PENDING_SECONDS = 30
# A sandbox quota (reserved nodes per account and Region); AWS's own figure is account-specific.
RESERVED_NODE_QUOTA = 200
ON_DEMAND_HOURLY = {
    "dc1.large": 0.25,
    "dc1.8xlarge": 4.80,
    "dc2.large": 0.25,
    "dc2.8xlarge": 4.80,
    "ra3.xlplus": 1.086,
    "ra3.4xlarge": 3.26,
}
# DC1 node type → (DC2 node type it is exchanged for, DC2 nodes per DC1 node).
DC1_EXCHANGE = {"dc1.large": ("dc2.large", 1), "dc1.8xlarge": ("dc2.8xlarge", 1)}
EXCHANGE_OUTCOMES = ("SUCCEEDED", "FAILED")
# States in which a node counts against the quota.
HELD_STATES = ("pending-payment", "active", "exchanging")


def _offering(region: str, node_type: str, years: int, payment: str) -> dict[str, Any]:
    hourly = ON_DEMAND_HOURLY[node_type] * REGIONS[region] * DISCOUNT[years][payment]
    fixed, recurring = reservation_prices(hourly, years, payment)
    offering: dict[str, Any] = {
        "ReservedNodeOfferingId": stable_uuid("redshift", region, node_type, years, payment),
        "Region": region,
        "NodeType": node_type,
        "Duration": years * YEAR_SECONDS,
        "FixedPrice": fixed,
        "UsagePrice": 0.0,
        "CurrencyCode": "USD",
        "OfferingType": payment,
        "RecurringCharges": recurring_charges(recurring),
        "ReservedNodeOfferingType": "Regular",
    }
    if node_type in DC1_EXCHANGE:
        offering["_Legacy"] = True
    return offering


@catalogue_section("redshift_offerings")
def default_offerings() -> list[dict[str, Any]]:
    return [
        _offering(region, node_type, years, payment)
        for region in REGIONS
        for node_type in ON_DEMAND_HOURLY
        for years in DISCOUNT
        for payment in PAYMENT_OPTIONS
    ]


def offerings_in(catalogue: Catalogue, region: str) -> list[dict[str, Any]]:
    return [o for o in catalogue.section("redshift_offerings") if o["Region"] == region]


def find_offering(catalogue: Catalogue, region: str, offering_id: str) -> dict[str, Any] | None:
    return next((o for o in offerings_in(catalogue, region) if o["ReservedNodeOfferingId"] == offering_id), None)


def _purchasable(offering: dict[str, Any]) -> bool:
    return bool(offering.get("_Purchasable", True))


def _offering_view(offering: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in offering.items() if k != "Region" and not k.startswith("_")}


def _offering_not_found(offering_id: str) -> AwsError:
    return AwsError("ReservedNodeOfferingNotFound", f"Specified offering {offering_id} does not exist.")


@handles(SERVICE, "DescribeReservedNodeOfferings")
def describe_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = [o for o in offerings_in(ctx.catalogue, ctx.region) if _purchasable(o)]
    offering_id = params.get("ReservedNodeOfferingId")
    if offering_id is not None:
        items = [o for o in items if o["ReservedNodeOfferingId"] == offering_id]
        if not items:
            raise _offering_not_found(offering_id)
    page, marker = marker_page(items, params)
    return with_marker({"ReservedNodeOfferings": [_offering_view(o) for o in page]}, marker)


# --- reserved nodes -----------------------------------------------------------------------------------------
def node_record(
    account_id: str,
    region: str,
    offering: dict[str, Any],
    count: int,
    start: datetime,
    created_by: CreatedBy,
    node_id: str | None = None,
) -> Resource:
    node_id = node_id or new_uuid()
    data = {
        "ReservedNodeId": node_id,
        "ReservedNodeOfferingId": offering["ReservedNodeOfferingId"],
        "NodeType": offering["NodeType"],
        "StartTime": start,
        "Duration": offering["Duration"],
        "FixedPrice": offering["FixedPrice"],
        "UsagePrice": offering["UsagePrice"],
        "CurrencyCode": offering["CurrencyCode"],
        "NodeCount": count,
        "OfferingType": offering["OfferingType"],
        "RecurringCharges": offering["RecurringCharges"],
        "ReservedNodeOfferingType": offering.get("ReservedNodeOfferingType", "Regular"),
        "_PendingUntil": start + timedelta(seconds=PAYMENT_PENDING_SECONDS),
    }
    return Resource(account_id, region, SERVICE, RESOURCE_TYPE, node_id, "pending-payment", created_by, data)


# payment → active after the payment delay; active → retired at the end of the term.
_advance_term = term_advancer("pending-payment")


def advance_node(resource: Resource, now: datetime) -> bool:
    """A node's life: its term, and the end of an asynchronous exchange it takes part in (as its source or as
    the node it makes)."""
    data = resource.data
    if resource.state == "exchanging":
        if now < data["_ExchangeEndsAt"]:
            return True
        succeeded = data["_ExchangeEndsAs"] == "SUCCEEDED"
        if data["_ExchangeRole"] == "source":
            resource.state = "retired" if succeeded else "active"
            if not succeeded:  # reverted: the node may be exchanged again
                data.pop("_ExchangeRequestId", None)
        else:
            resource.state = "active" if succeeded else "retired"
        for key in ("_ExchangeEndsAt", "_ExchangeEndsAs", "_ExchangeRole"):
            data.pop(key, None)
    return _advance_term(resource, now)


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, RESOURCE_TYPE, advance_node)


def _view(resource: Resource) -> dict[str, Any]:
    view = {k: v for k, v in resource.data.items() if not k.startswith("_")}
    view["State"] = resource.state
    return view


def _nodes(ctx: CallContext) -> list[Resource]:
    return ctx.state.find(SERVICE, RESOURCE_TYPE, ctx.account_id, ctx.region)


def _node(ctx: CallContext, node_id: str) -> Resource:
    resource = ctx.state.get(SERVICE, RESOURCE_TYPE, node_id)
    if resource is None or resource.account_id != ctx.account_id or resource.region != ctx.region:
        raise AwsError("ReservedNodeNotFound", f"The specified reserved compute node {node_id} not found.")
    return resource


@handles(SERVICE, "PurchaseReservedNodeOffering")
def purchase(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    offering_id = params["ReservedNodeOfferingId"]
    offering = find_offering(ctx.catalogue, ctx.region, offering_id)
    if offering is None:
        raise _offering_not_found(offering_id)
    if not _purchasable(offering):
        raise AwsError(
            "UnsupportedOperation",
            f"Reserved nodes of node type {offering['NodeType']} can no longer be purchased.",
        )
    count = 1 if params.get("NodeCount") is None else int(params["NodeCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "NodeCount must be at least 1.")
    with ctx.state.lock:
        reserved = sum(r.data["NodeCount"] for r in _nodes(ctx) if r.state in HELD_STATES)
        if reserved + count > RESERVED_NODE_QUOTA:
            raise AwsError(
                "ReservedNodeQuotaExceeded",
                f"Purchasing {count} reserved nodes would exceed the quota of {RESERVED_NODE_QUOTA} reserved "
                f"nodes for this account in {ctx.region}.",
            )
        now = ctx.now()
        resource = node_record(
            ctx.account_id,
            ctx.region,
            offering,
            count,
            now,
            CreatedBy("redshift:PurchaseReservedNodeOffering", None, now),
        )
        ctx.state.add(resource)
    return {"ReservedNode": _view(resource)}


@handles(SERVICE, "DescribeReservedNodes")
def describe_reserved_nodes(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    node_id = params.get("ReservedNodeId")
    resources = [_node(ctx, node_id)] if node_id is not None else _nodes(ctx)
    page, marker = marker_page([_view(r) for r in resources], params)
    return with_marker({"ReservedNodes": page}, marker)


# --- DC1 → DC2 exchange ------------------------------------------------------------------------------------
def _exchangeable(ctx: CallContext, node_id: str) -> Resource:
    """The source node of an exchange, or the error AWS gives for it."""
    node = _node(ctx, node_id)
    if node.data.get("_ExchangeRequestId"):
        raise AwsError("ReservedNodeAlreadyMigrated", f"Reserved node {node_id} has already been exchanged.")
    if node.data["NodeType"] not in DC1_EXCHANGE:
        raise AwsError(
            "UnsupportedOperation",
            f"Reserved node {node_id} is of node type {node.data['NodeType']}: only DC1 reserved nodes can "
            "be exchanged for DC2 reserved nodes.",
        )
    if node.state != "active":
        raise AwsError("InvalidReservedNodeState", f"Reserved node {node_id} is {node.state}, not active.")
    return node


def _exchange_targets(ctx: CallContext, node: Resource) -> list[dict[str, Any]]:
    """DC2 offerings of the matching size, same term and same payment option."""
    target_type, _ = DC1_EXCHANGE[node.data["NodeType"]]
    return [
        o
        for o in offerings_in(ctx.catalogue, ctx.region)
        if _purchasable(o)
        and o["NodeType"] == target_type
        and o["Duration"] == node.data["Duration"]
        and o["OfferingType"] == node.data["OfferingType"]
    ]


@handles(SERVICE, "GetReservedNodeExchangeOfferings")
def get_exchange_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    node = _exchangeable(ctx, params["ReservedNodeId"])
    page, marker = marker_page(_exchange_targets(ctx, node), params, bounded=False)
    return with_marker({"ReservedNodeOfferings": [_offering_view(o) for o in page]}, marker)


def _exchanges(state: SandboxState) -> dict[str, dict[str, Any]]:
    """Exchange requests by id (each with its account and region under private keys)."""
    exchanges: dict[str, dict[str, Any]] = state.extra.setdefault(SERVICE, {}).setdefault("exchanges", {})
    return exchanges


@handles(SERVICE, "AcceptReservedNodeExchange")
def accept_exchange(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    with ctx.state.lock:
        source = _exchangeable(ctx, params["ReservedNodeId"])
        target_id = params["TargetReservedNodeOfferingId"]
        target = next((o for o in _exchange_targets(ctx, source) if o["ReservedNodeOfferingId"] == target_id), None)
        if target is None:
            raise AwsError(
                "ReservedNodeOfferingNotFound",
                f"Offering {target_id} is not an exchange offering for reserved node {source.id}.",
            )
        now = ctx.now()
        _, ratio = DC1_EXCHANGE[source.data["NodeType"]]
        exchanged = node_record(
            ctx.account_id,
            ctx.region,
            target,
            source.data["NodeCount"] * ratio,
            source.data["StartTime"],
            CreatedBy("redshift:AcceptReservedNodeExchange", None, now),
        )
        # Same term, payment option and node count, no additional cost: the remaining term and the prices
        # already agreed carry over, and nothing is left to pay.
        for key in ("Duration", "FixedPrice", "UsagePrice", "RecurringCharges"):
            exchanged.data[key] = source.data[key]
        exchanged.data["_PendingUntil"] = now
        request_id = new_uuid()
        source.data["_ExchangeRequestId"] = request_id
        seconds = float(source.data.get("_ExchangeSeconds", 0))
        outcome = str(source.data.get("_ExchangeOutcome", "SUCCEEDED"))
        ends_at = now + timedelta(seconds=seconds)
        if seconds <= 0 and outcome == "SUCCEEDED":
            exchanged.state = "active"
            source.state = "retired"
        else:  # asynchronous: both nodes are "exchanging" until the sandbox clock reaches ends_at
            for node, role in ((source, "source"), (exchanged, "target")):
                node.state = "exchanging"
                node.data.update(_ExchangeEndsAt=ends_at, _ExchangeEndsAs=outcome, _ExchangeRole=role)
        ctx.state.add(exchanged)
        ctx.state.watch(source)
        _exchanges(ctx.state)[request_id] = {
            "ReservedNodeExchangeRequestId": request_id,
            "Status": outcome,
            "RequestTime": now,
            "SourceReservedNodeId": source.id,
            "SourceReservedNodeType": source.data["NodeType"],
            "SourceReservedNodeCount": source.data["NodeCount"],
            "TargetReservedNodeOfferingId": target_id,
            "TargetReservedNodeType": target["NodeType"],
            "TargetReservedNodeCount": exchanged.data["NodeCount"],
            "_Account": ctx.account_id,
            "_Region": ctx.region,
            "_EndsAt": ends_at,
        }
    return {"ExchangedReservedNode": _view(exchanged)}


@handles(SERVICE, "DescribeReservedNodeExchangeStatus")
def describe_exchange_status(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    records = [
        r for r in _exchanges(ctx.state).values() if r["_Account"] == ctx.account_id and r["_Region"] == ctx.region
    ]
    node_id = params.get("ReservedNodeId")
    if node_id is not None:
        _node(ctx, node_id)
        records = [r for r in records if r["SourceReservedNodeId"] == node_id]
    request_id = params.get("ReservedNodeExchangeRequestId")
    if request_id is not None:
        records = [r for r in records if r["ReservedNodeExchangeRequestId"] == request_id]
    if not records and (node_id is not None or request_id is not None):
        # The code really is spelled "ReservedNodeExchangeNotFond" in Redshift's model.
        raise AwsError("ReservedNodeExchangeNotFond", "The reserved-node exchange status wasn't found.")
    records.sort(key=lambda r: (r["RequestTime"], r["ReservedNodeExchangeRequestId"]))
    page, marker = marker_page(records, params, bounded=False)
    now = ctx.now()
    details = []
    for record in page:
        detail = {k: v for k, v in record.items() if not k.startswith("_")}
        if now < record["_EndsAt"]:  # an asynchronous exchange still under way
            detail["Status"] = "IN_PROGRESS"
        details.append(detail)
    return with_marker({"ReservedNodeExchangeStatusDetails": details}, marker)


@seeder("redshift:reserved-node")
def seed_reserved_node(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "redshift:reserved-node", "account_id", "region", "offering_id" | (node_type,
    offering_type?, duration_years?), "node_count"?, "start_days_ago"?, "id"?, "exchange_seconds"?,
    "exchange_outcome"?}``.
    Offerings marked unpurchasable (for example DC1 in a catalogue that models today's AWS) can still be
    seeded. ``exchange_seconds`` makes an exchange of this node asynchronous (``IN_PROGRESS`` for that many
    sandbox seconds); ``exchange_outcome`` (``SUCCEEDED`` by default, or ``FAILED``) is how it ends."""
    region = entry["region"]
    if "offering_id" in entry:
        offering = find_offering(catalogue, region, entry["offering_id"])
    else:
        matches = [
            o
            for o in offerings_in(catalogue, region)
            if o["NodeType"] == entry["node_type"]
            and o["OfferingType"] == entry.get("offering_type", "No Upfront")
            and o["Duration"] == int(entry.get("duration_years", 1)) * YEAR_SECONDS
        ]
        offering = matches[0] if len(matches) == 1 else None
    if offering is None:
        raise ValueError(f"seed entry matches no single Redshift offering: {entry}")
    start = seeded_start(state, entry)
    resource = node_record(
        entry["account_id"],
        region,
        offering,
        int(entry.get("node_count", 1)),
        start,
        CreatedBy("seed", None, state.clock.now()),
        entry.get("id"),
    )
    resource.data["_PendingUntil"] = start
    outcome = str(entry.get("exchange_outcome", "SUCCEEDED"))
    if outcome not in EXCHANGE_OUTCOMES:
        raise ValueError(f"exchange_outcome must be one of {EXCHANGE_OUTCOMES}: {entry}")
    if "exchange_seconds" in entry or outcome != "SUCCEEDED":
        resource.data.update(_ExchangeSeconds=float(entry.get("exchange_seconds", 0)), _ExchangeOutcome=outcome)
    advance_node(resource, state.clock.now())
    state.add(resource)
