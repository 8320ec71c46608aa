"""Scheduled renewals: commitments that end soon, renewed through the normal intake (docs/renewals.md).

A scan reads, per account with a renewal policy and per region of that policy, the account's active commitments
(EC2 Reserved Instances, Savings Plans, RDS, ElastiCache, Redshift and OpenSearch reservations) that end within
its renewal window, and applies the policy's rule for their kind: ``renew`` (the same offering, count and term),
``replace`` (another term or payment, or a Savings Plan instead), or ``report`` (listed, never bought).

Every read goes through the customer's role as actions read (``PlanHandle`` on the kind's purchase action: the
family's read session and session policy, every call audited). The price comes from the purchase action's own
``prepare`` on the would-be params: the offering the scan prices is the one the worker will buy, and the plan
pins it (``offering_id``) with ceilings of that price plus the policy's ``max_price_increase_pct``.

Renewal plans go through ``Intake.submit_raw`` with ``trigger: "renewal"`` and a ``plan_id`` derived from the
expiring commitment (``renewal_plan_id``), so a second scan, a scan fired twice or two scans at once never make a
second renewal: a scan skips a commitment whose plan exists (in the ledger, as a purged plan's tombstone, or in the
scan's own marker, which outlives retention until the commitment has ended), and intake refuses to record a plan
id twice. Where the purchase API can queue (EC2 RIs with regional scope: ``PurchaseTime``; Savings Plans:
``purchaseTime``) the plan runs now and the new commitment starts exactly when the old one ends; elsewhere the
plan waits (``not_before``) until the end and expires ``late_hours`` after it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from config.settings import ConfigurationError
from worker.actions import YEAR_SECONDS, Action, PlanFailed, family_permissions
from worker.celery_app import app
from worker.errors import describe
from worker.logs import get_logger
from worker.plans import describe_validation_error

# Only what the policy model and the task need is imported at the top: config.accounts imports RenewalPolicy for
# AccountConfig's ``renewal`` field, and the account registry, the AWS sessions and intake import config.accounts.
if TYPE_CHECKING:
    from config.accounts import AccountConfig
    from worker.aws import AwsSessions
    from worker.handle import PlanHandle
    from worker.intake import Intake, IntakeResult
    from worker.ledger import Ledger
    from worker.runtime import Runtime

log = get_logger("commitd.renewals")

SCAN_TASK = "commitd.renewals.scan"
QUEUE = "commitd.renewals"
SOURCE = "renewals"  # the intake source of renewal plans
SCAN_ID = "renewals-scan"  # the audit trail's plan_id of the scan's listing reads
GLOBAL = "global"  # the region shown for Savings Plans, which apply in every region
SAVINGS_PLANS_REGION = "us-east-1"  # where the Savings Plans API answers (and where its plans are made)
# A marker outlives the commitment's end by this much, so that retention purging a renewal plan (and later its
# tombstone) never makes the commitment look unrenewed while it can still be scanned.
MARKER_MARGIN = timedelta(days=30)
# The probe's ceilings: high enough that ``prepare`` never refuses on price (it only reports the price).
PROBE_CEILING = "99999999999999"
RUNS_KEPT = 1000

Mode = Literal["renew", "replace", "report"]
Payment = Literal["No Upfront", "Partial Upfront", "All Upfront"]
TERMS = {YEAR_SECONDS: 1, 3 * YEAR_SECONDS: 3}


# =================================================================================================================
# The policy
# =================================================================================================================
class SavingsPlanTarget(BaseModel):
    """Renew into a Savings Plan: committing per hour what the expiring commitment costs per hour (its upfront
    spread over its term plus its recurring charges, all units) × ``commitment_share``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plan_type: Literal["Compute", "EC2Instance"]
    payment_option: Payment = "No Upfront"
    duration_years: Literal[1, 3] = 1
    commitment_share: Decimal = Field(Decimal(1), gt=0, le=2)


