"""Family: EC2 spot. Actions: ec2:RequestSpotInstances, ec2:RequestSpotFleet, ec2:CancelSpotInstanceRequests,
ec2:CancelSpotFleetRequests (docs/actions/ec2-spot.md).

Requests carry a ClientToken derived from the plan id and recorded in the intent before the call, so a re-send
after an unknown outcome gets AWS's first answer instead of a second request. The token is the second line of
defence; the first is reconciliation (docs/exactly-once.md). A fleet's config echoes its ClientToken, so a fleet
is found by it. A spot instance request shows no token (and DescribeSpotInstanceRequests has no filter for one):
it is found by its plan tag where the customer granted ec2:CreateTags (which tag-on-create needs), and otherwise
by what the intent fixed: launch specification, bid, count, and a ValidUntil computed from AWS's own time when
the intent was made, created no earlier than that time, and claimed by no other plan.

Both requests are asynchronous: AWS evaluates spot instance requests (status ``pending-evaluation``) and
validates a fleet (state ``submitted``) after it accepted them, and either may end ``failed``. A plan follows
them (``Submitted.follow``) until AWS has decided, and fails with AWS's reason if AWS failed them.

Money: a spot request pays nothing upfront, and its max price is a bid, not a price: AWS charges the spot price
in effect, never more than the bid. What a request can cost is bounded by bid × instances per hour, over the
hours it is valid; the plan's ceilings and the account's limit are checked against that bound. A current spot
price above the bid is no refusal: the request waits unfulfilled until the price falls (``below_market``).

Cancels are declarative: the target is a state (a request cancelled, a fleet cancelled with or without its
instances), cancelling what is already there changes nothing, and reconciliation checks the state, not a trace
of the call. They have no token; each plan holds a signature over the requests it names, so two plans never
interleave their cancels of the same requests.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, model_validator

from tasks.families import EC2_SPOT
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Nouns,
    Pending,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.handle import AWS_CLOCK_TOLERANCE, WORKER_CLOCK_TOLERANCE, PlanHandle
from worker.plans import STRICT, Rfc3339Time, UsdAmount

PLAN_TAG = "commitd:plan-id"
# The price read looks back this far, so that a worker clock ahead of AWS's still sees the price in effect.
PRICE_LOOKBACK = timedelta(hours=1)
MAX_VALIDITY_HOURS = 8760
# EC2 client tokens are at most 64 ASCII characters; plan ids may have 128.
TOKEN_PREFIX = "commitd-"
TOKEN_HASH_CHARS = 48

# Spot instance request states in which it can launch nothing more: the target of a cancel.
SIR_ENDED = frozenset({"cancelled", "closed", "completed", "failed"})
FLEET_NOT_CANCELLED = frozenset({"submitted", "active", "modifying"})

_IMAGE = r"^ami-[0-9a-f]{8,17}$"
_INSTANCE_TYPE = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
_ZONE = r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$"
_SUBNET = r"^subnet-[0-9a-f]{8,17}$"
_GROUP = r"^sg-[0-9a-f]{8,17}$"
_SIR_ID = r"^sir-[0-9a-z]{8,17}$"
_SFR_ID = r"^sfr-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_ROLE_ARN = r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]+$"

ProductDescription = Literal[
    "Linux/UNIX",
    "Linux/UNIX (Amazon VPC)",
    "SUSE Linux",
    "SUSE Linux (Amazon VPC)",
    "Red Hat Enterprise Linux",
    "Red Hat Enterprise Linux (Amazon VPC)",
    "Windows",
    "Windows (Amazon VPC)",
]
AllocationStrategy = Literal[
    "lowestPrice", "diversified", "capacityOptimized", "capacityOptimizedPrioritized", "priceCapacityOptimized"
]


def client_token(action: str, plan_id: str) -> str:
    """The plan's ClientToken: deterministic, ASCII, within EC2's 64 characters whatever the plan id."""
    digest = hashlib.sha256(f"{action}\n{plan_id}".encode()).hexdigest()
    return TOKEN_PREFIX + digest[:TOKEN_HASH_CHARS]


def _ids_signature(kind: str, aws: PlanHandle, ids: list[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]
    return f"{kind}:{aws.account.account_id}:{aws.region}:{digest}"


def _aws_time(aws: PlanHandle) -> tuple[datetime, timedelta]:
    """AWS's time now, in whole seconds (as AWS keeps ValidUntil), and how much earlier AWS may stamp a time."""
    now = aws.aws_now()
    if now is not None:
        return now.replace(microsecond=0), AWS_CLOCK_TOLERANCE
    return aws.now().replace(microsecond=0), WORKER_CLOCK_TOLERANCE


def _same_time(seen: datetime | None, expected: datetime | None) -> bool:
    if seen is None or expected is None:
        return seen is expected
    return abs((seen - expected).total_seconds()) < 1


