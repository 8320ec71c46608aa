"""EC2 Reserved Instances after the purchase: modification, convertible exchange, and Marketplace listings.

moto implements none of these calls (reference §7). The rules follow AWS's user guide:
- Modify (standard or convertible): active RIs, nothing pending, same family/platform/tenancy/class and the
  same end hour; instance-size changes keep the normalized footprint (Linux/UNIX, default tenancy only). The
  modification is ``processing`` for ``MODIFICATION_SECONDS`` of sandbox time, then ``fulfilled``: the sources
  retire and new RIs with the same End appear.
- Exchange: convertible, active, at least 24 h left, into one convertible AWS offering of the same region,
  same or higher payment option, equal or longer term and equal or greater remaining value. An invalid
  exchange is reported by the quote (``IsValidExchange`` false with a reason) and refused by Accept with
  that reason.
- Listings: standard, active, held 30 days, at least a month left, count within the RI's, and an account
  registered as a seller (no EC2 API reports registration: every account is registered unless the seed kind
  ``ec2:ri-marketplace-seller`` says otherwise; AWS documents no error code for it, the sandbox answers
  ``InvalidInput`` naming the registration). Sales happen only when a test seeds one (``ec2:ri-listing-sale``):
  a listing stays ``active`` until cancelled, or ``closed`` when it sold out or its RI stopped being active.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue
from sandbox.errors import AwsError
from sandbox.registry import CallContext, handles, on_state_setup, seeder
from sandbox.services._common import dry_run, ec2_filters, new_uuid, paginate, public, value_matches
from sandbox.services.ec2_reserved_instances import RI_TYPE, find_offering, ri_record
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
MOD_TYPE = "reserved-instances-modification"
LISTING_TYPE = "reserved-instances-listing"
# How long a modification stays `processing` on the sandbox clock (AWS: minutes, up to about an hour).
MODIFICATION_SECONDS = 300
MIN_HOLDING = timedelta(days=30)
MONTH = timedelta(days=30)
MIN_EXCHANGE_REMAINING = timedelta(hours=24)
# Key of the marketplace's account-level facts in ``SandboxState.extra`` (seller registration).
MARKETPLACE = "ec2_ri_marketplace"
PAYMENT_RANK = {"No Upfront": 0, "Partial Upfront": 1, "All Upfront": 2}
# AWS's normalization factors for instance size flexibility.
SIZE_FACTOR = {
    "nano": 0.25,
    "micro": 0.5,
    "small": 1,
    "medium": 2,
    "large": 4,
    "xlarge": 8,
    "2xlarge": 16,
    "3xlarge": 24,
    "4xlarge": 32,
    "6xlarge": 48,
    "8xlarge": 64,
    "9xlarge": 72,
    "10xlarge": 80,
    "12xlarge": 96,
    "16xlarge": 128,
    "18xlarge": 144,
    "24xlarge": 192,
    "32xlarge": 256,
    "48xlarge": 384,
    "56xlarge": 448,
    "112xlarge": 896,
}


def _family_and_factor(instance_type: str) -> tuple[str, float | None]:
    family, _, size = instance_type.partition(".")
    return family, SIZE_FACTOR.get(size)


def _own_ri(ctx: CallContext, ri_id: str) -> Resource:
    resource = ctx.state.get(SERVICE, RI_TYPE, ri_id)
    if resource is None or resource.account_id != ctx.account_id or resource.region != ctx.region:
        raise AwsError("InvalidReservedInstancesId", f"The Reserved Instances ID '{ri_id}' does not exist.")
    return resource


def _pending_modification(ctx: CallContext, ri_id: str) -> Resource | None:
    pending = ctx.state.find(
        SERVICE,
        MOD_TYPE,
        ctx.account_id,
        ctx.region,
        lambda m: m.state == "processing" and ri_id in m.data["_SourceIds"],
    )
    return pending[0] if pending else None


def _active_listing(ctx: CallContext, ri_id: str) -> Resource | None:
    listings = ctx.state.find(
        SERVICE,
        LISTING_TYPE,
        ctx.account_id,
        ctx.region,
        lambda r: r.state == "active" and r.data["ReservedInstancesId"] == ri_id,
    )
    return listings[0] if listings else None


def _match_filters(
    items: list[dict[str, Any]],
    filters: dict[str, list[str]],
    fields: dict[str, Callable[[dict[str, Any]], list[Any]]],
) -> list[dict[str, Any]]:
    """EC2 filters where a field can hold several values (an item matches when any of them does)."""
    for name in filters:
        if name not in fields:
            raise AwsError("InvalidParameterValue", f"The filter '{name}' is invalid")
    return [
        item
        for item in items
        if all(any(value_matches(v, wanted) for v in fields[name](item)) for name, wanted in filters.items())
    ]


# --- ModifyReservedInstances -----------------------------------------------------------------------------
@handles(SERVICE, "ModifyReservedInstances")
def modify_reserved_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return ctx.state.idempotent(ctx.scope, params.get("ClientToken"), params, lambda: _modify(ctx, params))


def _modify(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    ids = list(dict.fromkeys(params.get("ReservedInstancesIds") or []))
    targets = params.get("TargetConfigurations") or []
    if not ids:
        raise AwsError("MissingParameter", "The request must contain the parameter ReservedInstancesId.")
    if not targets:
        raise AwsError("MissingParameter", "The request must contain the parameter TargetConfiguration.")
    sources = [_own_ri(ctx, ri_id) for ri_id in ids]
    for source in sources:
        _check_modifiable(ctx, source)
    _check_same_kind(sources)
    configs = [_target_config(ctx, sources[0], target) for target in targets]
    _check_footprint(sources, configs)
    now = ctx.now()
    mod_id = f"rimod-{new_uuid()}"
    token = params.get("ClientToken")
    data: dict[str, Any] = {
        "ReservedInstancesModificationId": mod_id,
        "ReservedInstancesIds": [{"ReservedInstancesId": s.id} for s in sources],
        "ModificationResults": [{"TargetConfiguration": c} for c in configs],
        "CreateDate": now,
        "UpdateDate": now,
        "EffectiveDate": now,
        "Status": "processing",
        "StatusMessage": "Modification is processing",
        "_SourceIds": [s.id for s in sources],
        "_Sources": sources,
        "_FulfilAt": now + timedelta(seconds=MODIFICATION_SECONDS),
    }
    if token:
        data["ClientToken"] = token
    ctx.state.add(
        Resource(
            ctx.account_id,
            ctx.region,
            SERVICE,
            MOD_TYPE,
            mod_id,
            "processing",
            CreatedBy("ec2:ModifyReservedInstances", token, now),
            data,
        )
    )
    return {"ReservedInstancesModificationId": mod_id}


def _check_modifiable(ctx: CallContext, source: Resource) -> None:
    if source.state == "retired":
        raise AwsError(
            "InvalidReservedInstancesId",
            f"The Reserved Instances ID '{source.id}' is retired and can't be modified.",
        )
    if source.state != "active":
        raise AwsError(
            "IncorrectState",
            f"Reserved Instances '{source.id}' are {source.state}; only active ones can be modified.",
        )
    pending = _pending_modification(ctx, source.id)
    if pending is not None:
        raise AwsError(
            "IncorrectState",
            f"Reserved Instances '{source.id}' have a pending modification ({pending.id}).",
        )
    if _active_listing(ctx, source.id) is not None:
        raise AwsError(
            "IncorrectState",
            f"Reserved Instances '{source.id}' are listed in the Reserved Instance Marketplace.",
        )


def _check_same_kind(sources: list[Resource]) -> None:
    """Several RIs can be modified together only when they share everything but size, zone and start."""
    first = sources[0].data
    for other in sources[1:]:
        data = other.data
        same = (
            _family_and_factor(data["InstanceType"])[0] == _family_and_factor(first["InstanceType"])[0]
            and data["ProductDescription"] == first["ProductDescription"]
            and data["InstanceTenancy"] == first["InstanceTenancy"]
            and data["OfferingClass"] == first["OfferingClass"]
            and data["End"].replace(minute=0, second=0, microsecond=0)
            == first["End"].replace(minute=0, second=0, microsecond=0)
        )
        if not same:
            raise AwsError(
                "InvalidParameterCombination",
                "Reserved Instances modified together must have the same instance family, platform, "
                "tenancy and offering class, and end in the same hour.",
            )


def _target_config(ctx: CallContext, source: Resource, target: dict[str, Any]) -> dict[str, Any]:
    data = source.data
    count = target.get("InstanceCount")
    if count is None or int(count) < 1:
        raise AwsError("InvalidParameterValue", "Each target configuration needs an InstanceCount of at least 1.")
    instance_type = target.get("InstanceType") or data["InstanceType"]
    family, factor = _family_and_factor(instance_type)
    # A size without a factor (metal) keeps its size: its zone, scope and split can change, not its type.
    if family != _family_and_factor(data["InstanceType"])[0] or (factor is None
                                                                  and instance_type != data["InstanceType"]):
        raise AwsError(
            "InvalidParameterValue",
            f"The instance type '{instance_type}' is not in the family of the Reserved Instances being modified.",
        )
    if instance_type != data["InstanceType"] and (
        data["ProductDescription"] != "Linux/UNIX" or data["InstanceTenancy"] != "default"
    ):
        raise AwsError(
            "InvalidParameterValue",
            "The instance size can only be modified for Linux/UNIX Reserved Instances with default tenancy.",
        )
    zone = target.get("AvailabilityZone")
    scope = target.get("Scope") or ("Availability Zone" if zone else data["Scope"])
    if scope == "Region":
        if zone:
            raise AwsError(
                "InvalidParameterCombination", "A regional Reserved Instance can't have an AvailabilityZone."
            )
    else:
        zone = zone or data.get("AvailabilityZone")
        if not zone:
            raise AwsError("InvalidParameterValue", "A zonal target configuration needs an AvailabilityZone.")
        if not (zone.startswith(ctx.region) and len(zone) == len(ctx.region) + 1):
            raise AwsError("InvalidParameterValue", f"Invalid availability zone: [{zone}]")
    platform = target.get("Platform") or "EC2-VPC"
    if platform != "EC2-VPC":
        raise AwsError("InvalidParameterValue", f"The network platform '{platform}' is not supported.")
    config: dict[str, Any] = {
        "InstanceCount": int(count),
        "InstanceType": instance_type,
        "Platform": platform,
        "Scope": scope,
    }
    if zone:
        config["AvailabilityZone"] = zone
    return config


def _footprint(pairs: list[tuple[str, int]]) -> float | dict[str, int]:
    """Normalized units summed; with a size that has no factor (metal), the count per instance type."""
    if all(_family_and_factor(instance_type)[1] is not None for instance_type, _ in pairs):
        return sum((_family_and_factor(instance_type)[1] or 0) * count for instance_type, count in pairs)
    counts: dict[str, int] = {}
    for instance_type, count in pairs:
        counts[instance_type] = counts.get(instance_type, 0) + count
    return counts


def _text(footprint: float | dict[str, int]) -> str:
    if isinstance(footprint, dict):
        return ", ".join(f"{count} x {instance_type}" for instance_type, count in sorted(footprint.items()))
    return f"{footprint:g}"


def _check_footprint(sources: list[Resource], configs: list[dict[str, Any]]) -> None:
    have = _footprint([(s.data["InstanceType"], int(s.data["InstanceCount"])) for s in sources])
    want = _footprint([(c["InstanceType"], int(c["InstanceCount"])) for c in configs])
    same = math.isclose(have, want) if isinstance(have, float | int) and isinstance(want, float | int) else have == want
    if not same:
        raise AwsError(
            "InvalidParameterValue",
            f"The normalized footprint of the target configurations ({_text(want)}) must equal that of the "
            f"Reserved Instances being modified ({_text(have)}).",
        )
    if len(sources) == 1 and len(configs) == 1:
        source, config = sources[0].data, configs[0]
        unchanged = (
            config["InstanceType"] == source["InstanceType"]
            and config["Scope"] == source["Scope"]
            and config.get("AvailabilityZone") == source.get("AvailabilityZone")
            and config["InstanceCount"] == source["InstanceCount"]
        )
        if unchanged:
            raise AwsError("InvalidParameterValue", "The target configuration is the same as the current one.")


def _advance_modification(state: SandboxState, mod: Resource, now: datetime) -> bool:
    data = mod.data
    if mod.state != "processing":
        return False
    if now < data["_FulfilAt"]:
        return True
    effective = data["_FulfilAt"]
    sources: list[Resource] = data["_Sources"]
    data["UpdateDate"] = effective
    if any(s.state != "active" or s.data["End"] <= effective for s in sources):
        mod.state = data["Status"] = "failed"
        data["StatusMessage"] = "The Reserved Instances were no longer active."
        return False
    template = sources[0].data
    base_factor = _family_and_factor(template["InstanceType"])[1] or 1
    for result in data["ModificationResults"]:
        config = result["TargetConfiguration"]
        ratio = (_family_and_factor(config["InstanceType"])[1] or 1) / base_factor
        offering = {
            "ReservedInstancesOfferingId": template["_OfferingId"],
            "AvailabilityZone": config.get("AvailabilityZone"),
            "Duration": template["Duration"],
            # Price per instance scales with the normalized size, so the total commitment is unchanged.
            "FixedPrice": round(template["FixedPrice"] * ratio, 2),
            "UsagePrice": template["UsagePrice"],
            "RecurringCharges": [
                {"Amount": round(c["Amount"] * ratio, 4), "Frequency": c["Frequency"]}
                for c in template["RecurringCharges"]
            ],
            "InstanceType": config["InstanceType"],
            "ProductDescription": template["ProductDescription"],
            "InstanceTenancy": template["InstanceTenancy"],
            "OfferingClass": template["OfferingClass"],
            "OfferingType": template["OfferingType"],
            "Scope": config["Scope"],
        }
        new = ri_record(
            mod.account_id,
            mod.region,
            offering,
            config["InstanceCount"],
            effective,
            "active",
            "ec2:ModifyReservedInstances",
            data.get("ClientToken"),
            effective,
        )
        new.data["End"] = template["End"]
        new.data["Duration"] = int((template["End"] - effective).total_seconds())
        new.data["_PendingUntil"] = effective
        new.data["_ModificationId"] = mod.id
        state.add(new)
        result["ReservedInstancesId"] = new.id
    for source in sources:
        source.state = "retired"
    mod.state = data["Status"] = "fulfilled"
    data["EffectiveDate"] = effective
    data["StatusMessage"] = "Modification is fulfilled"
    return False


def _modification_view(mod: Resource) -> dict[str, Any]:
    view = public(mod.data)
    view["Status"] = mod.state
    return view


_MOD_FILTERS: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "client-token": lambda m: [m.get("ClientToken", "")],
    "create-date": lambda m: [m["CreateDate"]],
    "effective-date": lambda m: [m["EffectiveDate"]],
    "modification-result.reserved-instances-id": lambda m: [
        r["ReservedInstancesId"] for r in m["ModificationResults"] if "ReservedInstancesId" in r
    ],
    "modification-result.target-configuration.availability-zone": lambda m: [
        r["TargetConfiguration"].get("AvailabilityZone", "") for r in m["ModificationResults"]
    ],
    "modification-result.target-configuration.instance-count": lambda m: [
        r["TargetConfiguration"]["InstanceCount"] for r in m["ModificationResults"]
    ],
    "modification-result.target-configuration.instance-type": lambda m: [
        r["TargetConfiguration"]["InstanceType"] for r in m["ModificationResults"]
    ],
    "modification-result.target-configuration.platform": lambda m: [
        r["TargetConfiguration"]["Platform"] for r in m["ModificationResults"]
    ],
    "reserved-instances-id": lambda m: [r["ReservedInstancesId"] for r in m["ReservedInstancesIds"]],
    "reserved-instances-modification-id": lambda m: [m["ReservedInstancesModificationId"]],
    "status": lambda m: [m["Status"]],
    "status-message": lambda m: [m.get("StatusMessage", "")],
    "update-date": lambda m: [m["UpdateDate"]],
}


@handles(SERVICE, "DescribeReservedInstancesModifications")
def describe_modifications(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    items = [_modification_view(m) for m in ctx.state.find(SERVICE, MOD_TYPE, ctx.account_id, ctx.region)]
    ids = params.get("ReservedInstancesModificationIds")
    if ids:
        known = {m["ReservedInstancesModificationId"] for m in items}
        missing = [i for i in ids if i not in known]
        if missing:
            raise AwsError(
                "InvalidParameterValue",
                f"The Reserved Instances modification ID '{missing[0]}' does not exist.",
            )
        items = [m for m in items if m["ReservedInstancesModificationId"] in ids]
    items = _match_filters(items, ec2_filters(params), _MOD_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"ReservedInstancesModifications": page}
    if next_token:
        out["NextToken"] = next_token
    return out


# --- Convertible exchanges -------------------------------------------------------------------------------
def _hourly(data: dict[str, Any]) -> float:
    return float(data.get("UsagePrice") or 0) + sum(float(c["Amount"]) for c in data.get("RecurringCharges", []))


def _money(value: float) -> str:
    return f"{value:.2f}"


def _value(upfront: float, hourly: float, total: float) -> dict[str, str]:
    return {
        "HourlyPrice": f"{hourly:.4f}",
        "RemainingTotalValue": _money(total),
        "RemainingUpfrontValue": _money(upfront),
    }


def _source_value(ri: Resource, now: datetime) -> tuple[float, float, float]:
    """(remaining upfront, hourly, remaining total) of an RI, pro rata of the time left in its term."""
    data = ri.data
    left = max(0.0, (data["End"] - now).total_seconds())
    fraction = min(1.0, left / data["Duration"]) if data["Duration"] else 0.0
    count = data["InstanceCount"]
    hourly = _hourly(data)
    upfront = data["FixedPrice"] * fraction * count
    total = (data["FixedPrice"] + hourly * data["Duration"] / 3600) * fraction * count
    return upfront, hourly * count, total


class _Quote:
    """An exchange quote, and what Accept needs to carry it out."""

    def __init__(self) -> None:
        self.sources: list[Resource] = []
        self.offering: dict[str, Any] | None = None
        self.count = 0
        self.end: datetime | None = None
        self.payment_due = 0.0
        self.reason: str | None = None
        self.response: dict[str, Any] = {"CurrencyCode": "USD"}

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


def _quote(ctx: CallContext, params: dict[str, Any]) -> _Quote:
    quote = _Quote()
    now = ctx.now()
    ids = list(dict.fromkeys(params.get("ReservedInstanceIds") or []))
    if not ids:
        raise AwsError("MissingParameter", "The request must contain the parameter ReservedInstanceId.")
    quote.sources = [_own_ri(ctx, ri_id) for ri_id in ids]
    up_sum = hourly_sum = total_sum = 0.0
    value_set = []
    for ri in quote.sources:
        _check_exchangeable(ctx, quote, ri, now)
        upfront, hourly, total = _source_value(ri, now)
        up_sum, hourly_sum, total_sum = up_sum + upfront, hourly_sum + hourly, total_sum + total
        value_set.append({"ReservedInstanceId": ri.id, "ReservationValue": _value(upfront, hourly, total)})
    quote.response["ReservedInstanceValueSet"] = value_set
    quote.response["ReservedInstanceValueRollup"] = _value(up_sum, hourly_sum, total_sum)
    targets = params.get("TargetConfigurations") or []
    if not targets:
        quote.fail("A target configuration is required to exchange Convertible Reserved Instances.")
    elif len(targets) > 1:
        quote.fail("Convertible Reserved Instances can be exchanged for one target configuration only.")
    else:
        _quote_target(ctx, quote, targets[0], now, up_sum, total_sum)
    quote.response["IsValidExchange"] = quote.reason is None
    if quote.reason is not None:
        quote.response["ValidationFailureReason"] = quote.reason
    return quote


def _check_exchangeable(ctx: CallContext, quote: _Quote, ri: Resource, now: datetime) -> None:
    if ri.data["OfferingClass"] != "convertible":
        quote.fail(
            f"Reserved Instance {ri.id} is a Standard Reserved Instance; only Convertible ones can be exchanged."
        )
    elif ri.state != "active":
        quote.fail(f"Reserved Instance {ri.id} is {ri.state}; only active Reserved Instances can be exchanged.")
    elif ri.data["End"] - now < MIN_EXCHANGE_REMAINING:
        quote.fail(f"Reserved Instance {ri.id} expires within 24 hours and can't be exchanged.")
    elif _pending_modification(ctx, ri.id) is not None:
        quote.fail(f"Reserved Instance {ri.id} has a pending modification.")


def _quote_target(
    ctx: CallContext,
    quote: _Quote,
    target: dict[str, Any],
    now: datetime,
    source_upfront: float,
    source_total: float,
) -> None:
    offering_id = target.get("OfferingId")
    offering = find_offering(ctx.catalogue, ctx.region, offering_id) if offering_id else None
    if offering is None:
        raise AwsError("InvalidReservedInstancesOfferingId", f"The offering ID '{offering_id}' is not valid.")
    quote.offering = offering
    if offering["OfferingClass"] != "convertible" or offering["Marketplace"]:
        quote.fail(f"The target offering {offering_id} is not a Convertible Reserved Instance offering from AWS.")
    longest = max(s.data["Duration"] for s in quote.sources)
    latest_end = max(s.data["End"] for s in quote.sources)
    if offering["Duration"] < longest:
        quote.fail("Convertible Reserved Instances can't be exchanged for a shorter term.")
    if any(PAYMENT_RANK[offering["OfferingType"]] < PAYMENT_RANK[s.data["OfferingType"]] for s in quote.sources):
        quote.fail("Convertible Reserved Instances can only be exchanged for the same or a higher payment option.")
    # Same term: the new RI ends with the latest source. Longer term: a new term starts now.
    end = (
        latest_end
        if offering["Duration"] <= longest
        else max(latest_end, now + timedelta(seconds=offering["Duration"]))
    )
    fraction = min(1.0, (end - now).total_seconds() / offering["Duration"])
    hourly = _hourly(offering)
    unit_upfront = offering["FixedPrice"] * fraction
    unit_total = (offering["FixedPrice"] + hourly * offering["Duration"] / 3600) * fraction
    count = target.get("InstanceCount")
    if count is None:
        count = max(1, math.ceil(source_total / unit_total - 1e-9)) if unit_total > 0 else 1
    count = int(count)
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be at least 1.")
    if unit_total * count + 0.005 < source_total:
        quote.fail(
            f"The target configuration's value ({_money(unit_total * count)} USD) is less than the "
            f"remaining value of the Reserved Instances being exchanged ({_money(source_total)} USD)."
        )
    quote.count, quote.end = count, end
    quote.payment_due = max(0.0, unit_upfront * count - source_upfront)
    target_value = _value(unit_upfront * count, hourly * count, unit_total * count)
    quote.response.update(
        TargetConfigurationValueSet=[
            {
                "TargetConfiguration": {"InstanceCount": count, "OfferingId": offering_id},
                "ReservationValue": target_value,
            }
        ],
        TargetConfigurationValueRollup=target_value,
        PaymentDue=_money(quote.payment_due),
        OutputReservedInstancesWillExpireAt=end,
    )


@handles(SERVICE, "GetReservedInstancesExchangeQuote")
def get_exchange_quote(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    return _quote(ctx, params).response


@handles(SERVICE, "AcceptReservedInstancesExchangeQuote")
def accept_exchange_quote(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    with ctx.state.lock:
        quote = _quote(ctx, params)
        if quote.reason is not None:
            raise AwsError("InvalidParameterValue", quote.reason)
        assert quote.offering is not None and quote.end is not None
        now = ctx.now()
        exchange_id = f"riex-{new_uuid()}"
        state = "payment-pending" if quote.payment_due > 0.005 else "active"
        new = ri_record(
            ctx.account_id,
            ctx.region,
            quote.offering,
            quote.count,
            now,
            state,
            "ec2:AcceptReservedInstancesExchangeQuote",
            None,
            now,
        )
        new.data["End"] = quote.end
        new.data["Duration"] = int((quote.end - now).total_seconds())
        new.data["_ExchangeId"] = exchange_id
        if state == "active":
            new.data["_PendingUntil"] = now
        for source in quote.sources:
            source.state = "retired"
            source.data["_ExchangeId"] = exchange_id
        ctx.state.add(new)
    return {"ExchangeId": exchange_id}


# --- Marketplace listings --------------------------------------------------------------------------------
def _months_left(ri: Resource, now: datetime) -> int:
    """AWS rounds the remaining term down to whole months."""
    return int((ri.data["End"] - now) / MONTH)


@handles(SERVICE, "CreateReservedInstancesListing")
def create_listing(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    token = params.get("ClientToken")
    if not token:
        raise AwsError("MissingParameter", "The request must contain the parameter ClientToken.")
    return ctx.state.idempotent(ctx.scope, token, params, lambda: _create_listing(ctx, params, token))


def _create_listing(ctx: CallContext, params: dict[str, Any], token: str) -> dict[str, Any]:
    if ctx.account_id in _unregistered_sellers(ctx.state):
        raise AwsError(
            "InvalidInput",
            f"Account {ctx.account_id} is not registered as a seller in the Reserved Instance Marketplace; "
            "register as a seller before listing Reserved Instances.",
        )
    ri = _own_ri(ctx, params["ReservedInstancesId"])
    now = ctx.now()
    count = int(params["InstanceCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be at least 1.")
    _check_listable(ctx, ri, now)
    if count > ri.data["InstanceCount"]:
        raise AwsError(
            "InvalidParameterValue",
            f"InstanceCount {count} exceeds the {ri.data['InstanceCount']} instances of Reserved Instance {ri.id}.",
        )
    schedules = _price_schedules(params.get("PriceSchedules") or [], _months_left(ri, now))
    listing_id = new_uuid()
    data = {
        "ReservedInstancesListingId": listing_id,
        "ReservedInstancesId": ri.id,
        "ClientToken": token,
        "CreateDate": now,
        "UpdateDate": now,
        "StatusMessage": "active",
        "InstanceCounts": _counts(available=count),
        "PriceSchedules": schedules,
        "Tags": [],
        "_Ri": ri,
    }
    listing = Resource(
        ctx.account_id,
        ctx.region,
        SERVICE,
        LISTING_TYPE,
        listing_id,
        "active",
        CreatedBy("ec2:CreateReservedInstancesListing", token, now),
        data,
    )
    ctx.state.add(listing)
    return {"ReservedInstancesListings": [_listing_view(listing, now)]}


def _check_listable(ctx: CallContext, ri: Resource, now: datetime) -> None:
    data = ri.data
    if data["OfferingClass"] != "standard":
        raise AwsError(
            "InvalidInput",
            "Only Standard Reserved Instances can be sold in the Reserved Instance Marketplace.",
        )
    if ri.state != "active":
        raise AwsError("InvalidInput", f"Reserved Instance {ri.id} is {ri.state}; only active ones can be sold.")
    if now - data["Start"] < MIN_HOLDING:
        raise AwsError(
            "InvalidInput",
            f"Reserved Instance {ri.id} must be held for at least 30 days before it can be sold.",
        )
    if data["End"] - now < MONTH:
        raise AwsError("InvalidInput", f"Reserved Instance {ri.id} has less than one month left in its term.")
    if _active_listing(ctx, ri.id) is not None:
        raise AwsError("InvalidInput", f"Reserved Instance {ri.id} is already listed in the Marketplace.")
    if _pending_modification(ctx, ri.id) is not None:
        raise AwsError("InvalidInput", f"Reserved Instance {ri.id} has a pending modification.")


def _price_schedules(specs: list[dict[str, Any]], months_left: int) -> list[dict[str, Any]]:
    if not specs:
        raise AwsError("MissingParameter", "The request must contain the parameter PriceSchedules.")
    terms: set[int] = set()
    out: list[dict[str, Any]] = []
    for spec in specs:
        term, price = int(spec.get("Term", 0)), float(spec.get("Price", -1))
        if spec.get("CurrencyCode", "USD") != "USD":
            raise AwsError("InvalidParameterValue", "The only supported currency is USD.")
        if price < 0:
            raise AwsError("InvalidParameterValue", "A price schedule's Price must be at least 0.")
        if not 1 <= term <= months_left or term in terms:
            raise AwsError(
                "InvalidParameterValue",
                f"Price schedule terms must be distinct and between 1 and the {months_left} months remaining.",
            )
        terms.add(term)
        out.append({"Term": term, "Price": price, "CurrencyCode": "USD"})
    out.sort(key=lambda s: -int(s["Term"]))
    return out


def _counts(available: int = 0, sold: int = 0, cancelled: int = 0, pending: int = 0) -> list[dict[str, Any]]:
    return [
        {"State": "available", "InstanceCount": available},
        {"State": "sold", "InstanceCount": sold},
        {"State": "cancelled", "InstanceCount": cancelled},
        {"State": "pending", "InstanceCount": pending},
    ]


def _listing_view(listing: Resource, now: datetime) -> dict[str, Any]:
    view = public(listing.data)
    view["Status"] = listing.state
    # The schedule in effect covers the months from its Term down to the next specified Term.
    months = _months_left(listing.data["_Ri"], now)
    covering = [s["Term"] for s in view["PriceSchedules"] if s["Term"] >= months]
    active_term = min(covering) if covering else max(s["Term"] for s in view["PriceSchedules"])
    view["PriceSchedules"] = [
        {**s, "Active": listing.state == "active" and s["Term"] == active_term} for s in view["PriceSchedules"]
    ]
    return view


def _advance_listing(listing: Resource, now: datetime) -> bool:
    """No sales are simulated; a listing closes when its RI is no longer active (expired, for example)."""
    if listing.state != "active":
        return False
    if listing.data["_Ri"].state == "active":
        return True
    counts = {c["State"]: c["InstanceCount"] for c in listing.data["InstanceCounts"]}
    listing.state = "closed"
    listing.data.update(
        StatusMessage="closed",
        UpdateDate=now,
        InstanceCounts=_counts(sold=counts["sold"], cancelled=counts["cancelled"] + counts["available"]),
    )
    return False


@handles(SERVICE, "CancelReservedInstancesListing")
def cancel_listing(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    listing_id = params["ReservedInstancesListingId"]
    listing = ctx.state.get(SERVICE, LISTING_TYPE, listing_id)
    if listing is None or listing.account_id != ctx.account_id or listing.region != ctx.region:
        raise AwsError("InvalidParameterValue", f"The Reserved Instances listing ID '{listing_id}' does not exist.")
    now = ctx.now()
    if listing.state != "active":
        raise AwsError(
            "InvalidInput",
            f"The Reserved Instances listing '{listing_id}' is {listing.state}; only active ones can be cancelled.",
        )
    counts = {c["State"]: c["InstanceCount"] for c in listing.data["InstanceCounts"]}
    listing.state = "cancelled"
    listing.data.update(
        StatusMessage="cancelled",
        UpdateDate=now,
        InstanceCounts=_counts(
            sold=counts["sold"],
            cancelled=counts["cancelled"] + counts["available"],
            pending=counts["pending"],
        ),
    )
    return {"ReservedInstancesListings": [_listing_view(listing, now)]}


_LISTING_FILTERS: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "reserved-instances-id": lambda item: [item["ReservedInstancesId"]],
    "reserved-instances-listing-id": lambda item: [item["ReservedInstancesListingId"]],
    "status": lambda item: [item["Status"]],
    "status-message": lambda item: [item["StatusMessage"]],
}


@handles(SERVICE, "DescribeReservedInstancesListings")
def describe_listings(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    now = ctx.now()
    items = [_listing_view(r, now) for r in ctx.state.find(SERVICE, LISTING_TYPE, ctx.account_id, ctx.region)]
    if params.get("ReservedInstancesId"):
        items = [i for i in items if i["ReservedInstancesId"] == params["ReservedInstancesId"]]
    if params.get("ReservedInstancesListingId"):
        items = [i for i in items if i["ReservedInstancesListingId"] == params["ReservedInstancesListingId"]]
    return {"ReservedInstancesListings": _match_filters(items, ec2_filters(params), _LISTING_FILTERS)}


def _unregistered_sellers(state: SandboxState) -> set[str]:
    unregistered: set[str] = state.extra.setdefault(MARKETPLACE, {}).setdefault("unregistered_sellers", set())
    return unregistered


@seeder("ec2:ri-marketplace-seller")
def seed_marketplace_seller(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:ri-marketplace-seller", "account_id", "registered": bool}``: whether the account is
    registered as a Reserved Instance Marketplace seller (registered unless seeded otherwise)."""
    with state.lock:
        sellers = _unregistered_sellers(state)
        if entry.get("registered", True):
            sellers.discard(str(entry["account_id"]))
        else:
            sellers.add(str(entry["account_id"]))


