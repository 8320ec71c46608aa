"""EC2 Scheduled Instances: AWS no longer sells them, but customers who bought them can still launch them.

* ``DescribeScheduledInstanceAvailability`` answers an empty list, as AWS does today: no schedule is on
  sale, so no ``PurchaseToken`` is ever issued.
* ``PurchaseScheduledInstances`` is refused: ``DryRun`` first (``DryRunOperation``), then a token that is
  not even well-formed (``InvalidPurchaseToken.Malformed``), then ``UnsupportedOperation`` with the model's
  own words "You can no longer purchase Scheduled Instances." (an old token would at best be expired).
* ``DescribeScheduledInstances`` and ``RunScheduledInstances`` serve pre-existing scheduled instances made
  by the ``ec2:scheduled-instance`` seeder. Slots follow the recurrence on the sandbox clock; a run launches
  real instances in moto's EC2 backend (so moto's ``DescribeInstances`` shows them), which are terminated
  three minutes before the slot ends, as AWS does. They carry the call's ``ClientToken`` and the lifecycle
  ``scheduled``, and moto's ``DescribeInstances`` is taught AWS's ``client-token`` and ``instance-lifecycle``
  filters, so a caller can find the instances of a run whose answer it lost.

moto has no scheduled-instance calls at all. The small bridge to moto's instance backend used here
(:func:`launch_instances`, :func:`terminate_instances`, :func:`instance_states`) is shared with ``ec2_spot``.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import secrets
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from moto.core.exceptions import ServiceException

from sandbox.catalogue import Catalogue
from sandbox.errors import AwsError
from sandbox.registry import CallContext, handles, on_state_setup, seeder
from sandbox.services._common import apply_ec2_filters, dry_run, ec2_filters, paginate, public
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "ec2"
SCHEDULED_TYPE = "scheduled-instance"
RUN_TYPE = "scheduled-instance-run"
TERM_DAYS = 365
# AWS terminates a scheduled instance three minutes before the end of its slot.
TERMINATE_BEFORE_SLOT_END = timedelta(minutes=3)
NO_LONGER_SOLD = "You can no longer purchase Scheduled Instances."
HOURLY_PRICE = {"m5.large": 0.091, "m5.xlarge": 0.182, "c5.large": 0.081, "r5.large": 0.12, "t3.medium": 0.04}


# --- the bridge to moto's EC2 instance backend ------------------------------------------------------------
def _moto_ec2(account_id: str, region: str) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[account_id][region]


def launch_instances(
    account_id: str,
    region: str,
    count: int,
    image_id: str | None,
    instance_type: str | None = None,
    zone: str | None = None,
    subnet_id: str | None = None,
    key_name: str | None = None,
    security_group_ids: list[str] | None = None,
    launch_template: dict[str, Any] | None = None,
    lifecycle: str | None = None,
    instance_tags: dict[str, str] | None = None,
    client_token: str | None = None,
) -> tuple[str, list[str]]:
    """Run ``count`` instances in moto's backend (in-process). Returns (reservation id, instance ids)."""
    backend = _moto_ec2(account_id, region)
    kwargs: dict[str, Any] = {
        "client_token": client_token,
        "instance_type": instance_type or "m1.small",
        "is_instance_type_default": not instance_type,
        "region_name": region,
        "placement": zone,
        "subnet_id": subnet_id,
        "key_name": key_name,
        "security_group_ids": list(security_group_ids or []),
        "tags": {"instance": dict(instance_tags)} if instance_tags else {},
        "lifecycle": lifecycle,
    }
    if launch_template:
        kwargs["launch_template"] = launch_template
    try:
        reservation = backend.run_instances(image_id, count, None, [], **kwargs)
    except ServiceException as exc:
        raise AwsError(exc.code, exc.message) from exc
    return reservation.id, [i.id for i in reservation.instances]


def instance_states(account_id: str, region: str, instance_ids: list[str]) -> dict[str, str]:
    """The moto state name of each instance (``terminated`` for instances moto no longer knows)."""
    backend = _moto_ec2(account_id, region)
    wanted = set(instance_ids)
    states = {i: "terminated" for i in instance_ids}
    for reservation in backend.reservations.values():
        for instance in reservation.instances:
            if instance.id in wanted:
                states[instance.id] = instance.state
    return states


