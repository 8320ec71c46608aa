"""EC2 Spot: RequestSpotInstances, RequestSpotFleet, their Cancel and Describe calls, and
DescribeSpotFleetInstances.

Implemented in the sandbox rather than wrapped around moto's responses, because moto's spot model hides
exactly the bugs a worker must not have: it ignores ``ClientToken`` (duplicates), fails without
``AllocationStrategy``, does not echo the fleet's ``ClientToken``, forgets cancelled requests, deletes a fleet
cancelled with ``TerminateInstances``, and answers unknown ids with a KeyError. Requests here are the
sandbox's own records; the instances they launch are real moto instances (``InstanceLifecycle`` spot), so
moto's ``DescribeInstances`` and ``TerminateInstances`` see and act on them, and terminating them moves the
requests on.

Lifecycles, on the sandbox clock:
* spot instance request: ``open`` (pending-evaluation; ``not-scheduled-yet`` before ``ValidFrom``) for
  ``FULFIL_SECONDS``, then ``active`` (fulfilled, with ``InstanceId``); ``closed`` (schedule-expired) if still
  open at ``ValidUntil``; a one-time request whose instance is terminated is ``closed``
  (instance-terminated-by-user), a persistent one re-opens and launches again. Cancel: ``cancelled``
  (canceled-before-fulfillment, or request-canceled-and-instance-running: the instance keeps running). A
  cancelled request disappears from Describe four hours after it is cancelled and its instance is gone.
* spot fleet: ``submitted`` for ``FULFIL_SECONDS``, then ``active`` (instances launched for the target
  capacity). Cancel with ``TerminateInstances``: ``cancelled_terminating`` (instances terminated), then
  ``cancelled`` after ``TERMINATE_SECONDS``; without: ``cancelled_running`` until its instances are gone (a
  second cancel with ``TerminateInstances`` is allowed), then ``cancelled``. A cancelled fleet disappears
  after 48 hours.

Spot prices (``DescribeSpotPriceHistory``) are the sandbox's own too: moto answers $0.00001 stamped 2006 for
every type, which no price check could use. Here each instance type that moto offers in a zone has one current
price per product description, a fixed share of its On-Demand price that differs a little per zone, stamped at
the start of the current hour (the price in effect now). A type not offered in the region has no spot price.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
import string
import uuid
from datetime import datetime, timedelta
from typing import Any

from sandbox.errors import AwsError
from sandbox.registry import CallContext, handles, on_state_setup
from sandbox.services._common import apply_ec2_filters, dry_run, ec2_filters, paginate, public
from sandbox.services.ec2_scheduled_instances import (
    as_utc,
    check_launch_references,
    instance_states,
    launch_instances,
    terminate_instances,
)
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
SIR_TYPE = "spot-instances-request"
FLEET_TYPE = "spot-fleet-request"
FULFIL_SECONDS = 5
TERMINATE_SECONDS = 60
SIR_FORGET_AFTER = timedelta(hours=4)
FLEET_FORGET_AFTER = timedelta(hours=48)
DEFAULT_VALIDITY = timedelta(days=7)
MAX_ACTIVE_FLEETS = 1000
ON_DEMAND_HOURLY = {
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "c5.large": 0.085,
    "r5.large": 0.126,
    "t3.medium": 0.0416,
}

_SIR_ID = re.compile(r"^sir-[0-9a-z]{8,17}$")
_SFR_ID = re.compile(r"^sfr-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_ALLOCATION = (
    "lowestPrice",
    "diversified",
    "capacityOptimized",
    "capacityOptimizedPrioritized",
    "priceCapacityOptimized",
)
_FLEET_DONE = ("cancelled", "cancelled_terminating", "failed", "deleted")
# Spot prices: a share of the On-Demand price (an unknown type is priced as DEFAULT_ON_DEMAND_HOURLY), a little
# higher in each later zone of the region, doubled for Windows.
DEFAULT_ON_DEMAND_HOURLY = 0.1
SPOT_SHARE = 0.30
SPOT_SHARE_PER_ZONE = 0.01
PRODUCT_DESCRIPTIONS = (
    "Linux/UNIX",
    "Linux/UNIX (Amazon VPC)",
    "SUSE Linux",
    "SUSE Linux (Amazon VPC)",
    "Red Hat Enterprise Linux",
    "Red Hat Enterprise Linux (Amazon VPC)",
    "Windows",
    "Windows (Amazon VPC)",
)


def _sir_id() -> str:
    return "sir-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _tags_for(specs: list[dict[str, Any]] | None, resource_type: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    for spec in specs or []:
        if spec.get("ResourceType") != resource_type:
            raise AwsError(
                "InvalidParameterValue",
                f"The value for `ResourceType` must be `{resource_type}`, not `{spec.get('ResourceType')}`.",
            )
        tags.extend({"Key": t["Key"], "Value": t.get("Value", "")} for t in spec.get("Tags") or [])
    return tags


def _price(value: Any, name: str) -> str:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise AwsError("InvalidParameterValue", f"Invalid value '{value}' for {name}.") from None
    if price <= 0:
        raise AwsError("InvalidParameterValue", f"{name} must be greater than 0.")
    return f"{price:.6f}"


def _check_image(image_id: Any, where: str) -> None:
    if not image_id:
        raise AwsError("MissingParameter", f"The request must contain the parameter {where}.ImageId")
    if not re.match(r"^ami-[0-9a-f]{8,17}$", str(image_id)):
        raise AwsError("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "ami-...")')


# --- spot instance requests -------------------------------------------------------------------------------
def _launch_spec_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The request's LaunchSpecification as DescribeSpotInstanceRequests shows it (groups as identifiers)."""
    view = {k: v for k, v in spec.items() if k not in ("SecurityGroupIds", "SecurityGroups", "UserData")}
    groups = [{"GroupId": g} for g in spec.get("SecurityGroupIds") or []]
    groups += [{"GroupName": g} for g in spec.get("SecurityGroups") or []]
    if groups:
        view["SecurityGroups"] = groups
    view.setdefault("InstanceType", "m1.small")
    view.setdefault("Monitoring", {"Enabled": False})
    return view


