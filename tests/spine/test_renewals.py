"""Scheduled renewals (worker/renewals.py): real Redis, the sandbox over HTTP, real boto3, a real Celery worker.

A scan over two accounts with expiring commitments of every kind makes exactly one renewal plan per commitment
the policy renews, each timed to the old commitment's end (a queued purchase starting at it, or a plan scheduled
for it); the worker's purchases start when the old ones end; a second scan (and one after retention purged a
plan) makes none. ``commitd renewals preview`` lists the same renewals with their prices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import pytest

from config.settings import ConfigurationError
from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, RESTRICTED_ACCOUNT, ROOT, TAGGING_ACCOUNT, wait_for_state
from worker.plans import PlanState
from worker.renewals import (
    RenewalPolicy,
    load_policy,
    renewal_plan_id,
    run_scan,
    scan_account,
)
from worker.runtime import Runtime

DAY = 86400
YEAR_DAYS = 365
EVERY_KIND_RENEWED = {kind: {"mode": "renew"} for kind in (
    "ec2_reserved_instances", "savings_plans", "rds_reservations", "elasticache_reservations",
    "redshift_reservations", "opensearch_reservations")}
POLICY_A = {"window_days": 30, "regions": ["us-east-1"], **EVERY_KIND_RENEWED}
# Account B: its RIs become a Compute Savings Plan of the same hourly cost; its RDS reservations are only reported.
POLICY_B = {"ec2_reserved_instances": {"mode": "replace", "into": {"savings_plan": {
    "plan_type": "Compute", "payment_option": "No Upfront", "duration_years": 1}}}}


def ends_in(days: float) -> float:
    """``start_days_ago`` of a one-year commitment that ends ``days`` from now."""
    return YEAR_DAYS - days


def ri(account: str, ri_id: str, instance_type: str, offering_type: str, count: int, days_left: float,
       zone: str | None = None) -> dict[str, Any]:
    entry = {"kind": "ec2:reserved-instances", "account_id": account, "region": "us-east-1", "id": ri_id,
             "instance_type": instance_type, "offering_class": "standard", "offering_type": offering_type,
             "duration_years": 1, "instance_count": count, "start_days_ago": ends_in(days_left)}
    return {**entry, "availability_zone": zone} if zone else entry


def rds(account: str, rds_id: str, days_left: float) -> dict[str, Any]:
    return {"kind": "rds:reserved-db-instance", "account_id": account, "region": "us-east-1", "id": rds_id,
            "db_instance_class": "db.r5.large", "product_description": "mysql", "multi_az": True,
            "offering_type": "All Upfront", "duration_years": 1, "db_instance_count": 3,
            "start_days_ago": ends_in(days_left)}


SEEDS = [
    ri(ACCOUNT, "ri-a-regional", "m5.large", "All Upfront", 4, 10),
    ri(ACCOUNT, "ri-a-zonal", "t3.medium", "No Upfront", 2, 20, zone="us-east-1a"),
    ri(ACCOUNT, "ri-a-later", "c5.large", "No Upfront", 3, 200),  # outside the 30-day window
    {"kind": "savingsplans:savings-plan", "account_id": ACCOUNT, "id": "sp-a", "plan_type": "EC2Instance",
     "payment_option": "All Upfront", "duration_years": 1, "region": "us-east-1", "instance_family": "m5",
     "commitment": "0.75", "start_days_ago": ends_in(12)},
    # Ends a few seconds after the scan: its renewal waits for the end, then a worker buys it.
    rds(ACCOUNT, "rds-a", 8 / DAY),
    {"kind": "elasticache:reserved-cache-node", "account_id": ACCOUNT, "region": "us-east-1", "id": "cache-a",
     "cache_node_type": "cache.m5.large", "product_description": "redis", "offering_type": "No Upfront",
     "duration_years": 1, "cache_node_count": 2, "start_days_ago": ends_in(5)},
    {"kind": "redshift:reserved-node", "account_id": ACCOUNT, "region": "us-east-1", "id": "node-a",
     "node_type": "dc2.large", "offering_type": "All Upfront", "duration_years": 1, "node_count": 2,
     "start_days_ago": ends_in(6)},
    {"kind": "es:reserved-elasticsearch-instance", "account_id": ACCOUNT, "region": "us-east-1", "id": "search-a",
     "instance_type": "r5.large", "payment_option": "ALL_UPFRONT", "duration_years": 1, "instance_count": 2,
     "reservation_name": "legacy-search", "start_days_ago": ends_in(15)},
    ri(TAGGING_ACCOUNT, "ri-b", "m5.large", "No Upfront", 2, 10),
    rds(TAGGING_ACCOUNT, "rds-b", 10),
]
RI_A = renewal_plan_id(ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-a-regional")
QUEUED = {  # renewals bought now, starting when the old commitment ends
    RI_A,
    renewal_plan_id(ACCOUNT, "global", "savings_plans", "sp-a"),
    renewal_plan_id(TAGGING_ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-b"),
}
RDS_A = renewal_plan_id(ACCOUNT, "us-east-1", "rds_reservations", "rds-a")
SCHEDULED = {  # renewals that wait for the old commitment's end (no queued purchase in these APIs)
    renewal_plan_id(ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-a-zonal"),  # zonal RIs cannot be queued
    RDS_A,
    renewal_plan_id(ACCOUNT, "us-east-1", "elasticache_reservations", "cache-a"),
    renewal_plan_id(ACCOUNT, "us-east-1", "redshift_reservations", "node-a"),
    renewal_plan_id(ACCOUNT, "us-east-1", "opensearch_reservations", "search-a"),
}


def policies(runtime: Runtime) -> list[tuple[Any, RenewalPolicy]]:
    found = []
    for account_id, policy in ((ACCOUNT, POLICY_A), (TAGGING_ACCOUNT, POLICY_B)):
        parsed = load_policy({"account_id": account_id, "renewal": policy})
        assert parsed is not None
        found.append((runtime.accounts.get(account_id), parsed))
    return found


def renewal_plans(runtime: Runtime) -> dict[str, Any]:
    return {r.plan_id: r for r in runtime.ledger.list() if (r.plan or {}).get("trigger") == "renewal"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def whole_second(when: datetime) -> datetime:
    """The APIs queue to the second: a start after an end with a fraction of a second is the next second."""
    return when if when.microsecond == 0 else when.replace(microsecond=0) + timedelta(seconds=1)


def described(aws: Callable[..., Any], service: str, account: str, operation: str, key: str) -> list[dict[str, Any]]:
    client = aws(service, account_id=account, external_id=EXTERNAL_ID)
    return list(getattr(client, operation)()[key])


def test_scan_makes_one_renewal_per_commitment_timed_to_its_end_and_a_second_scan_none(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Callable[..., Any],
    aws: Callable[..., Any],
) -> None:
    start_worker("renewals", concurrency=2)
    sandbox.seed(SEEDS)
    ris_a = {r["ReservedInstancesId"]: r for r in described(aws, "ec2", ACCOUNT, "describe_reserved_instances",
                                                              "ReservedInstances")}
    old_sp = described(aws, "savingsplans", ACCOUNT, "describe_savings_plans", "savingsPlans")[0]
    old_rds = described(aws, "rds", ACCOUNT, "describe_reserved_db_instances", "ReservedDBInstances")[0]
    ri_b = described(aws, "ec2", TAGGING_ACCOUNT, "describe_reserved_instances", "ReservedInstances")[0]

    first = run_scan(runtime, intake_loop, datetime.now(UTC), policies(runtime))
    assert first["errors"] == 0
    assert first["accepted"] == len(QUEUED | SCHEDULED) == 8
    assert first["report"] == 1  # account B's RDS reservation: reported, never bought
    plans = renewal_plans(runtime)
    assert set(plans) == QUEUED | SCHEDULED  # exactly one per renewed commitment, none for the later RI

    # Queued purchases: run now, starting exactly at the old end; too late once it has passed.
    ends = {renewal_plan_id(ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-a-regional"):
            ris_a["ri-a-regional"]["End"], renewal_plan_id(ACCOUNT, "global", "savings_plans", "sp-a"):
            at(old_sp["end"]), renewal_plan_id(TAGGING_ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-b"):
            ri_b["End"]}
    for plan_id in QUEUED:
        plan = plans[plan_id].plan
        assert plan["trigger"] == "renewal" and plan["not_before"] is None
        assert at(plan["params"]["purchase_time"]) == whole_second(ends[plan_id])
        assert at(plan["expires_at"]) == ends[plan_id]
    # Scheduled ones wait for the old end: scheduled in the ledger and in the sweeper's schedule at that time.
    scheduled_ends = {p: at(plans[p].plan["not_before"]) for p in SCHEDULED}
    assert scheduled_ends[renewal_plan_id(ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-a-zonal")] == \
        ris_a["ri-a-zonal"]["End"]
    assert scheduled_ends[RDS_A] == old_rds["StartTime"] + timedelta(seconds=old_rds["Duration"])
    for plan_id in SCHEDULED - {RDS_A}:
        assert plans[plan_id].state == PlanState.SCHEDULED
        assert "purchase_time" not in plans[plan_id].plan["params"]
        assert runtime.redis.zscore(runtime.key("scheduled"), plan_id) == scheduled_ends[plan_id].timestamp()

    # Account B's RIs become a Compute Savings Plan committing what they cost per hour (upfront spread + hourly).
    b_plan = plans[renewal_plan_id(TAGGING_ACCOUNT, "us-east-1", "ec2_reserved_instances", "ri-b")].plan
    hourly = (Decimal(str(ri_b["FixedPrice"])) / 8760 + Decimal(str(ri_b["UsagePrice"])) + sum(
        Decimal(str(c["Amount"])) for c in ri_b["RecurringCharges"])) * ri_b["InstanceCount"]
    assert b_plan["action"] == "savingsplans:CreateSavingsPlan" and b_plan["params"]["plan_type"] == "Compute"
    assert Decimal(b_plan["params"]["commitment_usd_per_hour"]) == hourly.quantize(Decimal("0.0001"), ROUND_DOWN)

    # The worker buys the queued Savings Plans now (starting at the old end) and the RDS reservation once its end
    # has come. (The queued RI purchase: test_a_queued_ri_renewal_starts_when_the_old_one_ends.)
    for plan_id in [*QUEUED - {RI_A}, RDS_A]:
        record = wait_for_state(runtime, plan_id, {"succeeded"}, timeout=60)
        assert record.plan["trigger"] == "renewal"
    new_sps = [sp for sp in described(aws, "savingsplans", ACCOUNT, "describe_savings_plans", "savingsPlans")
               if sp["savingsPlanId"] != "sp-a"]
    assert [(sp["state"], at(sp["start"]), sp["commitment"]) for sp in new_sps] == \
        [("queued", whole_second(at(old_sp["end"])), "0.75")]
    [b_sp] = described(aws, "savingsplans", TAGGING_ACCOUNT, "describe_savings_plans", "savingsPlans")
    assert at(b_sp["start"]) == ri_b["End"] and b_sp["savingsPlanType"] == "Compute"
    new_rds = [r for r in described(aws, "rds", ACCOUNT, "describe_reserved_db_instances", "ReservedDBInstances")
               if r["ReservedDBInstanceId"] != "rds-a"]
    assert len(new_rds) == 1 and new_rds[0]["DBInstanceCount"] == 3
    assert new_rds[0]["StartTime"] >= scheduled_ends[RDS_A]  # bought once the old one ended: no overlap

    # A second scan: every commitment still in its window already has its renewal; nothing new, no conflict.
    resources = {r["id"] for r in sandbox.resources()}
    second = run_scan(runtime, intake_loop, datetime.now(UTC), policies(runtime))
    assert (second["accepted"], second["existing"], second["conflict"], second["errors"]) == (0, 0, 0, 0)
    assert second["planned"] == len(QUEUED | SCHEDULED) - 1  # the old RDS reservation has ended (retired)
    assert set(renewal_plans(runtime)) == QUEUED | SCHEDULED
    assert runtime.redis.xlen(runtime.key("rejected")) == 0
    assert {r["id"] for r in sandbox.resources()} == resources

    # Retention purges a renewal plan and, later, its tombstone: the commitment is still in its window, and a
    # scan still knows its renewal was made (the scan's marker outlives both).
    purged = renewal_plan_id(ACCOUNT, "global", "savings_plans", "sp-a")
    assert runtime.ledger.purge([PlanState.SUCCEEDED], datetime.now(UTC) + timedelta(days=1)) >= 3
    runtime.ledger.trim_tombstones(runtime.key("plans"), 0)
    assert runtime.ledger.get(purged) is None and runtime.ledger.tombstone(purged) is None
    third = run_scan(runtime, intake_loop, datetime.now(UTC), policies(runtime))
    assert (third["accepted"], third["planned"]) == (0, second["planned"])
    assert runtime.ledger.get(purged) is None
    runs = runtime.redis.xrange(runtime.key("renewals", "runs"))
    assert [int(fields[b"accepted"]) for _, fields in runs] == [8, 0, 0]


def test_a_queued_ri_renewal_starts_when_the_old_one_ends(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, aws: Callable[..., Any],
) -> None:
    from tasks import ACTIONS
    from worker.execution import run_plan

    sandbox.seed([ri(ACCOUNT, "ri-a-regional", "m5.large", "All Upfront", 4, 10)])
    [old] = described(aws, "ec2", ACCOUNT, "describe_reserved_instances", "ReservedInstances")
    assert run_scan(runtime, intake, datetime.now(UTC), policies(runtime)[:1])["accepted"] == 1
    run_plan(runtime, RI_A, ACTIONS)  # the executor, as the family's worker runs it
    assert runtime.ledger.get(RI_A).state == PlanState.SUCCEEDED
    new = [r for r in described(aws, "ec2", ACCOUNT, "describe_reserved_instances", "ReservedInstances")
           if r["ReservedInstancesId"] != "ri-a-regional"]
    assert [(r["State"], r["Start"], r["InstanceType"], r["InstanceCount"]) for r in new] == \
        [("queued", old["End"], "m5.large", 4)]  # no gap, no overlap


def test_what_cannot_be_read_or_renewed_is_reported_and_the_rest_scanned(
    runtime: Runtime, sandbox: SandboxControl,
) -> None:
    sandbox.seed([ri(ACCOUNT, "ri-x", "m5.large", "All Upfront", 4, 10), rds(ACCOUNT, "rds-x", 10)])
    # The customer's role does not allow reading RDS reservations (an explicit Deny in its policy).
    sandbox.set_iam(enforce=True, external_id=EXTERNAL_ID, policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "rds:DescribeReservedDBInstances", "Resource": "*"}]})
    account, policy = policies(runtime)[0]
    report = scan_account(runtime.sessions, runtime.ledger, account, policy, datetime.now(UTC))
    assert [(e["kind"], e["code"]) for e in report.errors] == [("rds_reservations", "AccessDenied")]
    assert [(r.commitment.commitment_id, r.status) for r in report.renewals] == [("ri-x", "submit")]

    # An account whose allowed_actions exclude the renewal's action: listed as unavailable, no plan recorded (a
    # rejected plan would hold the plan id for good).
    sandbox.seed([ri(RESTRICTED_ACCOUNT, "ri-r", "m5.large", "All Upfront", 4, 10)])
    report = scan_account(runtime.sessions, runtime.ledger, runtime.accounts.get(RESTRICTED_ACCOUNT), policy,
                          datetime.now(UTC), kinds=["ec2_reserved_instances"])
    [renewal] = report.renewals
    assert (renewal.status, renewal.reason) == (
        "unavailable", "the account's allowed_actions do not include ec2:PurchaseReservedInstancesOffering")


def test_policy_validation_names_the_problem() -> None:
    assert load_policy({"account_id": ACCOUNT}) is None
    assert load_policy({"account_id": ACCOUNT, "renewal": {}}) == RenewalPolicy()  # reports only, by default
    for renewal, problem in (
        ({"rds_reservations": {"mode": "replace"}}, "mode 'replace' needs 'into'"),
        ({"rds_reservations": {"mode": "replace", "into": {"savings_plan": {"plan_type": "Compute"}}}},
         "a Savings Plan replaces EC2 Reserved Instances or Savings Plans only"),
        ({"savings_plans": {"mode": "replace", "into": {"payment": "All Upfront", "savings_plan": {
            "plan_type": "Compute"}}}}, "not both"),
        ({"window_days": 0}, "window_days"),
        ({"ec2_reserved_instances": {"mode": "buy"}}, "ec2_reserved_instances.mode"),
    ):
        with pytest.raises(ConfigurationError) as raised:
            load_policy({"account_id": ACCOUNT, "renewal": renewal})
        assert problem in str(raised.value) and ACCOUNT in str(raised.value)
    # Plan ids stay valid whatever a customer-chosen id holds.
    odd = renewal_plan_id(ACCOUNT, "us-east-1", "rds_reservations", "my reservation/" + "x" * 200)
    assert len(odd) <= 128 and odd.startswith(f"renewal:{ACCOUNT}:us-east-1:rds:")


# --- commitd renewals preview ------------------------------------------------------------------------------------
def preview(env: dict[str, str], registry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.renewals_cli", "renewals", "preview", *args], cwd=ROOT,
                          env={**os.environ, **env, "COMMITD_ACCOUNTS_FILE": str(registry)}, capture_output=True,
                          text=True, timeout=60)


def test_preview_lists_what_would_be_renewed_into_what_for_how_much(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, env: dict[str, str], tmp_path: Path,
) -> None:
    sandbox.seed([ri(ACCOUNT, "ri-p", "m5.large", "All Upfront", 4, 10), ri(ACCOUNT, "ri-q", "c5.large",
                  "No Upfront", 3, 200), rds(TAGGING_ACCOUNT, "rds-p", 10)])
    # The registry as the operator writes it: each account's renewal policy in its entry.
    registry = json.loads(Path(env["COMMITD_ACCOUNTS_FILE"]).read_text())
    for entry in registry["accounts"]:
        entry["renewal"] = {ACCOUNT: POLICY_A, TAGGING_ACCOUNT: POLICY_B}.get(entry["account_id"])
    registry["accounts"] = [e for e in registry["accounts"] if e["renewal"]]
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(registry))

    shown = preview(env, path, "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["commitment_id"]: r for r in json.loads(shown.stdout)["renewals"]}
    assert set(rows) == {"ri-p", "rds-p"}  # ri-q ends in 200 days: outside the 30-day window
    p = rows["ri-p"]
    price = Decimal(str(next(o for o in aws_offerings(sandbox) if o["InstanceType"] == "m5.large")["FixedPrice"]))
    assert (p["status"], p["mode"], p["scheduling"], p["action"]) == (
        "submit", "renew", "purchase_time", "ec2:PurchaseReservedInstancesOffering")
    assert p["into"] == "m5.large Linux/UNIX standard All Upfront 1y Region × 4"
    assert Decimal(p["upfront_usd"]) == Decimal(p["total_usd"]) == price * 4
    assert p["starts_at"] == p["ends_at"]
    assert (rows["rds-p"]["status"], rows["rds-p"]["into"], rows["rds-p"]["total_usd"]) == ("report", None, None)
    assert renewal_plans(runtime) == {}  # a preview submits nothing

    wider = json.loads(preview(env, path, "--json", "--account", ACCOUNT, "--days", "300").stdout)["renewals"]
    assert [r["commitment_id"] for r in wider] == ["ri-p", "ri-q"]

    run_scan(runtime, intake, datetime.now(UTC), policies(runtime))
    table = preview(env, path, "--account", ACCOUNT)
    assert table.returncode == 0, table.stderr
    header, *lines = [line.split("\t") for line in table.stdout.splitlines()]
    assert header[:3] == ["ACCOUNT", "REGION", "KIND"] and len(lines) == 1
    row = dict(zip(header, lines[0], strict=True))
    # Planned, not run yet (no worker here): what it will commit is known once its worker has prepared it.
    assert (row["COMMITMENT"], row["STATUS"], row["TOTAL_USD"]) == ("ri-p", "planned (queued)", "-")
    assert "0 renewals would be submitted" in table.stderr

    unknown = preview(env, path, "--account", "999999999999")
    assert unknown.returncode == 1 and "no renewal policy for account(s) 999999999999" in unknown.stderr


def aws_offerings(sandbox: SandboxControl) -> list[dict[str, Any]]:
    """The sandbox's regional AWS offerings for m5.large standard All Upfront 1 year in us-east-1."""
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=sandbox.url, aws_access_key_id="x",
                       aws_secret_access_key="x")
    return list(ec2.describe_reserved_instances_offerings(
        InstanceType="m5.large", OfferingClass="standard", OfferingType="All Upfront", IncludeMarketplace=False,
        ProductDescription="Linux/UNIX", Filters=[{"Name": "scope", "Values": ["Region"]},
                                                  {"Name": "duration", "Values": ["31536000"]}],
    )["ReservedInstancesOfferings"])