def terminate_instances(account_id: str, region: str, instance_ids: list[str]) -> None:
    alive = [i for i, s in instance_states(account_id, region, instance_ids).items() if s != "terminated"]
    if alive:
        _moto_ec2(account_id, region).terminate_instances(alive)


def check_launch_references(
    account_id: str, region: str, subnet_id: str | None, security_group_ids: list[str] | None
) -> None:
    """Fail at request time, as AWS does, on a subnet or security group that does not exist."""
    backend = _moto_ec2(account_id, region)
    try:
        if subnet_id:
            backend.get_subnet(subnet_id)
        for group_id in security_group_ids or []:
            if backend.get_security_group_from_id(group_id) is None:
                raise AwsError("InvalidGroup.NotFound", f"The security group '{group_id}' does not exist")
    except ServiceException as exc:
        raise AwsError(exc.code, exc.message) from exc


def _teach_moto_instance_filters() -> None:
    """AWS's DescribeInstances filters ``client-token`` and ``instance-lifecycle``; moto 5.2 raises
    NotImplementedError on both. Its filter table maps a filter name to an instance attribute it already keeps."""
    from moto.ec2 import utils as moto_ec2_utils

    moto_ec2_utils.filter_dict_attribute_mapping.setdefault("client-token", "client_token")
    moto_ec2_utils.filter_dict_attribute_mapping.setdefault("instance-lifecycle", "lifecycle")


_teach_moto_instance_filters()


# --- slots ------------------------------------------------------------------------------------------------
def _aws_weekday(day: date) -> int:
    """AWS numbers weekdays 1 (Sunday) to 7 (Saturday)."""
    return (day.weekday() + 1) % 7 + 1


