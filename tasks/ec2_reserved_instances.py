"""Family: EC2 reserved instances. Actions: ec2:PurchaseReservedInstancesOffering, ec2:ModifyReservedInstances.

The purchase has no idempotency token (aws-commitment-apis.md §1), so it rests on the executor's protocol for
such calls (docs/exactly-once.md): one plan at a time per offering (the intent's ``signature``), the intent and a
durable send record before the call, and a reconciling DescribeReservedInstances that matches the offering's
attributes, the count, and a start at or after AWS's own time when the intent was made (never the worker's
clock). Where the customer granted ec2:CreateTags, each RI is tagged with its plan id and found by that tag first.

Money: the plan bounds the upfront total and the hourly price per instance; intake bounds the total commitment
(upfront + hourly × count × term hours) by the account's limit before any read, and the executor checks the
offering's real total against the account's current limits right before the send. ``LimitPrice`` is sent as well,
but AWS documents it for Marketplace offerings and it never covers the hourly part: the ceilings above do.

The modification (split, merge, scope, zone, or size within the family's normalization factors) commits no new
money: it has a ``ClientToken``, derived from the plan id and recorded in the intent, and is found again with
``DescribeReservedInstancesModifications``'s ``client-token`` filter. AWS processes it asynchronously: the plan
follows it (``Submitted.follow``) until it is ``fulfilled`` (the new RIs are claimed) or ``failed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import EC2_RESERVED_INSTANCES
from worker.actions import (
    YEAR_SECONDS,
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
from worker.errors import error_code
from worker.execution import derive_token
from worker.handle import AWS_CLOCK_TOLERANCE, PlanHandle
from worker.plans import STRICT, NotBoolean, Rfc3339Time, UsdAmount

RECONCILE_STATES = ["payment-pending", "active", "queued"]
PLAN_TAG = "commitd:plan-id"


class PurchaseReservedInstancesParams(BaseModel):
    """Parameters of ec2:PurchaseReservedInstancesOffering (docs/plans.md)."""

    model_config = STRICT

    instance_type: str = Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", examples=["m5.large"])
    product_description: str = "Linux/UNIX"
    offering_class: Literal["standard", "convertible"]
    offering_type: Literal["No Upfront", "Partial Upfront", "All Upfront"]
    duration_years: Annotated[Literal[1, 3], NotBoolean]
    scope: Literal["Region", "Availability Zone"]
    availability_zone: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
    tenancy: Literal["default", "dedicated"] = "default"
    instance_count: int = Field(ge=1, le=10_000)
    offering_id: str | None = Field(None, min_length=1, description="pin one offering; it must match the fields")
    purchase_time: Rfc3339Time | None = Field(None, description="queue the purchase (regional RIs only)")
    max_upfront_usd: UsdAmount = Field(description="ceiling on the total upfront for all instances")
    max_hourly_usd: UsdAmount = Field(description="ceiling on the recurring hourly price per instance")

    @model_validator(mode="after")
    def _scope_rules(self) -> PurchaseReservedInstancesParams:
        if self.scope == "Availability Zone" and not self.availability_zone:
            raise ValueError("availability_zone is required when scope is 'Availability Zone'")
        if self.scope == "Region" and self.availability_zone:
            raise ValueError("availability_zone is only for scope 'Availability Zone'")
        if self.purchase_time is not None and self.scope != "Region":
            raise ValueError("purchase_time (a queued purchase) is only possible for regional RIs")
        return self

    @property
    def term_hours(self) -> int:
        return self.duration_years * YEAR_SECONDS // 3600


class OfferingAttributes(BaseModel):
    """The attributes a reconciling read matches an RI on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_type: str
    product_description: str
    duration: int
    scope: str
    availability_zone: str | None
    offering_class: str
    offering_type: str
    tenancy: str