def _set_status(data: dict[str, Any], code: str, message: str, now: datetime) -> None:
    data["Status"] = {"Code": code, "Message": message, "UpdateTime": now}


def _launch_for_request(resource: Resource, now: datetime) -> None:
    data = resource.data
    spec = data["_LaunchSpecification"]
    try:
        _, [instance_id] = launch_instances(
            resource.account_id,
            resource.region,
            1,
            spec["ImageId"],
            instance_type=spec.get("InstanceType"),
            zone=(spec.get("Placement") or {}).get("AvailabilityZone"),
            subnet_id=spec.get("SubnetId"),
            key_name=spec.get("KeyName"),
            security_group_ids=spec.get("SecurityGroupIds"),
            lifecycle="spot",
        )
    except AwsError as exc:
        resource.state = "failed"
        data["Fault"] = {"Code": exc.code, "Message": exc.message}
        _set_status(data, "bad-parameters", exc.message, now)
        return
    [zone] = {i.placement.zone for i in _instances(resource.account_id, resource.region, [instance_id])}
    resource.state = "active"
    data["InstanceId"] = instance_id
    data["LaunchedAvailabilityZone"] = zone
    _set_status(data, "fulfilled", "Your spot request is fulfilled.", now)


def _instances(account_id: str, region: str, ids: list[str]) -> list[Any]:
    from moto.ec2.models import ec2_backends

    wanted = set(ids)
    backend = ec2_backends[account_id][region]
    return [i for r in backend.reservations.values() for i in r.instances if i.id in wanted]


def _instance_gone(resource: Resource) -> bool:
    instance_id = resource.data.get("InstanceId")
    if not instance_id:
        return True
    state = instance_states(resource.account_id, resource.region, [instance_id])[instance_id]
    return state in ("terminated", "shutting-down")