class Replacement(BaseModel):
    """What ``replace`` renews into: a Savings Plan, or the same kind with another term and/or payment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    savings_plan: SavingsPlanTarget | None = None
    duration_years: Literal[1, 3] | None = None
    payment: Payment | None = None

    @model_validator(mode="after")
    def _one_kind_of_change(self) -> Replacement:
        if self.savings_plan is not None and (self.duration_years is not None or self.payment is not None):
            raise ValueError("give savings_plan, or duration_years/payment for the same kind, not both")
        if self.savings_plan is None and self.duration_years is None and self.payment is None:
            raise ValueError("name what to renew into: savings_plan, duration_years or payment")
        return self


class RenewalRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "report"
    into: Replacement | None = None

    @model_validator(mode="after")
    def _into_for_replace(self) -> RenewalRule:
        if (self.mode == "replace") != (self.into is not None):
            raise ValueError("mode 'replace' needs 'into', and only it takes one")
        return self


class RenewalPolicy(BaseModel):
    """An account's renewal policy (the account registry's ``renewal`` block). Nothing is bought by default:
    every kind is ``report`` until the policy says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_days: int = Field(30, ge=1, le=366, description="renew commitments ending within this many days")
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"], min_length=1,
                               description="regions scanned (Savings Plans are global and scanned once)")
    max_price_increase_pct: Decimal = Field(
        Decimal(0), ge=0, le=100, description="the plan's ceilings: the price at the scan plus this share")
    late_hours: int = Field(24, ge=1, le=720, description="a renewal that waits for the end (no queued purchase) "
                            "and has not run this long after it expires instead of buying late")
    requested_by: str = Field("commitd-renewals", min_length=1, max_length=256)
    ec2_reserved_instances: RenewalRule = Field(default_factory=RenewalRule)
    savings_plans: RenewalRule = Field(default_factory=RenewalRule)
    rds_reservations: RenewalRule = Field(default_factory=RenewalRule)
    elasticache_reservations: RenewalRule = Field(default_factory=RenewalRule)
    redshift_reservations: RenewalRule = Field(default_factory=RenewalRule)
    opensearch_reservations: RenewalRule = Field(default_factory=RenewalRule)

    @model_validator(mode="after")
    def _savings_plans_from_compute_only(self) -> RenewalPolicy:
        for name in ("rds_reservations", "elasticache_reservations", "redshift_reservations",
                     "opensearch_reservations"):
            into = getattr(self, name).into
            if into is not None and into.savings_plan is not None:
                raise ValueError(f"{name}: a Savings Plan replaces EC2 Reserved Instances or Savings Plans only")
        return self

    def rule(self, kind: str) -> RenewalRule:
        rule: RenewalRule = getattr(self, kind)
        return rule


def load_policy(account: Mapping[str, Any]) -> RenewalPolicy | None:
    """The renewal policy of an account as the registry holds it (a dict with an optional ``renewal`` block)."""
    block = account.get("renewal")
    if block is None:
        return None
    try:
        return RenewalPolicy.model_validate(block)
    except ValidationError as exc:
        raise ConfigurationError(f"account {account.get('account_id')}: renewal: "
                                 f"{describe_validation_error(exc)}") from None


def renewal_accounts(accounts_file: Path | None) -> list[tuple[AccountConfig, RenewalPolicy]]:
    """The registry's accounts that have a renewal policy. Read from the file's account dicts: the ``renewal``
    block is parsed here (``load_policy``), the rest as ``AccountConfig``. Once ``AccountConfig`` carries the
    block (``renewal: RenewalPolicy | None``), this is ``[(a, a.renewal) for a in registry.accounts if a.renewal]``
    on the reloading registry."""
    if accounts_file is None:
        return []
    try:
        data = json.loads(Path(accounts_file).read_text())
    except (OSError, ValueError) as exc:  # what the registry itself says of such a file (config.accounts)
        raise ConfigurationError(f"COMMITD_ACCOUNTS_FILE: cannot read {accounts_file} as JSON: {exc}") from None
    found = []
    for entry in data.get("accounts", []) if isinstance(data, dict) else []:
        policy = load_policy(entry) if isinstance(entry, dict) else None
        if policy is None:
            continue
        from config.accounts import AccountConfig

        try:
            account = AccountConfig.model_validate({k: v for k, v in entry.items() if k != "renewal"})
        except ValidationError as exc:
            raise ConfigurationError(f"COMMITD_ACCOUNTS_FILE {accounts_file}: {describe_validation_error(exc)}") \
                from None
        found.append((account, policy))
    return found