def _months_between(a: date, b: date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


def _day_matches(day: date, term_start: date, recurrence: dict[str, Any]) -> bool:
    frequency = recurrence["Frequency"]
    interval = int(recurrence.get("Interval") or 1)
    days = [int(d) for d in recurrence.get("OccurrenceDaySet") or []]
    if frequency == "Daily":
        return (day - term_start).days % interval == 0
    if frequency == "Weekly":
        first_sunday = term_start - timedelta(days=_aws_weekday(term_start) - 1)
        week = (day - first_sunday).days // 7
        return week % interval == 0 and _aws_weekday(day) in days
    if frequency == "Monthly":
        if _months_between(term_start, day) % interval:
            return False
        next_month = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
        from_end = (next_month - day).days  # 1 on the month's last day
        if recurrence.get("OccurrenceUnit") == "DayOfWeek":
            # The first (or, relative to the end, the last) given weekday of the month.
            week_slot = from_end <= 7 if recurrence.get("OccurrenceRelativeToEnd") else day.day <= 7
            return week_slot and _aws_weekday(day) in days
        return (from_end if recurrence.get("OccurrenceRelativeToEnd") else day.day) in days
    raise ValueError(f"unknown recurrence frequency {frequency!r}")


def slot_starts(
    term_start: datetime, term_end: datetime, start_of_day: time, recurrence: dict[str, Any]
) -> list[datetime]:
    starts: list[datetime] = []
    day = term_start.date()
    while True:
        start = datetime.combine(day, start_of_day, UTC)
        if start >= term_end:
            return starts
        if start >= term_start and _day_matches(day, term_start.date(), recurrence):
            starts.append(start)
        day += timedelta(days=1)


def slot_view(
    data: dict[str, Any], now: datetime
) -> tuple[tuple[datetime, datetime] | None, datetime | None, datetime | None]:
    """(the open slot or None, the next slot start, the previous slot's end) at ``now``."""
    starts: list[datetime] = data["_Slots"]
    duration = timedelta(hours=data["SlotDurationInHours"])
    index = bisect.bisect_right(starts, now)  # starts[:index] began at or before now
    current = None
    previous_end = None
    if index:
        last = starts[index - 1]
        if now < last + duration:
            current = (last, last + duration)
            previous_end = starts[index - 2] + duration if index >= 2 else None
        else:
            previous_end = last + duration
    following = starts[index] if index < len(starts) else None
    return current, following, previous_end


# --- seeder and records -----------------------------------------------------------------------------------
def new_scheduled_instance_id() -> str:
    digits = secrets.token_hex(12)
    return f"sci-{digits[:4]}-{digits[4:8]}-{digits[8:12]}-{digits[12:16]}-{secrets.token_hex(6)}"


def _recurrence_view(recurrence: dict[str, Any]) -> dict[str, Any]:
    frequency = recurrence.get("Frequency")
    if frequency not in ("Daily", "Weekly", "Monthly"):
        raise ValueError(f"recurrence Frequency must be Daily, Weekly or Monthly, not {frequency!r}")
    view: dict[str, Any] = {
        "Frequency": frequency,
        "Interval": int(recurrence.get("Interval", 1)),
        "OccurrenceDaySet": [int(d) for d in recurrence.get("OccurrenceDays", [])],
        "OccurrenceRelativeToEnd": bool(recurrence.get("OccurrenceRelativeToEnd", False)),
    }
    if frequency == "Monthly":
        view["OccurrenceUnit"] = recurrence.get("OccurrenceUnit", "DayOfMonth")
    elif frequency == "Weekly":
        view["OccurrenceUnit"] = "DayOfWeek"
    if frequency != "Daily" and not view["OccurrenceDaySet"]:
        raise ValueError(f"a {frequency} recurrence needs OccurrenceDays")
    return view


@seeder("ec2:scheduled-instance")
def seed_scheduled_instance(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "ec2:scheduled-instance", "account_id", "region", "instance_type", "availability_zone",
    "platform"?: "Linux/UNIX", "recurrence": {"Frequency": "Daily"|"Weekly"|"Monthly", "Interval"?,
    "OccurrenceDays"?, "OccurrenceUnit"?, "OccurrenceRelativeToEnd"?}, "slot_start_utc"?: "HH:MM",
    "slot_duration_hours", "term_days_left", "instance_count"?: 1, "hourly_price"?, "id"?: "sci-..."}``"""
    now = state.clock.now()
    days_left = float(entry["term_days_left"])
    if not 0 < days_left <= TERM_DAYS:
        raise ValueError(f"term_days_left must be in (0, {TERM_DAYS}]")
    term_start = datetime.combine((now - timedelta(days=TERM_DAYS - days_left)).date(), time(0), UTC)
    term_end = term_start + timedelta(days=TERM_DAYS)
    hour, minute = (int(p) for p in str(entry.get("slot_start_utc", "00:00")).split(":"))
    recurrence = _recurrence_view(entry["recurrence"])
    duration = int(entry["slot_duration_hours"])
    if not 1 <= duration <= 24:
        raise ValueError("slot_duration_hours must be between 1 and 24")
    slots = slot_starts(term_start, term_end, time(hour, minute), recurrence)
    instance_type = entry["instance_type"]
    price = entry.get("hourly_price", HOURLY_PRICE.get(instance_type, 0.1))
    sci_id = entry.get("id") or new_scheduled_instance_id()
    data = {
        "ScheduledInstanceId": sci_id,
        "AvailabilityZone": entry["availability_zone"],
        "CreateDate": term_start,
        "HourlyPrice": f"{float(price):.3f}",
        "InstanceCount": int(entry.get("instance_count", 1)),
        "InstanceType": instance_type,
        "NetworkPlatform": entry.get("network_platform", "EC2-VPC"),
        "Platform": entry.get("platform", "Linux/UNIX"),
        "Recurrence": recurrence,
        "SlotDurationInHours": duration,
        "TermStartDate": term_start,
        "TermEndDate": term_end,
        "TotalScheduledInstanceHours": len(slots) * duration,
        "_Slots": slots,
    }
    resource = Resource(
        entry["account_id"],
        entry["region"],
        SERVICE,
        SCHEDULED_TYPE,
        sci_id,
        "active",
        CreatedBy("seed", None, now),
        data,
    )
    advance_scheduled_instance(resource, now)
    state.add(resource)


def advance_scheduled_instance(resource: Resource, now: datetime) -> bool:
    if resource.state == "active" and now >= resource.data["TermEndDate"]:
        resource.state = "expired"
    return resource.state == "active"


def advance_run(resource: Resource, now: datetime) -> bool:
    """Instances of a scheduled run are terminated three minutes before their slot ends."""
    if resource.state == "running" and now >= resource.data["_SlotEnd"] - TERMINATE_BEFORE_SLOT_END:
        terminate_instances(resource.account_id, resource.region, resource.data["InstanceIds"])
        resource.state = "terminated"
    return resource.state == "running"


@on_state_setup
def _setup(state: SandboxState) -> None:
    state.register_advancer(SERVICE, SCHEDULED_TYPE, advance_scheduled_instance)
    state.register_advancer(SERVICE, RUN_TYPE, advance_run)


def scheduled_view(resource: Resource, now: datetime) -> dict[str, Any]:
    view = public(resource.data)
    _, following, previous_end = slot_view(resource.data, now)
    if following is not None:
        view["NextSlotStartTime"] = following
    if previous_end is not None:
        view["PreviousSlotEndTime"] = previous_end
    return view


# --- handlers ---------------------------------------------------------------------------------------------
_RECURRENCE_FREQUENCIES = ("Daily", "Weekly", "Monthly")
_SCHEDULED_FILTERS = {
    "availability-zone": lambda s: s["AvailabilityZone"],
    "instance-type": lambda s: s["InstanceType"],
    "network-platform": lambda s: s["NetworkPlatform"],
    "platform": lambda s: s["Platform"],
}


@handles(SERVICE, "DescribeScheduledInstanceAvailability")
def describe_availability(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    """AWS no longer sells Scheduled Instances: valid searches find nothing, so no PurchaseToken is issued."""
    dry_run(params)
    window = params["FirstSlotStartTimeRange"]
    earliest, latest = as_utc(window["EarliestTime"]), as_utc(window["LatestTime"])
    if latest < earliest:
        raise AwsError("InvalidParameterValue", "FirstSlotStartTimeRange.LatestTime is before EarliestTime.")
    if earliest > ctx.now() + timedelta(days=92):
        raise AwsError("InvalidParameterValue", "You can search for a schedule at most 3 months in advance.")
    frequency = params["Recurrence"].get("Frequency")
    if frequency not in _RECURRENCE_FREQUENCIES:
        raise AwsError(
            "InvalidParameterValue",
            f"Recurrence.Frequency must be one of {', '.join(_RECURRENCE_FREQUENCIES)}.",
        )
    apply_ec2_filters([], ec2_filters(params), _SCHEDULED_FILTERS)  # unknown filter names are still an error
    return {"ScheduledInstanceAvailabilitySet": []}


def as_utc(moment: datetime) -> datetime:
    """Parsed timestamps may be naive; AWS timestamps are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _looks_like_token(token: str) -> bool:
    """Purchase tokens were opaque base64 strings; anything else is malformed."""
    try:
        return len(token) >= 16 and bool(base64.b64decode(token + "=" * (-len(token) % 4), validate=True))
    except (binascii.Error, ValueError):
        return False


@handles(SERVICE, "PurchaseScheduledInstances")
def purchase_scheduled_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    requests = params.get("PurchaseRequests") or []
    if not requests:
        raise AwsError("MissingParameter", "The request must contain the parameter PurchaseRequests.")
    for request in requests:
        if int(request.get("InstanceCount", 0)) < 1:
            raise AwsError("InvalidParameterValue", "PurchaseRequest.InstanceCount must be at least 1.")
        if not _looks_like_token(str(request.get("PurchaseToken", ""))):
            raise AwsError("InvalidPurchaseToken.Malformed", "The specified purchase token is not valid.")
    # No accepted call exists, so ClientToken idempotency never has a stored result to replay.
    raise AwsError("UnsupportedOperation", NO_LONGER_SOLD)


@handles(SERVICE, "DescribeScheduledInstances")
def describe_scheduled_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)
    now = ctx.now()
    resources = ctx.state.find(SERVICE, SCHEDULED_TYPE, ctx.account_id, ctx.region)
    ids = params.get("ScheduledInstanceIds")
    if ids:
        known = {r.id for r in resources}
        missing = [i for i in ids if i not in known]
        if missing:
            raise AwsError("InvalidScheduledInstance", f"The scheduled instance '{missing[0]}' does not exist.")
        resources = [r for r in resources if r.id in ids]
    window = params.get("SlotStartTimeRange")
    if window:
        earliest = as_utc(window.get("EarliestTime") or datetime.min.replace(tzinfo=UTC))
        latest = as_utc(window.get("LatestTime") or datetime.max.replace(tzinfo=UTC))
        resources = [r for r in resources if any(earliest <= s <= latest for s in r.data["_Slots"])]
    items = apply_ec2_filters([scheduled_view(r, now) for r in resources], ec2_filters(params), _SCHEDULED_FILTERS)
    page, next_token = paginate(items, params)
    out: dict[str, Any] = {"ScheduledInstanceSet": page}
    if next_token:
        out["NextToken"] = next_token
    return out


