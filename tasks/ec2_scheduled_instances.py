"""Family: EC2 Scheduled Instances. Actions: ec2:PurchaseScheduledInstances, ec2:RunScheduledInstances.

AWS no longer sells Scheduled Instances (botocore's model: "You can no longer purchase Scheduled Instances"):
``DescribeScheduledInstanceAvailability`` finds nothing, so no ``PurchaseToken`` exists to buy with. A purchase
plan therefore reads availability first and fails with AWS's own answer, nothing sent and nothing spent. Should
AWS ever offer a schedule again, the plan buys exactly the one schedule its search finds, within its ceilings,
with a ``ClientToken`` derived from the plan; reconciliation then matches ``DescribeScheduledInstances`` on the
schedule's attributes and a creation at or after AWS's time when the intent was made (the answer has no token).

Customers who bought schedules before can still launch them during their slots: ``RunScheduledInstances`` takes a
``ClientToken`` (derived from the plan, recorded before the call), and its instances are found again with
``DescribeInstances`` by that token (AWS's ``client-token`` filter), or else by what only this run looks like:
instances of the ``scheduled`` lifecycle, of the schedule's type and zone and the plan's image, launched together
(one reservation of the plan's count) at or after the intent. One plan at a time per schedule (the intent's
``signature``) keeps that match attributable. AWS refuses a launch outside the schedule's slot
(``ScheduledInstanceSlotNotOpen``): the plan fails with that answer and nothing launched. Running a schedule
commits no new money: its hours were bought with the schedule.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from tasks.families import EC2_SCHEDULED_INSTANCES
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
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
from worker.handle import AWS_CLOCK_TOLERANCE, PlanHandle
from worker.plans import STRICT, NotBoolean, Rfc3339Time, UsdAmount

INSTANCE_TYPE = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
ZONE = r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$"


def client_token(kind: str, plan_id: str) -> str:
    """The plan's ClientToken: deterministic, ASCII, within EC2's 64-character limit (plan ids reach 128)."""
    return f"commitd-{kind}-" + hashlib.sha256(plan_id.encode()).hexdigest()[:40]


# === ec2:PurchaseScheduledInstances =============================================================================
class ScheduledRecurrence(BaseModel):
    """AWS's ScheduledInstanceRecurrenceRequest."""

    model_config = STRICT

    frequency: Literal["Daily", "Weekly", "Monthly"]
    interval: Annotated[int, NotBoolean] = Field(1, ge=1)
    occurrence_days: list[Annotated[int, NotBoolean, Field(ge=1, le=31)]] = Field(default_factory=list)
    occurrence_relative_to_end: bool = False
    occurrence_unit: Literal["DayOfWeek", "DayOfMonth"] | None = None

    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"Frequency": self.frequency, "Interval": self.interval}
        if self.occurrence_days:
            request["OccurrenceDays"] = list(self.occurrence_days)
        if self.occurrence_relative_to_end:
            request["OccurrenceRelativeToEnd"] = True
        if self.occurrence_unit:
            request["OccurrenceUnit"] = self.occurrence_unit
        return request


class SlotStartTimeRange(BaseModel):
    model_config = STRICT

    earliest_time: Rfc3339Time
    latest_time: Rfc3339Time

    @model_validator(mode="after")
    def _ordered(self) -> SlotStartTimeRange:
        if self.latest_time < self.earliest_time:
            raise ValueError("latest_time is before earliest_time")
        return self


class PurchaseScheduledInstancesParams(BaseModel):
    """What to search with DescribeScheduledInstanceAvailability, how many to buy, and the ceilings."""

    model_config = STRICT

    instance_type: str = Field(pattern=INSTANCE_TYPE, examples=["c5.large"])
    platform: Literal["Linux/UNIX", "Windows"] = "Linux/UNIX"
    availability_zone: str | None = Field(None, pattern=ZONE)
    recurrence: ScheduledRecurrence
    first_slot_start_time_range: SlotStartTimeRange
    min_slot_duration_in_hours: Annotated[int, NotBoolean] | None = Field(None, ge=1, le=24)
    max_slot_duration_in_hours: Annotated[int, NotBoolean] | None = Field(None, ge=1, le=24)
    instance_count: Annotated[int, NotBoolean] = Field(ge=1, le=10_000)
    max_hourly_usd: UsdAmount = Field(description="ceiling on the hourly price of one instance")
    max_total_usd: UsdAmount = Field(description="ceiling on hourly price x scheduled hours x instance count")