def _unique(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("ids must not repeat")
    return ids


# --- params shared by both requests ----------------------------------------------------------------------------
class SpotLaunchSpecification(BaseModel):
    """How each instance is launched: the part of AWS's launch specification that commitd passes on."""

    model_config = STRICT

    image_id: str = Field(pattern=_IMAGE)
    instance_type: str = Field(pattern=_INSTANCE_TYPE, examples=["m5.large"])
    availability_zone: str | None = Field(None, pattern=_ZONE)
    subnet_id: str | None = Field(None, pattern=_SUBNET)
    security_group_ids: list[Annotated[str, Field(pattern=_GROUP)]] = Field(default_factory=list, max_length=16)
    key_name: str | None = Field(None, min_length=1, max_length=255)


def _check_ceilings(hourly: Decimal, total: Decimal, max_hourly: Decimal, max_total: Decimal, what: str) -> None:
    """The request's bound (bid × instances per hour, over its validity) against the plan's own ceilings."""
    figures = {"hourly_bound_usd": str(hourly), "max_hourly_usd": str(max_hourly),
               "total_bound_usd": str(total), "max_total_usd": str(max_total)}
    if hourly > max_hourly:
        raise PlanFailed("PriceAboveCeiling", f"{what} may cost up to {hourly} USD/hour, above max_hourly_usd "
                         f"{max_hourly}; nothing was requested", figures)
    if total > max_total:
        raise PlanFailed("PriceAboveCeiling", f"{what} may cost up to {total} USD over its validity, above "
                         f"max_total_usd {max_total}; nothing was requested", figures)


def current_spot_prices(
    aws: PlanHandle, instance_types: list[str], product_description: str
) -> dict[str, dict[str, Decimal]]:
    """instance type → availability zone → the spot price in effect now (the latest entry of the history)."""
    history = aws.paginate(
        "describe_spot_price_history", "SpotPriceHistory", InstanceTypes=sorted(set(instance_types)),
        ProductDescriptions=[product_description], StartTime=aws.now() - PRICE_LOOKBACK,
    )
    latest: dict[tuple[str, str], tuple[datetime, Decimal]] = {}
    for entry in history:
        key = (entry["InstanceType"], entry["AvailabilityZone"])
        if key not in latest or entry["Timestamp"] > latest[key][0]:
            latest[key] = (entry["Timestamp"], Decimal(entry["SpotPrice"]))
    prices: dict[str, dict[str, Decimal]] = {}
    for (instance_type, zone), (_, price) in latest.items():
        prices.setdefault(instance_type, {})[zone] = price
    return prices


def _price_for(prices: dict[str, dict[str, Decimal]], spec: SpotLaunchSpecification) -> Decimal | None:
    """The current price a launch specification can get: its zone's, else the lowest of the region's zones."""
    zones = prices.get(spec.instance_type, {})
    if spec.availability_zone is not None:
        return zones.get(spec.availability_zone)
    return min(zones.values()) if zones else None


def _current_price(
    aws: PlanHandle, specs: list[SpotLaunchSpecification], product_description: str
) -> Decimal:
    """The lowest current spot price among the launch specifications; PlanFailed when one has none."""
    prices = current_spot_prices(aws, [s.instance_type for s in specs], product_description)
    found = {f"{s.instance_type}@{s.availability_zone or aws.region}": _price_for(prices, s) for s in specs}
    missing = sorted(k for k, v in found.items() if v is None)
    if missing:
        raise PlanFailed("NoSpotPrice", f"no current spot price ({product_description}) for {missing}: the "
                         "instance type is not offered as spot there; nothing was requested", {"missing": missing})
    return min(v for v in found.values() if v is not None)


def _validity(aws: PlanHandle, valid_from: datetime | None, hours: int) -> tuple[datetime | None, datetime]:
    """(ValidFrom to send, ValidUntil): the validity starts at valid_from if that is still ahead, else now."""
    now, _ = _aws_time(aws)
    start = valid_from.replace(microsecond=0) if valid_from is not None and valid_from > now else None
    return start, (start or now) + timedelta(hours=hours)


def _positive_bid(bid: Decimal) -> None:
    if bid <= 0:
        raise ValueError("max_price_usd_per_hour must be above 0")


# --- ec2:RequestSpotInstances ----------------------------------------------------------------------------------
class RequestSpotInstancesParams(BaseModel):
    """Parameters of ec2:RequestSpotInstances (docs/actions/ec2-spot.md)."""

    model_config = STRICT

    instance_count: int = Field(ge=1, le=1000)
    type: Literal["one-time", "persistent"] = "one-time"
    launch_specification: SpotLaunchSpecification
    product_description: ProductDescription = Field("Linux/UNIX", description="for the current spot price")
    max_price_usd_per_hour: UsdAmount = Field(description="the bid (SpotPrice): the most paid per instance-hour")
    validity_hours: int = Field(ge=1, le=MAX_VALIDITY_HOURS, description="ValidUntil = start + this")
    valid_from: Rfc3339Time | None = None
    max_hourly_usd: UsdAmount = Field(description="ceiling on bid × instance_count")
    max_total_usd: UsdAmount = Field(description="ceiling on bid × instance_count × validity_hours")

    @model_validator(mode="after")
    def _bid(self) -> RequestSpotInstancesParams:
        _positive_bid(self.max_price_usd_per_hour)
        return self

    @property
    def hourly_bound_usd(self) -> Decimal:
        return self.max_price_usd_per_hour * self.instance_count


class SpotInstancesIntent(Intent):
    instance_count: int
    request_type: str
    launch_specification: SpotLaunchSpecification
    max_price_usd_per_hour: Decimal
    valid_from: datetime | None
    valid_until: datetime
    hourly_bound_usd: Decimal
    current_spot_price_usd_per_hour: Decimal
    below_market: bool
    tagged: bool  # the requests carry the plan tag (tag-on-create, where ec2:CreateTags was granted)
    created_after: datetime  # AWS's time when the intent was made, less its tolerance


@register
class RequestSpotInstances(Action[RequestSpotInstancesParams, SpotInstancesIntent]):
    action: ClassVar[str] = "ec2:RequestSpotInstances"
    family = EC2_SPOT
    service: ClassVar[str] = "ec2"
    params_model = RequestSpotInstancesParams
    intent_model = SpotInstancesIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="spot instance requests", done="requested", claim_kind="ec2-spot-request")
    permissions = frozenset({
        "ec2:RequestSpotInstances",
        "ec2:DescribeSpotPriceHistory",
        "ec2:DescribeSpotInstanceRequests",
    })
    # Tag-on-create (TagSpecifications) needs ec2:CreateTags in the session; without it the requests go untagged.
    optional_permissions = frozenset({"ec2:CreateTags"})

    def max_commitment_usd(self, params: RequestSpotInstancesParams) -> Decimal:
        return params.hourly_bound_usd * params.validity_hours

    def prepare(self, aws: PlanHandle, params: RequestSpotInstancesParams) -> SpotInstancesIntent:
        p = params
        current = _current_price(aws, [p.launch_specification], p.product_description)
        hourly = p.hourly_bound_usd
        total = hourly * p.validity_hours
        _check_ceilings(hourly, total, p.max_hourly_usd, p.max_total_usd,
                        f"a bid of {p.max_price_usd_per_hour} USD/hour × {p.instance_count} instances")
        now, tolerance = _aws_time(aws)
        valid_from, valid_until = _validity(aws, p.valid_from, p.validity_hours)
        return SpotInstancesIntent(
            instance_count=p.instance_count,
            request_type=p.type,
            launch_specification=p.launch_specification,
            max_price_usd_per_hour=p.max_price_usd_per_hour,
            valid_from=valid_from,
            valid_until=valid_until,
            hourly_bound_usd=hourly,
            current_spot_price_usd_per_hour=current,
            below_market=current > p.max_price_usd_per_hour,
            tagged=aws.account.granted("ec2:CreateTags"),
            created_after=now - tolerance,
            commitment_usd=total,
            idempotency_value=client_token(self.action, aws.plan_id),
        )

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, plan_id: str, intent: SpotInstancesIntent) -> dict[str, Any]:
        spec = intent.launch_specification
        launch: dict[str, Any] = {"ImageId": spec.image_id, "InstanceType": spec.instance_type}
        if spec.availability_zone:
            launch["Placement"] = {"AvailabilityZone": spec.availability_zone}
        if spec.subnet_id:
            launch["SubnetId"] = spec.subnet_id
        if spec.security_group_ids:
            launch["SecurityGroupIds"] = list(spec.security_group_ids)
        if spec.key_name:
            launch["KeyName"] = spec.key_name
        # Everything comes from the intent: a re-send with the token must carry the very same parameters.
        request: dict[str, Any] = {
            "ClientToken": intent.idempotency_value,
            "InstanceCount": intent.instance_count,
            "Type": intent.request_type,
            "SpotPrice": str(intent.max_price_usd_per_hour),
            "LaunchSpecification": launch,
            "ValidUntil": intent.valid_until,
        }
        if intent.valid_from is not None:
            request["ValidFrom"] = intent.valid_from
        if intent.tagged:
            request["TagSpecifications"] = [{"ResourceType": "spot-instances-request", "Tags": [
                {"Key": PLAN_TAG, "Value": plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}]}]
        return request

    def submit(self, aws: PlanHandle, params: RequestSpotInstancesParams, intent: SpotInstancesIntent) -> Submitted:
        response = aws.send("request_spot_instances", **self._request(aws.plan_id, intent))
        requests = response["SpotInstanceRequests"]
        outcome = self._evaluated(intent, requests, "response")
        if isinstance(outcome, Found):
            return Submitted(outcome.result, outcome.resource_ids)
        # AWS has not evaluated them yet (or failed them): reconcile follows them by id to AWS's decision.
        return Submitted(self._result(intent, requests, "response"),
                         tuple(r["SpotInstanceRequestId"] for r in requests),
                         follow="AWS is evaluating the spot instance requests")

    def dry_run(
        self, aws: PlanHandle, params: RequestSpotInstancesParams, intent: SpotInstancesIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("request_spot_instances", **self._request(aws.plan_id, intent))
        would = {"instance_count": intent.instance_count, "instance_type": intent.launch_specification.instance_type,
                 "max_price_usd_per_hour": str(intent.max_price_usd_per_hour),
                 "current_spot_price_usd_per_hour": str(intent.current_spot_price_usd_per_hour),
                 "below_market": intent.below_market, "valid_until": intent.valid_until.isoformat(),
                 "commitment_usd": str(intent.commitment_usd)}
        return {"would_request": would, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: SpotInstancesIntent, requests: list[dict[str, Any]], found_by: str) -> dict[str, Any]:
        return {
            "spot_instance_request_ids": [r["SpotInstanceRequestId"] for r in requests],
            "states": {r["SpotInstanceRequestId"]: r["State"] for r in requests},
            "status_codes": {r["SpotInstanceRequestId"]: (r.get("Status") or {}).get("Code") for r in requests},
            "instance_ids": [r["InstanceId"] for r in requests if r.get("InstanceId")],
            "instance_count": intent.instance_count,
            "max_price_usd_per_hour": str(intent.max_price_usd_per_hour),
            "current_spot_price_usd_per_hour": str(intent.current_spot_price_usd_per_hour),
            "below_market": intent.below_market,
            "valid_until": intent.valid_until.isoformat(),
            "hourly_bound_usd": str(intent.hourly_bound_usd),
            "found_by": found_by,
        }

    def _evaluated(self, intent: SpotInstancesIntent, requests: list[dict[str, Any]], found_by: str) -> Reconciled:
        """The plan's requests, once AWS has evaluated them: Pending before, Failed if AWS failed every one."""
        ids = tuple(r["SpotInstanceRequestId"] for r in requests)
        waiting = [i for i, r in zip(ids, requests, strict=True)
                   if r["State"] == "open" and (r.get("Status") or {}).get("Code") == "pending-evaluation"]
        if waiting:
            return Pending(f"{len(waiting)} spot instance requests pending evaluation", {"waiting": waiting})
        if all(r["State"] == "failed" for r in requests):
            fault = requests[0].get("Fault") or {}
            status = requests[0].get("Status") or {}
            return Failed(str(fault.get("Code") or status.get("Code") or "failed"),
                          str(fault.get("Message") or status.get("Message") or "AWS failed the spot requests"),
                          {"spot_instance_request_ids": list(ids)})
        return Found(self._result(intent, requests, found_by), ids)

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: RequestSpotInstancesParams, intent: SpotInstancesIntent
    ) -> Reconciled:
        accepted = (aws.accepted or {}).get("spot_instance_request_ids")
        if accepted:  # AWS answered with the ids: follow them to AWS's decision
            requests = aws.paginate("describe_spot_instance_requests", "SpotInstanceRequests",
                                    SpotInstanceRequestIds=list(accepted))
            return self._evaluated(intent, requests, "response")
        if intent.tagged:
            found = aws.paginate("describe_spot_instance_requests", "SpotInstanceRequests",
                                 Filters=[{"Name": f"tag:{PLAN_TAG}", "Values": [aws.plan_id]}])
            found_by = "tag"
        else:
            candidates = self._matching(aws, intent)
            elsewhere = aws.claimed_elsewhere([c["SpotInstanceRequestId"] for c in candidates])
            found = [c for c in candidates if c["SpotInstanceRequestId"] not in elsewhere]
            found_by = "attributes"
        evidence = {"matched": [r["SpotInstanceRequestId"] for r in found], "found_by": found_by}
        if not found:
            return Absent(evidence)
        if len(found) != intent.instance_count:  # one call makes exactly instance_count requests
            return Ambiguous(tuple(evidence["matched"]), evidence)
        return self._evaluated(intent, found, found_by)

    def _matching(self, aws: PlanHandle, intent: SpotInstancesIntent) -> list[dict[str, Any]]:
        """Requests with the intent's launch specification, type, bid and validity, made since the intent."""
        spec = intent.launch_specification
        requests = aws.paginate("describe_spot_instance_requests", "SpotInstanceRequests", Filters=[
            {"Name": "launch.image-id", "Values": [spec.image_id]},
            {"Name": "launch.instance-type", "Values": [spec.instance_type]},
            {"Name": "type", "Values": [intent.request_type]},
        ])
        return [
            r for r in requests
            if _same_time(r.get("ValidUntil"), intent.valid_until)
            and _same_time(r.get("ValidFrom"), intent.valid_from)
            and r["CreateTime"] >= intent.created_after
            and Decimal(str(r.get("SpotPrice", "0"))) == intent.max_price_usd_per_hour
        ]


