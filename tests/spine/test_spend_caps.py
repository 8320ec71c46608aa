"""Spend caps (worker/budgets.py): budget reserved atomically in Redis before the mutating call, by real worker
processes buying from the sandbox over HTTP. The sandbox's RIs, priced by AWS's own describe call, are the ground
truth of what was committed."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config.accounts import AccountLimits
from config.settings import Settings
from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import EXTERNAL_ID, eventually, ri_plan, wait_budget_settled, wait_for_state
from tests.spine.test_exactly_once import SETTLED
from tests.spine.test_purchase import tasks_done
from worker.budgets import Budgets, CapReached
from worker.celery_app import enqueue
from worker.intake import Intake
from worker.ledger import PlanRecord
from worker.plans import PlanState
from worker.runtime import Runtime, set_runtime

CAPPED = "313131313131"
CENT = Decimal("0.01")
# m5.large, standard, 1 year, No Upfront has one price in us-east-1 and us-west-2, regional or in either zone: six
# different offerings (no two plans wait on the same call's signature lock) that each commit the same amount.
OFFERINGS: list[tuple[str, str | None]] = [
    (region, zone) for region in ("us-east-1", "us-west-2") for zone in (None, f"{region}a", f"{region}b")]
COUNT = 2  # instances per plan


def account_entry(account_id: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"account_id": account_id, "name": name, "role_arn": f"arn:aws:iam::{account_id}:role/commitd",
            "external_id_env": "COMMITD_TEST_EXTERNAL_ID", **fields}


@dataclass
class OwnAccounts:
    """An accounts file of the test's own (the session's is shared and cannot change), with a runtime and an intake
    on it. Workers use it through ``start_worker(COMMITD_ACCOUNTS_FILE=str(own.path))``."""

    path: Path
    runtime: Runtime
    intake: Intake

    def write(self, *accounts: dict[str, Any]) -> None:
        """Replace the file in one step: a worker reloading it never reads half of it."""
        write_accounts(self.path, *accounts)

    def submit(self, plan: dict[str, Any]) -> None:
        result = self.intake.submit_raw(json.dumps(plan), "test")
        assert result.outcome == "accepted", result


def write_accounts(path: Path, *accounts: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"accounts": list(accounts)}))
    os.replace(partial, path)


def open_own_accounts(directory: Path, *accounts: dict[str, Any]) -> OwnAccounts:
    path = directory / "accounts.json"
    write_accounts(path, *accounts)
    own_runtime = Runtime(Settings(accounts_file=path))  # the rest from the environment of the `env` fixture
    set_runtime(own_runtime)
    return OwnAccounts(path, own_runtime, Intake(own_runtime, ACTIONS, enqueue))


@pytest.fixture
def own_accounts(tmp_path: Path, runtime: Runtime) -> Iterator[Callable[..., OwnAccounts]]:
    opened: list[OwnAccounts] = []

    def open_(*accounts: dict[str, Any]) -> OwnAccounts:
        own = open_own_accounts(tmp_path, *accounts)
        opened.append(own)
        return own

    yield open_
    for own in opened:
        own.runtime.redis.close()
    set_runtime(runtime)


def capped_plan(plan_id: str, region: str = "us-east-1", zone: str | None = None) -> dict[str, Any]:
    plan = ri_plan(plan_id, instance_count=COUNT)
    if zone is not None:
        plan["params"].update(scope="Availability Zone", availability_zone=zone)
    return {**plan, "account_id": CAPPED, "region": region}


def commitment(ri: dict[str, Any], count_key: str) -> Decimal:
    """What an offering (or a bought RI) commits for its instances: upfront plus recurring over the term."""
    hourly = Decimal(str(ri.get("UsagePrice", 0))) + sum(
        (Decimal(str(c["Amount"])) for c in ri.get("RecurringCharges", []) if c["Frequency"] == "Hourly"), Decimal(0))
    count = int(ri[count_key]) if count_key else COUNT
    return Decimal(str(ri["FixedPrice"])) * count + hourly * count * (int(ri["Duration"]) // 3600)


def plan_commitment(aws: Any) -> Decimal:
    """One capped plan's commitment, from the sandbox's price list (as AWS describes it)."""
    ec2 = aws("ec2", account_id=CAPPED, external_id=EXTERNAL_ID)
    [offering] = ec2.describe_reserved_instances_offerings(
        InstanceType="m5.large", ProductDescription="Linux/UNIX", OfferingClass="standard", OfferingType="No Upfront",
        InstanceTenancy="default", Filters=[{"Name": "duration", "Values": ["31536000"]},
                                            {"Name": "scope", "Values": ["Region"]}])["ReservedInstancesOfferings"]
    return commitment(offering, "").quantize(CENT)


def committed_in_aws(aws: Any) -> tuple[Decimal, set[str]]:
    """Ground truth: the total commitment of the RIs the capped account holds in AWS, and their ids."""
    total, ids = Decimal(0), set()
    for region in sorted({r for r, _ in OFFERINGS}):
        for ri in aws("ec2", region=region, account_id=CAPPED, external_id=EXTERNAL_ID).describe_reserved_instances()[
                "ReservedInstances"]:
            total += commitment(ri, "InstanceCount")
            ids.add(ri["ReservedInstancesId"])
    return total.quantize(CENT), ids


def budget(runtime: Runtime, period: str = "day") -> dict[str, str]:
    raw = runtime.redis.hget(runtime.key("budgets"), f"{CAPPED}:{period}")
    assert raw is not None, f"no {period} budget published for {CAPPED}"
    value: dict[str, str] = json.loads(raw)
    return value


# The period's word is not checked here (test_cap_messages_name_the_period_in_english is about it).
CAP_MESSAGE = re.compile(r"the \w+ commitment cap of account (?P<account>\d+) is (?P<cap>[\d.]+) USD: "
                         r"(?P<used>[\d.]+) used and (?P<reserved>[\d.]+) reserved, and this plan needs "
                         r"(?P<amount>[\d.]+) more")


def cap_numbers(message: str) -> dict[str, Decimal]:
    found = CAP_MESSAGE.search(message)
    assert found is not None, message
    assert found["account"] == CAPPED
    return {k: Decimal(v) for k, v in found.groupdict().items() if k != "account"}


def max_overlap(records: list[PlanRecord]) -> int:
    """How many of these plans were running (picked up, not yet settled) at the same moment."""
    events: list[tuple[float, int]] = []
    for record in records:
        start = next(h.at for h in record.history if h.state == PlanState.RUNNING)
        events += [(start.timestamp(), 1), (record.history[-1].at.timestamp(), -1)]
    running = most = 0
    for _, step in sorted(events):
        running += step
        most = max(most, running)
    return most


def test_parallel_plans_on_two_workers_never_commit_beyond_the_daily_cap(
    own_accounts: Callable[..., OwnAccounts], sandbox: SandboxControl, start_worker: Any, aws: Any
) -> None:
    """Six plans at once on two workers (concurrency 2 each), a daily cap with room for three: three are bought,
    three fail with SpendCapReached and the numbers, and AWS holds no more than the cap."""
    unit = plan_commitment(aws)
    admitted = 3
    cap = (unit * admitted + unit / 2).quantize(CENT)  # room for three plans, not four
    own = own_accounts(account_entry(CAPPED, "capped", limits={"commitment_usd_per_day": str(cap)}))
    workers = [start_worker(f"cap-{n}", concurrency=2, COMMITD_ACCOUNTS_FILE=str(own.path)) for n in (1, 2)]
    # Every plan's offerings read is slowed, so all of them reach their reservation at about the same time.
    sandbox.add_fault("ec2:DescribeReservedInstancesOfferings", "latency", count=len(OFFERINGS), latency_ms=400)
    plan_ids = [f"cap-{n}" for n in range(len(OFFERINGS))]
    for plan_id, (region, zone) in zip(plan_ids, OFFERINGS, strict=True):
        own.submit(capped_plan(plan_id, region, zone))
    records = [wait_for_state(own.runtime, p, SETTLED, timeout=90) for p in plan_ids]
    assert max_overlap(records) >= 2, "the plans did not run in parallel"
    assert {w.process.poll() for w in workers} == {None}

    succeeded = [r for r in records if r.state == PlanState.SUCCEEDED]
    failed = [r for r in records if r.state == PlanState.FAILED]
    assert len(succeeded) == admitted and len(failed) == len(records) - admitted, [
        (r.plan_id, r.state.value, r.error) for r in records]
    for record in failed:
        error = record.error or {}
        assert error["code"] == "SpendCapReached", error
        assert error["message"].endswith("; nothing was bought"), error
        numbers = cap_numbers(error["message"])
        assert numbers["cap"] == cap and numbers["amount"] == unit
        # The numbers explain the refusal: what was taken already plus this plan would cross the cap.
        assert numbers["used"] + numbers["reserved"] <= cap < numbers["used"] + numbers["reserved"] + unit
        assert error["details"] == {"period": "day", "measure": "commitment", "used_usd": str(numbers["used"]),
                                    "reserved_usd": str(numbers["reserved"]), "amount_usd": str(unit),
                                    "cap_usd": str(cap)}
        assert record.intent is None and not (record.book or {}).get("sends"), "a refused plan sent nothing"
    # Each refused plan's task ended there, returning its state: it went no further (lock, intent) after failing.
    # (A task's end is logged after its plan's last write: waited for, as is each budget's settlement.)
    eventually(lambda: len(tasks_done(workers)) >= len(plan_ids), "every plan's task to end")
    results = sorted(tasks_done(workers).values())
    for plan_id in plan_ids:
        wait_budget_settled(own.runtime, plan_id)
    assert results.count("failed") == len(failed) and results.count("succeeded") == admitted, results

    total, ids = committed_in_aws(aws)
    assert total <= cap
    assert total == unit * admitted
    assert ids == {i for r in succeeded for i in (r.result or {})["resource_ids"]}
    published = budget(own.runtime)
    assert Decimal(published["used_usd"]) == sum(Decimal(r.intent["commitment_usd"]) for r in succeeded
                                                 if r.intent) == total
    assert published["reserved_usd"] == "0.00" and published["cap_usd"] == str(cap)
    assert Decimal(budget(own.runtime, "month")["used_usd"]) == total


def test_a_plan_refused_by_aws_releases_its_reservation(
    own_accounts: Callable[..., OwnAccounts], sandbox: SandboxControl, start_worker: Any, aws: Any
) -> None:
    """The cap has room for one plan. AWS refuses the first plan's purchase (a terminal error, after its budget was
    reserved): its reservation is released, so the next plan fits; the one after that does not."""
    unit = plan_commitment(aws)
    cap = (unit + unit / 2).quantize(CENT)  # room for one plan
    own = own_accounts(account_entry(CAPPED, "capped", limits={"commitment_usd_per_day": str(cap)}))
    start_worker("refused", COMMITD_ACCOUNTS_FILE=str(own.path))
    sandbox.set_iam(True, {"Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "ec2:PurchaseReservedInstancesOffering", "Resource": "*"}]},
        external_id=EXTERNAL_ID)
    own.submit(capped_plan("refused-1"))
    refused = wait_for_state(own.runtime, "refused-1", SETTLED)
    assert refused.state == PlanState.FAILED and (refused.error or {}).get("code") == "UnauthorizedOperation", \
        refused.error
    assert (refused.book or {}).get("sends") == 1, "the purchase was sent (and refused), after the reservation"
    wait_budget_settled(own.runtime, "refused-1")
    assert budget(own.runtime)["reserved_usd"] == "0.00" and budget(own.runtime)["used_usd"] == "0.00"

    sandbox.set_iam(False, None, external_id=EXTERNAL_ID)
    own.submit(capped_plan("refused-2", "us-east-1", "us-east-1a"))
    assert wait_for_state(own.runtime, "refused-2", SETTLED).state == PlanState.SUCCEEDED
    wait_budget_settled(own.runtime, "refused-2")
    own.submit(capped_plan("refused-3", "us-east-1", "us-east-1b"))
    over = wait_for_state(own.runtime, "refused-3", SETTLED)
    assert over.state == PlanState.FAILED and (over.error or {}).get("code") == "SpendCapReached", over.error
    assert cap_numbers(over.error["message"])["used"] == unit
    assert committed_in_aws(aws)[0] == unit == Decimal(budget(own.runtime)["used_usd"])


def test_on_cap_wait_queues_the_plan_until_the_cap_is_raised(
    own_accounts: Callable[..., OwnAccounts], sandbox: SandboxControl, start_worker: Any, aws: Any
) -> None:
    """on_cap: wait. The second plan does not fit: it goes back to queued ("waiting for budget", its attempt given
    back, nothing sent) and looks again every COMMITD_CAP_RECHECK_SECONDS; once the cap in the accounts file is
    raised, the worker's registry reloads it and the plan is bought."""
    unit = plan_commitment(aws)
    cap = (unit + unit / 2).quantize(CENT)  # room for one plan
    limits = {"commitment_usd_per_day": str(cap), "on_cap": "wait"}
    own = own_accounts(account_entry(CAPPED, "capped", limits=limits))
    start_worker("waiter", concurrency=2, COMMITD_ACCOUNTS_FILE=str(own.path), COMMITD_CAP_RECHECK_SECONDS="0.3")
    own.submit(capped_plan("wait-1"))
    assert wait_for_state(own.runtime, "wait-1", SETTLED).state == PlanState.SUCCEEDED
    own.submit(capped_plan("wait-2", "us-west-2"))

    def waits(record: PlanRecord) -> list[Any]:
        return [h for h in record.history if h.state == PlanState.QUEUED and h.note.startswith("waiting for budget")]

    deadline = time.monotonic() + 30
    record = own.runtime.ledger.get("wait-2")
    while record is None or sum(1 + h.repeated for h in waits(record)) < 5:  # it looked again, and still waits
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
        record = own.runtime.ledger.get("wait-2")
    assert record.state in (PlanState.QUEUED, PlanState.RUNNING) and record.attempts <= 1
    # The same wait each time: one history entry that counts the rechecks, not two entries per recheck.
    assert len(waits(record)) == 1 and waits(record)[0].repeated >= 4 and len(record.history) <= 5, record.history
    numbers = cap_numbers(waits(record)[-1].note)
    assert (numbers["cap"], numbers["used"], numbers["reserved"], numbers["amount"]) == (cap, unit,
                                                                                       Decimal(0), unit)
    assert len(committed_in_aws(aws)[1]) == 1

    own.write(account_entry(CAPPED, "capped", limits={**limits, "commitment_usd_per_day": str(cap + unit)}))
    finished = wait_for_state(own.runtime, "wait-2", SETTLED)
    assert finished.state == PlanState.SUCCEEDED, finished.error
    assert finished.attempts == 1, "waiting for budget used no attempt"
    total, _ = committed_in_aws(aws)
    assert total == 2 * unit == Decimal(budget(own.runtime)["used_usd"])
    assert budget(own.runtime)["cap_usd"] == str(cap + unit)


