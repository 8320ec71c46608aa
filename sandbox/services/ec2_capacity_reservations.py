"""EC2 On-Demand Capacity Reservations: create, describe, modify, cancel, and pointing instances at them.

moto has no capacity reservations at all, so the sandbox keeps them. Instances stay moto's (RunInstances,
StopInstances, DescribeInstances): ModifyInstanceCapacityReservationAttributes sets the specification on
moto's own instance object, which moto's DescribeInstances serializer then returns as
``CapacityReservationSpecification`` (the reconciling read), and ``AvailableInstanceCount`` is computed from
moto's running instances on every read.

AWS rules followed here (ModifyCapacityReservation / CancelCapacityReservation API reference):
- ``assessing``/``scheduled`` (future-dated, ``StartDate``): no modification; cancel only while ``assessing``.
- ``active`` inside a commitment (``CommitmentDuration``): no decrease below the committed count, no end date
  inside the commitment, no cancel.
- ``expired``/``cancelled``: nothing, including a second cancel (``IncorrectState``). The worker reconciles a
  cancel by reading ``State == cancelled``; a replayed cancel is refused, not silently accepted.
- Changing ``InstanceMatchCriteria`` needs an idle reservation (no instance running in it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.ec2.models import ec2_backends
from moto.ec2.models.availability_zones_and_regions import RegionsAndZonesBackend
from moto.ec2.models.instance_types import INSTANCE_TYPES

from sandbox.catalogue import Catalogue
from sandbox.errors import AwsError
from sandbox.registry import CallContext, handles, on_state_setup, seeder
from sandbox.services._common import apply_ec2_filters, dry_run, ec2_filters, ec2_id, paginate, public
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
CR_TYPE = "capacity-reservation"
# Physical capacity the sandbox pretends each AZ has per instance type (all accounts together). Asking for
# more gives InsufficientInstanceCapacity, which AWS's error page lists as a server error (retry later or in
# another AZ).
AZ_CAPACITY_PER_TYPE = 200
# A future-dated reservation is assessed for this long before it is scheduled (AWS: up to 5 days).
ASSESSING_SECONDS = 60
LIVE_STATES = ("assessing", "scheduled", "active")
_CR_ID = re.compile(r"^cr-[0-9a-f]{17}$")
_INSTANCE_ID = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")


def utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def zone_of(region: str, name: str | None, zone_id: str | None) -> tuple[str, str]:
    """(AvailabilityZone, AvailabilityZoneId) of the region, from moto's zone table."""
    zones = RegionsAndZonesBackend.zones.get(region, [])
    for zone in zones:
        if (name is None or zone.name == name) and (zone_id is None or zone.zone_id == zone_id):
            return zone.name, zone.zone_id
    if name is None and zone_id is None:
        raise AwsError("MissingParameter", "Either AvailabilityZone or AvailabilityZoneId must be specified.")
    wanted = name if name is not None else zone_id
    raise AwsError("InvalidParameterValue", f"Invalid availability zone: [{wanted}] for region {region}")


