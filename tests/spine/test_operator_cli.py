"""``commitd resale`` and ``commitd exchange`` as an operator runs them: the CLI as a subprocess, plans through the
intake to a real Celery worker process, the sandbox over HTTP under the production role, and its ground truth."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.control import SandboxControl
from tests.families.harness import ground_truth
from tests.families.test_ec2_ri_lifecycle import EXCHANGE, LISTINGS, made_by, seed_convertible, seed_ri, state_of
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ROOT
from worker.runtime import Runtime

REGION = "us-east-1"
SOLD_RI = "7d2e0000-0000-4000-8000-00000000a001"  # standard, 4 instances, held 40 days
YOUNG_RI = "7d2e0000-0000-4000-8000-00000000a002"  # held 10 days: not sellable yet
CONVERTIBLE_RI = "7d2e0000-0000-4000-8000-00000000a003"
COMMITD = [sys.executable, "-m", "worker.cli"]


def commitd(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMITD, *args], cwd=ROOT, env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=120)


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-3000:]}"


def listing_command(*extra: str, ri: str = SOLD_RI) -> list[str]:
    return ["resale", "list", "--account", ACCOUNT, "--region", REGION, "--ri", ri, "--count", "2", *extra]


def test_a_resale_listed_shown_and_cancelled_through_the_cli(
    runtime: Runtime, env: dict[str, str], sandbox: SandboxControl, start_worker: Any
) -> None:
    seed_ri(sandbox, SOLD_RI)
    seed_ri(sandbox, YOUNG_RI, start_days_ago=10)
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    prices = ["--price", "6=270", "--price", "10=450.00", "--min-price", "100"]

    # The plan is shown and the operator says no: nothing reaches the ledger or AWS.
    declined = commitd(env, *listing_command(*prices, "--as", "alice"), stdin="n\n")
    assert declined.returncode == 1, shown(declined)
    assert "ec2:CreateReservedInstancesListing" in declined.stdout and SOLD_RI in declined.stdout
    assert "every price at least 100 USD" in declined.stdout and "Proceed? [y/N]" in declined.stdout
    assert "nothing was submitted" in declined.stdout
    assert runtime.ledger.ids() == [] and ground_truth(sandbox, LISTINGS) == []

    # Yes at the prompt: one plan, requested by the operator, carried out by the worker.
    listed = commitd(env, *listing_command(*prices, "--as", "alice"), stdin="y\n")
    assert listed.returncode == 0, shown(listed)
    [plan_id] = runtime.ledger.ids()
    record = runtime.ledger.get(plan_id)
    assert record is not None and record.state.value == "succeeded", record
    assert (record.plan["requested_by"], record.plan["trigger"]) == ("alice", "resale")
    assert record.plan["params"]["price_schedules"] == [{"term": 10, "price": "450"}, {"term": 6, "price": "270"}]
    [listing] = ground_truth(sandbox, LISTINGS)
    assert listing["state"] == "active" and listing["created_by"]["token"] == record.intent["idempotency_value"]
    assert f"plan {plan_id}: succeeded" in listed.stdout and listing["id"] in listed.stdout

    # The same command again, by someone else, prices in another order and spelling: the plan already made.
    again = commitd(env, *listing_command("--price", "10=450", "--price", "6=270.0", "--min-price", "100.00",
                                          "--as", "bob", "--yes"))
    assert again.returncode == 0, shown(again)
    assert f"plan {plan_id} exists already (requested by alice)" in again.stdout and "Proceed" not in again.stdout
    assert runtime.ledger.ids() == [plan_id] and len(ground_truth(sandbox, LISTINGS)) == 1

    # AWS refuses to sell an RI held 10 days: exit 1 with the reason, nothing listed.
    young = commitd(env, *listing_command(*prices, ri=YOUNG_RI), "--yes")
    assert young.returncode == 1, shown(young)
    assert "HeldLessThan30Days" in young.stdout and len(ground_truth(sandbox, LISTINGS)) == 1

    # 130 days on (195 days, 6 months, left: the 6-month step applies), a buyer takes one instance. Status reads
    # it through the account's role and values the sale at that step's price, less AWS's 12 % fee.
    sandbox.advance_clock(130 * 86400)
    sandbox.seed([{"kind": "ec2:ri-listing-sale", "account_id": ACCOUNT, "region": REGION,
                   "reserved_instances_id": SOLD_RI, "instance_count": 1}])
    status = commitd(env, "resale", "status", "--json")
    assert status.returncode == 0, shown(status)
    [row] = json.loads(status.stdout)["listings"]
    assert (row["reserved_instances_listing_id"], row["status"]) == (listing["id"], "active")
    assert row["instance_counts"] == {"available": 1, "sold": 1, "cancelled": 0, "pending": 0}
    assert (row["price_now_usd"], row["received_usd"], row["net_usd"]) == ("270.0", "270.00", "237.60")
    reads = [r["operation"] for r in runtime.audit.records("operator.resale-status") if r["event"] == "aws_call"]
    assert reads == ["assume_role", "describe_reserved_instances_listings", "describe_reserved_instances"]

    cancelled = commitd(env, "resale", "cancel", "--account", ACCOUNT, "--region", REGION, "--listing",
                        listing["id"], "--yes", "--as", "alice")
    assert cancelled.returncode == 0, shown(cancelled)
    [cancel_id] = [i for i in runtime.ledger.ids() if i.startswith("resale-cancel.")]
    cancel = runtime.ledger.get(cancel_id)
    assert cancel is not None and cancel.state.value == "succeeded" and cancel.result["units_sold"] == 1
    assert state_of(sandbox, listing["id"], LISTINGS) == "cancelled"
    assert "cancelled; available 0, sold 1, cancelled 1" in cancelled.stdout

    table = commitd(env, "resale", "status")
    assert table.returncode == 0, shown(table)
    header, line, totals = table.stdout.splitlines()
    assert header.split("\t")[:9] == ["ACCOUNT", "REGION", "LISTING", "RI", "STATUS", "AVAILABLE", "SOLD",
                                      "CANCELLED", "PRICE_NOW"]
    assert line.split("\t")[:11] == [ACCOUNT, REGION, listing["id"], SOLD_RI, "cancelled", "0", "1", "1", "-",
                                     "270.00", "237.60"]
    assert totals.startswith("1 listings, 1 units sold: 270.00 USD received, 237.60 after AWS's 12 % fee")


def test_an_exchange_quoted_then_accepted_once_through_the_cli(
    runtime: Runtime, env: dict[str, str], sandbox: SandboxControl, start_worker: Any
) -> None:
    seed_convertible(sandbox, CONVERTIBLE_RI)  # 2 x m5.large, No Upfront, 1 year
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    where = ["--account", ACCOUNT, "--region", REGION, "--ri", CONVERTIBLE_RI]
    target = ["--instance-type", "m5.xlarge", "--offering-type", "No Upfront", "--years", "1"]

    quote = commitd(env, "exchange", "quote", *where, *target, "--json")
    assert quote.returncode == 0, shown(quote)
    view = json.loads(quote.stdout)
    assert view["valid"] is True and view["payment_due_usd"] == "0.00"
    assert (view["target"]["instance_type"], view["target"]["instance_count"]) == ("m5.xlarge", 1)
    assert runtime.ledger.ids() == [], "a quote is a read: no plan"

    # The quote prints the command that accepts it, with its figures as the ceilings; run as printed.
    printed = commitd(env, "exchange", "quote", *where, *target)
    [accept_line] = [line for line in printed.stdout.splitlines() if line.startswith("accept: ")]
    accept_args = shlex.split(accept_line.removeprefix("accept: commitd "))
    assert f"--max-payment-due 0.00 --max-total {view['target_value_usd']}" in accept_line
    accepted = commitd(env, *accept_args, "--yes", "--as", "alice")
    assert accepted.returncode == 0, shown(accepted)
    [plan_id] = runtime.ledger.ids()
    record = runtime.ledger.get(plan_id)
    assert record is not None and record.state.value == "succeeded", record
    assert (record.plan["requested_by"], record.plan["trigger"]) == ("alice", "operator")
    [new_ri] = made_by(sandbox, EXCHANGE)
    assert record.result["reserved_instances_id"] == new_ri["id"] and state_of(sandbox, CONVERTIBLE_RI) == "retired"
    assert f"for {new_ri['id']} (1 x m5.xlarge" in accepted.stdout

    again = commitd(env, *accept_args, "--yes", "--as", "alice")
    assert again.returncode == 0, shown(again)
    assert f"plan {plan_id} exists already" in again.stdout
    assert runtime.ledger.ids() == [plan_id] and len(made_by(sandbox, EXCHANGE)) == 1

    # Asked for on purpose, a new attempt is a new plan, and AWS's state stops it: the sources are retired.
    retried = commitd(env, *accept_args, "--yes", "--again")
    assert retried.returncode == 1, shown(retried)
    assert f"plan {plan_id}.2: failed" in retried.stdout and "ReservedInstancesNotActive" in retried.stdout
    assert len(made_by(sandbox, EXCHANGE)) == 1

    stale = commitd(env, "exchange", "quote", *where, *target)
    assert stale.returncode == 1 and "NOT VALID" in stale.stdout, shown(stale)


def test_a_command_repeated_across_midnight_answers_with_the_plan_still_in_flight(
    runtime: Runtime, intake: Any
) -> None:
    """Yesterday's plan for the same command, still queued (no worker here), is the one a repeat answers with;
    --again is refused while it is in flight, and makes today's first attempt once it has settled."""
    import click
    import pytest

    from worker.operator_cli import CANCEL, OperatorPlan, _choose_id
    from worker.plans import PlanState

    plan = OperatorPlan("resale-cancel", CANCEL, ACCOUNT, REGION, {"reserved_instances_id": SOLD_RI}, "alice",
                        "resale", False, "none")
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    assert _choose_id(runtime, plan, today, again=False) == plan.first_id(today)
    old_id = plan.first_id(yesterday)
    assert old_id != plan.first_id(today)
    assert intake.submit_raw(json.dumps(plan.envelope(old_id, yesterday)), "test").state == "queued"
    assert _choose_id(runtime, plan, today, again=False) == old_id
    with pytest.raises(click.ClickException, match="is still queued"):
        _choose_id(runtime, plan, today, again=True)
    record = runtime.ledger.get(old_id)
    assert record is not None
    runtime.ledger.transition(record, PlanState.CANCELLED, "test: settled")
    assert _choose_id(runtime, plan, today, again=False) == plan.first_id(today)