# --- ec2:RequestSpotFleet --------------------------------------------------------------------------------------
class RequestSpotFleetParams(BaseModel):
    """Parameters of ec2:RequestSpotFleet (docs/actions/ec2-spot.md). Every instance is one unit of capacity."""

    model_config = STRICT

    iam_fleet_role: str = Field(pattern=_ROLE_ARN, max_length=2048, description="EC2 uses it (iam:PassRole)")
    target_capacity: int = Field(ge=1, le=10_000)
    on_demand_target_capacity: int = Field(0, ge=0, le=10_000)
    launch_specifications: list[SpotLaunchSpecification] = Field(min_length=1, max_length=50)
    type: Literal["request", "maintain"] = "maintain"
    allocation_strategy: AllocationStrategy | None = None
    product_description: ProductDescription = Field("Linux/UNIX", description="for the current spot price")
    max_price_usd_per_hour: UsdAmount = Field(description="the bid (SpotPrice) per spot instance-hour")
    spot_max_total_price_usd_per_hour: UsdAmount | None = Field(None, description="SpotMaxTotalPrice")
    on_demand_max_total_price_usd_per_hour: UsdAmount | None = Field(None, description="OnDemandMaxTotalPrice")
    validity_hours: int = Field(ge=1, le=MAX_VALIDITY_HOURS, description="ValidUntil = start + this")
    valid_from: Rfc3339Time | None = None
    max_hourly_usd: UsdAmount = Field(description="ceiling on the fleet's hourly bound")
    max_total_usd: UsdAmount = Field(description="ceiling on the hourly bound × validity_hours")

    @model_validator(mode="after")
    def _rules(self) -> RequestSpotFleetParams:
        _positive_bid(self.max_price_usd_per_hour)
        if self.on_demand_target_capacity > self.target_capacity:
            raise ValueError("on_demand_target_capacity cannot exceed target_capacity")
        if self.on_demand_target_capacity > 0 and (
            self.spot_max_total_price_usd_per_hour is None or self.on_demand_max_total_price_usd_per_hour is None
        ):
            raise ValueError("a fleet with On-Demand capacity needs spot_max_total_price_usd_per_hour and "
                             "on_demand_max_total_price_usd_per_hour: the On-Demand part has no bid to bound it")
        if self.on_demand_target_capacity == 0 and self.on_demand_max_total_price_usd_per_hour is not None:
            raise ValueError("on_demand_max_total_price_usd_per_hour is only for on_demand_target_capacity > 0")
        return self

    @property
    def hourly_bound_usd(self) -> Decimal:
        """The most the fleet can cost per hour: its spot part at the bid (or SpotMaxTotalPrice, if lower), plus
        its On-Demand part at OnDemandMaxTotalPrice."""
        spot = self.max_price_usd_per_hour * (self.target_capacity - self.on_demand_target_capacity)
        if self.spot_max_total_price_usd_per_hour is not None:
            spot = min(spot, self.spot_max_total_price_usd_per_hour)
        return spot + (self.on_demand_max_total_price_usd_per_hour or Decimal(0))