def test_a_plan_whose_outcome_is_unknown_keeps_its_reservation(
    own_accounts: Callable[..., OwnAccounts], sandbox: SandboxControl, start_worker: Any, aws: Any
) -> None:
    """The purchase's connection drops and no read can tell what happened: the plan needs attention, and its
    budget stays reserved (it may have been spent). The next plan, which would fit without it, is refused."""
    unit = plan_commitment(aws)
    cap = (unit + unit / 2).quantize(CENT)  # room for one plan
    own = own_accounts(account_entry(CAPPED, "capped", limits={"commitment_usd_per_day": str(cap)}))
    start_worker("unknown", COMMITD_ACCOUNTS_FILE=str(own.path))
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    own.submit(capped_plan("unknown-1"))
    record = wait_for_state(own.runtime, "unknown-1", SETTLED, timeout=90)
    assert record.state == PlanState.NEEDS_ATTENTION and (record.error or {}).get("code") == "OutcomeUnknown"
    assert Decimal(budget(own.runtime)["reserved_usd"]) == unit and budget(own.runtime)["used_usd"] == "0.00"

    sandbox.clear_faults()
    own.submit(capped_plan("unknown-2", "us-west-2"))
    refused = wait_for_state(own.runtime, "unknown-2", SETTLED)
    assert refused.state == PlanState.FAILED and (refused.error or {}).get("code") == "SpendCapReached"
    numbers = cap_numbers(refused.error["message"])
    assert (numbers["used"], numbers["reserved"]) == (Decimal(0), unit)
    assert committed_in_aws(aws)[1] == set()
    assert Decimal(budget(own.runtime)["reserved_usd"]) == unit  # still held for the person who settles it