class RiPurchaseIntent(Intent):
    offering_id: str
    instance_count: int
    upfront_usd: Decimal  # total for all instances; also the LimitPrice
    hourly_usd: Decimal  # recurring, per instance
    marketplace: bool
    offering: OfferingAttributes
    purchase_time: datetime | None
    started_after: datetime  # AWS's time when the intent was made, less its tolerance


def _hourly(offering: dict[str, Any]) -> Decimal:
    recurring = sum(
        (Decimal(str(c["Amount"])) for c in offering.get("RecurringCharges", []) if c.get("Frequency") == "Hourly"),
        Decimal(0),
    )
    return recurring + Decimal(str(offering.get("UsagePrice", 0)))


@register
class PurchaseReservedInstancesOffering(Action[PurchaseReservedInstancesParams, RiPurchaseIntent]):
    action: ClassVar[str] = "ec2:PurchaseReservedInstancesOffering"
    family = EC2_RESERVED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model = PurchaseReservedInstancesParams
    intent_model = RiPurchaseIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="reserved instances", done="bought", claim_kind="ec2-ri")
    permissions = frozenset({
        "ec2:PurchaseReservedInstancesOffering",
        "ec2:DescribeReservedInstancesOfferings",
        "ec2:DescribeReservedInstances",
    })
    optional_permissions = frozenset({"ec2:CreateTags"})

    def max_commitment_usd(self, params: PurchaseReservedInstancesParams) -> Decimal:
        return params.max_upfront_usd + params.max_hourly_usd * params.instance_count * params.term_hours

    # --- reads before --------------------------------------------------------------------------------------
    def find_offerings(self, aws: PlanHandle, p: PurchaseReservedInstancesParams) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "InstanceType": p.instance_type,
            "ProductDescription": p.product_description,
            "OfferingClass": p.offering_class,
            "OfferingType": p.offering_type,
            "InstanceTenancy": p.tenancy,
            "Filters": [
                {"Name": "duration", "Values": [str(p.duration_years * YEAR_SECONDS)]},
                {"Name": "scope", "Values": [p.scope]},
            ],
        }
        if p.availability_zone:
            request["AvailabilityZone"] = p.availability_zone
        if p.offering_id:
            request["ReservedInstancesOfferingIds"] = [p.offering_id]
        return aws.paginate("describe_reserved_instances_offerings", "ReservedInstancesOfferings", **request)

    def prepare(self, aws: PlanHandle, params: PurchaseReservedInstancesParams) -> RiPurchaseIntent:
        p = params
        offering = self._one_offering(aws, p)
        if offering.get("CurrencyCode", "USD") != "USD":
            raise PlanFailed("UnsupportedCurrency", f"offering is priced in {offering['CurrencyCode']}, ceilings "
                             "are in USD; nothing was bought")
        if offering.get("Marketplace") and p.purchase_time is not None:
            raise PlanFailed("QueuedMarketplacePurchase", "marketplace offerings cannot be queued; nothing was bought")
        upfront_total = Decimal(str(offering["FixedPrice"])) * p.instance_count
        hourly = _hourly(offering)
        if upfront_total > p.max_upfront_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"upfront {upfront_total} USD for {p.instance_count} instances exceeds max_upfront_usd "
                f"{p.max_upfront_usd}; nothing was bought",
                {"upfront_usd": str(upfront_total), "max_upfront_usd": str(p.max_upfront_usd)},
            )
        if hourly > p.max_hourly_usd:
            raise PlanFailed(
                "PriceAboveCeiling",
                f"recurring {hourly} USD/hour per instance exceeds max_hourly_usd {p.max_hourly_usd}; "
                "nothing was bought",
                {"hourly_usd": str(hourly), "max_hourly_usd": str(p.max_hourly_usd)},
            )
        duration = int(offering["Duration"])
        started_after = aws.earliest_start()
        return RiPurchaseIntent(
            offering_id=offering["ReservedInstancesOfferingId"],
            instance_count=p.instance_count,
            upfront_usd=upfront_total,
            hourly_usd=hourly,
            commitment_usd=upfront_total + hourly * p.instance_count * (duration // 3600),
            marketplace=bool(offering.get("Marketplace")),
            offering=OfferingAttributes(
                instance_type=offering["InstanceType"],
                product_description=offering["ProductDescription"],
                duration=duration,
                scope=offering.get("Scope", p.scope),
                availability_zone=offering.get("AvailabilityZone"),
                offering_class=offering.get("OfferingClass", p.offering_class),
                offering_type=offering.get("OfferingType", p.offering_type),
                tenancy=offering.get("InstanceTenancy", p.tenancy),
            ),
            purchase_time=p.purchase_time,
            started_after=started_after,
            signature=f"ec2-ri:{aws.account.account_id}:{aws.region}:{offering['ReservedInstancesOfferingId']}",
        )

    def _one_offering(self, aws: PlanHandle, p: PurchaseReservedInstancesParams) -> dict[str, Any]:
        offerings = self.find_offerings(aws, p)
        if not offerings:
            what = f"offering {p.offering_id}" if p.offering_id else "no offering"
            raise PlanFailed(
                "NoMatchingOffering",
                f"{what} matches {p.instance_type} {p.product_description} {p.offering_class} {p.offering_type} "
                f"{p.duration_years}y {p.scope} {p.availability_zone or ''} in {aws.region}; nothing was bought",
            )
        if len(offerings) > 1:
            raise PlanFailed(
                "AmbiguousOffering",
                f"{len(offerings)} offerings match; pin one with params.offering_id; nothing was bought",
                {"offering_ids": [o["ReservedInstancesOfferingId"] for o in offerings],
                 "marketplace": [o.get("Marketplace", False) for o in offerings]},
            )
        return offerings[0]

    # --- the call ------------------------------------------------------------------------------------------
    def _request(self, intent: RiPurchaseIntent) -> dict[str, Any]:
        request: dict[str, Any] = {
            "ReservedInstancesOfferingId": intent.offering_id,
            "InstanceCount": intent.instance_count,
            # For Marketplace offerings AWS charges no more than this in total upfront; never the hourly part.
            "LimitPrice": {"Amount": float(intent.upfront_usd), "CurrencyCode": "USD"},
        }
        if intent.purchase_time:
            request["PurchaseTime"] = intent.purchase_time
        return request

    def submit(self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent) -> Submitted:
        response = aws.send("purchase_reserved_instances_offering", **self._request(intent))
        ri_id = response["ReservedInstancesId"]
        return Submitted(self._result(intent, ri_id, intent.instance_count, "response"), (ri_id,))

    def dry_run(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent
    ) -> dict[str, Any]:
        answer = aws.dry_run("purchase_reserved_instances_offering", **self._request(intent))
        would_buy = {"offering_id": intent.offering_id, "instance_count": intent.instance_count,
                     "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd),
                     "commitment_usd": str(intent.commitment_usd)}
        return {"would_buy": would_buy, "permitted": answer == "DryRunOperation", "aws_answer": answer}

    def after_success(self, aws: PlanHandle, resource_ids: tuple[str, ...]) -> None:
        """Stamp the plan id on the RI where the customer granted ec2:CreateTags (an opt-in extra)."""
        if aws.account.granted("ec2:CreateTags"):
            aws.write_idempotent("create_tags", Resources=list(resource_ids), Tags=[
                {"Key": PLAN_TAG, "Value": aws.plan_id}, {"Key": "commitd:managed-by", "Value": "commitd"}])

    def _result(self, intent: RiPurchaseIntent, ri_id: str, count: int, found_by: str) -> dict[str, Any]:
        return {"reserved_instances_id": ri_id, "offering_id": intent.offering_id, "instance_count": count,
                "upfront_usd": str(intent.upfront_usd), "hourly_usd": str(intent.hourly_usd), "found_by": found_by}

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent
    ) -> Reconciled:
        if aws.account.granted("ec2:CreateTags"):
            tagged = aws.read("describe_reserved_instances", Filters=[
                {"Name": f"tag:{PLAN_TAG}", "Values": [aws.plan_id]}]).get("ReservedInstances", [])
            if len(tagged) > 1:  # two RIs carry this plan's id: it was bought twice
                return Ambiguous(tuple(ri["ReservedInstancesId"] for ri in tagged), {"found_by": "tag"})
            if tagged:
                ri = tagged[0]
                return Found(self._result(intent, ri["ReservedInstancesId"], ri["InstanceCount"], "tag"),
                             (ri["ReservedInstancesId"],))
        candidates = self._matching(aws, intent)
        elsewhere = aws.claimed_elsewhere([c["ReservedInstancesId"] for c in candidates])
        mine = [c for c in candidates if c["ReservedInstancesId"] not in elsewhere]
        evidence = {"matched": [c["ReservedInstancesId"] for c in mine]}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(evidence["matched"]), evidence)
        ri = mine[0]
        return Found(self._result(intent, ri["ReservedInstancesId"], ri["InstanceCount"], "attributes"),
                     (ri["ReservedInstancesId"],), evidence)

    def look_alikes(
        self, aws: PlanHandle, params: PurchaseReservedInstancesParams, intent: RiPurchaseIntent,
        own: tuple[str, ...],
    ) -> dict[str, datetime]:
        return {c["ReservedInstancesId"]: c["Start"] for c in self._matching(aws, intent)}

    def _matching(self, aws: PlanHandle, intent: RiPurchaseIntent) -> list[dict[str, Any]]:
        """RIs with the intent's attributes and count that started at or after the intent (AWS's clock), or at
        the queued purchase time."""
        o = intent.offering
        filters = [
            {"Name": "instance-type", "Values": [o.instance_type]},
            {"Name": "product-description", "Values": [o.product_description]},
            {"Name": "duration", "Values": [str(o.duration)]},
            {"Name": "scope", "Values": [o.scope]},
            {"Name": "state", "Values": RECONCILE_STATES},
        ]
        if o.availability_zone:
            filters.append({"Name": "availability-zone", "Values": [o.availability_zone]})
        response = aws.read("describe_reserved_instances", Filters=filters, OfferingClass=o.offering_class,
                            OfferingType=o.offering_type)
        matched = []
        for ri in response.get("ReservedInstances", []):
            if ri.get("InstanceCount") != intent.instance_count or ri.get("InstanceTenancy", "default") != o.tenancy:
                continue
            start = ri["Start"]
            if intent.purchase_time is not None:
                if abs((start - intent.purchase_time).total_seconds()) > AWS_CLOCK_TOLERANCE.total_seconds():
                    continue
            elif start < intent.started_after:
                continue
            matched.append(ri)
        return matched