class SpotFleetIntent(Intent):
    iam_fleet_role: str
    target_capacity: int
    on_demand_target_capacity: int
    launch_specifications: list[SpotLaunchSpecification]
    fleet_type: str
    allocation_strategy: str | None
    max_price_usd_per_hour: Decimal
    spot_max_total_price_usd_per_hour: Decimal | None
    on_demand_max_total_price_usd_per_hour: Decimal | None
    valid_from: datetime | None
    valid_until: datetime
    hourly_bound_usd: Decimal
    current_spot_price_usd_per_hour: Decimal
    below_market: bool


@register
class RequestSpotFleet(Action[RequestSpotFleetParams, SpotFleetIntent]):
    action: ClassVar[str] = "ec2:RequestSpotFleet"
    family = EC2_SPOT
    service: ClassVar[str] = "ec2"
    params_model = RequestSpotFleetParams
    intent_model = SpotFleetIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="spot fleet requests", done="requested", claim_kind="ec2-spot-fleet")
    permissions = frozenset({
        "ec2:RequestSpotFleet",
        "ec2:DescribeSpotPriceHistory",
        "ec2:DescribeSpotFleetRequests",
    })
    # Never called: IAM checks it on RequestSpotFleet, which passes IamFleetRole to EC2. A plan is refused
    # without it (PassRoleNotGranted), and the session policy carries it where the customer granted it.
    optional_permissions = frozenset({"iam:PassRole"})

    def max_commitment_usd(self, params: RequestSpotFleetParams) -> Decimal:
        return params.hourly_bound_usd * params.validity_hours

    def prepare(self, aws: PlanHandle, params: RequestSpotFleetParams) -> SpotFleetIntent:
        p = params
        account = aws.account.account_id
        if not aws.account.granted("iam:PassRole"):
            raise PlanFailed("PassRoleNotGranted", f"a spot fleet passes its IamFleetRole to EC2, which needs "
                             f"iam:PassRole; account {account} did not grant it (extra_permissions); nothing was "
                             "requested")
        role = re.match(_ROLE_ARN, p.iam_fleet_role)
        if role is None or role.group(1) != account:
            raise PlanFailed("FleetRoleInOtherAccount", f"iam_fleet_role {p.iam_fleet_role} is not a role of account "
                             f"{account}; nothing was requested")
        current = _current_price(aws, p.launch_specifications, p.product_description)
        hourly = p.hourly_bound_usd
        total = hourly * p.validity_hours
        _check_ceilings(hourly, total, p.max_hourly_usd, p.max_total_usd,
                        f"a fleet of {p.target_capacity} instances ({p.on_demand_target_capacity} On-Demand)")
        valid_from, valid_until = _validity(aws, p.valid_from, p.validity_hours)
        return SpotFleetIntent(
            iam_fleet_role=p.iam_fleet_role,
            target_capacity=p.target_capacity,
            on_demand_target_capacity=p.on_demand_target_capacity,
            launch_specifications=p.launch_specifications,
            fleet_type=p.type,
            allocation_strategy=p.allocation_strategy,
            max_price_usd_per_hour=p.max_price_usd_per_hour,
            spot_max_total_price_usd_per_hour=p.spot_max_total_price_usd_per_hour,
            on_demand_max_total_price_usd_per_hour=p.on_demand_max_total_price_usd_per_hour,
            valid_from=valid_from,
            valid_until=valid_until,
            hourly_bound_usd=hourly,
            current_spot_price_usd_per_hour=current,
            below_market=current > p.max_price_usd_per_hour,
            commitment_usd=total,
            idempotency_value=client_token(self.action, aws.plan_id),
        )

    # --- the call ------------------------------------------------------------------------------------------
    def _config(self, intent: SpotFleetIntent) -> dict[str, Any]:
        specs = []
        for spec in intent.launch_specifications:
            launch: dict[str, Any] = {"ImageId": spec.image_id, "InstanceType": spec.instance_type}
            if spec.availability_zone:
                launch["Placement"] = {"AvailabilityZone": spec.availability_zone}
            if spec.subnet_id:
                launch["SubnetId"] = spec.subnet_id
            if spec.security_group_ids:
                launch["SecurityGroups"] = [{"GroupId": g} for g in spec.security_group_ids]
            if spec.key_name:
                launch["KeyName"] = spec.key_name
            specs.append(launch)
        config: dict[str, Any] = {
            "ClientToken": intent.idempotency_value,
            "IamFleetRole": intent.iam_fleet_role,
            "TargetCapacity": intent.target_capacity,
            "SpotPrice": str(intent.max_price_usd_per_hour),
            "LaunchSpecifications": specs,
            "Type": intent.fleet_type,
            "ValidUntil": intent.valid_until,
            # The plan's ceilings bound the fleet over its validity only if its instances end with it.
            "TerminateInstancesWithExpiration": True,
        }
        if intent.on_demand_target_capacity:
            config["OnDemandTargetCapacity"] = intent.on_demand_target_capacity
        if intent.spot_max_total_price_usd_per_hour is not None:
            config["SpotMaxTotalPrice"] = str(intent.spot_max_total_price_usd_per_hour)
        if intent.on_demand_max_total_price_usd_per_hour is not None:
            config["OnDemandMaxTotalPrice"] = str(intent.on_demand_max_total_price_usd_per_hour)
        if intent.allocation_strategy:
            config["AllocationStrategy"] = intent.allocation_strategy
        if intent.valid_from is not None:
            config["ValidFrom"] = intent.valid_from
        return config

    def submit(self, aws: PlanHandle, params: RequestSpotFleetParams, intent: SpotFleetIntent) -> Submitted:
        response = aws.send("request_spot_fleet", SpotFleetRequestConfig=self._config(intent))
        fleet_id = response["SpotFleetRequestId"]
        return Submitted(self._result(intent, fleet_id, "submitted", None, "response"), (fleet_id,),
                         follow="AWS is validating the spot fleet request (submitted)")

    def dry_run(self, aws: PlanHandle, params: RequestSpotFleetParams, intent: SpotFleetIntent) -> dict[str, Any]:
        answer = aws.dry_run("request_spot_fleet", SpotFleetRequestConfig=self._config(intent))
        would = {"target_capacity": intent.target_capacity,
                 "on_demand_target_capacity": intent.on_demand_target_capacity,
                 "max_price_usd_per_hour": str(intent.max_price_usd_per_hour),
                 "current_spot_price_usd_per_hour": str(intent.current_spot_price_usd_per_hour),
                 "below_market": intent.below_market, "hourly_bound_usd": str(intent.hourly_bound_usd),
                 "valid_until": intent.valid_until.isoformat(), "commitment_usd": str(intent.commitment_usd)}
        return {"would_request": would, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: SpotFleetIntent, fleet_id: str, state: str, activity: str | None,
                found_by: str) -> dict[str, Any]:
        return {
            "spot_fleet_request_id": fleet_id,
            "state": state,
            "activity_status": activity,
            "target_capacity": intent.target_capacity,
            "on_demand_target_capacity": intent.on_demand_target_capacity,
            "max_price_usd_per_hour": str(intent.max_price_usd_per_hour),
            "spot_max_total_price_usd_per_hour": _text(intent.spot_max_total_price_usd_per_hour),
            "on_demand_max_total_price_usd_per_hour": _text(intent.on_demand_max_total_price_usd_per_hour),
            "current_spot_price_usd_per_hour": str(intent.current_spot_price_usd_per_hour),
            "below_market": intent.below_market,
            "hourly_bound_usd": str(intent.hourly_bound_usd),
            "valid_until": intent.valid_until.isoformat(),
            "found_by": found_by,
        }

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: RequestSpotFleetParams, intent: SpotFleetIntent) -> Reconciled:
        fleet_id = (aws.accepted or {}).get("spot_fleet_request_id")
        if fleet_id:  # AWS answered with the id: follow it to AWS's decision
            fleets = aws.paginate("describe_spot_fleet_requests", "SpotFleetRequestConfigs",
                                  SpotFleetRequestIds=[fleet_id])
            found_by = "response"
        else:  # no filter for it: read them all and match the token the config echoes
            fleets = [f for f in aws.paginate("describe_spot_fleet_requests", "SpotFleetRequestConfigs")
                      if f.get("SpotFleetRequestConfig", {}).get("ClientToken") == intent.idempotency_value]
            found_by = "client token"
        ids = tuple(f["SpotFleetRequestId"] for f in fleets)
        if not fleets:
            return Absent({"found_by": found_by})
        if len(fleets) > 1:
            return Ambiguous(ids, {"found_by": found_by})
        fleet = fleets[0]
        state, activity = fleet["SpotFleetRequestState"], fleet.get("ActivityStatus")
        if state == "submitted":
            return Pending(f"spot fleet request {ids[0]} is submitted (AWS is validating it)")
        if state == "failed":
            return Failed("SpotFleetRequestFailed", f"AWS failed spot fleet request {ids[0]} (activity status "
                          f"{activity}); its event history (DescribeSpotFleetRequestHistory) names the cause",
                          {"spot_fleet_request_id": ids[0], "activity_status": activity})
        # Active, or cancelled since (by a person or at ValidUntil): the fleet this plan requested exists.
        return Found(self._result(intent, ids[0], state, activity, found_by), ids)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# --- ec2:CancelSpotInstanceRequests ----------------------------------------------------------------------------