def check_tag_specifications(params: dict[str, Any], resource_type: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    for spec in params.get("TagSpecifications") or []:
        if spec.get("ResourceType") != resource_type:
            raise AwsError(
                "InvalidParameterValue",
                f"'{spec.get('ResourceType')}' is not a valid taggable resource type for this operation.",
            )
        tags.extend({"Key": t["Key"], "Value": t.get("Value", "")} for t in spec.get("Tags") or [])
    return tags


def check_cr_id(cr_id: str) -> None:
    if not _CR_ID.match(cr_id):
        raise AwsError("InvalidCapacityReservationId.Malformed", f'Invalid id: "{cr_id}" (expecting "cr-...")')


def get_cr(ctx: CallContext, cr_id: str) -> Resource:
    check_cr_id(cr_id)
    resource = ctx.state.get(SERVICE, CR_TYPE, cr_id)
    if resource is None or resource.account_id != ctx.account_id or resource.region != ctx.region:
        raise AwsError("InvalidCapacityReservationId.NotFound", f"The capacity reservation ID '{cr_id}' does not exist")
    return resource


def reserved_elsewhere(state: SandboxState, region: str, zone: str, instance_type: str, skip: str = "") -> int:
    return sum(
        r.data["TotalInstanceCount"]
        for r in state.find(SERVICE, CR_TYPE, None, region)
        if r.state in LIVE_STATES
        and r.id != skip
        and r.data["AvailabilityZone"] == zone
        and r.data["InstanceType"] == instance_type
    )


def check_capacity(state: SandboxState, region: str, data: dict[str, Any], count: int, skip: str = "") -> None:
    used = reserved_elsewhere(state, region, data["AvailabilityZone"], data["InstanceType"], skip)
    if used + count > AZ_CAPACITY_PER_TYPE:
        raise AwsError(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient {data['InstanceType']} capacity in the Availability Zone "
            f"you requested ({data['AvailabilityZone']}). Our system will be working on provisioning "
            "additional capacity.",
            500,
        )


def end_date(end_type: str, end: datetime | None, now: datetime) -> datetime | None:
    """Validate an (EndDateType, EndDate) pair as AWS does: limited needs a future EndDate, unlimited none."""
    if end_type == "limited":
        if end is None:
            raise AwsError("InvalidParameterValue", "EndDate must be specified when EndDateType is limited.")
        end = utc(end)
        if end <= now:
            raise AwsError("InvalidParameterValue", "The EndDate must be in the future.")
        return end
    if end is not None:
        raise AwsError("InvalidParameterValue", "EndDate cannot be specified when EndDateType is unlimited.")
    return None


# --- instances (moto's) -----------------------------------------------------------------------------------
def moto_backend(account_id: str, region: str) -> Any:
    """moto's EC2 backend of the account and region, or None if moto has not made one yet (making one is slow,
    and an account that never called moto has no instances or hosts anyway)."""
    # keys(): moto's `in` on an account's backends answers True for every known region, created or not.
    if account_id not in ec2_backends or region not in ec2_backends[account_id].keys():  # noqa: SIM118
        return None
    return ec2_backends[account_id][region]


def instance_platform(instance: Any) -> str:
    return "Windows" if getattr(instance, "platform", None) == "windows" else "Linux/UNIX"


def usage(account_id: str, region: str, reservations: list[Resource]) -> dict[str, int]:
    """How many running instances each reservation holds: targeted instances in their reservation, then
    instances with preference ``open`` in a matching open reservation, never above its size."""
    used = {r.id: 0 for r in reservations}
    active = [r for r in reservations if r.state == "active"]
    backend = moto_backend(account_id, region)
    if backend is None:
        return used
    instances = list(backend.all_instances())

    def fits(r: Resource, instance: Any) -> bool:
        d = r.data
        return (
            d["InstanceType"] == instance.instance_type
            and d["AvailabilityZone"] == instance._placement.zone
            and d["InstancePlatform"] == instance_platform(instance)
            and used[r.id] < d["TotalInstanceCount"]
        )

    for instance in instances:
        if instance._state.name not in ("pending", "running"):
            continue
        spec = getattr(instance, "capacity_reservation_specification", None) or {}
        target = (spec.get("CapacityReservationTarget") or {}).get("CapacityReservationId")
        preference = spec.get("CapacityReservationPreference", "open")
        if target:
            candidates = [r for r in active if r.id == target]
        elif preference in ("open", "capacity-reservations-only"):
            candidates = [r for r in active if r.data["InstanceMatchCriteria"] == "open"]
        else:
            candidates = []
        for r in candidates:
            if fits(r, instance):
                used[r.id] += 1
                break
    return used


# --- records and views ------------------------------------------------------------------------------------
def cr_record(
    account_id: str,
    region: str,
    fields: dict[str, Any],
    state: str,
    operation: str,
    token: str | None,
    created_at: datetime,
    cr_id: str | None = None,
) -> Resource:
    cr_id = cr_id or ec2_id("cr")
    data = {
        "CapacityReservationId": cr_id,
        "OwnerId": account_id,
        "CapacityReservationArn": f"arn:aws:ec2:{region}:{account_id}:capacity-reservation/{cr_id}",
        "ReservationType": "default",
        "CreateDate": created_at,
        **fields,
    }
    created_by = CreatedBy(operation, token, created_at)
    return Resource(account_id, region, SERVICE, CR_TYPE, cr_id, state, created_by, data)


def advance_cr(resource: Resource, now: datetime) -> bool:
    data = resource.data
    if resource.state == "assessing" and now >= data["_AssessedAt"]:
        resource.state = "scheduled"
    if resource.state == "scheduled" and now >= data["StartDate"]:
        resource.state = "active"
    if resource.state == "active" and data.get("EndDate") is not None and now >= data["EndDate"]:
        resource.state = "expired"
    return resource.state in LIVE_STATES


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, CR_TYPE, advance_cr)