class ScheduledPurchaseIntent(Intent):
    purchase_token: str
    instance_count: int
    instance_type: str
    availability_zone: str
    platform: str
    slot_duration_in_hours: int
    recurrence: dict[str, Any]  # as AWS describes it (Frequency, Interval, OccurrenceDaySet, ...)
    first_slot_start_time: datetime | None
    hourly_usd: Decimal  # per instance
    scheduled_hours: int  # per instance, over the term
    started_after: datetime


@register
class PurchaseScheduledInstances(Action[PurchaseScheduledInstancesParams, ScheduledPurchaseIntent]):
    action: ClassVar[str] = "ec2:PurchaseScheduledInstances"
    family = EC2_SCHEDULED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model = PurchaseScheduledInstancesParams
    intent_model = ScheduledPurchaseIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="scheduled instances", done="bought", claim_kind="ec2-sci")
    permissions = frozenset({
        "ec2:PurchaseScheduledInstances",
        "ec2:DescribeScheduledInstanceAvailability",
        "ec2:DescribeScheduledInstances",
    })

    def max_commitment_usd(self, params: PurchaseScheduledInstancesParams) -> Decimal:
        return params.max_total_usd

    def _search(self, aws: PlanHandle, p: PurchaseScheduledInstancesParams) -> dict[str, Any]:
        filters = [{"Name": "instance-type", "Values": [p.instance_type]},
                   {"Name": "platform", "Values": [p.platform]}]
        if p.availability_zone:
            filters.append({"Name": "availability-zone", "Values": [p.availability_zone]})
        request: dict[str, Any] = {
            "Recurrence": p.recurrence.request(),
            "FirstSlotStartTimeRange": {"EarliestTime": p.first_slot_start_time_range.earliest_time,
                                        "LatestTime": p.first_slot_start_time_range.latest_time},
            "Filters": filters,
        }
        if p.min_slot_duration_in_hours is not None:
            request["MinSlotDurationInHours"] = p.min_slot_duration_in_hours
        if p.max_slot_duration_in_hours is not None:
            request["MaxSlotDurationInHours"] = p.max_slot_duration_in_hours
        return request

    def prepare(self, aws: PlanHandle, params: PurchaseScheduledInstancesParams) -> ScheduledPurchaseIntent:
        p = params
        search = self._search(aws, p)
        available = aws.paginate("describe_scheduled_instance_availability", "ScheduledInstanceAvailabilitySet",
                                 **search)
        what = f"{p.instance_type} {p.platform} {p.availability_zone or aws.region} {p.recurrence.frequency}"
        if not available:
            raise PlanFailed(
                "NoScheduledInstanceAvailability",
                f"AWS offers no Scheduled Instance schedule for {what}: DescribeScheduledInstanceAvailability "
                "answered an empty ScheduledInstanceAvailabilitySet (AWS no longer sells Scheduled Instances); "
                "nothing was bought",
                {"aws_answer": {"ScheduledInstanceAvailabilitySet": []},
                 "searched": {**search, "FirstSlotStartTimeRange": {
                     k: v.isoformat() for k, v in search["FirstSlotStartTimeRange"].items()}}},
            )
        if len(available) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(available)} schedules match {what}; narrow first_slot_start_time_range, the zone or the slot "
                "duration; nothing was bought",
                {"schedules": [{"availability_zone": a.get("AvailabilityZone"),
                                "first_slot_start_time": str(a.get("FirstSlotStartTime")),
                                "slot_duration_in_hours": a.get("SlotDurationInHours"),
                                "hourly_price": a.get("HourlyPrice")} for a in available]},
            )
        offer = available[0]
        if int(offer.get("AvailableInstanceCount", 0)) < p.instance_count:
            raise PlanFailed("InsufficientAvailability", f"the schedule offers {offer.get('AvailableInstanceCount')} "
                             f"instances, the plan wants {p.instance_count}; nothing was bought")
        hourly = Decimal(str(offer["HourlyPrice"]))
        hours = int(offer["TotalScheduledInstanceHours"])
        total = hourly * hours * p.instance_count
        if hourly > p.max_hourly_usd:
            raise PlanFailed("PriceAboveCeiling", f"hourly {hourly} USD per instance exceeds max_hourly_usd "
                             f"{p.max_hourly_usd}; nothing was bought",
                             {"hourly_usd": str(hourly), "max_hourly_usd": str(p.max_hourly_usd)})
        if total > p.max_total_usd:
            raise PlanFailed("PriceAboveCeiling", f"total {total} USD ({hourly} x {hours} h x {p.instance_count}) "
                             f"exceeds max_total_usd {p.max_total_usd}; nothing was bought",
                             {"total_usd": str(total), "max_total_usd": str(p.max_total_usd)})
        return ScheduledPurchaseIntent(
            purchase_token=offer["PurchaseToken"],
            instance_count=p.instance_count,
            instance_type=offer["InstanceType"],
            availability_zone=offer["AvailabilityZone"],
            platform=offer.get("Platform", p.platform),
            slot_duration_in_hours=int(offer["SlotDurationInHours"]),
            recurrence=dict(offer.get("Recurrence") or {}),
            first_slot_start_time=offer.get("FirstSlotStartTime"),
            hourly_usd=hourly,
            scheduled_hours=hours,
            commitment_usd=total,
            started_after=aws.earliest_start(),
            idempotency_value=client_token("sci", aws.plan_id),
            # Reconciliation matches on attributes: one plan at a time per schedule kind tells whose it sees.
            signature=f"ec2-sci-buy:{aws.account.account_id}:{aws.region}:{offer['InstanceType']}:"
                      f"{offer['AvailabilityZone']}:{offer.get('Platform', p.platform)}",
        )

    def _request(self, intent: ScheduledPurchaseIntent) -> dict[str, Any]:
        return {"ClientToken": intent.idempotency_value,
                "PurchaseRequests": [{"InstanceCount": intent.instance_count, "PurchaseToken": intent.purchase_token}]}

    def submit(
        self, aws: PlanHandle, params: PurchaseScheduledInstancesParams, intent: ScheduledPurchaseIntent
    ) -> Submitted:
        response = aws.send("purchase_scheduled_instances", **self._request(intent))
        ids = tuple(s["ScheduledInstanceId"] for s in response.get("ScheduledInstanceSet", []))
        return Submitted(self._result(intent, list(ids), "response"), ids)

    def dry_run(
        self, aws: PlanHandle, params: PurchaseScheduledInstancesParams, intent: ScheduledPurchaseIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("purchase_scheduled_instances", **self._request(intent))
        return {"would_buy": {"instance_type": intent.instance_type, "availability_zone": intent.availability_zone,
                              "instance_count": intent.instance_count, "hourly_usd": str(intent.hourly_usd),
                              "commitment_usd": str(intent.commitment_usd)},
                "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: ScheduledPurchaseIntent, ids: list[str], found_by: str) -> dict[str, Any]:
        return {"scheduled_instance_ids": ids, "instance_type": intent.instance_type,
                "availability_zone": intent.availability_zone, "instance_count": intent.instance_count,
                "hourly_usd": str(intent.hourly_usd), "client_token": intent.idempotency_value, "found_by": found_by}

    def reconcile(
        self, aws: PlanHandle, params: PurchaseScheduledInstancesParams, intent: ScheduledPurchaseIntent
    ) -> Reconciled:
        schedules = aws.paginate("describe_scheduled_instances", "ScheduledInstanceSet", Filters=[
            {"Name": "instance-type", "Values": [intent.instance_type]},
            {"Name": "availability-zone", "Values": [intent.availability_zone]},
            {"Name": "platform", "Values": [intent.platform]},
        ])
        wanted = intent.recurrence
        candidates = [
            s["ScheduledInstanceId"] for s in schedules
            if s.get("InstanceCount") == intent.instance_count
            and s.get("SlotDurationInHours") == intent.slot_duration_in_hours
            and all((s.get("Recurrence") or {}).get(k) == v for k, v in wanted.items())
            and s.get("CreateDate") is not None and s["CreateDate"] >= intent.started_after
        ]
        elsewhere = aws.claimed_elsewhere(candidates)
        mine = [c for c in candidates if c not in elsewhere]
        evidence = {"matched": mine}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(mine), evidence)
        return Found(self._result(intent, mine, "attributes"), (mine[0],), evidence)


# === ec2:RunScheduledInstances ==================================================================================
class ScheduledLaunchSpecification(BaseModel):
    """AWS's ScheduledInstancesLaunchSpecification (the parts commitd passes on)."""

    model_config = STRICT

    image_id: str = Field(pattern=r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
    instance_type: str | None = Field(None, pattern=INSTANCE_TYPE, description="must be the schedule's")
    availability_zone: str | None = Field(None, pattern=ZONE, description="must be the schedule's")
    subnet_id: str | None = Field(None, pattern=r"^subnet-[0-9a-f]+$")
    security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]+$")]] = Field(default_factory=list)
    key_name: str | None = Field(None, min_length=1, max_length=255)
    user_data: str | None = Field(None, max_length=21_848, pattern=r"^[A-Za-z0-9+/=]*$", description="base64")
    ebs_optimized: bool | None = None
    monitoring_enabled: bool | None = None

    def request(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"ImageId": self.image_id}
        if self.instance_type:
            spec["InstanceType"] = self.instance_type
        if self.availability_zone:
            spec["Placement"] = {"AvailabilityZone": self.availability_zone}
        if self.subnet_id:
            spec["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            spec["SecurityGroupIds"] = list(self.security_group_ids)
        if self.key_name:
            spec["KeyName"] = self.key_name
        if self.user_data:
            spec["UserData"] = self.user_data
        if self.ebs_optimized is not None:
            spec["EbsOptimized"] = self.ebs_optimized
        if self.monitoring_enabled is not None:
            spec["Monitoring"] = {"Enabled": self.monitoring_enabled}
        return spec


class RunScheduledInstancesParams(BaseModel):
    model_config = STRICT

    scheduled_instance_id: str = Field(pattern=r"^sci-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    instance_count: Annotated[int, NotBoolean] = Field(1, ge=1, le=10_000)
    launch_specification: ScheduledLaunchSpecification


class ScheduledRunIntent(Intent):
    scheduled_instance_id: str
    instance_count: int
    instance_type: str  # the schedule's
    availability_zone: str  # the schedule's
    launch_specification: dict[str, Any]  # as sent
    started_after: datetime


@register
class RunScheduledInstances(Action[RunScheduledInstancesParams, ScheduledRunIntent]):
    action: ClassVar[str] = "ec2:RunScheduledInstances"
    family = EC2_SCHEDULED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model = RunScheduledInstancesParams
    intent_model = ScheduledRunIntent
    idempotency = Idempotency.CLIENT_TOKEN
    nouns = Nouns(resource="scheduled instance launches", done="launched", claim_kind="ec2-sci-run")
    permissions = frozenset({
        "ec2:RunScheduledInstances",
        "ec2:DescribeScheduledInstances",
        "ec2:DescribeInstances",
    })

    def prepare(self, aws: PlanHandle, params: RunScheduledInstancesParams) -> ScheduledRunIntent:
        p = params
        # An unknown id is AWS's InvalidScheduledInstance: a terminal read error, and the plan fails with it.
        schedules = aws.read("describe_scheduled_instances",
                             ScheduledInstanceIds=[p.scheduled_instance_id]).get("ScheduledInstanceSet", [])
        if len(schedules) != 1:
            raise PlanFailed("NoSuchScheduledInstance", f"scheduled instance {p.scheduled_instance_id} does not "
                             f"exist in {aws.account.account_id} {aws.region}; nothing was launched")
        schedule = schedules[0]
        spec = p.launch_specification
        mismatch = {name: {"plan": wanted, "schedule": actual} for name, wanted, actual in (
            ("instance_type", spec.instance_type, schedule["InstanceType"]),
            ("availability_zone", spec.availability_zone, schedule["AvailabilityZone"]),
        ) if wanted is not None and wanted != actual}
        if mismatch:
            raise PlanFailed("LaunchSpecificationMismatch", f"the launch specification does not match schedule "
                             f"{p.scheduled_instance_id}: {mismatch}; nothing was launched", {"mismatch": mismatch})
        if p.instance_count > int(schedule["InstanceCount"]):
            raise PlanFailed("CountAboveSchedule", f"schedule {p.scheduled_instance_id} was bought for "
                             f"{schedule['InstanceCount']} instances, the plan asks for {p.instance_count}; nothing "
                             "was launched", {"scheduled_count": schedule["InstanceCount"]})
        started_after = aws.earliest_start()
        term_end = schedule.get("TermEndDate")
        if term_end is not None and term_end <= started_after + AWS_CLOCK_TOLERANCE:
            raise PlanFailed("ScheduleEnded", f"schedule {p.scheduled_instance_id}'s term ended at "
                             f"{term_end.isoformat()}; nothing was launched")
        return ScheduledRunIntent(
            scheduled_instance_id=p.scheduled_instance_id,
            instance_count=p.instance_count,
            instance_type=schedule["InstanceType"],
            availability_zone=schedule["AvailabilityZone"],
            launch_specification=spec.request(),
            started_after=started_after,
            idempotency_value=client_token("run", aws.plan_id),
            # The fallback match is by attributes: one plan at a time per schedule tells whose launch it sees.
            signature=f"ec2-sci-run:{aws.account.account_id}:{aws.region}:{p.scheduled_instance_id}",
        )

    def _request(self, intent: ScheduledRunIntent) -> dict[str, Any]:
        return {"ScheduledInstanceId": intent.scheduled_instance_id, "InstanceCount": intent.instance_count,
                "LaunchSpecification": intent.launch_specification, "ClientToken": intent.idempotency_value}

    def submit(self, aws: PlanHandle, params: RunScheduledInstancesParams, intent: ScheduledRunIntent) -> Submitted:
        response = aws.send("run_scheduled_instances", **self._request(intent))
        ids = tuple(response.get("InstanceIdSet", []))
        return Submitted(self._result(intent, list(ids), "response"), ids)

    def dry_run(
        self, aws: PlanHandle, params: RunScheduledInstancesParams, intent: ScheduledRunIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("run_scheduled_instances", **self._request(intent))
        return {"would_launch": {"scheduled_instance_id": intent.scheduled_instance_id,
                                 "instance_count": intent.instance_count,
                                 "launch_specification": intent.launch_specification},
                "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def _result(self, intent: ScheduledRunIntent, instance_ids: list[str], found_by: str) -> dict[str, Any]:
        return {"scheduled_instance_id": intent.scheduled_instance_id, "instance_ids": instance_ids,
                "instance_count": intent.instance_count, "client_token": intent.idempotency_value,
                "found_by": found_by}

    def reconcile(
        self, aws: PlanHandle, params: RunScheduledInstancesParams, intent: ScheduledRunIntent
    ) -> Reconciled:
        by_token = aws.paginate("describe_instances", "Reservations", Filters=[
            {"Name": "client-token", "Values": [str(intent.idempotency_value)]}])
        instances = [i for r in by_token for i in r.get("Instances", [])]
        if instances:
            return self._found(intent, instances, "client-token")
        # No instance carries the token: look for the one launch of this schedule's kind since the intent.
        reservations = aws.paginate("describe_instances", "Reservations", Filters=[
            {"Name": "instance-lifecycle", "Values": ["scheduled"]},
            {"Name": "instance-type", "Values": [intent.instance_type]},
            {"Name": "image-id", "Values": [intent.launch_specification["ImageId"]]},
        ])
        launches = {
            r["ReservationId"]: r["Instances"] for r in reservations
            if len(r.get("Instances", [])) == intent.instance_count
            and all(i["LaunchTime"] >= intent.started_after
                    and (i.get("Placement") or {}).get("AvailabilityZone") == intent.availability_zone
                    for i in r["Instances"])
        }
        elsewhere = aws.claimed_elsewhere([i["InstanceId"] for group in launches.values() for i in group])
        mine = {rid: group for rid, group in launches.items()
                if not any(i["InstanceId"] in elsewhere for i in group)}
        if not mine:
            return Absent({"matched": []})
        if len(mine) > 1:
            return Ambiguous(tuple(sorted(mine)), {"matched": sorted(mine)})
        [group] = mine.values()
        return self._found(intent, group, "attributes")

    def _found(self, intent: ScheduledRunIntent, instances: list[dict[str, Any]], found_by: str) -> Reconciled:
        ids = sorted(i["InstanceId"] for i in instances)
        evidence = {"instance_ids": ids, "found_by": found_by}
        if len(ids) < intent.instance_count:
            # One call launches all of its instances or none: the others are not visible yet.
            return Pending(f"{len(ids)} of {intent.instance_count} launched instances visible so far", evidence)
        return Found(self._result(intent, ids, found_by), tuple(ids), evidence)