# =================================================================================================================
# Commitments, and what renewing one means
# =================================================================================================================
@dataclass(frozen=True)
class Commitment:
    """An active commitment as AWS describes it."""

    kind: str
    account_id: str
    region: str
    commitment_id: str
    count: int
    start: datetime
    end: datetime
    hourly_cost_usd: Decimal  # all units, upfront spread over the term plus recurring charges
    record: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Renewal:
    """What a scan decided for one expiring commitment."""

    commitment: Commitment
    mode: Mode
    plan_id: str
    # "submit": a new plan (submitted by a scan, shown by preview); "planned": a renewal plan exists already;
    # "report": the policy only reports this kind; "unavailable": it cannot be renewed as the policy says (reason).
    status: Literal["submit", "planned", "report", "unavailable"]
    action: str | None = None
    into: str | None = None
    scheduling: Literal["purchase_time", "not_before"] | None = None
    upfront_usd: Decimal | None = None
    recurring_usd_per_hour: Decimal | None = None
    total_usd: Decimal | None = None
    plan: dict[str, Any] | None = None
    state: str | None = None  # an existing plan's state
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        c = self.commitment
        money = {name: None if value is None else _text(value.normalize()) for name, value in (
            ("upfront_usd", self.upfront_usd), ("recurring_usd_per_hour", self.recurring_usd_per_hour),
            ("total_usd", self.total_usd))}
        return {"account_id": c.account_id, "region": c.region, "kind": c.kind, "commitment_id": c.commitment_id,
                "count": c.count, "ends_at": _rfc3339(c.end), "mode": self.mode, "status": self.status,
                "plan_id": self.plan_id, "action": self.action, "into": self.into,
                "starts_at": _rfc3339(_whole_second(c.end) if self.scheduling == "purchase_time" else c.end),
                "scheduling": self.scheduling, **money, "state": self.state, "reason": self.reason}


@dataclass(frozen=True)
class ReservationKind:
    """A reservation kind (all but Savings Plans): how AWS lists it and names its fields, and which params of its
    purchase action carry them over."""

    name: str  # the policy's key: the family's name
    short: str  # in plan ids
    action: str  # the purchase action a renewal plans
    listing: str  # the boto3 operation listing the account's reservations
    listing_key: str
    id_key: str
    count_key: str
    count_param: str
    offering_key: str | None  # the reservation's offering id, pinned by a like-for-like renewal
    payment_key: str
    payment_param: str
    selectors: tuple[tuple[str, str], ...]  # (param, AWS field) copied from the reservation
    amount_key: str = "RecurringChargeAmount"
    frequency_key: str = "RecurringChargeFrequency"
    fixed: tuple[tuple[str, Any], ...] = ()  # params every renewal of the kind carries
    payments: tuple[tuple[str, str], ...] = ()  # the policy's payment names → the service's, where they differ


EC2_RI = ReservationKind(
    "ec2_reserved_instances", "ec2-ri", "ec2:PurchaseReservedInstancesOffering", "describe_reserved_instances",
    "ReservedInstances", "ReservedInstancesId", "InstanceCount", "instance_count", None, "OfferingType",
    "offering_type", (("instance_type", "InstanceType"), ("product_description", "ProductDescription"),
                      ("offering_class", "OfferingClass"), ("scope", "Scope"), ("tenancy", "InstanceTenancy")),
    amount_key="Amount", frequency_key="Frequency")
RDS = ReservationKind(
    "rds_reservations", "rds", "rds:PurchaseReservedDbInstancesOffering", "describe_reserved_db_instances",
    "ReservedDBInstances", "ReservedDBInstanceId", "DBInstanceCount", "db_instance_count",
    "ReservedDBInstancesOfferingId", "OfferingType", "offering_type",
    (("db_instance_class", "DBInstanceClass"), ("product_description", "ProductDescription"),
     ("multi_az", "MultiAZ")))
ELASTICACHE = ReservationKind(
    "elasticache_reservations", "elasticache", "elasticache:PurchaseReservedCacheNodesOffering",
    "describe_reserved_cache_nodes", "ReservedCacheNodes", "ReservedCacheNodeId", "CacheNodeCount",
    "cache_node_count", "ReservedCacheNodesOfferingId", "OfferingType", "offering_type",
    (("cache_node_type", "CacheNodeType"), ("product_description", "ProductDescription")))
REDSHIFT = ReservationKind(
    "redshift_reservations", "redshift", "redshift:PurchaseReservedNodeOffering", "describe_reserved_nodes",
    "ReservedNodes", "ReservedNodeId", "NodeCount", "node_count", "ReservedNodeOfferingId", "OfferingType",
    "offering_type", (("node_type", "NodeType"), ("reserved_node_offering_type", "ReservedNodeOfferingType")))