class CancelSpotInstanceRequestsParams(BaseModel):
    """Parameters of ec2:CancelSpotInstanceRequests (docs/actions/ec2-spot.md)."""

    model_config = STRICT

    spot_instance_request_ids: list[Annotated[str, Field(pattern=_SIR_ID)]] = Field(min_length=1, max_length=100)
    allow_fulfilled: bool = Field(False, description="cancel requests whose instance runs (it keeps running)")

    @model_validator(mode="after")
    def _no_repeats(self) -> CancelSpotInstanceRequestsParams:
        _unique(self.spot_instance_request_ids)
        return self


class CancelSpotInstancesIntent(Intent):
    spot_instance_request_ids: list[str]
    states_before: dict[str, str]
    instance_ids: dict[str, str]  # request → the instance it launched, which a cancel leaves running


class CancelNotApplied(Exception):
    """AWS answered a cancel with a request still open or active: the outcome is read again, never assumed."""


@register
class CancelSpotInstanceRequests(Action[CancelSpotInstanceRequestsParams, CancelSpotInstancesIntent]):
    action: ClassVar[str] = "ec2:CancelSpotInstanceRequests"
    family = EC2_SPOT
    service: ClassVar[str] = "ec2"
    params_model = CancelSpotInstanceRequestsParams
    intent_model = CancelSpotInstancesIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="spot instance requests", done="cancelled", claim_kind="ec2-spot-request")
    permissions = frozenset({"ec2:CancelSpotInstanceRequests", "ec2:DescribeSpotInstanceRequests"})

    def prepare(self, aws: PlanHandle, params: CancelSpotInstanceRequestsParams) -> CancelSpotInstancesIntent:
        ids = params.spot_instance_request_ids
        # An unknown id is AWS's InvalidSpotInstanceRequestID.NotFound: the plan fails with it.
        requests = aws.paginate("describe_spot_instance_requests", "SpotInstanceRequests",
                                SpotInstanceRequestIds=list(ids))
        fulfilled = {r["SpotInstanceRequestId"]: r["InstanceId"] for r in requests
                     if r["State"] == "active" and r.get("InstanceId")}
        if fulfilled and not params.allow_fulfilled:
            raise PlanFailed("FulfilledRequest", f"spot instance requests {sorted(fulfilled)} are fulfilled: a cancel "
                             f"leaves their instances {sorted(fulfilled.values())} running (and billed), and commitd "
                             "cannot terminate them; set allow_fulfilled to cancel anyway; nothing was cancelled",
                             {"instances": fulfilled})
        return CancelSpotInstancesIntent(
            spot_instance_request_ids=list(ids),
            states_before={r["SpotInstanceRequestId"]: r["State"] for r in requests},
            instance_ids={r["SpotInstanceRequestId"]: r["InstanceId"] for r in requests if r.get("InstanceId")},
            signature=_ids_signature("ec2-spot-cancel-sir", aws, list(ids)),
        )

    def submit(
        self, aws: PlanHandle, params: CancelSpotInstanceRequestsParams, intent: CancelSpotInstancesIntent
    ) -> Submitted:
        # Declarative: cancelling a request already cancelled, closed or failed changes nothing, and AWS answers
        # with its state; so a repeated cancel (a re-send, another plan) is harmless.
        response = aws.send("cancel_spot_instance_requests", SpotInstanceRequestIds=intent.spot_instance_request_ids)
        states = {c["SpotInstanceRequestId"]: c["State"] for c in response["CancelledSpotInstanceRequests"]}
        if any(states.get(i) not in SIR_ENDED for i in intent.spot_instance_request_ids):
            raise CancelNotApplied(f"AWS answered states {states}")
        return Submitted(self._result(intent, states, "response"), ())

    def dry_run(
        self, aws: PlanHandle, params: CancelSpotInstanceRequestsParams, intent: CancelSpotInstancesIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("cancel_spot_instance_requests", SpotInstanceRequestIds=intent.spot_instance_request_ids)
        return {"would_cancel": intent.states_before, "instances_left_running": intent.instance_ids,
                "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: CancelSpotInstancesIntent, states: dict[str, str], found_by: str) -> dict[str, Any]:
        return {"states": states, "states_before": intent.states_before, "instance_ids": intent.instance_ids,
                "found_by": found_by}

    def reconcile(
        self, aws: PlanHandle, params: CancelSpotInstanceRequestsParams, intent: CancelSpotInstancesIntent
    ) -> Reconciled:
        requests = aws.paginate("describe_spot_instance_requests", "SpotInstanceRequests",
                                SpotInstanceRequestIds=intent.spot_instance_request_ids)
        states = {r["SpotInstanceRequestId"]: r["State"] for r in requests}
        live = {i: s for i, s in states.items() if s not in SIR_ENDED}
        if live:
            return Absent({"not_cancelled": live})
        return Found(self._result(intent, states, "state"), ())


# --- ec2:CancelSpotFleetRequests -------------------------------------------------------------------------------
class CancelSpotFleetRequestsParams(BaseModel):
    """Parameters of ec2:CancelSpotFleetRequests (docs/actions/ec2-spot.md)."""

    model_config = STRICT

    spot_fleet_request_ids: list[Annotated[str, Field(pattern=_SFR_ID)]] = Field(min_length=1, max_length=100)
    terminate_instances: bool = Field(description="TerminateInstances: also terminate the fleets' instances")

    @model_validator(mode="after")
    def _no_repeats(self) -> CancelSpotFleetRequestsParams:
        _unique(self.spot_fleet_request_ids)
        return self


class CancelSpotFleetsIntent(Intent):
    spot_fleet_request_ids: list[str]
    terminate_instances: bool
    states_before: dict[str, str]


# Per-fleet errors AWS answers inside a successful call, the most serious first. A fleet that does not exist is
# a refusal; one not in a cancellable state may be cancelled already (a done signal: the state decides).
FLEET_ITEM_ERRORS = ("fleetRequestIdDoesNotExist", "fleetRequestIdMalformed", "unexpectedError",
                     "fleetRequestNotInCancellableState")


def _fleet_item_error(failures: list[dict[str, Any]]) -> ClientError:
    """AWS's per-fleet errors as the ClientError the executor reads: the most serious code, every message."""
    codes = [f.get("Error", {}).get("Code", "unexpectedError") for f in failures]
    code = min(codes, key=lambda c: FLEET_ITEM_ERRORS.index(c) if c in FLEET_ITEM_ERRORS else 2)
    message = "; ".join(f"{f.get('SpotFleetRequestId')}: {f.get('Error', {}).get('Message', '')}" for f in failures)
    # unexpectedError is AWS's own failure: read as a server error (reconcile, then maybe send again).
    status = 500 if code not in FLEET_ITEM_ERRORS or code == "unexpectedError" else 400
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "CancelSpotFleetRequests")


@register
class CancelSpotFleetRequests(Action[CancelSpotFleetRequestsParams, CancelSpotFleetsIntent]):
    action: ClassVar[str] = "ec2:CancelSpotFleetRequests"
    family = EC2_SPOT
    service: ClassVar[str] = "ec2"
    params_model = CancelSpotFleetRequestsParams
    intent_model = CancelSpotFleetsIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="spot fleet requests", done="cancelled", claim_kind="ec2-spot-fleet")
    permissions = frozenset({"ec2:CancelSpotFleetRequests", "ec2:DescribeSpotFleetRequests"})
    # A fleet already cancelled answers this per fleet: whether that is this plan's target, its state says.
    done_signals = frozenset({"fleetRequestNotInCancellableState"})

    def prepare(self, aws: PlanHandle, params: CancelSpotFleetRequestsParams) -> CancelSpotFleetsIntent:
        ids = params.spot_fleet_request_ids
        # An unknown id is AWS's InvalidSpotFleetRequestId.NotFound: the plan fails with it.
        fleets = aws.paginate("describe_spot_fleet_requests", "SpotFleetRequestConfigs",
                              SpotFleetRequestIds=list(ids))
        states = {f["SpotFleetRequestId"]: f["SpotFleetRequestState"] for f in fleets}
        failed = sorted(i for i, s in states.items() if s == "failed")
        if failed:
            raise PlanFailed("FleetNotCancellable", f"spot fleet requests {failed} are in state failed, which AWS "
                             "cannot cancel; nothing was cancelled", {"states": states})
        return CancelSpotFleetsIntent(
            spot_fleet_request_ids=list(ids),
            terminate_instances=params.terminate_instances,
            states_before=states,
            signature=_ids_signature("ec2-spot-cancel-sfr", aws, list(ids)),
        )

    def submit(
        self, aws: PlanHandle, params: CancelSpotFleetRequestsParams, intent: CancelSpotFleetsIntent
    ) -> Submitted:
        # Declarative: a fleet already in the target state answers fleetRequestNotInCancellableState (a done
        # signal, confirmed by its state), so a repeated cancel changes nothing.
        response = aws.send("cancel_spot_fleet_requests", SpotFleetRequestIds=intent.spot_fleet_request_ids,
                            TerminateInstances=intent.terminate_instances)
        if response.get("UnsuccessfulFleetRequests"):
            raise _fleet_item_error(response["UnsuccessfulFleetRequests"])
        states = {s["SpotFleetRequestId"]: s["CurrentSpotFleetRequestState"]
                  for s in response.get("SuccessfulFleetRequests", [])}
        result = self._result(intent, states, "response")
        if intent.terminate_instances and any(s == "cancelled_terminating" for s in states.values()):
            return Submitted(result, (), follow="AWS is terminating the fleets' instances (cancelled_terminating)")
        return Submitted(result, ())

    def dry_run(
        self, aws: PlanHandle, params: CancelSpotFleetRequestsParams, intent: CancelSpotFleetsIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("cancel_spot_fleet_requests", SpotFleetRequestIds=intent.spot_fleet_request_ids,
                             TerminateInstances=intent.terminate_instances)
        return {"would_cancel": intent.states_before, "terminate_instances": intent.terminate_instances,
                "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: CancelSpotFleetsIntent, states: dict[str, str], found_by: str) -> dict[str, Any]:
        return {"states": states, "states_before": intent.states_before,
                "terminate_instances": intent.terminate_instances, "found_by": found_by}

    def reconcile(
        self, aws: PlanHandle, params: CancelSpotFleetRequestsParams, intent: CancelSpotFleetsIntent
    ) -> Reconciled:
        fleets = aws.paginate("describe_spot_fleet_requests", "SpotFleetRequestConfigs",
                              SpotFleetRequestIds=intent.spot_fleet_request_ids)
        states = {f["SpotFleetRequestId"]: f["SpotFleetRequestState"] for f in fleets}
        failed = sorted(i for i, s in states.items() if s == "failed")
        if failed:
            return Failed("fleetRequestNotInCancellableState", f"spot fleet requests {failed} are in state failed, "
                          "which AWS cannot cancel", {"states": states})
        # Terminating is part of the target: a fleet cancelled without it (cancelled_running) is not there yet.
        not_cancelled = {i: s for i, s in states.items() if s in FLEET_NOT_CANCELLED
                         or (intent.terminate_instances and s == "cancelled_running")}
        if not_cancelled:
            return Absent({"not_cancelled": not_cancelled})
        terminating = sorted(i for i, s in states.items() if intent.terminate_instances and s != "cancelled")
        if terminating:
            return Pending(f"spot fleet requests {terminating} are terminating their instances", {"states": states})
        return Found(self._result(intent, states, "state"), ())