def test_a_person_settling_a_plan_settles_its_reservation(
    own_accounts: Callable[..., OwnAccounts], sandbox: SandboxControl, start_worker: Any, aws: Any,
    env: dict[str, str]
) -> None:
    """Two plans need attention, each holding its reservation. ``commitd plans resolve --as failed`` (AWS shows
    nothing) releases one; ``--as succeeded`` turns the other into used."""
    from tests.spine.test_cli import commitd

    unit = plan_commitment(aws)
    cap = (2 * unit + unit / 2).quantize(CENT)
    own = own_accounts(account_entry(CAPPED, "capped", limits={"commitment_usd_per_day": str(cap)}))
    start_worker("settled", concurrency=2, COMMITD_ACCOUNTS_FILE=str(own.path))
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=2)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    own.submit(capped_plan("settle-1"))
    own.submit(capped_plan("settle-2", "us-west-2"))
    for plan_id in ("settle-1", "settle-2"):
        assert wait_for_state(own.runtime, plan_id, SETTLED, timeout=90).state == PlanState.NEEDS_ATTENTION
    sandbox.clear_faults()
    assert Decimal(budget(own.runtime)["reserved_usd"]) == 2 * unit

    cli_env = {**env, "COMMITD_ACCOUNTS_FILE": str(own.path)}
    failed = commitd(cli_env, "plans", "resolve", "settle-1", "--as", "failed", "--note", "AWS shows nothing")
    assert failed.returncode == 0, failed.stderr
    assert Decimal(budget(own.runtime)["reserved_usd"]) == unit, budget(own.runtime)
    done = commitd(cli_env, "plans", "resolve", "settle-2", "--as", "succeeded", "--resource-id", "ri-by-hand",
                   "--note", "AWS shows it")
    assert done.returncode == 0, done.stderr
    published = budget(own.runtime)
    assert (Decimal(published["used_usd"]), published["reserved_usd"]) == (unit, "0.00")