OPENSEARCH = ReservationKind(
    "opensearch_reservations", "opensearch", "es:PurchaseReservedElasticsearchInstanceOffering",
    "describe_reserved_elasticsearch_instances", "ReservedElasticsearchInstances",
    "ReservedElasticsearchInstanceId", "ElasticsearchInstanceCount", "instance_count",
    "ReservedElasticsearchInstanceOfferingId", "PaymentOption", "payment_option",
    (("instance_type", "ElasticsearchInstanceType"),), fixed=(("api", "elasticsearch"),),
    payments=(("No Upfront", "NO_UPFRONT"), ("Partial Upfront", "PARTIAL_UPFRONT"), ("All Upfront", "ALL_UPFRONT")))
RESERVATION_KINDS: tuple[ReservationKind, ...] = (EC2_RI, RDS, ELASTICACHE, REDSHIFT, OPENSEARCH)
SAVINGS_PLANS = "savings_plans"
SAVINGS_PLAN_ACTION = "savingsplans:CreateSavingsPlan"
KIND_NAMES: tuple[str, ...] = (EC2_RI.name, SAVINGS_PLANS, RDS.name, ELASTICACHE.name, REDSHIFT.name,
                               OPENSEARCH.name)
# Params a description of the target shows, in this order (the rest is money, timing or ids).
DESCRIBED = ("plan_type", "instance_type", "db_instance_class", "cache_node_type", "node_type", "product_description",
             "offering_class", "multi_az", "offering_type", "payment_option", "duration_years", "scope",
             "availability_zone", "region", "instance_family")
CEILINGS = ("max_upfront_usd", "max_hourly_usd", "max_total_usd")


class Unavailable(Exception):
    """This commitment cannot be renewed as the policy says; the reason is for people."""


@dataclass(frozen=True)
class _Target:
    """What a renewal buys: the action, where, and its params without ceilings."""

    action: str
    region: str
    params: dict[str, Any]
    queueable: bool
    count: int | None


# --- small helpers ------------------------------------------------------------------------------------------------
def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _whole_second(when: datetime) -> datetime:
    """A queued purchase's start: the old end, rounded up to the second. The APIs take whole seconds (botocore
    sends Savings Plans' purchaseTime as an epoch second), and a start rounded down would overlap the old one."""
    return when if when.microsecond == 0 else when.replace(microsecond=0) + timedelta(seconds=1)


def _text(value: Decimal) -> str:
    return format(value, "f")


def _money(value: Decimal) -> str:
    """A plan's money: a decimal string of at most 4 decimals, rounded up (a ceiling never falls below the price)."""
    return _text(value.quantize(Decimal("0.0001"), ROUND_CEILING).normalize())


def _time(value: Any) -> datetime:
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _years(seconds: int) -> int:
    years = TERMS.get(int(seconds))
    if years is None:
        raise Unavailable(f"a term of {seconds} seconds is not one of 1 or 3 years")
    return years


def renewal_plan_id(account_id: str, region: str, kind: str, commitment_id: str) -> str:
    """The renewal's plan id, derived from the expiring commitment: the same on every scan and every process."""
    short = next((k.short for k in RESERVATION_KINDS if k.name == kind), "sp")
    plan_id = f"renewal:{account_id}:{region}:{short}:{commitment_id}"
    if len(plan_id) > 128 or not re.fullmatch(r"[A-Za-z0-9._:-]+", plan_id):
        # Customer-chosen ids may hold other characters or be long: a digest keeps the id valid and unique.
        plan_id = f"renewal:{account_id}:{region}:{short}:{sha256(commitment_id.encode()).hexdigest()[:40]}"
    return plan_id