# --- ec2:ModifyReservedInstances -------------------------------------------------------------------------------
# AWS's normalization factors for instance size flexibility, by size (EC2 user guide, "Instance size
# flexibility"). A modification keeps the footprint: the sum of factor × count is the same before and after.
NORMALIZATION_FACTORS: dict[str, Decimal] = {
    "nano": Decimal("0.25"), "micro": Decimal("0.5"), "small": Decimal(1), "medium": Decimal(2),
    "large": Decimal(4), "xlarge": Decimal(8), "2xlarge": Decimal(16), "3xlarge": Decimal(24),
    "4xlarge": Decimal(32), "6xlarge": Decimal(48), "8xlarge": Decimal(64), "9xlarge": Decimal(72),
    "10xlarge": Decimal(80), "12xlarge": Decimal(96), "16xlarge": Decimal(128), "18xlarge": Decimal(144),
    "24xlarge": Decimal(192), "32xlarge": Decimal(256), "48xlarge": Decimal(384), "56xlarge": Decimal(448),
    "112xlarge": Decimal(896),
}
MODIFICATIONS = "ReservedInstancesModifications"
INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
ZONE_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$"


def _family(instance_type: str) -> str:
    return instance_type.partition(".")[0]


def _detail(value: Decimal | dict[str, int] | None) -> str | dict[str, int] | None:
    """A footprint or factor in an error's details: a decimal as its text, counts per type as they are."""
    return str(value) if isinstance(value, Decimal) else value