# --- the Lua script alone ----------------------------------------------------------------------------------------
def test_concurrent_reservations_in_the_script_never_cross_a_cap(runtime: Runtime) -> None:
    """Forty threads reserve at once against a cap with room for seven: exactly seven get it. Reserving again is a
    no-op, a release frees the amount for the next plan, a used hold stays used, and each cap reports its numbers."""
    budgets = Budgets(runtime.redis, runtime.settings.key_prefix)
    limits = AccountLimits(commitment_usd_per_day=Decimal("700.00"), upfront_usd_per_month=Decimal("150"))
    now_ms = int(runtime.redis.time()[0]) * 1000
    barrier = threading.Barrier(40)
    refusals: dict[str, CapReached | None] = {}

    def reserve(n: int) -> None:
        barrier.wait()
        refusals[f"p{n}"] = budgets.reserve(f"p{n}", CAPPED, limits, Decimal("100.00"), Decimal("20"), now_ms)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = sorted(p for p, refusal in refusals.items() if refusal is None)
    assert len(held) == 7
    assert {r for r in refusals.values() if r is not None} == {
        CapReached("day", "commitment", "0.00", "700.00", "100.00", "700.00")}
    assert budgets.reserve(held[0], CAPPED, limits, Decimal("100.00"), Decimal("20"), now_ms) is None  # held: no-op
    assert json.loads(runtime.redis.hget(runtime.key("budgets"), f"{CAPPED}:day") or "{}")["reserved_usd"] == "700.00"

    assert budgets.settle(held[0], PlanState.SUCCEEDED, CAPPED, limits) == "use"
    assert budgets.settle(held[0], PlanState.FAILED, CAPPED, limits) == "used"  # a late release of a used hold
    assert budgets.settle(held[1], PlanState.NEEDS_ATTENTION, CAPPED, limits) == "kept"
    assert budgets.settle(held[2], PlanState.FAILED, CAPPED, limits) == "release"
    assert budgets.reserve("late", CAPPED, limits, Decimal("100.00"), Decimal("20"), now_ms) is None
    day = json.loads(runtime.redis.hget(runtime.key("budgets"), f"{CAPPED}:day") or "{}")
    assert (day["used_usd"], day["reserved_usd"], day["cap_usd"]) == ("100.00", "600.00", "700.00")
    # The monthly upfront cap (150: seven plans paid 20 each, one released) refuses next, with its own numbers.
    upfront = budgets.reserve("upfront", CAPPED, AccountLimits(upfront_usd_per_month=Decimal("150")), Decimal("1"),
                              Decimal("20"), now_ms)
    assert upfront == CapReached("month", "upfront", "20.00", "120.00", "20.00", "150.00")