def advance_spot_request(resource: Resource, now: datetime) -> bool:
    data = resource.data
    if resource.state == "active" and _instance_gone(resource):
        if data["Type"] == "persistent":
            # A persistent request opens again and will launch a new instance; a closed one keeps its last.
            data.pop("InstanceId", None)
            resource.state = "open"
            data["_FulfilAt"] = now + timedelta(seconds=FULFIL_SECONDS)
        else:
            resource.state = "closed"
        _set_status(
            data,
            "instance-terminated-by-user",
            "Spot Instance terminated due to user-initiated termination.",
            now,
        )
    if resource.state == "open":
        valid_from, valid_until = data.get("ValidFrom"), data.get("ValidUntil")
        if valid_until is not None and now >= valid_until:
            resource.state = "closed"
            _set_status(data, "schedule-expired", "Your Spot request has expired.", now)
        elif valid_from is not None and now < valid_from:
            if data["Status"]["Code"] != "not-scheduled-yet":
                _set_status(data, "not-scheduled-yet", "Your Spot request will not be evaluated until ValidFrom.", now)
        elif now >= max(data["_FulfilAt"], valid_from or data["_FulfilAt"]):
            _launch_for_request(resource, now)
    if resource.state == "cancelled":
        if data.get("_GoneSince") is None and _instance_gone(resource):
            data["_GoneSince"] = now
            if data.get("InstanceId"):
                _set_status(data, "instance-terminated-by-user", "Spot Instance terminated by the user.", now)
        if data.get("_GoneSince") is not None and now >= data["_GoneSince"] + SIR_FORGET_AFTER:
            resource.state = "deleted"  # AWS deletes the request four hours later; only the ground truth keeps it
    return resource.state in ("open", "active", "cancelled")


def _sir_view(resource: Resource) -> dict[str, Any]:
    view = public(resource.data)
    view["State"] = resource.state
    return view


@handles(SERVICE, "RequestSpotInstances")
def request_spot_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    token = params.get("ClientToken")
    if token is not None and not 0 < len(token) <= 64:
        raise AwsError("InvalidParameterValue", "ClientToken must be 1 to 64 ASCII characters.")
    return ctx.state.idempotent(ctx.scope, token, params, lambda: _request_spot(ctx, params), ("ClientToken", "DryRun"))