def _shown(footprint: Decimal | dict[str, int]) -> str:
    if isinstance(footprint, Decimal):
        return str(footprint)
    return ", ".join(f"{count} × {instance_type}" for instance_type, count in sorted(footprint.items()))


def _factor(instance_type: str) -> Decimal | None:
    return NORMALIZATION_FACTORS.get(instance_type.partition(".")[2])


class ReservedInstancesConfiguration(BaseModel):
    """One target configuration, as AWS's ``ReservedInstancesConfiguration``. Fields left out keep the source
    RIs' value (when the sources share one)."""

    model_config = STRICT

    instance_count: int = Field(ge=1, le=10_000)
    instance_type: str | None = Field(None, pattern=INSTANCE_TYPE_PATTERN, examples=["m5.large"])
    availability_zone: str | None = Field(None, pattern=ZONE_PATTERN)
    scope: Literal["Region", "Availability Zone"] | None = None
    platform: Literal["EC2-VPC", "EC2-Classic"] | None = None

    @model_validator(mode="after")
    def _scope_rules(self) -> ReservedInstancesConfiguration:
        if self.scope == "Region" and self.availability_zone:
            raise ValueError("availability_zone is only for scope 'Availability Zone'")
        return self


class ModifyReservedInstancesParams(BaseModel):
    """Parameters of ec2:ModifyReservedInstances (docs/actions/ec2-reserved-instances.md)."""

    model_config = STRICT

    reserved_instances_ids: list[str] = Field(min_length=1, max_length=100)
    target_configurations: list[ReservedInstancesConfiguration] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _distinct(self) -> ModifyReservedInstancesParams:
        if len(set(self.reserved_instances_ids)) != len(self.reserved_instances_ids):
            raise ValueError("reserved_instances_ids must be distinct")
        if any(not ri_id.strip() for ri_id in self.reserved_instances_ids):
            raise ValueError("reserved_instances_ids must not be blank")
        return self