def cr_view(resource: Resource, used: int) -> dict[str, Any]:
    view = {k: v for k, v in public(resource.data).items() if v is not None}
    view["State"] = resource.state
    live = resource.state == "active"
    view["AvailableInstanceCount"] = resource.data["TotalInstanceCount"] - used if live else 0
    if live and used:
        view["CapacityAllocations"] = [{"AllocationType": "used", "Count": used}]
    return view


def views(ctx: CallContext, resources: list[Resource]) -> list[dict[str, Any]]:
    used = usage(ctx.account_id, ctx.region, resources)
    return [cr_view(r, used[r.id]) for r in resources]


# --- CreateCapacityReservation ----------------------------------------------------------------------------
def _create_fields(ctx: CallContext, params: dict[str, Any], now: datetime) -> tuple[dict[str, Any], str]:
    instance_type = params["InstanceType"]
    if instance_type not in INSTANCE_TYPES:
        raise AwsError("InvalidParameterValue", f"Invalid instance type: {instance_type}")
    count = int(params["InstanceCount"])
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be greater than or equal to 1.")
    zone, zone_id = zone_of(ctx.region, params.get("AvailabilityZone"), params.get("AvailabilityZoneId"))
    end_type = params.get("EndDateType") or "unlimited"
    end = end_date(end_type, params.get("EndDate"), now)
    start, state = now, "active"
    fields: dict[str, Any] = {}
    if params.get("StartDate") is not None and utc(params["StartDate"]) > now:
        # A future-dated reservation: assessed, then scheduled, then active at StartDate.
        start, state = utc(params["StartDate"]), "assessing"
        fields["_AssessedAt"] = now + timedelta(seconds=ASSESSING_SECONDS)
        if end is not None and end <= start:
            raise AwsError("InvalidParameterValue", "The EndDate must be after the StartDate.")
    if params.get("CommitmentDuration") is not None:
        if state != "assessing":
            raise AwsError("InvalidParameterCombination", "CommitmentDuration requires a future StartDate.")
        commitment_end = start + timedelta(seconds=int(params["CommitmentDuration"]))
        if end is not None and end < commitment_end:
            raise AwsError("InvalidParameterValue", "The EndDate must be after the end of the commitment.")
        fields["CommitmentInfo"] = {"CommittedInstanceCount": count, "CommitmentEndDate": commitment_end}
    fields.update(
        {
            "AvailabilityZoneId": zone_id,
            "InstanceType": instance_type,
            "InstancePlatform": params["InstancePlatform"],
            "AvailabilityZone": zone,
            "Tenancy": params.get("Tenancy") or "default",
            "TotalInstanceCount": count,
            "EbsOptimized": bool(params.get("EbsOptimized", False)),
            "EphemeralStorage": bool(params.get("EphemeralStorage", False)),
            "StartDate": start,
            "EndDate": end,
            "EndDateType": end_type,
            "InstanceMatchCriteria": params.get("InstanceMatchCriteria") or "open",
            "Tags": check_tag_specifications(params, CR_TYPE),
        }
    )
    if params.get("DeliveryPreference"):
        fields["DeliveryPreference"] = params["DeliveryPreference"]
    return fields, state


