"""Savings Plans: the offering catalogue and its rates, CreateSavingsPlan, DescribeSavingsPlans and tags.

moto has no Savings Plans backend at all, so everything here is the sandbox's own. Savings Plans is a global
service (endpoint savingsplans.amazonaws.com, signed for us-east-1): plans are stored under region us-east-1
and every call sees the caller's account whatever region its client signs with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.catalogue import Catalogue, stable_uuid
from sandbox.errors import AwsError
from sandbox.registry import CallContext, catalogue_section, handles, on_state_setup, seeder
from sandbox.services._common import YEAR_SECONDS, new_uuid, paginate, public
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "savingsplans"
PLAN_TYPE = "savings-plan"
GLOBAL_REGION = "us-east-1"
CREATE_ACTION = "savingsplans:CreateSavingsPlan"
PAYMENT_PENDING_SECONDS = 30
RETURN_WINDOW = timedelta(days=7)
# Plans an account may hold at once (queued, payment-pending or active) before ServiceQuotaExceededException.
MAX_PLANS_PER_ACCOUNT = 50
_LIVE_STATES = ("queued", "payment-pending", "active")

PAYMENT_OPTIONS = ("All Upfront", "Partial Upfront", "No Upfront")
REGIONS = {"us-east-1": "USE1", "us-west-2": "USW2", "eu-west-1": "EU"}
FAMILIES = {"m5": ("m5.large", "m5.xlarge"), "c5": ("c5.large", "c5.xlarge"), "r5": ("r5.large", "r5.xlarge")}
ON_DEMAND_HOURLY = {
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "c5.large": 0.085,
    "c5.xlarge": 0.17,
    "r5.large": 0.126,
    "r5.xlarge": 0.252,
}
REGION_FACTOR = {"us-east-1": 1.0, "us-west-2": 1.0, "eu-west-1": 1.11}


@dataclass(frozen=True)
class PlanKind:
    """One Savings Plan type of botocore's ``SavingsPlanType`` enum, as the default catalogue sells it."""

    title: str  # as AWS's offering descriptions name it
    service_code: str
    usage_prefix: str
    product_types: tuple[str, ...]
    # (years, payment option) the catalogue offers, with the plan's rate as a share of on-demand.
    discounts: dict[tuple[int, str], float]
    # What the plan's rates apply to: (product type, service code, usage type stem, operation, product
    # description, {instance family: {instance type: on-demand hourly}}).
    rate_card: tuple[str, str, str, str, str, dict[str, dict[str, float]]]


def _discounts(by_years: dict[int, float], payments: tuple[str, ...] = PAYMENT_OPTIONS) -> dict[tuple[int, str], float]:
    # Upfront payment shaves off a little more.
    factor = {"No Upfront": 1.0, "Partial Upfront": 0.97, "All Upfront": 0.95}
    return {(years, payment): share * factor[payment] for years, share in by_years.items() for payment in payments}


_EC2_CARD = ("EC2", "AmazonEC2", "BoxUsage", "RunInstances", "Linux/UNIX",
             {family: {t: ON_DEMAND_HOURLY[t] for t in types} for family, types in FAMILIES.items()})