class ModificationTarget(BaseModel):
    """A target configuration with every field resolved: what is sent, and what reconciliation expects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_count: int
    instance_type: str
    scope: str
    availability_zone: str | None
    platform: str | None

    def request(self) -> dict[str, Any]:
        config: dict[str, Any] = {"InstanceCount": self.instance_count, "InstanceType": self.instance_type,
                                  "Scope": self.scope}
        if self.availability_zone:
            config["AvailabilityZone"] = self.availability_zone
        if self.platform:
            config["Platform"] = self.platform
        return config

    def shape(self) -> tuple[str, int, str, str]:
        return (self.instance_type, self.instance_count, self.scope, self.availability_zone or "")


class RiModifyIntent(Intent):
    reserved_instances_ids: list[str]
    target_configurations: list[ModificationTarget]
    footprint: Decimal | dict[str, int]  # normalized units (or counts per type), the same before and after


def _ri_shape(ri: dict[str, Any]) -> tuple[str, int, str, str]:
    return (ri["InstanceType"], int(ri["InstanceCount"]), ri.get("Scope", "Region"), ri.get("AvailabilityZone") or "")


def _common(sources: list[dict[str, Any]], key: str) -> Any:
    """The sources' shared value of ``key``, or None when they differ."""
    values = {ri.get(key) for ri in sources}
    return values.pop() if len(values) == 1 else None