@handles(SERVICE, "CreateCapacityReservation")
def create_capacity_reservation(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    token = params.get("ClientToken")

    def create() -> dict[str, Any]:
        now = ctx.now()
        fields, state = _create_fields(ctx, params, now)
        check_capacity(ctx.state, ctx.region, fields, fields["TotalInstanceCount"])
        resource = cr_record(ctx.account_id, ctx.region, fields, state, "ec2:CreateCapacityReservation", token, now)
        ctx.state.add(resource)
        return {"CapacityReservation": cr_view(resource, 0)}

    with ctx.state.lock:
        return ctx.state.idempotent(ctx.scope, token, params, create)


# --- DescribeCapacityReservations -------------------------------------------------------------------------
_CR_FILTERS = {
    "availability-zone": lambda c: c["AvailabilityZone"],
    "availability-zone-id": lambda c: c["AvailabilityZoneId"],
    "capacity-reservation-id": lambda c: c["CapacityReservationId"],
    "end-date": lambda c: c.get("EndDate") or "",
    "end-date-type": lambda c: c["EndDateType"],
    "instance-match-criteria": lambda c: c["InstanceMatchCriteria"],
    "instance-platform": lambda c: c["InstancePlatform"],
    "instance-type": lambda c: c["InstanceType"],
    "owner-id": lambda c: c["OwnerId"],
    "reservation-type": lambda c: c["ReservationType"],
    "start-date": lambda c: c["StartDate"],
    "state": lambda c: c["State"],
    "tenancy": lambda c: c["Tenancy"],
}


@handles(SERVICE, "DescribeCapacityReservations")
def describe_capacity_reservations(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    resources = ctx.state.find(SERVICE, CR_TYPE, ctx.account_id, ctx.region)
    ids = params.get("CapacityReservationIds") or []
    for cr_id in ids:
        check_cr_id(cr_id)
    if ids:
        known = {r.id for r in resources}
        missing = [i for i in ids if i not in known]
        if missing:
            raise AwsError(
                "InvalidCapacityReservationId.NotFound",
                f"The capacity reservation ID '{missing[0]}' does not exist",
            )
        resources = [r for r in resources if r.id in ids]
    items = apply_ec2_filters(views(ctx, resources), ec2_filters(params), _CR_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"CapacityReservations": page}
    if next_token:
        out["NextToken"] = next_token
    return out


# --- ModifyCapacityReservation ----------------------------------------------------------------------------
@handles(SERVICE, "ModifyCapacityReservation")
def modify_capacity_reservation(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    with ctx.state.lock:
        resource = get_cr(ctx, params["CapacityReservationId"])
        if resource.state != "active":
            raise AwsError(
                "IncorrectState",
                f"The capacity reservation {resource.id} is in the state '{resource.state}' and cannot be modified.",
            )
        data, now = resource.data, ctx.now()
        commitment: dict[str, Any] = data.get("CommitmentInfo") or {}
        committed = bool(commitment) and now < commitment["CommitmentEndDate"]
        changes: dict[str, Any] = {}
        if params.get("InstanceCount") is not None:
            count = int(params["InstanceCount"])
            if count < 1:
                raise AwsError("InvalidParameterValue", "InstanceCount must be greater than or equal to 1.")
            if committed and count < commitment["CommittedInstanceCount"]:
                raise AwsError(
                    "InvalidParameterValue",
                    "You can't decrease the instance count below the committed count during the commitment.",
                )
            if count > data["TotalInstanceCount"]:
                check_capacity(ctx.state, ctx.region, data, count, skip=resource.id)
            changes["TotalInstanceCount"] = count
        if params.get("EndDateType") is not None or params.get("EndDate") is not None:
            # An EndDate alone means a limited end.
            end_type = params.get("EndDateType") or ("limited" if params.get("EndDate") else data["EndDateType"])
            end = end_date(end_type, params.get("EndDate"), now)
            if committed and end is not None and end < commitment["CommitmentEndDate"]:
                raise AwsError("InvalidParameterValue", "The EndDate cannot be within the commitment duration.")
            changes["EndDateType"], changes["EndDate"] = end_type, end
        criteria = params.get("InstanceMatchCriteria")
        if criteria is not None and criteria != data["InstanceMatchCriteria"]:
            if usage(ctx.account_id, ctx.region, [resource])[resource.id]:
                raise AwsError(
                    "IncorrectState",
                    "The instance eligibility can only be changed when no instances run in the reservation.",
                )
            changes["InstanceMatchCriteria"] = criteria
        data.update(changes)
        ctx.state.watch(resource)
        return {"Return": True}


# --- CancelCapacityReservation ----------------------------------------------------------------------------
@handles(SERVICE, "CancelCapacityReservation")
def cancel_capacity_reservation(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    with ctx.state.lock:
        resource = get_cr(ctx, params["CapacityReservationId"])
        commitment = resource.data.get("CommitmentInfo")
        if resource.state == "scheduled" or (
            resource.state == "active" and commitment and ctx.now() < commitment["CommitmentEndDate"]
        ):
            raise AwsError(
                "IncorrectState",
                f"The capacity reservation {resource.id} cannot be cancelled during its commitment duration.",
            )
        if resource.state not in ("assessing", "active"):
            raise AwsError(
                "IncorrectState",
                f"The capacity reservation {resource.id} is in the state '{resource.state}' and cannot be cancelled.",
            )
        resource.state = "cancelled"
        # AWS shows the cancellation time as the end of a cancelled reservation.
        resource.data["EndDate"] = ctx.now()
        return {"Return": True}


# --- ModifyInstanceCapacityReservationAttributes ----------------------------------------------------------
@handles(SERVICE, "ModifyInstanceCapacityReservationAttributes")
def modify_instance_capacity_reservation_attributes(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    instance_id = params["InstanceId"]
    if not _INSTANCE_ID.match(instance_id):
        raise AwsError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
    spec = params.get("CapacityReservationSpecification") or {}
    preference = spec.get("CapacityReservationPreference")
    target = spec.get("CapacityReservationTarget") or {}
    if preference and target:
        raise AwsError(
            "InvalidParameterCombination",
            "CapacityReservationPreference and CapacityReservationTarget cannot be specified together.",
        )
    if not preference and not target:
        raise AwsError(
            "MissingParameter",
            "Either CapacityReservationPreference or CapacityReservationTarget is required.",
        )
    with ctx.state.lock:
        backend = moto_backend(ctx.account_id, ctx.region)
        instance = next((i for i in backend.all_instances() if i.id == instance_id), None) if backend else None
        if instance is None:
            raise AwsError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        new: dict[str, Any]
        if target.get("CapacityReservationId"):
            reservation = get_cr(ctx, target["CapacityReservationId"])
            if reservation.state not in LIVE_STATES:
                raise AwsError(
                    "InvalidCapacityReservationId.NotFound",
                    f"The capacity reservation ID '{reservation.id}' does not exist",
                )
            new = {"CapacityReservationTarget": {"CapacityReservationId": reservation.id}}
        elif target.get("CapacityReservationResourceGroupArn"):
            new = {
                "CapacityReservationTarget": {
                    "CapacityReservationResourceGroupArn": target["CapacityReservationResourceGroupArn"]
                }
            }
        elif target:
            raise AwsError("MissingParameter", "CapacityReservationTarget needs an ID or a resource group ARN.")
        else:
            new = {"CapacityReservationPreference": preference}
        if instance._state.name != "stopped":
            raise AwsError(
                "IncorrectInstanceState",
                f"The instance '{instance_id}' is not in the 'stopped' state (it is '{instance._state.name}').",
            )
        # moto's DescribeInstances serializer reads this attribute (CapacityReservationSpecification).
        instance.capacity_reservation_specification = new
        return {"Return": True}


# --- seed -------------------------------------------------------------------------------------------------
@seeder("ec2:capacity-reservation")
def seed_capacity_reservation(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:capacity-reservation", "account_id", "region", "instance_type", "availability_zone",
    "instance_count", "instance_platform"?, "instance_match_criteria"?, "tenancy"?, "ends_in_days"?,
    "start_days_ago"?, "tags"? {k: v}, "id"?}``"""
    region = entry["region"]
    now = state.clock.now()
    zone, zone_id = zone_of(region, entry["availability_zone"], None)
    start = now - timedelta(days=float(entry.get("start_days_ago", 0)))
    ends = entry.get("ends_in_days")
    fields = {
        "AvailabilityZoneId": zone_id,
        "InstanceType": entry["instance_type"],
        "InstancePlatform": entry.get("instance_platform", "Linux/UNIX"),
        "AvailabilityZone": zone,
        "Tenancy": entry.get("tenancy", "default"),
        "TotalInstanceCount": int(entry.get("instance_count", 1)),
        "EbsOptimized": False,
        "EphemeralStorage": False,
        "StartDate": start,
        "EndDate": now + timedelta(days=float(ends)) if ends is not None else None,
        "EndDateType": "limited" if ends is not None else "unlimited",
        "InstanceMatchCriteria": entry.get("instance_match_criteria", "open"),
        "Tags": [{"Key": k, "Value": str(v)} for k, v in (entry.get("tags") or {}).items()],
    }
    resource = cr_record(entry["account_id"], region, fields, "active", "seed", None, start, entry.get("id"))
    advance_cr(resource, now)
    state.add(resource)


# --- seeded instances (moto's) ----------------------------------------------------------------------------
SEED_IMAGE = "ami-760aaa0f"  # one of moto's default Amazon Linux images


@seeder("ec2:instance")
def seed_instances(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:instance", "account_id", "region", "instance_type", "availability_zone",
    "instance_state"?: "stopped" | "running" (default "stopped"), "instance_ids"?: ["i-<17 hex>", ...],
    "count"?: 1}``: instances in moto's backend, as RunInstances makes them (and StopInstances stops them), with
    the given ids when ``instance_ids`` is set, so that a plan file can name an instance the sandbox holds."""
    wanted_ids = list(entry.get("instance_ids") or [])
    count = int(entry.get("count", len(wanted_ids) or 1))
    if wanted_ids and len(wanted_ids) != count:
        raise ValueError("instance_ids must name exactly count instances")
    for instance_id in wanted_ids:
        if not _INSTANCE_ID.match(instance_id):
            raise ValueError(f"instance id {instance_id!r} is not i- followed by 8 or 17 hex digits")
    instance_state = entry.get("instance_state", "stopped")
    if instance_state not in ("stopped", "running"):
        raise ValueError("instance_state must be 'stopped' or 'running'")
    region = entry["region"]
    try:
        zone_of(region, entry["availability_zone"], None)
    except AwsError as exc:  # the control API answers a bad seed entry (ValueError) with a 400
        raise ValueError(exc.message) from exc
    backend = ec2_backends[entry["account_id"]][region]
    taken = [i.id for i in backend.all_instances() if i.id in wanted_ids]
    if taken:
        raise ValueError(f"instances {taken} already exist")
    reservation = backend.run_instances(
        SEED_IMAGE, count, None, [], instance_type=entry["instance_type"], is_instance_type_default=False,
        region_name=region, placement=entry["availability_zone"], security_group_ids=[], tags={},
    )
    for index, instance in enumerate(reservation.instances):
        if wanted_ids:
            instance.id = wanted_ids[index]
        if instance_state == "stopped":
            instance.stop()