def _request_spot(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    now = ctx.now()
    spec = dict(params.get("LaunchSpecification") or {})
    _check_image(spec.get("ImageId"), "LaunchSpecification")
    count = int(params.get("InstanceCount", 1))
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be at least 1.")
    if params.get("BlockDurationMinutes"):
        raise AwsError("InvalidParameterValue", "Spot blocks (BlockDurationMinutes) are no longer supported.")
    valid_from = as_utc(params["ValidFrom"]) if params.get("ValidFrom") else None
    valid_until = as_utc(params["ValidUntil"]) if params.get("ValidUntil") else now + DEFAULT_VALIDITY
    if valid_until <= now or (valid_from is not None and valid_from >= valid_until):
        raise AwsError("InvalidParameterValue", "ValidUntil must be in the future and after ValidFrom.")
    tags = _tags_for(params.get("TagSpecifications"), SIR_TYPE)
    check_launch_references(ctx.account_id, ctx.region, spec.get("SubnetId"), spec.get("SecurityGroupIds"))
    instance_type = spec.get("InstanceType") or "m1.small"
    price = params.get("SpotPrice") or ON_DEMAND_HOURLY.get(instance_type, 0.1)
    token = params.get("ClientToken")
    created = []
    for _ in range(count):
        data: dict[str, Any] = {
            "SpotInstanceRequestId": _sir_id(),
            "SpotPrice": _price(price, "SpotPrice"),
            "Type": params.get("Type") or "one-time",
            "CreateTime": now,
            "LaunchSpecification": _launch_spec_view(spec),
            "ProductDescription": "Linux/UNIX",
            "Tags": [dict(t) for t in tags],
            "ValidUntil": valid_until,
            "InstanceInterruptionBehavior": params.get("InstanceInterruptionBehavior") or "terminate",
            "_LaunchSpecification": spec,
            "_FulfilAt": now + timedelta(seconds=FULFIL_SECONDS),
        }
        if valid_from is not None:
            data["ValidFrom"] = valid_from
        for optional in ("LaunchGroup", "AvailabilityZoneGroup"):
            if params.get(optional) is not None:
                data[optional] = params[optional]
        _set_status(
            data,
            "pending-evaluation",
            "Your Spot request has been submitted for review, and is pending evaluation.",
            now,
        )
        resource = Resource(
            ctx.account_id,
            ctx.region,
            SERVICE,
            SIR_TYPE,
            data["SpotInstanceRequestId"],
            "open",
            CreatedBy("ec2:RequestSpotInstances", token, now),
            data,
        )
        advance_spot_request(resource, now)
        ctx.state.add(resource)
        created.append(copy.deepcopy(_sir_view(resource)))  # a replay answers as at creation
    return {"SpotInstanceRequests": created}


def _visible_requests(ctx: CallContext) -> list[Resource]:
    return ctx.state.find(SERVICE, SIR_TYPE, ctx.account_id, ctx.region, lambda r: r.state != "deleted")


def _pick_requests(ctx: CallContext, ids: list[str]) -> list[Resource]:
    for request_id in ids:
        if not _SIR_ID.match(request_id):
            raise AwsError("InvalidSpotInstanceRequestID.Malformed", f'Invalid id: "{request_id}"')
    by_id = {r.id: r for r in _visible_requests(ctx)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise AwsError(
            "InvalidSpotInstanceRequestID.NotFound",
            f"The spot instance request ID '{missing[0]}' does not exist",
        )
    return [by_id[i] for i in dict.fromkeys(ids)]


def _launch(item: dict[str, Any], key: str) -> Any:
    return item.get("LaunchSpecification", {}).get(key)


_SIR_FILTERS = {
    "availability-zone-group": lambda s: s.get("AvailabilityZoneGroup", ""),
    "create-time": lambda s: s["CreateTime"],
    "fault-code": lambda s: s.get("Fault", {}).get("Code", ""),
    "fault-message": lambda s: s.get("Fault", {}).get("Message", ""),
    "instance-id": lambda s: s.get("InstanceId", ""),
    "launch-group": lambda s: s.get("LaunchGroup", ""),
    "launch.image-id": lambda s: _launch(s, "ImageId"),
    "launch.instance-type": lambda s: _launch(s, "InstanceType"),
    "launch.key-name": lambda s: _launch(s, "KeyName") or "",
    "launch.group-id": lambda s: " ".join(g.get("GroupId", "") for g in _launch(s, "SecurityGroups") or []),
    "launch.group-name": lambda s: " ".join(g.get("GroupName", "") for g in _launch(s, "SecurityGroups") or []),
    "launch.monitoring-enabled": lambda s: (_launch(s, "Monitoring") or {}).get("Enabled", False),
    "launched-availability-zone": lambda s: s.get("LaunchedAvailabilityZone", ""),
    "product-description": lambda s: s["ProductDescription"],
    "spot-instance-request-id": lambda s: s["SpotInstanceRequestId"],
    "spot-price": lambda s: s["SpotPrice"],
    "state": lambda s: s["State"],
    "status-code": lambda s: s["Status"]["Code"],
    "status-message": lambda s: s["Status"]["Message"],
    "type": lambda s: s["Type"],
    "valid-from": lambda s: s.get("ValidFrom", ""),
    "valid-until": lambda s: s.get("ValidUntil", ""),
}


@handles(SERVICE, "DescribeSpotInstanceRequests")
def describe_spot_instance_requests(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    ids = params.get("SpotInstanceRequestIds")
    resources = _pick_requests(ctx, ids) if ids else _visible_requests(ctx)
    items = apply_ec2_filters([_sir_view(r) for r in resources], ec2_filters(params), _SIR_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"SpotInstanceRequests": page}
    if next_token:
        out["NextToken"] = next_token
    return out


@handles(SERVICE, "CancelSpotInstanceRequests")
def cancel_spot_instance_requests(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    now = ctx.now()
    cancelled = []
    with ctx.state.lock:
        for resource in _pick_requests(ctx, params["SpotInstanceRequestIds"]):
            if resource.state in ("open", "active"):
                running = resource.state == "active"
                resource.state = "cancelled"
                if running:
                    _set_status(
                        resource.data,
                        "request-canceled-and-instance-running",
                        "Spot Instance request is canceled, but the instance is still running.",
                        now,
                    )
                else:
                    _set_status(
                        resource.data,
                        "canceled-before-fulfillment",
                        "The Spot request was canceled before it was fulfilled.",
                        now,
                    )
                ctx.state.watch(resource)
            # Cancelling a request that is already cancelled, closed or failed changes nothing.
            cancelled.append({"SpotInstanceRequestId": resource.id, "State": resource.state})
    return {"CancelledSpotInstanceRequests": cancelled}


# --- spot fleets ------------------------------------------------------------------------------------------
def _fleet_plan(ctx: CallContext, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate the launch configuration and return the pools, each {weight, launch kwargs}."""
    specs = config.get("LaunchSpecifications") or []
    templates = config.get("LaunchTemplateConfigs") or []
    if bool(specs) == bool(templates):
        raise AwsError(
            "InvalidSpotFleetRequestConfig",
            "Specify either SpotFleetRequestConfig.LaunchSpecifications or LaunchTemplateConfigs, not both.",
        )
    pools = []
    for spec in specs:
        _check_image(spec.get("ImageId"), "SpotFleetRequestConfig.LaunchSpecifications")
        group_ids = [g["GroupId"] for g in spec.get("SecurityGroups") or [] if g.get("GroupId")]
        check_launch_references(ctx.account_id, ctx.region, spec.get("SubnetId"), group_ids)
        _tags_for(spec.get("TagSpecifications"), "instance")
        pools.append(
            {
                "weight": float(spec.get("WeightedCapacity") or 1),
                "image_id": spec["ImageId"],
                "instance_type": spec.get("InstanceType"),
                "zone": (spec.get("Placement") or {}).get("AvailabilityZone"),
                "subnet_id": spec.get("SubnetId"),
                "key_name": spec.get("KeyName"),
                "security_group_ids": group_ids,
                "tags": {t["Key"]: t["Value"] for t in _tags_for(spec.get("TagSpecifications"), "instance")},
            }
        )
    for template_config in templates:
        template = dict(template_config.get("LaunchTemplateSpecification") or {})
        _check_template(ctx, template)
        for override in template_config.get("Overrides") or [{}]:
            pools.append(
                {
                    "weight": float(override.get("WeightedCapacity") or 1),
                    "image_id": None,
                    "instance_type": override.get("InstanceType"),
                    "zone": override.get("AvailabilityZone"),
                    "subnet_id": override.get("SubnetId"),
                    "launch_template": template,
                }
            )
    return pools


def _check_template(ctx: CallContext, template: dict[str, Any]) -> None:
    from moto.core.exceptions import ServiceException
    from moto.ec2.models import ec2_backends

    if not template.get("LaunchTemplateId") and not template.get("LaunchTemplateName"):
        raise AwsError("InvalidSpotFleetRequestConfig", "LaunchTemplateSpecification needs an id or a name.")
    try:
        ec2_backends[ctx.account_id][ctx.region]._get_template_from_args(template)
    except ServiceException as exc:
        raise AwsError(exc.code, exc.message) from exc
    except IndexError:
        raise AwsError("InvalidLaunchTemplateId.NotFound", "The specified launch template does not exist.") from None


@handles(SERVICE, "RequestSpotFleet")
def request_spot_fleet(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    config = params["SpotFleetRequestConfig"]
    token = config.get("ClientToken")
    # The token is nested in the config, so compare everything but the token itself.
    compared = {"SpotFleetRequestConfig": {k: v for k, v in config.items() if k != "ClientToken"}}
    return ctx.state.idempotent(ctx.scope, token, compared, lambda: _request_fleet(ctx, params))


def _request_fleet(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    now = ctx.now()
    config = dict(params["SpotFleetRequestConfig"])
    if not _ROLE_ARN.match(str(config.get("IamFleetRole", ""))):
        raise AwsError(
            "InvalidSpotFleetRequestConfig",
            f"Parameter: SpotFleetRequestConfig.IamFleetRole is invalid: {config.get('IamFleetRole')!r}.",
        )
    target = int(config["TargetCapacity"])
    on_demand = int(config.get("OnDemandTargetCapacity") or 0)
    if target < 0 or not 0 <= on_demand <= target:
        raise AwsError("InvalidSpotFleetRequestConfig", "OnDemandTargetCapacity must be between 0 and TargetCapacity.")
    config.setdefault("AllocationStrategy", "lowestPrice")
    if config["AllocationStrategy"] not in _ALLOCATION:
        raise AwsError("InvalidSpotFleetRequestConfig", f"Invalid AllocationStrategy {config['AllocationStrategy']!r}.")
    config.setdefault("Type", "maintain")
    if config["Type"] not in ("request", "maintain"):
        raise AwsError("InvalidSpotFleetRequestConfig", "Spot Fleet Type must be request or maintain.")
    config.setdefault("InstanceInterruptionBehavior", "terminate")
    for moment in ("ValidFrom", "ValidUntil"):
        if config.get(moment) is not None:
            config[moment] = as_utc(config[moment])
    if config.get("SpotPrice") is not None:
        config["SpotPrice"] = _price(config["SpotPrice"], "SpotFleetRequestConfig.SpotPrice")
    valid_until = config.get("ValidUntil")
    if valid_until is not None and valid_until <= now:
        raise AwsError("InvalidSpotFleetRequestConfig", "ValidUntil must be in the future.")
    tags = _tags_for(config.get("TagSpecifications"), FLEET_TYPE)
    pools = _fleet_plan(ctx, config)
    active = ctx.state.find(SERVICE, FLEET_TYPE, ctx.account_id, ctx.region, lambda r: r.state not in _FLEET_DONE)
    if len(active) >= MAX_ACTIVE_FLEETS:
        raise AwsError("MaxSpotFleetRequestCountExceeded", f"You can have at most {MAX_ACTIVE_FLEETS} Spot Fleets.")
    fleet_id = f"sfr-{uuid.uuid4()}"
    data: dict[str, Any] = {
        "SpotFleetRequestId": fleet_id,
        "CreateTime": now,
        "ActivityStatus": "pending_fulfillment",
        "SpotFleetRequestConfig": {**config, "FulfilledCapacity": 0.0, "OnDemandFulfilledCapacity": 0.0},
        "Tags": tags,
        "_Pools": pools,
        "_FulfilAt": max(now, config.get("ValidFrom") or now) + timedelta(seconds=FULFIL_SECONDS),
        "_InstanceIds": [],
    }
    resource = Resource(
        ctx.account_id,
        ctx.region,
        SERVICE,
        FLEET_TYPE,
        fleet_id,
        "submitted",
        CreatedBy("ec2:RequestSpotFleet", config.get("ClientToken"), now),
        data,
    )
    ctx.state.add(resource)
    return {"SpotFleetRequestId": fleet_id}


def _fulfil_fleet(resource: Resource) -> None:
    """Launch the target capacity from the first pool (lowest price: every pool costs the same here)."""
    data = resource.data
    config = data["SpotFleetRequestConfig"]
    pool = data["_Pools"][0]
    on_demand = int(config.get("OnDemandTargetCapacity") or 0)
    instance_ids: list[str] = []
    fulfilled = {"spot": 0.0, "on-demand": 0.0}
    tags = {**pool.get("tags", {}), "aws:ec2spot:fleet-request-id": resource.id}
    for lifecycle, capacity in (
        ("on-demand", on_demand),
        ("spot", int(config["TargetCapacity"]) - on_demand),
    ):
        count = math.ceil(capacity / pool["weight"]) if capacity > 0 else 0
        if not count:
            continue
        _, ids = launch_instances(
            resource.account_id,
            resource.region,
            count,
            pool["image_id"],
            instance_type=pool["instance_type"],
            zone=pool["zone"],
            subnet_id=pool["subnet_id"],
            key_name=pool.get("key_name"),
            security_group_ids=pool.get("security_group_ids"),
            launch_template=pool.get("launch_template"),
            lifecycle="spot" if lifecycle == "spot" else None,
            instance_tags=tags,
        )
        instance_ids += ids
        fulfilled[lifecycle] = count * pool["weight"]
    data["_InstanceIds"] = instance_ids
    config["FulfilledCapacity"] = fulfilled["spot"] + fulfilled["on-demand"]
    config["OnDemandFulfilledCapacity"] = fulfilled["on-demand"]


def _cancel_fleet(resource: Resource, terminate: bool, now: datetime) -> None:
    if terminate:
        terminate_instances(resource.account_id, resource.region, resource.data["_InstanceIds"])
        resource.state = "cancelled_terminating"
        resource.data["_CancelledAt"] = now + timedelta(seconds=TERMINATE_SECONDS)
    else:
        resource.state = "cancelled_running"
    resource.data.pop("ActivityStatus", None)


def _fleet_running(resource: Resource) -> bool:
    ids = resource.data["_InstanceIds"]
    states = instance_states(resource.account_id, resource.region, ids)
    return any(s not in ("terminated", "shutting-down") for s in states.values())


def advance_fleet(resource: Resource, now: datetime) -> bool:
    data = resource.data
    config = data["SpotFleetRequestConfig"]
    if resource.state == "submitted" and now >= data["_FulfilAt"]:
        try:
            _fulfil_fleet(resource)
            resource.state, data["ActivityStatus"] = "active", "fulfilled"
        except AwsError:
            resource.state, data["ActivityStatus"] = "failed", "error"
    valid_until = config.get("ValidUntil")
    if resource.state in ("submitted", "active") and valid_until is not None and now >= valid_until:
        _cancel_fleet(resource, bool(config.get("TerminateInstancesWithExpiration")), now)
    if resource.state == "cancelled_running" and not _fleet_running(resource):
        resource.state = "cancelled"
        data["_CancelledAt"] = now
    if resource.state == "cancelled_terminating" and now >= data["_CancelledAt"]:
        resource.state = "cancelled"
    if resource.state == "cancelled" and now >= data["_CancelledAt"] + FLEET_FORGET_AFTER:
        resource.state = "deleted"  # AWS deletes cancelled fleets after 48 hours; only the ground truth keeps it
    return resource.state not in ("failed", "deleted")


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, SIR_TYPE, advance_spot_request)
    state.register_advancer(SERVICE, FLEET_TYPE, advance_fleet)


def _fleet_view(resource: Resource) -> dict[str, Any]:
    view = public(resource.data)
    view["SpotFleetRequestState"] = resource.state
    return view


def _visible_fleets(ctx: CallContext) -> dict[str, Resource]:
    fleets = ctx.state.find(SERVICE, FLEET_TYPE, ctx.account_id, ctx.region, lambda r: r.state != "deleted")
    return {r.id: r for r in fleets}


def _pick_fleet(ctx: CallContext, fleet_id: str) -> Resource:
    if not _SFR_ID.match(fleet_id):
        raise AwsError("InvalidSpotFleetRequestId.Malformed", f'Invalid id: "{fleet_id}"')
    fleet = _visible_fleets(ctx).get(fleet_id)
    if fleet is None:
        raise AwsError("InvalidSpotFleetRequestId.NotFound", f"The spot fleet request ID '{fleet_id}' does not exist")
    return fleet


@handles(SERVICE, "DescribeSpotFleetRequests")
def describe_spot_fleet_requests(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    ids = params.get("SpotFleetRequestIds")
    fleets = [_pick_fleet(ctx, i) for i in ids] if ids else list(_visible_fleets(ctx).values())
    page, next_token = paginate([_fleet_view(f) for f in fleets], params)
    out: dict[str, Any] = {"SpotFleetRequestConfigs": page}
    if next_token:
        out["NextToken"] = next_token
    return out


@handles(SERVICE, "DescribeSpotFleetInstances")
def describe_spot_fleet_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    fleet = _pick_fleet(ctx, params["SpotFleetRequestId"])
    alive = [
        {"InstanceId": i.id, "InstanceType": i.instance_type, "InstanceHealth": "healthy"}
        for i in _instances(ctx.account_id, ctx.region, fleet.data["_InstanceIds"])
        if i.state not in ("terminated", "shutting-down")
    ]
    page, next_token = paginate(alive, params)
    out: dict[str, Any] = {"ActiveInstances": page, "SpotFleetRequestId": fleet.id}
    if next_token:
        out["NextToken"] = next_token
    return out


def _fleet_error(fleet_id: str, code: str, message: str) -> dict[str, Any]:
    return {"SpotFleetRequestId": fleet_id, "Error": {"Code": code, "Message": message}}


@handles(SERVICE, "CancelSpotFleetRequests")
def cancel_spot_fleet_requests(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    ids = params["SpotFleetRequestIds"]
    if len(ids) > 100:
        raise AwsError("InvalidParameterValue", "You can cancel at most 100 Spot Fleet requests at a time.")
    terminate = bool(params["TerminateInstances"])
    now = ctx.now()
    succeeded, failed = [], []
    with ctx.state.lock:
        fleets = _visible_fleets(ctx)
        for fleet_id in dict.fromkeys(ids):
            fleet = fleets.get(fleet_id)
            if not _SFR_ID.match(fleet_id):
                failed.append(_fleet_error(fleet_id, "fleetRequestIdMalformed", f"Invalid id: {fleet_id}"))
            elif fleet is None:
                failed.append(
                    _fleet_error(
                        fleet_id,
                        "fleetRequestIdDoesNotExist",
                        f"The spot fleet request ID '{fleet_id}' does not exist",
                    )
                )
            elif fleet.state in _FLEET_DONE:
                failed.append(
                    _fleet_error(
                        fleet_id,
                        "fleetRequestNotInCancellableState",
                        f"The spot fleet request is in state {fleet.state}.",
                    )
                )
            else:
                previous = fleet.state
                if previous != "cancelled_running" or terminate:
                    _cancel_fleet(fleet, terminate, now)
                    ctx.state.watch(fleet)
                succeeded.append(
                    {
                        "SpotFleetRequestId": fleet_id,
                        "PreviousSpotFleetRequestState": previous,
                        "CurrentSpotFleetRequestState": fleet.state,
                    }
                )
    return {"SuccessfulFleetRequests": succeeded, "UnsuccessfulFleetRequests": failed}


# --- spot prices --------------------------------------------------------------------------------------------
def spot_price(instance_type: str, zone_index: int, product_description: str) -> float:
    """The sandbox's current spot price of a type in the region's ``zone_index``-th zone."""
    on_demand = ON_DEMAND_HOURLY.get(instance_type, DEFAULT_ON_DEMAND_HOURLY)
    price = on_demand * (SPOT_SHARE + SPOT_SHARE_PER_ZONE * zone_index)
    return round(price * (2 if product_description.startswith("Windows") else 1), 6)


_PRICE_FILTERS = {
    "availability-zone": lambda p: p["AvailabilityZone"],
    "instance-type": lambda p: p["InstanceType"],
    "product-description": lambda p: p["ProductDescription"],
    "spot-price": lambda p: p["SpotPrice"],
    "timestamp": lambda p: p["Timestamp"],
}


@handles(SERVICE, "DescribeSpotPriceHistory")
def describe_spot_price_history(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
    from moto.ec2.models.instance_types import INSTANCE_TYPE_OFFERINGS

    dry_run(params)
    now = ctx.now()
    since = now.replace(minute=0, second=0, microsecond=0)
    end = params.get("EndTime")
    if end is not None and as_utc(end) < since:
        # Before the current price took effect: the sandbox keeps no older history.
        return {"SpotPriceHistory": []}
    zones = {z.name: (i, z.zone_id) for i, z in enumerate(RegionsAndZonesBackend.zones.get(ctx.region, []))}
    wanted_types = set(params.get("InstanceTypes") or [])
    wanted_zone = params.get("AvailabilityZone")
    wanted_zone_id = params.get("AvailabilityZoneId")
    descriptions = params.get("ProductDescriptions") or list(PRODUCT_DESCRIPTIONS)
    unknown = [d for d in descriptions if d not in PRODUCT_DESCRIPTIONS]
    if unknown:
        raise AwsError("InvalidParameterValue", f"Invalid product description: {unknown[0]}")
    prices = []
    for offering in INSTANCE_TYPE_OFFERINGS["availability-zone"].get(ctx.region, []):
        zone, instance_type = offering["Location"], offering["InstanceType"]
        if zone not in zones or (wanted_types and instance_type not in wanted_types):
            continue
        index, zone_id = zones[zone]
        if (wanted_zone and zone != wanted_zone) or (wanted_zone_id and zone_id != wanted_zone_id):
            continue
        for description in descriptions:
            prices.append({
                "AvailabilityZone": zone,
                "AvailabilityZoneId": zone_id,
                "InstanceType": instance_type,
                "ProductDescription": description,
                "SpotPrice": f"{spot_price(instance_type, index, description):.6f}",
                "Timestamp": since,
            })
    prices = apply_ec2_filters(prices, ec2_filters(params), _PRICE_FILTERS)
    page, next_token = paginate(prices, params, default_size=1000)
    out: dict[str, Any] = {"SpotPriceHistory": page}
    if next_token:
        out["NextToken"] = next_token
    return out