def _hourly_cost(record: dict[str, Any], amount_key: str, frequency_key: str, count: int, seconds: int) -> Decimal:
    """What a reservation costs per hour, all units: its upfront spread over the term plus its hourly charges."""
    recurring = sum((Decimal(str(c[amount_key])) for c in record.get("RecurringCharges", [])
                     if c.get(frequency_key) == "Hourly"), Decimal(0))
    hours = max(seconds // 3600, 1)
    per_unit = Decimal(str(record.get("FixedPrice", 0))) / hours + Decimal(str(record.get("UsagePrice", 0))) + recurring
    return per_unit * count


# =================================================================================================================
# Reading an account's commitments
# =================================================================================================================
def _handle(sessions: AwsSessions, account: AccountConfig, action_name: str, region: str,
            plan_id: str) -> PlanHandle:
    """Reads as the action's own reads: its family's read session and session policy, audited under plan_id."""
    from tasks import ACTIONS
    from worker.handle import PlanHandle

    action = ACTIONS[action_name]
    return PlanHandle(sessions, action, account, region, plan_id,
                      family_permissions(action.family, account.extra_permissions))


def _reservations(sessions: AwsSessions, account: AccountConfig, kind: ReservationKind,
                  region: str) -> list[Commitment]:
    handle = _handle(sessions, account, kind.action, region, SCAN_ID)
    if kind is EC2_RI:  # not paged; AWS filters by state
        items = handle.read(kind.listing, Filters=[{"Name": "state", "Values": ["active"]}])[kind.listing_key]
    else:
        items = handle.paginate(kind.listing, kind.listing_key)
    found = []
    for r in items:
        if r.get("State") != "active":
            continue
        seconds = int(r["Duration"])
        start = _time(r["Start"] if kind is EC2_RI else r["StartTime"])
        end = _time(r["End"]) if kind is EC2_RI else start + timedelta(seconds=seconds)
        count = int(r[kind.count_key])
        found.append(Commitment(kind.name, account.account_id, region, str(r[kind.id_key]), count, start, end,
                                _hourly_cost(r, kind.amount_key, kind.frequency_key, count, seconds), r))
    return found


def _savings_plans(sessions: AwsSessions, account: AccountConfig) -> list[Commitment]:
    handle = _handle(sessions, account, SAVINGS_PLAN_ACTION, SAVINGS_PLANS_REGION, SCAN_ID)
    found = []
    for sp in handle.paginate("describe_savings_plans", "savingsPlans", states=["active"]):
        if sp.get("state") != "active":
            continue
        found.append(Commitment(SAVINGS_PLANS, account.account_id, GLOBAL, str(sp["savingsPlanId"]), 1,
                                _time(sp["start"]), _time(sp["end"]), Decimal(str(sp["commitment"])), sp))
    return found


# =================================================================================================================
# What a renewal buys
# =================================================================================================================
def _reservation_target(kind: ReservationKind, c: Commitment, change: Replacement | None) -> _Target:
    r = c.record
    payments = dict(kind.payments)
    params: dict[str, Any] = dict(kind.fixed)
    for param, aws_field in kind.selectors:
        if r.get(aws_field) is not None:
            params[param] = r[aws_field]
    years = _years(int(r["Duration"]))
    params["duration_years"] = change.duration_years if change and change.duration_years else years
    payment = change.payment if change and change.payment else None
    params[kind.payment_param] = payments.get(payment, payment) if payment else r[kind.payment_key]
    params[kind.count_param] = c.count
    if change is None and kind.offering_key:
        params["offering_id"] = r[kind.offering_key]  # like for like: the very offering it was bought from
    queueable = False
    if kind is EC2_RI:
        if r.get("Scope") == "Availability Zone":
            params["availability_zone"] = r["AvailabilityZone"]
        queueable = r.get("Scope", "Region") == "Region"  # AWS queues regional purchases only
    return _Target(kind.action, c.region, params, queueable, c.count)


def _savings_plan_params(plan_type: str, payment: str, years: int, per_hour: Decimal,
                         region: str | None, family: str | None) -> dict[str, Any]:
    if per_hour < Decimal("0.001"):
        raise Unavailable(f"a commitment of {per_hour} USD/hour is below the Savings Plans minimum of 0.001")
    params: dict[str, Any] = {"plan_type": plan_type, "payment_option": payment, "duration_years": years,
                              "commitment_usd_per_hour": _text(per_hour)}
    if plan_type == "EC2Instance":
        if not region or not family:
            raise Unavailable("an EC2 Instance Savings Plan needs a region and an instance family, which the "
                              "expiring commitment does not name")
        params.update(region=region, instance_family=family)
    if payment == "Partial Upfront":  # AWS: a whole number; half the total is its documented usual share
        total = per_hour * years * YEAR_SECONDS // 3600
        params["upfront_payment_amount"] = _text((total / 2).to_integral_value(ROUND_CEILING))
    return params


def _savings_plan_target(c: Commitment, change: Replacement | None) -> _Target:
    """A Savings Plan renewed as a Savings Plan: like for like (the same offering, commitment and upfront
    payment), or with another term or payment."""
    sp = c.record
    years = _years(int(sp["termDurationInSeconds"]))
    payment = change.payment if change and change.payment else sp["paymentOption"]
    params = _savings_plan_params(sp["savingsPlanType"], payment, change.duration_years if change and
                                  change.duration_years else years, Decimal(str(sp["commitment"])),
                                  sp.get("region"), sp.get("ec2InstanceFamily"))
    if change is None:
        params["offering_id"] = sp["offeringId"]
        if payment == "Partial Upfront":
            params["upfront_payment_amount"] = str(sp["upfrontPaymentAmount"])
    return _Target(SAVINGS_PLAN_ACTION, SAVINGS_PLANS_REGION, params, True, None)


def _into_savings_plan(c: Commitment, target: SavingsPlanTarget) -> _Target:
    if c.kind == SAVINGS_PLANS:
        region, family = c.record.get("region"), c.record.get("ec2InstanceFamily")
    else:
        region, family = c.region, str(c.record["InstanceType"]).partition(".")[0]
    # Rounded down to the plan format's 4 decimals: never commit more than the share asked for.
    per_hour = (c.hourly_cost_usd * target.commitment_share).quantize(Decimal("0.0001"), ROUND_DOWN)
    params = _savings_plan_params(target.plan_type, target.payment_option, target.duration_years, per_hour,
                                  region, family)
    return _Target(SAVINGS_PLAN_ACTION, SAVINGS_PLANS_REGION, params, True, None)


def _target(c: Commitment, rule: RenewalRule) -> _Target:
    change = rule.into if rule.mode == "replace" else None
    if change is not None and change.savings_plan is not None:
        return _into_savings_plan(c, change.savings_plan)
    if c.kind == SAVINGS_PLANS:
        return _savings_plan_target(c, change)
    kind = next(k for k in RESERVATION_KINDS if k.name == c.kind)
    return _reservation_target(kind, c, change)


def _pin_aws_ri_offering(action: Action[Any, Any], handle: PlanHandle, probe: BaseModel) -> str:
    """The one AWS (not Marketplace) RI offering of these attributes: a renewal never buys a third party's."""
    offerings = [o for o in action.find_offerings(handle, probe)  # type: ignore[attr-defined]
                 if not o.get("Marketplace")]
    if len(offerings) != 1:
        raise Unavailable(f"{len(offerings)} AWS offerings match the Reserved Instances' attributes in "
                          f"{handle.region}; a renewal needs exactly one")
    return str(offerings[0]["ReservedInstancesOfferingId"])


@dataclass(frozen=True)
class _Priced:
    params: dict[str, Any]  # the target's params with its offering pinned
    prices: dict[str, Decimal]  # the price under each ceiling param of the action
    upfront: Decimal
    total: Decimal
    hours: int


def _price(sessions: AwsSessions, account: AccountConfig, plan_id: str, target: _Target, end: datetime) -> _Priced:
    """The target priced by the action's own ``prepare`` (reads only) on the would-be params."""
    from tasks import ACTIONS

    action = ACTIONS[target.action]
    params = dict(target.params)
    if target.queueable:
        params["purchase_time"] = _rfc3339(_whole_second(end))
    ceilings = [name for name in CEILINGS if name in action.params_model.model_fields]
    handle = _handle(sessions, account, target.action, target.region, plan_id)
    try:
        probe = action.params_model.model_validate({**params, **dict.fromkeys(ceilings, PROBE_CEILING)})
        if target.action == EC2_RI.action:
            params["offering_id"] = _pin_aws_ri_offering(action, handle, probe)
            probe = action.params_model.model_validate({**params, **dict.fromkeys(ceilings, PROBE_CEILING)})
        intent = action.prepare(handle, probe)
    except ValidationError as exc:
        raise Unavailable(describe_validation_error(exc, "params")) from None
    except PlanFailed as exc:
        raise Unavailable(f"{exc.code}: {exc.message}") from None
    params["offering_id"] = intent.offering_id
    upfront, total = Decimal(intent.upfront_usd), Decimal(intent.commitment_usd)
    prices = {"max_upfront_usd": upfront, "max_total_usd": total, "max_hourly_usd": Decimal(
        getattr(intent, "hourly_usd", 0))}  # per unit, where the action has units
    # Each intent names its term its own way (the RI's is in its offering's attributes).
    seconds = getattr(intent, "duration_seconds", None) or getattr(intent, "duration", None) \
        or intent.offering.duration
    return _Priced(params, {name: prices[name] for name in ceilings}, upfront, total, int(seconds) // 3600)


def _describe(params: dict[str, Any], count: int | None) -> str:
    """The target in a few words: 'db.r5.large mysql Multi-AZ All Upfront 1y × 3'."""
    words = []
    for name in DESCRIBED:
        value = params.get(name)
        if value is None or value is False:
            continue
        words.append("Multi-AZ" if name == "multi_az" else f"{value}y" if name == "duration_years" else str(value))
    tail = f"× {count}" if count else f"at {params['commitment_usd_per_hour']} USD/h"
    return " ".join([*words, tail])


def plan_renewal(sessions: AwsSessions, account: AccountConfig, policy: RenewalPolicy, c: Commitment,
                 plan_id: str) -> Renewal:
    """The renewal of one expiring commitment as the policy says: a plan ready for intake, or why not."""
    rule = policy.rule(c.kind)
    if rule.mode == "report":
        return Renewal(c, rule.mode, plan_id, "report")
    try:
        target = _target(c, rule)
        if not account.allows(target.action):  # intake would reject it, and a rejected plan id is never reused
            raise Unavailable(f"the account's allowed_actions do not include {target.action}")
        priced = _price(sessions, account, plan_id, target, c.end)
    except Unavailable as exc:
        return Renewal(c, rule.mode, plan_id, "unavailable", reason=str(exc))
    factor = 1 + policy.max_price_increase_pct / 100
    params = {**priced.params, **{name: _money(price * factor) for name, price in priced.prices.items()}}
    plan: dict[str, Any] = {
        "plan_id": plan_id, "action": target.action, "account_id": c.account_id, "region": target.region,
        "params": params, "requested_by": policy.requested_by, "trigger": "renewal",
        "notes": f"renewal ({rule.mode}) of {c.kind} {c.commitment_id} in {c.region}, ending {_rfc3339(c.end)}",
    }
    if target.queueable:  # bought now, starting when the old one ends; too late once it has ended
        plan["expires_at"] = _rfc3339(c.end)
    else:
        plan["not_before"] = _rfc3339(c.end)
        plan["expires_at"] = _rfc3339(c.end + timedelta(hours=policy.late_hours))
    recurring = ((priced.total - priced.upfront) / max(priced.hours, 1)).quantize(Decimal("0.0001"))
    return Renewal(c, rule.mode, plan_id, "submit", action=target.action, into=_describe(params, target.count),
                   scheduling="purchase_time" if target.queueable else "not_before", upfront_usd=priced.upfront,
                   recurring_usd_per_hour=recurring, total_usd=priced.total, plan=plan)


# =================================================================================================================
# Scanning
# =================================================================================================================
@dataclass
class ScanReport:
    renewals: list[Renewal] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _marker_key(ledger: Ledger, plan_id: str) -> str:
    return f"{ledger.prefix}renewals:planned:{plan_id}"


def existing_renewal(ledger: Ledger, commitment: Commitment, plan_id: str, mode: Mode) -> Renewal | None:
    """The renewal plan a scan made for this commitment, if any: the ledger's record (with what it commits, once
    prepared), a purged plan's tombstone, or (once both are gone) the scan's marker."""
    record = ledger.get(plan_id)
    if record is not None:
        plan, intent = record.plan or {}, record.intent or {}

        def usd(key: str) -> Decimal | None:
            return None if intent.get(key) is None else Decimal(str(intent[key]))

        return Renewal(commitment, mode, plan_id, "planned", action=plan.get("action"), state=record.state.value,
                       upfront_usd=usd("upfront_usd"), total_usd=usd("commitment_usd"))
    stone = ledger.tombstone(plan_id)
    if stone is not None:
        return Renewal(commitment, mode, plan_id, "planned", state=str(stone["state"]))
    if ledger.redis.get(_marker_key(ledger, plan_id)) is not None:
        return Renewal(commitment, mode, plan_id, "planned", state="purged")
    return None


def mark_planned(ledger: Ledger, plan_id: str, end: datetime) -> None:
    """Remember that this commitment has its renewal plan until it can no longer be scanned (its end, plus a
    margin): retention may purge the plan and later its tombstone before then."""
    ledger.redis.set(_marker_key(ledger, plan_id), json.dumps({"plan_id": plan_id, "ends_at": _rfc3339(end)}),
                     exat=int((end + MARKER_MARGIN).timestamp()))


def _listing(sessions: AwsSessions, account: AccountConfig, region: str, kind: str) -> list[Commitment]:
    if kind == SAVINGS_PLANS:
        return _savings_plans(sessions, account)
    return _reservations(sessions, account, next(k for k in RESERVATION_KINDS if k.name == kind), region)


def scan_account(sessions: AwsSessions, ledger: Ledger, account: AccountConfig, policy: RenewalPolicy,
                 now: datetime, days: int | None = None, kinds: Iterable[str] = KIND_NAMES) -> ScanReport:
    """Every active commitment of the account ending within the window (``days``, else the policy's), each with
    what its renewal is. Reads only: nothing is submitted."""
    report = ScanReport()
    horizon = now + timedelta(days=days if days is not None else policy.window_days)
    wanted = [k for k in KIND_NAMES if k in set(kinds)]
    listings = [(region, kind) for region in dict.fromkeys(policy.regions) for kind in wanted if kind != SAVINGS_PLANS]
    listings += [(GLOBAL, SAVINGS_PLANS)] if SAVINGS_PLANS in wanted else []
    for region, kind in listings:
        try:
            expiring = sorted((c for c in _listing(sessions, account, region, kind) if now < c.end <= horizon),
                              key=lambda c: c.end)
            for c in expiring:
                plan_id = renewal_plan_id(c.account_id, c.region, c.kind, c.commitment_id)
                existing = existing_renewal(ledger, c, plan_id, policy.rule(c.kind).mode)
                if existing is None:
                    report.renewals.append(plan_renewal(sessions, account, policy, c, plan_id))
                    continue
                if not ledger.redis.exists(_marker_key(ledger, plan_id)):
                    mark_planned(ledger, plan_id, c.end)  # made by a scan that stopped before marking it
                report.renewals.append(existing)
        except Exception as exc:  # one account's, region's or kind's failure never stops the others
            error = {"account_id": account.account_id, "region": region, "kind": kind, **describe(exc)}
            log.warning("renewal_scan_failed", **error)
            report.errors.append(error)
    return report


def submit_renewals(intake: Intake, ledger: Ledger, renewals: Iterable[Renewal]) -> list[IntakeResult]:
    """Hand each new renewal plan to intake. Intake records a plan id once: a plan another scan submitted
    meanwhile comes back ``existing`` (the same content) or ``conflict`` (priced differently), never twice."""
    results = []
    for renewal in renewals:
        if renewal.status != "submit" or renewal.plan is None:
            continue
        result = intake.submit_raw(json.dumps(renewal.plan), SOURCE)
        # Whatever intake answered, the plan id is now taken (even a rejection is recorded under it).
        mark_planned(ledger, renewal.plan_id, renewal.commitment.end)
        log.info("renewal_submitted", plan_id=renewal.plan_id, outcome=result.outcome, state=result.state,
                 commitment_id=renewal.commitment.commitment_id, kind=renewal.commitment.kind)
        results.append(result)
    return results


def run_scan(runtime: Runtime, intake: Intake, now: datetime,
             accounts: list[tuple[AccountConfig, RenewalPolicy]] | None = None) -> dict[str, Any]:
    """One scan of every account with a renewal policy (``accounts``, else the registry's): renewal plans
    submitted, and the run recorded in ``{prefix}renewals:runs`` (the newest RUNS_KEPT)."""
    if accounts is None:
        accounts = renewal_accounts(runtime.settings.accounts_file)
    counts = {"accounts": len(accounts), "expiring": 0, "accepted": 0, "existing": 0, "conflict": 0,
              "rejected": 0, "planned": 0, "report": 0, "unavailable": 0, "errors": 0}
    for account, policy in accounts:
        report = scan_account(runtime.sessions, runtime.ledger, account, policy, now)
        counts["expiring"] += len(report.renewals)
        counts["errors"] += len(report.errors)
        for renewal in report.renewals:
            if renewal.status != "submit":
                counts[renewal.status] += 1
        for result in submit_renewals(intake, runtime.ledger, report.renewals):
            counts[result.outcome] += 1
    run = {"at": _rfc3339(now), "origin": f"{socket.gethostname()}:{os.getpid()}", **counts}
    runtime.redis.xadd(runtime.key("renewals", "runs"), {k: str(v) for k, v in run.items()},
                       maxlen=RUNS_KEPT, approximate=True)
    log.info("renewal_scan", **run)
    return run


@app.task(name=SCAN_TASK, acks_late=True)
def scan() -> dict[str, Any]:
    """The periodic scan (worker.beat fires it): every account with a renewal policy, now."""
    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake
    from worker.runtime import get_runtime

    runtime = get_runtime()
    return run_scan(runtime, Intake(runtime, ACTIONS, enqueue), datetime.now(UTC))


app.conf.task_routes = {**(app.conf.task_routes or {}), SCAN_TASK: {"queue": QUEUE}}