def test_a_plan_with_no_upfront_is_counted_as_used_once_it_succeeded(runtime: Runtime) -> None:
    """A No Upfront purchase reserves 0 upfront: settling it must still move its commitment to used (one script:
    nothing half done) and leave nothing reserved."""
    budgets = Budgets(runtime.redis, runtime.settings.key_prefix)
    limits = AccountLimits(commitment_usd_per_day=Decimal("1500"))
    now_ms = int(runtime.redis.time()[0]) * 1000
    assert budgets.reserve("no-upfront", CAPPED, limits, Decimal("1042.44"), Decimal("0"), now_ms) is None
    assert budgets.settle("no-upfront", PlanState.SUCCEEDED, CAPPED, limits) == "use"
    day = json.loads(runtime.redis.hget(runtime.key("budgets"), f"{CAPPED}:day") or "{}")
    assert (day["used_usd"], day["reserved_usd"]) == ("1042.44", "0.00")
    refused = budgets.reserve("next", CAPPED, limits, Decimal("1042.44"), Decimal("0"), now_ms)
    assert refused == CapReached("day", "commitment", "1042.44", "0.00", "1042.44", "1500.00")


def test_cap_messages_name_the_period_in_english() -> None:
    day = CapReached("day", "commitment", "0.00", "700.00", "100.00", "700.00").message(CAPPED)
    month = CapReached("month", "upfront", "20.00", "120.00", "20.00", "150.00").message(CAPPED)
    assert day.startswith(f"the daily commitment cap of account {CAPPED} is 700.00 USD"), day
    assert month.startswith(f"the monthly upfront cap of account {CAPPED} is 150.00 USD"), month