@seeder("ec2:ri-listing-sale")
def seed_listing_sale(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:ri-listing-sale", "account_id", "region", "reserved_instances_id", "instance_count"}``: a
    buyer bought ``instance_count`` instances from the RI's active listing (a listing that sells out closes)."""
    ri_id, sold = entry["reserved_instances_id"], int(entry.get("instance_count", 1))
    with state.lock:
        listings = state.find(
            SERVICE,
            LISTING_TYPE,
            entry["account_id"],
            entry["region"],
            lambda r: r.state == "active" and r.data["ReservedInstancesId"] == ri_id,
        )
        if not listings:
            raise ValueError(f"Reserved Instance {ri_id} has no active listing to sell from")
        listing = listings[0]
        counts = {c["State"]: c["InstanceCount"] for c in listing.data["InstanceCounts"]}
        if not 1 <= sold <= counts["available"]:
            raise ValueError(f"the listing has {counts['available']} instances available, not {sold}")
        counts["available"] -= sold
        counts["sold"] += sold
        listing.data.update(UpdateDate=state.clock.now(), InstanceCounts=_counts(**counts))
        if counts["available"] == 0:
            listing.state = "closed"
            listing.data["StatusMessage"] = "closed"


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, MOD_TYPE, lambda mod, now: _advance_modification(state, mod, now))
    state.register_advancer(SERVICE, LISTING_TYPE, _advance_listing)