@handles(SERVICE, "RunScheduledInstances")
def run_scheduled_instances(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    dry_run(params)

    def launch() -> dict[str, Any]:
        return _run(ctx, params)

    return ctx.state.idempotent(ctx.scope, params.get("ClientToken"), params, launch, ("ClientToken", "DryRun"))


def _run(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    sci_id = params["ScheduledInstanceId"]
    resource = ctx.state.get(SERVICE, SCHEDULED_TYPE, sci_id)
    if resource is None or (resource.account_id, resource.region) != (ctx.account_id, ctx.region):
        raise AwsError("InvalidScheduledInstance", f"The scheduled instance '{sci_id}' does not exist.")
    data = resource.data
    count = int(params.get("InstanceCount", 1))
    if count < 1:
        raise AwsError("InvalidParameterValue", "InstanceCount must be at least 1.")
    now = ctx.now()
    current, following, _ = slot_view(data, now)
    if current is None:
        when = f"; the next slot starts at {following.isoformat()}" if following else ""
        raise AwsError("ScheduledInstanceSlotNotOpen", f"The scheduled instance '{sci_id}' has no open slot{when}.")
    spec = params["LaunchSpecification"]
    _check_spec_matches(data, spec)
    running = _running_in_slot(ctx, sci_id, current[0])
    if running + count > data["InstanceCount"]:
        raise AwsError(
            "MaxScheduledInstanceCapacityExceeded",
            f"You purchased {data['InstanceCount']} instance(s) for this schedule and {running} are running.",
        )
    interfaces = spec.get("NetworkInterfaces") or []
    subnet_id = spec.get("SubnetId") or next((n.get("SubnetId") for n in interfaces if n.get("SubnetId")), None)
    groups = spec.get("SecurityGroupIds") or [g for n in interfaces for g in n.get("Groups") or []]
    check_launch_references(ctx.account_id, ctx.region, subnet_id, groups)
    reservation_id, instance_ids = launch_instances(
        ctx.account_id,
        ctx.region,
        count,
        spec["ImageId"],
        instance_type=data["InstanceType"],
        zone=None if subnet_id else data["AvailabilityZone"],
        subnet_id=subnet_id,
        key_name=spec.get("KeyName"),
        security_group_ids=groups,
        lifecycle="scheduled",
        client_token=params.get("ClientToken"),
    )
    run = Resource(
        ctx.account_id,
        ctx.region,
        SERVICE,
        RUN_TYPE,
        reservation_id,
        "running",
        CreatedBy("ec2:RunScheduledInstances", params.get("ClientToken"), now),
        {
            "ScheduledInstanceId": sci_id,
            "InstanceIds": instance_ids,
            "_SlotStart": current[0],
            "_SlotEnd": current[1],
        },
    )
    ctx.state.add(run)
    return {"InstanceIdSet": instance_ids}


def _check_spec_matches(data: dict[str, Any], spec: dict[str, Any]) -> None:
    if not spec.get("ImageId"):
        raise AwsError("MissingParameter", "The request must contain the parameter LaunchSpecification.ImageId.")
    if spec.get("InstanceType") and spec["InstanceType"] != data["InstanceType"]:
        raise AwsError(
            "ScheduledInstanceParameterMismatch",
            f"The instance type {spec['InstanceType']} does not match the scheduled {data['InstanceType']}.",
        )
    zone = (spec.get("Placement") or {}).get("AvailabilityZone")
    if zone and zone != data["AvailabilityZone"]:
        raise AwsError(
            "ScheduledInstanceParameterMismatch",
            f"The Availability Zone {zone} does not match the scheduled {data['AvailabilityZone']}.",
        )


def _running_in_slot(ctx: CallContext, sci_id: str, slot_start: datetime) -> int:
    runs = ctx.state.find(
        SERVICE,
        RUN_TYPE,
        ctx.account_id,
        ctx.region,
        lambda r: r.data["ScheduledInstanceId"] == sci_id and r.data["_SlotStart"] == slot_start,
    )
    ids = [i for r in runs for i in r.data["InstanceIds"]]
    states = instance_states(ctx.account_id, ctx.region, ids)
    return sum(1 for s in states.values() if s not in ("terminated", "shutting-down"))