PLAN_KINDS: dict[str, PlanKind] = {
    "Compute": PlanKind("Compute", "ComputeSavingsPlans", "ComputeSP", ("EC2", "Fargate", "Lambda"),
                        _discounts({1: 0.72, 3: 0.52}), _EC2_CARD),
    # EC2 Instance plans are per region and instance family (their offerings carry both as properties).
    "EC2Instance": PlanKind("EC2 Instance", "EC2InstanceSavingsPlans", "EC2SP", ("EC2",),
                            _discounts({1: 0.62, 3: 0.43}), _EC2_CARD),
    "SageMaker": PlanKind("SageMaker", "SageMakerSavingsPlans", "SageMakerSP", ("SageMaker",),
                          _discounts({1: 0.74, 3: 0.55}),
                          ("SageMaker", "AmazonSageMaker", "Hosting", "RunInstance", "SageMaker",
                           {"ml.m5": {"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23},
                            "ml.c5": {"ml.c5.xlarge": 0.204}})),
    # Database plans: one year, no upfront payment only (a sandbox choice that follows AWS's launch terms).
    "Database": PlanKind("Database", "DatabaseSavingsPlans", "DatabaseSP",
                         ("RDS", "DSQL", "DynamoDB", "ElastiCache", "DocDB", "Neptune", "Timestream", "Keyspaces",
                          "DMS", "OpenSearch"),
                         _discounts({1: 0.8}, ("No Upfront",)),
                         ("RDS", "AmazonRDS", "InstanceUsage", "CreateDBInstance:0002", "MySQL",
                          {"db.r7g": {"db.r7g.large": 0.239, "db.r7g.xlarge": 0.478},
                           "db.m7g": {"db.m7g.large": 0.168}})),
}
_COMPACT_PAYMENT = {
    "All Upfront": "AllUpfront",
    "Partial Upfront": "PartialUpfront",
    "No Upfront": "NoUpfront",
}


# --- catalogue ---------------------------------------------------------------------------------------------
def _offering(plan_type: str, years: int, payment: str, region: str | None, family: str | None) -> dict[str, Any]:
    kind = PLAN_KINDS[plan_type]
    term = f"{years}yr{_COMPACT_PAYMENT[payment]}"
    properties: list[dict[str, str]] = []
    if plan_type == "EC2Instance":
        description = f"{years} year {payment} {family} EC2 Instance Savings Plan in {region}"
        usage_type = f"{kind.usage_prefix}:{family}.{term}"
        properties = [
            {"name": "region", "value": str(region)},
            {"name": "instanceFamily", "value": str(family)},
        ]
    else:
        description = f"{years} year {payment} {kind.title} Savings Plan"
        usage_type = f"{kind.usage_prefix}:{term}"
    return {
        "offeringId": stable_uuid("savingsplans", plan_type, years, payment, region or "any", family or "any"),
        "productTypes": list(kind.product_types),
        "planType": plan_type,
        "description": description,
        "paymentOption": payment,
        "durationSeconds": years * YEAR_SECONDS,
        "currency": "USD",
        "serviceCode": kind.service_code,
        "usageType": usage_type,
        "operation": "",
        "properties": properties,
    }


@catalogue_section("savingsplans_offerings")
def default_offerings() -> list[dict[str, Any]]:
    """Every plan type of botocore's ``SavingsPlanType`` enum (tests/sandbox/test_savings_db_extra.py checks)."""
    offerings = []
    for plan_type, kind in PLAN_KINDS.items():
        for years, payment in kind.discounts:
            if plan_type != "EC2Instance":
                offerings.append(_offering(plan_type, years, payment, None, None))
                continue
            for region in REGIONS:
                for family in FAMILIES:
                    offerings.append(_offering(plan_type, years, payment, region, family))
    return offerings


def find_offering(catalogue: Catalogue, offering_id: str) -> dict[str, Any] | None:
    for offering in catalogue.section("savingsplans_offerings"):
        if offering["offeringId"] == offering_id:
            return offering
    return None


def _property(offering: dict[str, Any], name: str) -> str | None:
    for prop in offering.get("properties", []):
        if prop["name"] == name:
            return str(prop["value"])
    return None


def _years(offering: dict[str, Any]) -> int:
    return max(1, round(int(offering["durationSeconds"]) / YEAR_SECONDS))


# --- DescribeSavingsPlansOfferings / DescribeSavingsPlansOfferingRates -----------------------------------
def _keep(items: list[dict[str, Any]], wanted: Any, test: Any) -> list[dict[str, Any]]:
    return [i for i in items if test(i, wanted)] if wanted else items


def _property_filters_match(offering_props: dict[str, str], filters: list[dict[str, Any]]) -> bool:
    # Compute plans have no region or instanceFamily property: they apply everywhere, so such a filter
    # does not exclude them.
    for f in filters or []:
        actual = offering_props.get(f.get("name", ""))
        if actual is not None and actual not in (f.get("values") or []):
            return False
    return True


@handles(SERVICE, "DescribeSavingsPlansOfferings")
def describe_offerings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = list(ctx.catalogue.section("savingsplans_offerings"))
    items = _keep(items, params.get("offeringIds"), lambda o, w: o["offeringId"] in w)
    items = _keep(items, params.get("paymentOptions"), lambda o, w: o["paymentOption"] in w)
    items = _keep(items, params.get("productType"), lambda o, w: w in o["productTypes"])
    items = _keep(items, params.get("planTypes"), lambda o, w: o["planType"] in w)
    items = _keep(items, params.get("durations"), lambda o, w: int(o["durationSeconds"]) in [int(d) for d in w])
    items = _keep(items, params.get("currencies"), lambda o, w: o["currency"] in w)
    items = _keep(items, params.get("descriptions"), lambda o, w: o["description"] in w)
    items = _keep(items, params.get("serviceCodes"), lambda o, w: o["serviceCode"] in w)
    items = _keep(items, params.get("usageTypes"), lambda o, w: o["usageType"] in w)
    items = _keep(items, params.get("operations"), lambda o, w: o["operation"] in w)
    filters = params.get("filters") or []
    items = [
        o for o in items if _property_filters_match({p["name"]: p["value"] for p in o.get("properties", [])}, filters)
    ]
    page, next_token = paginate(items, params, 1000, "nextToken", "maxResults")
    out: dict[str, Any] = {"searchResults": page}
    if next_token:
        out["nextToken"] = next_token
    return out


def offering_rates(offering: dict[str, Any]) -> list[dict[str, Any]]:
    """The usage rates an offering gives: every instance type of its rate card, restricted to its region and
    instance family where the offering names them (EC2 Instance plans), in every region otherwise."""
    kind = PLAN_KINDS.get(offering["planType"], PLAN_KINDS["Compute"])
    product, service_code, usage_stem, operation, description, card = kind.rate_card
    region = _property(offering, "region")
    family = _property(offering, "instanceFamily")
    regions = [region] if region else list(REGIONS)
    families = [family] if family else list(card)
    share = kind.discounts.get((_years(offering), offering["paymentOption"]), 0.7)
    parent = {
        "offeringId": offering["offeringId"],
        "paymentOption": offering["paymentOption"],
        "planType": offering["planType"],
        "durationSeconds": offering["durationSeconds"],
        "currency": offering["currency"],
        "planDescription": offering["description"],
    }
    rates = []
    for reg in regions:
        for fam in families:
            for instance_type, on_demand in card.get(fam, {}).items():
                hourly = on_demand * REGION_FACTOR.get(reg, 1.0) * share
                rates.append(
                    {
                        "savingsPlanOffering": parent,
                        "rate": f"{hourly:.6f}",
                        "unit": "Hrs",
                        "productType": product,
                        "serviceCode": service_code,
                        "usageType": f"{REGIONS.get(reg, 'USE1')}-{usage_stem}:{instance_type}",
                        "operation": operation,
                        "properties": [
                            {"name": "region", "value": reg},
                            {"name": "instanceFamily", "value": fam},
                            {"name": "instanceType", "value": instance_type},
                            {"name": "productDescription", "value": description},
                            {"name": "tenancy", "value": "shared"},
                        ],
                    }
                )
    return rates


@handles(SERVICE, "DescribeSavingsPlansOfferingRates")
def describe_offering_rates(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    offerings = list(ctx.catalogue.section("savingsplans_offerings"))
    offerings = _keep(offerings, params.get("savingsPlanOfferingIds"), lambda o, w: o["offeringId"] in w)
    offerings = _keep(offerings, params.get("savingsPlanPaymentOptions"), lambda o, w: o["paymentOption"] in w)
    offerings = _keep(offerings, params.get("savingsPlanTypes"), lambda o, w: o["planType"] in w)
    rates = [rate for o in offerings for rate in offering_rates(o)]
    rates = _keep(rates, params.get("products"), lambda r, w: r["productType"] in w)
    rates = _keep(rates, params.get("serviceCodes"), lambda r, w: r["serviceCode"] in w)
    rates = _keep(rates, params.get("usageTypes"), lambda r, w: r["usageType"] in w)
    rates = _keep(rates, params.get("operations"), lambda r, w: r["operation"] in w)
    filters = params.get("filters") or []
    rates = [
        r
        for r in rates
        if all(
            {p["name"]: p["value"] for p in r["properties"]}.get(f.get("name", "")) in (f.get("values") or [])
            for f in filters
        )
    ]
    page, next_token = paginate(rates, params, 1000, "nextToken", "maxResults")
    out: dict[str, Any] = {"searchResults": page}
    if next_token:
        out["nextToken"] = next_token
    return out


# --- CreateSavingsPlan --------------------------------------------------------------------------------------
_AMOUNT = re.compile(r"^\d+(\.\d+)?$")


def _validation(message: str) -> AwsError:
    return AwsError("ValidationException", message)


def parse_commitment(text: str) -> Decimal:
    """AWS: an hourly commitment in USD, 0.001 to 1,000,000, with at most five decimal places."""
    if not _AMOUNT.match(text or ""):
        raise _validation(f"Invalid commitment '{text}': it must be a positive decimal number.")
    value = Decimal(text)
    if "." in text and len(text.split(".", 1)[1]) > 5:
        raise _validation(f"Invalid commitment '{text}': at most 5 decimal places are allowed.")
    if not Decimal("0.001") <= value <= Decimal("1000000"):
        raise _validation(f"Invalid commitment '{text}': it must be between 0.001 and 1000000 USD per hour.")
    return value


def amount_text(value: Decimal) -> str:
    text = format(value.quantize(Decimal("0.00001")).normalize(), "f")
    return text if text != "-0" else "0"


def plan_amounts(offering: dict[str, Any], commitment: Decimal, upfront_text: str | None) -> tuple[Decimal, Decimal]:
    """(upfront payment, recurring hourly payment) for a plan, validating upfrontPaymentAmount as AWS does:
    only for Partial Upfront, a whole number between 50% and 99% of the plan's total value."""
    hours = Decimal(int(offering["durationSeconds"]) // 3600)
    total = commitment * hours
    payment = offering["paymentOption"]
    if upfront_text is not None and payment != "Partial Upfront":
        raise _validation("upfrontPaymentAmount is supported only for Partial Upfront Savings Plans.")
    if payment == "All Upfront":
        return total, Decimal(0)
    if payment == "No Upfront":
        return Decimal(0), commitment
    if upfront_text is None:
        # The console's default split; AWS documents no default for the API, see docs/sandbox.md.
        upfront = (total / 2).to_integral_value(rounding="ROUND_CEILING")
    else:
        try:
            upfront = Decimal(upfront_text)
        except InvalidOperation:
            raise _validation(f"Invalid upfrontPaymentAmount '{upfront_text}'.") from None
        if not upfront.is_finite() or upfront != upfront.to_integral_value():
            raise _validation(f"upfrontPaymentAmount '{upfront_text}' must be a whole number.")
    low, high = total * Decimal("0.5"), total * Decimal("0.99")
    if not low <= upfront <= high:
        raise _validation(
            f"upfrontPaymentAmount {upfront_text or upfront} must be between 50% ({amount_text(low)}) and "
            f"99% ({amount_text(high)}) of the plan's total value {amount_text(total)}."
        )
    return upfront, (total - upfront) / hours


def iso(value: datetime) -> str:
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def plan_record(
    account_id: str,
    offering: dict[str, Any],
    commitment: Decimal,
    upfront: Decimal,
    recurring: Decimal,
    start: datetime,
    state: str,
    tags: dict[str, str],
    operation: str,
    token: str | None,
    created_at: datetime,
    plan_id: str | None = None,
) -> Resource:
    plan_id = plan_id or new_uuid()
    end = start + timedelta(seconds=int(offering["durationSeconds"]))
    data: dict[str, Any] = {
        "offeringId": offering["offeringId"],
        "savingsPlanId": plan_id,
        "savingsPlanArn": f"arn:aws:savingsplans::{account_id}:savingsplan/{plan_id}",
        "description": offering["description"],
        "savingsPlanType": offering["planType"],
        "paymentOption": offering["paymentOption"],
        "productTypes": list(offering["productTypes"]),
        "currency": offering["currency"],
        "commitment": amount_text(commitment),
        "upfrontPaymentAmount": amount_text(upfront),
        "recurringPaymentAmount": amount_text(recurring),
        "termDurationInSeconds": int(offering["durationSeconds"]),
        "tags": dict(tags),
        "_start": start,
        "_end": end,
        "_pending_until": start + timedelta(seconds=PAYMENT_PENDING_SECONDS),
    }
    # Compute plans apply in every region and to every family: AWS reports neither for them.
    region = _property(offering, "region")
    family = _property(offering, "instanceFamily")
    if region:
        data["region"] = region
    if family:
        data["ec2InstanceFamily"] = family
    return Resource(
        account_id,
        GLOBAL_REGION,
        SERVICE,
        PLAN_TYPE,
        plan_id,
        state,
        CreatedBy(operation, token, created_at),
        data,
    )


def advance_plan(resource: Resource, now: datetime) -> bool:
    data = resource.data
    if resource.state == "queued" and now >= data["_start"]:
        resource.state = "payment-pending"
    if resource.state == "payment-pending" and now >= data["_pending_until"]:
        resource.state = "active"
    if resource.state == "active" and now >= data["_end"]:
        resource.state = "retired"
    return resource.state in _LIVE_STATES


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, PLAN_TYPE, advance_plan)


@handles(SERVICE, "CreateSavingsPlan")
def create_savings_plan(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    token = params.get("clientToken")

    def create() -> dict[str, Any]:
        offering_id = params["savingsPlanOfferingId"]
        offering = find_offering(ctx.catalogue, offering_id)
        if offering is None:
            raise AwsError("ResourceNotFoundException", f"Savings Plan offering {offering_id} was not found.")
        commitment = parse_commitment(str(params["commitment"]))
        upfront, recurring = plan_amounts(offering, commitment, params.get("upfrontPaymentAmount"))
        live = ctx.state.find(SERVICE, PLAN_TYPE, ctx.account_id, predicate=lambda r: r.state in _LIVE_STATES)
        if len(live) >= MAX_PLANS_PER_ACCOUNT:
            raise AwsError(
                "ServiceQuotaExceededException",
                f"You have reached the quota of {MAX_PLANS_PER_ACCOUNT} Savings Plans for this account.",
            )
        now = ctx.now()
        start, state = now, "payment-pending"
        purchase_time = params.get("purchaseTime")
        if purchase_time is not None and _utc(purchase_time) > now:
            start, state = _utc(purchase_time), "queued"
        resource = plan_record(
            ctx.account_id,
            offering,
            commitment,
            upfront,
            recurring,
            start,
            state,
            params.get("tags") or {},
            CREATE_ACTION,
            token,
            now,
        )
        ctx.state.add(resource)
        return {"savingsPlanId": resource.id}

    # AWS documents no error for a reused clientToken with other parameters; the sandbox answers
    # ValidationException (see docs/sandbox.md). Plans are global, so tokens are scoped per account only.
    mismatch = _validation(f"The client token {token!r} was already used with different parameters.")
    return ctx.state.idempotent(
        (ctx.account_id, GLOBAL_REGION, ctx.operation), token, params, create, ("clientToken",), mismatch
    )


# --- DescribeSavingsPlans -----------------------------------------------------------------------------------
def plan_view(resource: Resource) -> dict[str, Any]:
    data = resource.data
    view = public(data)
    view["state"] = resource.state
    view["start"] = iso(data["_start"])
    view["end"] = iso(data["_end"])
    view["returnableUntil"] = iso(data["_start"] + RETURN_WINDOW)
    view["tags"] = dict(data["tags"])
    return view


def _term_labels(seconds: int) -> set[str]:
    years = max(1, round(seconds / YEAR_SECONDS))
    return {str(seconds), f"{years}yr", f"{years}y", f"{years}"}


_PLAN_FILTERS: dict[str, Any] = {
    "region": lambda p: {p.get("region", "")},
    "ec2-instance-family": lambda p: {p.get("ec2InstanceFamily", "")},
    "instance-family": lambda p: {p.get("ec2InstanceFamily", "")},
    "commitment": lambda p: {p["commitment"]},
    "upfront": lambda p: {p["upfrontPaymentAmount"]},
    "term": lambda p: _term_labels(p["termDurationInSeconds"]),
    "savings-plan-type": lambda p: {p["savingsPlanType"]},
    "payment-option": lambda p: {p["paymentOption"]},
    "start": lambda p: {p["start"]},
    "end": lambda p: {p["end"]},
}


def _matches(view: dict[str, Any], name: str, wanted: list[str]) -> bool:
    values = _PLAN_FILTERS[name](view)
    if name in ("commitment", "upfront"):
        # Amounts compare as numbers, so "1.5" matches "1.50000".
        try:
            return any(Decimal(v) == Decimal(w) for v in values for w in wanted)
        except InvalidOperation:
            return False
    return bool(values & set(wanted))


@handles(SERVICE, "DescribeSavingsPlans")
def describe_savings_plans(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = [plan_view(r) for r in ctx.state.find(SERVICE, PLAN_TYPE, ctx.account_id)]
    items = _keep(items, params.get("savingsPlanIds"), lambda p, w: p["savingsPlanId"] in w)
    items = _keep(items, params.get("savingsPlanArns"), lambda p, w: p["savingsPlanArn"] in w)
    items = _keep(items, params.get("states"), lambda p, w: p["state"] in w)
    for f in params.get("filters") or []:
        name = f.get("name", "")
        if name not in _PLAN_FILTERS:
            raise _validation(f"Invalid filter name '{name}'.")
        items = [p for p in items if _matches(p, name, [str(v) for v in f.get("values") or []])]
    page, next_token = paginate(items, params, 1000, "nextToken", "maxResults")
    out: dict[str, Any] = {"savingsPlans": page}
    if next_token:
        out["nextToken"] = next_token
    return out


# --- tags ---------------------------------------------------------------------------------------------------
def _plan_by_arn(ctx: CallContext, arn: str) -> Resource:
    for resource in ctx.state.find(SERVICE, PLAN_TYPE, ctx.account_id):
        if resource.data["savingsPlanArn"] == arn:
            return resource
    raise AwsError("ResourceNotFoundException", f"Resource {arn} was not found.")


@handles(SERVICE, "TagResource")
def tag_resource(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _plan_by_arn(ctx, params["resourceArn"])
    resource.data["tags"].update(params.get("tags") or {})
    return {}


@handles(SERVICE, "UntagResource")
def untag_resource(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _plan_by_arn(ctx, params["resourceArn"])
    for key in params.get("tagKeys") or []:
        resource.data["tags"].pop(key, None)
    return {}


@handles(SERVICE, "ListTagsForResource")
def list_tags(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return {"tags": dict(_plan_by_arn(ctx, params["resourceArn"]).data["tags"])}


# --- seed ---------------------------------------------------------------------------------------------------
@seeder("savingsplans:savings-plan")
def seed_savings_plan(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "savingsplans:savings-plan", "account_id", "offering_id" | (plan_type, payment_option,
    duration_years, region?, instance_family?), "commitment", "upfront_payment_amount"?, "start_days_ago",
    "tags"?, "id"?}``"""
    if "offering_id" in entry:
        offering = find_offering(catalogue, entry["offering_id"])
    else:
        matches = [
            o
            for o in catalogue.section("savingsplans_offerings")
            if o["planType"] == entry.get("plan_type", "Compute")
            and o["paymentOption"] == entry.get("payment_option", "No Upfront")
            and int(o["durationSeconds"]) == int(entry.get("duration_years", 1)) * YEAR_SECONDS
            and _property(o, "region") == entry.get("region")
            and _property(o, "instanceFamily") == entry.get("instance_family")
        ]
        offering = matches[0] if len(matches) == 1 else None
    if offering is None:
        raise ValueError(f"seed entry matches no single Savings Plans offering: {entry}")
    commitment = parse_commitment(str(entry.get("commitment", "1")))
    upfront_text = entry.get("upfront_payment_amount")
    upfront, recurring = plan_amounts(offering, commitment, None if upfront_text is None else str(upfront_text))
    now = state.clock.now()
    start = now - timedelta(days=float(entry.get("start_days_ago", 0)))
    resource = plan_record(
        entry["account_id"],
        offering,
        commitment,
        upfront,
        recurring,
        start,
        "active",
        entry.get("tags") or {},
        "seed",
        None,
        now,
        entry.get("id"),
    )
    resource.data["_pending_until"] = start
    advance_plan(resource, now)
    state.add(resource)