@register
class ModifyReservedInstances(Action[ModifyReservedInstancesParams, RiModifyIntent]):
    action: ClassVar[str] = "ec2:ModifyReservedInstances"
    family = EC2_RESERVED_INSTANCES
    service: ClassVar[str] = "ec2"
    params_model = ModifyReservedInstancesParams
    intent_model = RiModifyIntent
    idempotency = Idempotency.CLIENT_TOKEN
    # The new RIs are claimed in the purchase's namespace, so that a purchase plan reconciling by attributes
    # never takes an RI this modification made for its own.
    nouns = Nouns(resource="reserved instances", done="modified", claim_kind="ec2-ri")
    permissions = frozenset({
        "ec2:ModifyReservedInstances",
        "ec2:DescribeReservedInstances",
        "ec2:DescribeReservedInstancesModifications",
    })
    # No done signals: reference §1 reads InvalidReservedInstancesId as "maybe already modified", but a re-send
    # carries the plan's token, which AWS answers with the original modification; and reconciliation (by that token)
    # always comes first. Taken as a done signal, a genuine refusal would be re-sent after every conclusive absence.

    # --- reads before --------------------------------------------------------------------------------------
    def prepare(self, aws: PlanHandle, params: ModifyReservedInstancesParams) -> RiModifyIntent:
        sources = self._sources(aws, params.reserved_instances_ids)
        self._check_same_kind(sources)
        pending = aws.paginate("describe_reserved_instances_modifications", MODIFICATIONS, Filters=[
            {"Name": "reserved-instances-id", "Values": list(params.reserved_instances_ids)},
            {"Name": "status", "Values": ["processing"]},
        ])
        if pending:
            raise PlanFailed("ModificationPending", "a modification of these Reserved Instances is still processing "
                             f"({[m['ReservedInstancesModificationId'] for m in pending]}); nothing was modified")
        targets = [self._resolve(aws, sources, t) for t in params.target_configurations]
        have = self._footprint((ri["InstanceType"], int(ri["InstanceCount"])) for ri in sources)
        want = self._footprint((t.instance_type, t.instance_count) for t in targets)
        if have != want:
            raise PlanFailed(
                "FootprintMismatch",
                f"the target configurations' normalized footprint ({_shown(want)}) differs from that of the "
                f"Reserved Instances being modified ({_shown(have)}); the sum of normalization factor × count must "
                "stay the same (for a size without a factor, such as metal, the count per instance type); nothing "
                "was modified",
                {"source_footprint": _detail(have), "target_footprint": _detail(want),
                 "normalization_factors": {t.instance_type: _detail(_factor(t.instance_type)) for t in targets}},
            )
        if sorted(_ri_shape(ri) for ri in sources) == sorted(t.shape() for t in targets):
            raise PlanFailed("NothingToModify", "the target configurations are the Reserved Instances' current "
                             "ones; nothing was modified")
        return RiModifyIntent(
            reserved_instances_ids=list(params.reserved_instances_ids),
            target_configurations=targets,
            footprint=have,
            idempotency_value=derive_token(aws.plan_id),  # 48 ASCII characters; EC2 allows 64
        )

    def _sources(self, aws: PlanHandle, ids: list[str]) -> list[dict[str, Any]]:
        try:
            found = aws.read("describe_reserved_instances", ReservedInstancesIds=list(ids))["ReservedInstances"]
        except ClientError as exc:
            if error_code(exc) != "InvalidReservedInstancesId":
                raise
            raise PlanFailed("UnknownReservedInstances", f"{exc.response['Error'].get('Message')}; nothing was "
                             "modified") from None
        by_id = {ri["ReservedInstancesId"]: ri for ri in found}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise PlanFailed("UnknownReservedInstances", f"Reserved Instances {missing} do not exist in "
                             f"{aws.region}; nothing was modified")
        inactive = {i: by_id[i].get("State") for i in ids if by_id[i].get("State") != "active"}
        if inactive:
            raise PlanFailed("ReservedInstancesNotActive", f"only active Reserved Instances can be modified: "
                             f"{inactive}; nothing was modified", {"states": inactive})
        return [by_id[i] for i in ids]

    def _check_same_kind(self, sources: list[dict[str, Any]]) -> None:
        """RIs modified together share family, platform, tenancy and class, and end in the same hour (AWS)."""
        first = sources[0]
        for other in sources[1:]:
            same = (
                _family(other["InstanceType"]) == _family(first["InstanceType"])
                and other.get("ProductDescription") == first.get("ProductDescription")
                and other.get("InstanceTenancy") == first.get("InstanceTenancy")
                and other.get("OfferingClass") == first.get("OfferingClass")
                and other["End"].replace(minute=0, second=0, microsecond=0)
                == first["End"].replace(minute=0, second=0, microsecond=0)
            )
            if not same:
                raise PlanFailed(
                    "IncompatibleReservedInstances",
                    f"{first['ReservedInstancesId']} and {other['ReservedInstancesId']} cannot be modified together: "
                    "they must share instance family, platform, tenancy and offering class, and end in the same "
                    "hour; nothing was modified",
                )

    def _resolve(
        self, aws: PlanHandle, sources: list[dict[str, Any]], target: ReservedInstancesConfiguration
    ) -> ModificationTarget:
        instance_type = target.instance_type or _common(sources, "InstanceType")
        if instance_type is None:
            raise PlanFailed("InstanceTypeRequired", "the Reserved Instances have different instance types: each "
                             "target configuration must name its instance_type; nothing was modified")
        if _family(instance_type) != _family(sources[0]["InstanceType"]):
            raise PlanFailed("OtherInstanceFamily", f"{instance_type} is not in the instance family "
                             f"{_family(sources[0]['InstanceType'])} of the Reserved Instances; nothing was modified")
        resized = any(instance_type != ri["InstanceType"] for ri in sources)
        if resized and (_factor(instance_type) is None or any(_factor(ri["InstanceType"]) is None for ri in sources)):
            raise PlanFailed("UnknownInstanceSize", f"{instance_type} or a source's size has no normalization "
                             "factor, so its size cannot change; nothing was modified")
        if resized and (sources[0].get("ProductDescription") != "Linux/UNIX"
                        or sources[0].get("InstanceTenancy", "default") != "default"):
            raise PlanFailed("SizeChangeNotSupported", "AWS changes the instance size only of Linux/UNIX Reserved "
                             "Instances with default tenancy; nothing was modified")
        scope = target.scope or ("Availability Zone" if target.availability_zone else _common(sources, "Scope"))
        if scope is None:
            raise PlanFailed("ScopeRequired", "the Reserved Instances have different scopes: each target "
                             "configuration must name its scope; nothing was modified")
        zone: str | None = None
        if scope == "Availability Zone":
            zone = target.availability_zone or _common(sources, "AvailabilityZone")
            if zone is None:
                raise PlanFailed("AvailabilityZoneRequired", "a zonal target configuration needs an "
                                 "availability_zone (the Reserved Instances do not share one); nothing was modified")
            if not (zone.startswith(aws.region) and len(zone) == len(aws.region) + 1):
                raise PlanFailed("AvailabilityZoneNotInRegion", f"{zone} is not a zone of {aws.region}; nothing "
                                 "was modified")
        return ModificationTarget(instance_count=target.instance_count, instance_type=instance_type, scope=scope,
                                  availability_zone=zone, platform=target.platform)

    @staticmethod
    def _footprint(items: Iterable[tuple[str, int]]) -> Decimal | dict[str, int]:
        """Normalized units (factor × count, summed); a size without a factor (``metal``) cannot change size
        (``_resolve``), so then the footprint is the count per instance type."""
        pairs = list(items)
        if all(_factor(instance_type) is not None for instance_type, _ in pairs):
            return sum(((_factor(instance_type) or Decimal(0)) * count for instance_type, count in pairs), Decimal(0))
        counts: dict[str, int] = {}
        for instance_type, count in pairs:
            counts[instance_type] = counts.get(instance_type, 0) + count
        return counts

    # --- the call ------------------------------------------------------------------------------------------
    def submit(self, aws: PlanHandle, params: ModifyReservedInstancesParams, intent: RiModifyIntent) -> Submitted:
        response = aws.send(
            "modify_reserved_instances",
            ReservedInstancesIds=intent.reserved_instances_ids,
            TargetConfigurations=[t.request() for t in intent.target_configurations],
            ClientToken=intent.idempotency_value,
        )
        modification_id = response["ReservedInstancesModificationId"]
        return Submitted({"reserved_instances_modification_id": modification_id}, (),
                         follow=f"modification {modification_id} is processing")

    # --- reconciliation ------------------------------------------------------------------------------------
    def reconcile(
        self, aws: PlanHandle, params: ModifyReservedInstancesParams, intent: RiModifyIntent
    ) -> Reconciled:
        accepted_id = (aws.accepted or {}).get("reserved_instances_modification_id")
        # A filter, not ReservedInstancesModificationIds: an id AWS does not show yet is an empty answer, not an
        # error. Without AWS's answer (it was lost), the plan's own token finds its modification.
        if accepted_id:
            found_by, filters = "modification_id", [{"Name": "reserved-instances-modification-id",
                                                     "Values": [accepted_id]}]
        else:
            found_by, filters = "client_token", [{"Name": "client-token", "Values": [intent.idempotency_value]}]
        mods = aws.paginate("describe_reserved_instances_modifications", MODIFICATIONS, Filters=filters)
        evidence: dict[str, Any] = {"found_by": found_by}
        if not mods:
            if accepted_id:
                return Pending(f"modification {accepted_id} accepted by AWS, not visible yet", evidence)
            return Absent(evidence)
        if len(mods) > 1:
            return Ambiguous(tuple(m["ReservedInstancesModificationId"] for m in mods), evidence)
        mod = mods[0]
        mod_id, status = mod["ReservedInstancesModificationId"], mod.get("Status")
        evidence.update(reserved_instances_modification_id=mod_id, status=status)
        if status == "failed":
            return Failed("ModificationFailed", f"AWS failed modification {mod_id}: {mod.get('StatusMessage')}; "
                          "the Reserved Instances were not modified", evidence)
        if status != "fulfilled":
            return Pending(f"modification {mod_id} is {status}", evidence)
        new_ids = [r["ReservedInstancesId"] for r in mod.get("ModificationResults", []) if r.get("ReservedInstancesId")]
        new_ris = aws.read("describe_reserved_instances", ReservedInstancesIds=new_ids)["ReservedInstances"]
        # The target state, checked: the new RIs are what the plan asked for.
        made = sorted(_ri_shape(ri) for ri in new_ris)
        if made != sorted(t.shape() for t in intent.target_configurations):
            evidence.update(expected=[list(t.shape()) for t in intent.target_configurations],
                            found=[list(m) for m in made])
            return Ambiguous(tuple(new_ids), evidence)
        result = {
            "reserved_instances_modification_id": mod_id,
            "status": status,
            "source_reserved_instances_ids": intent.reserved_instances_ids,
            "new_reserved_instances": [
                {"reserved_instances_id": ri["ReservedInstancesId"], "instance_type": ri["InstanceType"],
                 "instance_count": ri["InstanceCount"], "scope": ri.get("Scope"),
                 "availability_zone": ri.get("AvailabilityZone"), "state": ri.get("State")}
                for ri in new_ris
            ],
            "effective_date": mod["EffectiveDate"].isoformat() if mod.get("EffectiveDate") else None,
            "footprint": intent.footprint if isinstance(intent.footprint, dict) else str(intent.footprint),
            "found_by": found_by,
        }
        return Found(result, tuple(ri["ReservedInstancesId"] for ri in new_ris), evidence)
