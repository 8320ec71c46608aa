"""Plans of every family for the chaos runs (tests/spine/test_chaos.py, and a longer ``make chaos``), and readers of
what they made in the sandbox's ground truth.

For each write action that commits money or creates a resource (and the scheduled-instance purchase, which AWS no
longer sells) a ``Spec``: how to build its n-th plan and the seeds that plan needs (a fresh RI, host, DC1 node or
schedule of its own, so that plans never compete for one), which IAM operations a fault is injected on, what it
makes (``Kind``: the sandbox's resource type, the operation stamped in ``created_by``, and the ids the plan's
ledger record names for it) and whether AWS finishes it asynchronously (the sandbox clock must move).

Plans are spread over a ``Roster`` of accounts by what each role grants (the tests' four by default; the chaos
run's 50 with ``Roster.of_size(50)``); ``ri_plans`` builds the EC2 RI purchases the run checks on their own.

``check_ledger_against_ground_truth`` compares, kind by kind, what the sandbox holds that the plans' operations
made with the union of what the ledger says each plan made: every id a plan names exists, no id belongs to two
plans, a succeeded plan has exactly its expected number of each kind, and anything the sandbox made that no
succeeded plan names is accounted for by a plan left to a person (named in its error, carrying its token, or an
unknown outcome after a send), never by nobody. It returns every ``Problem`` it finds rather than stopping at the
first (chaos/checks.py adds the RI purchases, the outcomes and the money).

A run (chaos/run.py): ``batch = build(3, sandbox_now(sandbox), roster=roster)`` (or ``build({"rds": 40}, now)``),
``sandbox.seed(batch.seeds)``, ``sandbox.add_fault(**rule)`` for each of ``fault_rules(SPECS, p)``, submit
``batch.plans``, move the sandbox clock while a plan of an ``asynchronous`` spec is open, then
``check_ledger_against_ground_truth(batch, records, sandbox, aws)``. Plan ids are ``chaos-<slug>-<n>``; every seed
and email is derived from ``n``, so one sandbox reset takes any number of plans up to each spec's ``most`` (per
account, for the quotas AWS counts per account).
Plans a lost answer is found for by attributes (no token AWS can search for) are kept apart by their parameters
or by the action's signature lock; the untagged spot requests rely on their ValidUntil (to the second) to be told
apart, so a much larger run may see an honest AmbiguousOutcome there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any

from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ORG_ACCOUNT, ORG_BUYER_ACCOUNT, TAGGING_ACCOUNT, ri_plan
from worker.ledger import PlanRecord

REGION = "us-east-1"
IMAGE = "ami-0123456789abcdef0"
# What a plan of these families may be left to a person for in a chaos run (no worker pauses; a killed one sends
# nothing later): a code that reports a duplicate is a failure of the run, never an explanation.
ALLOWED_ATTENTION = {
    "OutcomeUnknown": "a send whose answer was lost, and every reconciling read after it failed",
    "BlockedByUnsettledPlan": "the same call as a plan whose outcome is unknown: nothing was sent",
}
DUPLICATE_CODES = {"DuplicateSend", "DuplicateSuspected", "AmbiguousOutcome", "ClaimConflict"}
# A plan whose every send in one run was throttled fails with the service's throttling error (sandbox.errors), having
# made nothing: the fault schedule's doing, as rare as the other explained outcomes.
THROTTLED = {"RequestLimitExceeded", "Throttling", "TooManyRequestsException", "ThrottlingException"}
FAULT_KINDS = ("throttle", "error", "commit_then_drop", "commit_then_error")

Plan = dict[str, Any]
Seed = dict[str, Any]
Truth = dict[str, str | None]  # resource id (or token) → the token its creating call carried
Reader = Callable[[SandboxControl, Callable[..., Any], str], Truth]


def iso(when: datetime) -> str:
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sandbox_now(sandbox: SandboxControl) -> datetime:
    return datetime.fromisoformat(sandbox.health()["now"].replace("Z", "+00:00"))


CAPPED_ACCOUNT = "661100000001"
CAPPED_PER_DAY_USD = "5000"


@dataclass(frozen=True)
class Roster:
    """The accounts a run's plans are spread over, by what each one's role grants: the production role alone
    (``plain``), ec2:CreateTags, iam:PassRole and the newer OpenSearch purchase on top (``tagging``), and the two
    organizations' management accounts (the organizations block). Plan ``n`` of a spec goes to account ``n`` of
    its pool, round robin: seeds and quotas follow the plan's account."""

    plain: tuple[str, ...] = (ACCOUNT,)
    tagging: tuple[str, ...] = (TAGGING_ACCOUNT,)
    org: str = ORG_ACCOUNT
    buyer: str = ORG_BUYER_ACCOUNT
    # The production role with a daily commitment cap, which every fifth RI purchase goes to: concurrent plans
    # against the cap on every worker, and the report holds what it committed against the cap.
    capped: str = CAPPED_ACCOUNT

    @classmethod
    def of_size(cls, accounts: int) -> Roster:
        """``accounts`` accounts in all (at least 4): a third of the rest grant the tagging permissions."""
        if accounts < 4:
            raise ValueError("a roster needs at least 4 accounts: plain, tagging and two management accounts")
        tagging = max(1, (accounts - 2) // 3)
        plain = accounts - 2 - tagging
        return cls(plain=(ACCOUNT, *(f"6000{i:08d}" for i in range(1, plain))),
                   tagging=(TAGGING_ACCOUNT, *(f"6500{i:08d}" for i in range(1, tagging))))

    def rotated(self, k: int) -> Roster:
        """The same accounts, each pool starting ``k`` further on: specs start at different accounts."""
        def turn(pool: tuple[str, ...]) -> tuple[str, ...]:
            return pool[k % len(pool):] + pool[:k % len(pool)]
        return Roster(turn(self.plain), turn(self.tagging), self.org, self.buyer, self.capped)

    def plain_at(self, n: int) -> str:
        return self.plain[n % len(self.plain)]

    def tagging_at(self, n: int) -> str:
        return self.tagging[n % len(self.tagging)]

    def either_at(self, n: int) -> str:
        """Odd plans in an account that grants ec2:CreateTags (found by tag), even ones in one that does not."""
        return self.tagging_at(n // 2) if n % 2 else self.plain_at(n // 2)

    @property
    def accounts(self) -> list[str]:
        return [*self.plain, *self.tagging, self.org, self.buyer, self.capped]

    def registry(self, external_id_env: str) -> dict[str, Any]:
        """The account registry (COMMITD_ACCOUNTS_FILE) for these accounts, every role with one ExternalId."""
        def entry(account: str, name: str, **grants: Any) -> dict[str, Any]:
            return {"account_id": account, "name": name, "role_arn": f"arn:aws:iam::{account}:role/commitd",
                    "external_id_env": external_id_env, **grants}
        return {"accounts": [
            *(entry(a, f"plain-{i}") for i, a in enumerate(self.plain)),
            *(entry(a, f"tagging-{i}", extra_permissions=["ec2:CreateTags", "iam:PassRole",
                                                           "es:PurchaseReservedInstanceOffering"])
              for i, a in enumerate(self.tagging)),
            entry(self.org, "management", optional_blocks=["organizations"]),
            entry(self.buyer, "buyer-management", optional_blocks=["organizations"]),
            entry(self.capped, "capped", limits={"commitment_usd_per_day": CAPPED_PER_DAY_USD, "on_cap": "fail"})]}


DEFAULT_ROSTER = Roster()


def envelope(action: str, plan_id: str, params: dict[str, Any], account: str = ACCOUNT) -> Plan:
    return {"plan_id": plan_id, "action": action, "account_id": account, "region": REGION, "params": params,
            "requested_by": "chaos@test", "trigger": "queued"}


def made_by(*operations: str) -> Callable[[str], Reader]:
    """A reader of the sandbox's resources of a type that one of ``operations`` made (seeds excluded)."""
    wanted = {o.lower() for o in operations}

    def for_type(resource_type: str) -> Reader:
        def read(sandbox: SandboxControl, aws: Callable[..., Any], account: str) -> Truth:
            return {r["id"]: r["created_by"]["token"] for r in sandbox.resources(account_id=account, type=resource_type)
                    if str(r["created_by"]["operation"]).lower() in wanted}
        return read
    return for_type


def tokens_of_type(resource_type: str, operation: str) -> Reader:
    """The client tokens of the sandbox's resources of a type (for kinds whose ids the ledger does not name)."""
    def read(sandbox: SandboxControl, aws: Callable[..., Any], account: str) -> Truth:
        return {str(r["created_by"]["token"]): r["created_by"]["token"]
                for r in sandbox.resources(account_id=account, type=resource_type)
                if r["created_by"]["operation"] == operation}
    return read


def scheduled_instances(sandbox: SandboxControl, aws: Callable[..., Any], account: str) -> Truth:
    """Instances launched by RunScheduledInstances (moto's instances: not in the sandbox's resources), by their
    ClientToken, through DescribeInstances as AWS would answer it."""
    ec2 = aws("ec2", account_id=account, external_id=EXTERNAL_ID)
    found = ec2.describe_instances(Filters=[{"Name": "instance-lifecycle", "Values": ["scheduled"]}])
    return {i["InstanceId"]: i.get("ClientToken") for r in found["Reservations"] for i in r["Instances"]}


def resource_ids(result: dict[str, Any]) -> list[str]:
    return list(result.get("resource_ids") or [])


def field_of(name: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda result: [result[name]] if result.get(name) else []


@dataclass(frozen=True)
class Kind:
    """One kind of thing a plan makes: how to read the sandbox's record of it, and the ids a plan's result names
    for it, with how many one succeeded plan makes (from its params)."""

    name: str
    read: Reader
    ledger: Callable[[dict[str, Any]], list[str]] = resource_ids
    per_plan: Callable[[dict[str, Any]], int] = lambda params: 1


@dataclass(frozen=True)
class Spec:
    action: str
    slug: str
    build: Callable[[int, datetime, Roster], tuple[list[Seed], Plan]]  # (n, the sandbox's now, accounts) → ...
    makes: tuple[Kind, ...]
    faulted: tuple[str, ...] = ()  # the IAM operations to inject faults on (the action's own call by default)
    asynchronous: bool = False  # AWS finishes it later: the sandbox clock must move while waiting
    expect: str = "succeeded"  # or "failed" (AWS refuses every such plan before any call: nothing is ever made)
    setup: tuple[Seed, ...] = ()  # seeds shared by every plan of the spec (seeded once)
    most: int | None = None  # the most plans one sandbox (reset) takes per account: its quotas (sandbox/services/)
    most_per_account: bool = True  # False: ``most`` counts the plans of every account together

    def operations(self) -> tuple[str, ...]:
        return self.faulted or (self.action,)


def _ri_id(prefix: int, n: int) -> str:
    return f"{prefix:08x}-0000-4000-8000-{n:012x}"


def _ri_seed(ri_id: str, account: str, **overrides: Any) -> Seed:
    return {"kind": "ec2:reserved-instances", "account_id": account, "region": REGION, "id": ri_id,
            "instance_type": "m5.large", "offering_class": "standard", "offering_type": "All Upfront",
            "duration_years": 1, "instance_count": 4, "start_days_ago": 40, **overrides}


# --- EC2 reserved instances (modify), RI exchange, RI marketplace ---------------------------------------------
MODIFY = "ec2:ModifyReservedInstances"
RI_EXCHANGE = "ec2:AcceptReservedInstancesExchangeQuote"
LISTING = "ec2:CreateReservedInstancesListing"


def build_modify(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    # All Upfront sources: the new RIs never look like the chaos run's No Upfront purchases.
    ri, account = _ri_id(0xC4A05001, n), roster.plain_at(n)
    return [_ri_seed(ri, account)], envelope(MODIFY, f"chaos-modify-{n}", {
        "reserved_instances_ids": [ri],
        "target_configurations": [{"instance_count": 2, "scope": "Region"},
                                  {"instance_count": 2, "scope": "Availability Zone",
                                   "availability_zone": "us-east-1b"}]}, account)


# Targets of the exchanges, one per plan in turn. The action finds the new RI by its target offering, count and
# start (AWS does not link an exchange id to the RI it made), and holds one plan at a time per set of *source* RIs:
# two plans exchanging into the same target at the same time see each other's new RI and both stop as
# AmbiguousOutcome. Distinct targets keep a run's concurrent exchanges apart (24 of them; a longer run repeats them
# far apart).
EXCHANGE_TARGETS = [(instance_type, years, payment)
                    for payment in ("No Upfront", "Partial Upfront", "All Upfront") for years in (1, 3)
                    for instance_type in ("m5.xlarge", "r5.large", "c5.large", "t3.medium")]


def build_ri_exchange(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    ri, account = _ri_id(0xC4A05002, n), roster.plain_at(n)
    seed = _ri_seed(ri, account, offering_class="convertible", offering_type="No Upfront", instance_count=2)
    instance_type, years, payment = EXCHANGE_TARGETS[n % len(EXCHANGE_TARGETS)]
    return [seed], envelope(RI_EXCHANGE, f"chaos-riex-{n}", {
        "reserved_instance_ids": [ri],
        "target_configurations": [{"instance_type": instance_type, "offering_type": payment,
                                   "duration_years": years, "product_description": "Linux/UNIX"}],
        "max_payment_due_usd": "20000", "max_total_usd": "50000"}, account)


def build_listing(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    ri, account = _ri_id(0xC4A05003, n), roster.plain_at(n)
    return [_ri_seed(ri, account)], envelope(LISTING, f"chaos-listing-{n}", {
        "reserved_instances_id": ri, "instance_count": 2,
        "price_schedules": [{"term": 10, "price": "450.00"}, {"term": 6, "price": "270.00"},
                            {"term": 3, "price": "130.00"}],
        "min_price_usd": "100.00"}, account)


# --- EC2 capacity reservations, host reservations, scheduled instances, spot ------------------------------------
CAPACITY = "ec2:CreateCapacityReservation"
HOSTS = "ec2:PurchaseHostReservation"
RUN_SCHEDULED = "ec2:RunScheduledInstances"
BUY_SCHEDULED = "ec2:PurchaseScheduledInstances"
SPOT = "ec2:RequestSpotInstances"
FLEET = "ec2:RequestSpotFleet"


def build_capacity(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """Odd plans in the account that grants ec2:CreateTags (a lost answer is found by the plan's tag), even ones
    found by attributes; every third is future-dated (assessed for 60 sandbox seconds, then scheduled)."""
    params: dict[str, Any] = {
        "instance_type": "m5.large", "instance_platform": "Linux/UNIX",
        "availability_zone": ("us-east-1a", "us-east-1b", "us-east-1c")[n % 3], "instance_count": 1 + n % 3,
        "instance_match_criteria": "targeted", "end_date_type": "limited", "end_date": iso(now + timedelta(days=30)),
        "on_demand_hourly_usd": "0.096", "max_total_usd": "500.00"}
    if n % 3 == 2:
        params.update(start_date=iso(now + timedelta(days=6)), commitment_duration_seconds=14 * 86400)
    return [], envelope(CAPACITY, f"chaos-cr-{n}", params, account=roster.either_at(n))


def build_hosts(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    host, account = f"h-{0xC4A0500 * 16 + n:017x}", roster.plain_at(n)
    seed = {"kind": "ec2:dedicated-host", "account_id": account, "region": REGION,
            "availability_zone": "us-east-1a", "instance_family": "m5", "host_ids": [host]}
    return [seed], envelope(HOSTS, f"chaos-hosts-{n}", {
        "host_ids": [host], "payment_option": "PartialUpfront", "duration_years": 1,
        "max_upfront_usd": "50000", "max_hourly_usd": "10", "max_total_usd": "200000"}, account)


def build_run_scheduled(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """A daily schedule of its own, whose slot opened an hour ago and lasts 8 hours: open for the whole run, even
    with the sandbox clock moved forward while waiting."""
    sci = f"sci-{n % 0x10000:04x}-c4a0-5000-0000-{n:012x}"
    opened, account = now - timedelta(hours=1), roster.plain_at(n)
    seed = {"kind": "ec2:scheduled-instance", "account_id": account, "region": REGION, "id": sci,
            "instance_type": "c5.large", "availability_zone": "us-east-1b", "platform": "Linux/UNIX",
            "recurrence": {"Frequency": "Daily", "Interval": 1}, "slot_start_utc": opened.strftime("%H:%M"),
            "slot_duration_hours": 8, "term_days_left": 120, "instance_count": 1}
    return [seed], envelope(RUN_SCHEDULED, f"chaos-sched-run-{n}", {
        "scheduled_instance_id": sci, "instance_count": 1,
        "launch_specification": {"image_id": "ami-12c6146b", "instance_type": "c5.large",
                                 "availability_zone": "us-east-1b"}}, account)


def build_buy_scheduled(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    start = now.replace(microsecond=0) + timedelta(days=7)
    return [], envelope(BUY_SCHEDULED, f"chaos-sched-buy-{n}", {
        "instance_type": "c5.large", "platform": "Linux/UNIX", "availability_zone": "us-east-1b",
        "recurrence": {"frequency": "Weekly", "interval": 1, "occurrence_days": [2, 4],
                       "occurrence_unit": "DayOfWeek"},
        "first_slot_start_time_range": {"earliest_time": iso(start), "latest_time": iso(start + timedelta(days=7))},
        "min_slot_duration_in_hours": 8, "instance_count": 2, "max_hourly_usd": "0.10", "max_total_usd": "200.00"},
        roster.plain_at(n))


def build_spot(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """Odd plans in the account that grants ec2:CreateTags (found by tag), even ones found by attributes."""
    return [], envelope(SPOT, f"chaos-spot-{n}", {
        "instance_count": 1 + n % 2, "type": "one-time",
        "launch_specification": {"image_id": IMAGE, "instance_type": ("m5.large", "c5.large")[n % 2]},
        "product_description": "Linux/UNIX", "max_price_usd_per_hour": "0.05", "validity_hours": 24,
        "max_hourly_usd": "0.10", "max_total_usd": "2.40"}, account=roster.either_at(n))


def build_fleet(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """In the account that grants iam:PassRole (a fleet passes its IamFleetRole to EC2)."""
    account = roster.tagging_at(n)
    return [], envelope(FLEET, f"chaos-fleet-{n}", {
        "iam_fleet_role": f"arn:aws:iam::{account}:role/aws-ec2-spot-fleet-tagging-role",
        "target_capacity": 2 + n % 3, "on_demand_target_capacity": 1,
        "launch_specifications": [
            {"image_id": IMAGE, "instance_type": "m5.large", "availability_zone": "us-east-1a"},
            {"image_id": IMAGE, "instance_type": "c5.large", "availability_zone": "us-east-1b"}],
        "type": "maintain", "allocation_strategy": "priceCapacityOptimized", "max_price_usd_per_hour": "0.05",
        "spot_max_total_price_usd_per_hour": "0.25", "on_demand_max_total_price_usd_per_hour": "0.10",
        "validity_hours": 48, "max_hourly_usd": "0.35", "max_total_usd": "17.00"}, account)


# --- Savings Plans, RDS, ElastiCache, Redshift, OpenSearch ----------------------------------------------------
SAVINGS = "savingsplans:CreateSavingsPlan"
RDS = "rds:PurchaseReservedDbInstancesOffering"
ELASTICACHE = "elasticache:PurchaseReservedCacheNodesOffering"
REDSHIFT = "redshift:PurchaseReservedNodeOffering"
REDSHIFT_EXCHANGE = "redshift:AcceptReservedNodeExchange"
SEARCH = "es:PurchaseReservedElasticsearchInstanceOffering"
SEARCH_ALIAS = "es:PurchaseReservedElasticsearchInstance"
OPENSEARCH = "es:PurchaseReservedInstanceOffering"  # the newer API, where the account granted it


def build_savings(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    commitment = f"0.{50 + n % 40:02d}"  # 0.50 to 0.89 USD/h: different plans, one offering
    return [], envelope(SAVINGS, f"chaos-sp-{n}", {
        "plan_type": "Compute", "payment_option": "No Upfront", "duration_years": 1,
        "commitment_usd_per_hour": commitment, "max_total_usd": "8000.00", "max_upfront_usd": "0"},
        roster.plain_at(n))


def build_rds(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    return [], envelope(RDS, f"chaos-rds-{n}", {
        "db_instance_class": "db.t3.medium", "product_description": "mysql", "duration_years": 1,
        "offering_type": "No Upfront", "multi_az": False, "db_instance_count": 1,
        "max_upfront_usd": "0", "max_hourly_usd": "0.05", "max_total_usd": "200000"}, roster.plain_at(n))


def build_elasticache(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    return [], envelope(ELASTICACHE, f"chaos-cache-{n}", {
        "cache_node_type": "cache.t3.medium", "product_description": "redis", "duration_years": 1,
        "offering_type": "No Upfront", "cache_node_count": 1 + n % 2,
        "max_upfront_usd": "0", "max_hourly_usd": "0.05", "max_total_usd": "200000"}, roster.plain_at(n))


def build_redshift(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    return [], envelope(REDSHIFT, f"chaos-redshift-{n}", {
        "node_type": "dc2.large", "offering_type": "No Upfront", "duration_years": 1, "node_count": 1 + n % 2,
        "max_upfront_usd": "0", "max_hourly_usd": "0.20", "max_total_usd": "3100.00"}, roster.plain_at(n))


def build_redshift_exchange(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """A DC1 node of its own; odd ones are exchanged asynchronously (IN_PROGRESS for 60 sandbox seconds)."""
    node, account = f"dc1-chaos-{n}", roster.plain_at(n)
    seed = {"kind": "redshift:reserved-node", "account_id": account, "region": REGION, "node_type": "dc1.large",
            "offering_type": "All Upfront", "duration_years": 1, "node_count": 2, "start_days_ago": 200, "id": node,
            **({"exchange_seconds": 60} if n % 2 else {})}
    return [seed], envelope(REDSHIFT_EXCHANGE, f"chaos-rsex-{n}", {
        "reserved_node_id": node, "node_count": 2, "target_node_type": "dc2.large", "max_total_usd": "3000.00",
        "max_hourly_usd": "0"}, account)


def build_search(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """Even plans name the role's action, odd ones its alias (the same API call)."""
    return [], envelope(SEARCH_ALIAS if n % 2 else SEARCH, f"chaos-es-{n}", {
        "instance_type": "m5.large.elasticsearch", "payment_option": "NO_UPFRONT", "duration_years": 1,
        "instance_count": 1 + n % 2, "max_upfront_usd": "0", "max_hourly_usd": "0.10",
        "max_total_usd": "1800.00"}, roster.plain_at(n))


def build_opensearch(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    return [], envelope(SEARCH, f"chaos-os-{n}", {
        "api": "opensearch", "instance_type": "m5.large.search", "payment_option": "NO_UPFRONT",
        "duration_years": 1, "instance_count": 1 + n % 2, "max_upfront_usd": "0", "max_hourly_usd": "0.10",
        "max_total_usd": "1800.00"}, roster.tagging_at(n))


# --- Organizations -------------------------------------------------------------------------------------------
CREATE_ACCOUNT = "organizations:CreateAccount"
ORGANIZATION = {"kind": "organizations:organization", "management_account_id": ORG_ACCOUNT, "members": [
    {"account_id": "222233335555", "email": "commitments@customer.example", "name": "commitments"}]}


INVITE = "organizations:InviteAccountToOrganization"
BUYER_ORGANIZATION = {"kind": "organizations:organization", "management_account_id": ORG_BUYER_ACCOUNT, "members": [
    {"account_id": "888899991111", "email": "finance@buyer.example", "joined_method": "INVITED"}]}


def build_create_account(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    return [], envelope(CREATE_ACCOUNT, f"chaos-account-{n}", {
        "email": f"chaos-{n}@customer.example", "account_name": f"chaos-{n}"}, account=roster.org)


def build_invite(n: int, now: datetime, roster: Roster) -> tuple[list[Seed], Plan]:
    """The buying organization invites an account of its own that is in no organization (a handshake)."""
    return [], envelope(INVITE, f"chaos-invite-{n}", {"target": {"type": "ACCOUNT", "id": f"3333{n:08d}"}},
                        account=roster.buyer)


# --- the specs -------------------------------------------------------------------------------------------------
RIS = "reserved-instances"
SPECS: tuple[Spec, ...] = (
    Spec(MODIFY, "modify", build_modify, asynchronous=True, makes=(
        Kind(RIS, made_by(MODIFY)(RIS), per_plan=lambda p: len(p["target_configurations"])),
        Kind("reserved-instances-modification", made_by(MODIFY)("reserved-instances-modification"),
             ledger=field_of("reserved_instances_modification_id")))),
    Spec(RI_EXCHANGE, "riex", build_ri_exchange, makes=(Kind(RIS, made_by(RI_EXCHANGE)(RIS)),)),
    Spec(LISTING, "listing", build_listing, makes=(
        Kind("reserved-instances-listing", made_by(LISTING)("reserved-instances-listing")),)),
    # 200 instance slots per zone and type, all accounts together; us-east-1c takes 3 of them every third plan.
    Spec(CAPACITY, "cr", build_capacity, asynchronous=True, most=195, most_per_account=False, makes=(
        Kind("capacity-reservation", made_by(CAPACITY)("capacity-reservation")),)),
    Spec(HOSTS, "hosts", build_hosts, asynchronous=True, makes=(
        Kind("host-reservation", made_by(HOSTS)("host-reservation")),)),
    Spec(RUN_SCHEDULED, "sched-run", build_run_scheduled, makes=(
        Kind("scheduled-instance-run", tokens_of_type("scheduled-instance-run", RUN_SCHEDULED),
             ledger=field_of("client_token")),
        Kind("scheduled-instance", scheduled_instances, per_plan=lambda p: p["instance_count"]))),
    Spec(BUY_SCHEDULED, "sched-buy", build_buy_scheduled, expect="failed", makes=(
        Kind("scheduled-instance", made_by(BUY_SCHEDULED)("scheduled-instance")),)),
    Spec(SPOT, "spot", build_spot, asynchronous=True, makes=(
        Kind("spot-instances-request", made_by(SPOT)("spot-instances-request"),
             per_plan=lambda p: p["instance_count"]),)),
    Spec(FLEET, "fleet", build_fleet, asynchronous=True, makes=(
        Kind("spot-fleet-request", made_by(FLEET)("spot-fleet-request")),)),
    Spec(SAVINGS, "sp", build_savings, most=50, makes=(Kind("savings-plan", made_by(SAVINGS)("savings-plan")),)),
    Spec(RDS, "rds", build_rds, most=40, makes=(
        Kind("reserved-db-instance", made_by(RDS)("reserved-db-instance")),)),
    Spec(ELASTICACHE, "cache", build_elasticache, most=200, makes=(
        Kind("reserved-cache-node", made_by(ELASTICACHE)("reserved-cache-node")),)),
    # 200 reserved nodes per account and region held, the exchanges' DC1 and then DC2 nodes (2 each) included:
    # 70 purchases (1.5 nodes each) and 40 exchanges fit together.
    Spec(REDSHIFT, "redshift", build_redshift, most=70, makes=(
        Kind("reserved-node", made_by(REDSHIFT)("reserved-node")),)),
    Spec(REDSHIFT_EXCHANGE, "rsex", build_redshift_exchange, asynchronous=True, most=40, makes=(
        Kind("reserved-node", made_by(REDSHIFT_EXCHANGE)("reserved-node")),)),
    Spec(SEARCH, "es", build_search, faulted=(SEARCH,), makes=(
        Kind("reserved-elasticsearch-instance", made_by(SEARCH, SEARCH_ALIAS)("reserved-elasticsearch-instance")),)),
    Spec(OPENSEARCH, "os", build_opensearch, faulted=(OPENSEARCH,), makes=(
        Kind("reserved-instance", made_by(OPENSEARCH)("reserved-instance")),)),
    Spec(CREATE_ACCOUNT, "account", build_create_account, asynchronous=True, setup=(ORGANIZATION,), makes=(
        Kind("account", made_by(CREATE_ACCOUNT)("account")),
        Kind("create-account-status", made_by(CREATE_ACCOUNT)("create-account-status"),
             ledger=field_of("create_account_request_id")))),
    Spec(INVITE, "invite", build_invite, setup=(BUYER_ORGANIZATION,), makes=(
        Kind("handshake", made_by(INVITE)("handshake")),)),
)


@dataclass
class Batch:
    """The plans of a chaos run: each plan's spec, and every seed they need (sandbox.seed them before submitting)."""

    seeds: list[Seed] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    spec_of: dict[str, Spec] = field(default_factory=dict)  # plan id → its spec


def build(per_spec: int | dict[str, int], now: datetime, specs: Iterable[Spec] = SPECS,
          roster: Roster = DEFAULT_ROSTER) -> Batch:
    """``per_spec`` plans of each spec (a number, or a count per slug), built against the sandbox's ``now``, spread
    over the roster's accounts."""
    batch = Batch()
    for index, spec in enumerate(specs):
        accounts = roster.rotated(7 * index)
        count = per_spec if isinstance(per_spec, int) else per_spec.get(spec.slug, 0)
        if count:
            batch.seeds.extend(spec.setup)
        per_account: dict[str, int] = {}
        for n in range(count):
            seeds, plan = spec.build(n, now, accounts)
            batch.seeds.extend(seeds)
            batch.plans.append(plan)
            batch.spec_of[plan["plan_id"]] = spec
            where = plan["account_id"] if spec.most_per_account else "all accounts"
            per_account[where] = per_account.get(where, 0) + 1
        crowded = {a: c for a, c in per_account.items() if spec.most is not None and c > spec.most}
        if crowded:
            raise ValueError(f"plans of {spec.slug} {crowded}: the sandbox's quota allows {spec.most} per reset")
    return batch


RI_TYPES = ["m5.large", "m5.xlarge", "c5.large", "r5.large", "t3.medium"]


def ri_plans(count: int, rng: Random, roster: Roster = DEFAULT_ROSTER) -> list[Plan]:
    """EC2 RI purchases (the RI check of the chaos runs follows them apart from the specs'): ten offerings (five
    types, one or three years), about 20 plans per plain account, so that plans often share an offering in one
    account and wait for each other's signature lock."""
    plans = []
    for n in range(count):
        plan = ri_plan(f"chaos-{n}", instance_type=rng.choice(RI_TYPES), duration_years=rng.choice([1, 3]),
                       instance_count=rng.randint(1, 3), max_hourly_usd="1.00")
        plan["account_id"] = roster.plain[n % max(1, min(len(roster.plain), count // 20))]
        if n % 5 == 4:
            plan["account_id"] = roster.capped
        plans.append(plan)
    return plans


def fault_rules(specs: Iterable[Spec], probability: float) -> list[dict[str, Any]]:
    """Rules for ``SandboxControl.add_fault``: each fault kind, with ``probability``, on every spec's mutating
    operation; and, so that no operation goes through a short run unharmed, its first call gets one kind for sure
    (the kinds taken in turn across the operations)."""
    specs = list(specs)
    operations = sorted({op for spec in specs for op in spec.operations()})
    called = sorted({op for spec in specs if spec.expect == "succeeded" for op in spec.operations()})
    certain = [{"operation": op, "kind": FAULT_KINDS[i % len(FAULT_KINDS)], "count": 1}
               for i, op in enumerate(called)]
    return certain + [{"operation": op, "kind": kind, "probability": probability}
                      for op in operations for kind in FAULT_KINDS]


# --- the check -------------------------------------------------------------------------------------------------
def plan_tokens(record: PlanRecord) -> set[str]:
    """The tokens (client token, customer id, reservation name) this plan's calls carry."""
    intent = record.intent or {}
    values = {intent.get("idempotency_value"), intent.get("reservation_name"), intent.get("client_token"),
              (record.idempotency or {}).get("value")}
    return {str(v) for v in values if v}


def named_in_error(error: dict[str, Any] | None) -> set[str]:
    """The resources a needs_attention record names as its evidence (worker.settle, worker.verify)."""
    error = error or {}
    return {*error.get("resource_ids", []), *error.get("suspects", []), *error.get("candidates", []),
            *error.get("conflicts", {})}


@dataclass
class KindReport:
    spec: str
    kind: str
    truth: int
    named: int
    left_to_people: int


@dataclass(frozen=True)
class Problem:
    """A failed check: ``duplicate`` (the sandbox made something twice, or two plans name one resource) or
    ``disagrees`` (a plan's ledger result is not what the sandbox holds)."""

    category: str
    plan_ids: tuple[str, ...]
    message: str


@dataclass
class Findings:
    reports: list[KindReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def check_ledger_against_ground_truth(
    batch: Batch, records: dict[str, PlanRecord], sandbox: SandboxControl, aws: Callable[..., Any]
) -> Findings:
    """Per spec and kind: the sandbox's resources made by the spec's operations == the union of the ids the
    ledger's records name, each id named by one plan only; a succeeded plan names its expected number of each
    kind. Anything the sandbox holds that no record names must be explained by a plan in needs_attention (its
    evidence, its token, or an unknown outcome after a send), at most its expected number per such plan."""
    found = Findings()
    for spec in {id(s): s for s in batch.spec_of.values()}.values():
        plan_ids = [p for p, s in batch.spec_of.items() if s is spec and p in records]
        accounts = sorted({str((records[p].plan or {})["account_id"]) for p in plan_ids})
        for kind in spec.makes:
            truth: Truth = {}
            for account in accounts:
                truth.update(kind.read(sandbox, aws, account))
            owners: dict[str, list[str]] = {}
            for plan_id in plan_ids:
                record = records[plan_id]
                named = kind.ledger(record.result or {}) if record.state.value == "succeeded" else []
                if record.state.value == "succeeded":
                    params = (record.plan or {})["params"]
                    if len(named) != kind.per_plan(params):
                        found.problems.append(Problem("disagrees", (plan_id,), (
                            f"{plan_id} ({spec.action}) names {named} as its {kind.name}: expected "
                            f"{kind.per_plan(params)}")))
                for resource_id in named:
                    if resource_id not in truth:
                        found.problems.append(Problem("disagrees", (plan_id,), (
                            f"{plan_id} ({spec.action}) names {kind.name} {resource_id}, which the sandbox never "
                            "made")))
                    owners.setdefault(resource_id, []).append(plan_id)
            for resource_id, holders in owners.items():
                if len(holders) > 1:
                    found.problems.append(Problem("duplicate", tuple(holders),
                                                  f"{kind.name} {resource_id} named by several plans: {holders}"))
            unexplained = set(truth) - set(owners)
            attention = [p for p in plan_ids if records[p].state.value == "needs_attention"]
            budget = 0
            for plan_id in attention:
                record = records[plan_id]
                mine = {r for r in unexplained
                        if r in named_in_error(record.error) or (truth[r] and truth[r] in plan_tokens(record))}
                unexplained -= mine
                if len(mine) > kind.per_plan((record.plan or {})["params"]):  # flagged or not, made twice
                    found.problems.append(Problem("duplicate", (plan_id,), (
                        f"{plan_id} ({spec.action}) flagged {record.error}: {kind.name} {sorted(mine)}")))
                if not mine and (record.error or {}).get("code") == "OutcomeUnknown" and (
                        (record.error or {}).get("book", {}).get("sends", 0) >= 1):
                    budget += kind.per_plan((record.plan or {})["params"])
            if len(unexplained) > budget:
                found.problems.append(Problem("duplicate", (), (
                    f"{spec.action}: the sandbox holds {kind.name} no plan accounts for: {sorted(unexplained)} "
                    f"(made twice, or made by a plan whose record says it made nothing); the ledger names "
                    f"{len(owners)}")))
            found.reports.append(KindReport(spec.slug, kind.name, len(truth), len(owners), len(truth) - len(owners)))
    return found
