"""Tests written for mutants that survived `make mutants` (scripts/mutants.py): each names the mutant it kills.

They run like the spine's other guards: the real intake and executor in this process, a private redis-server and
the sandbox over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from config.settings import Settings
from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, ri_plan
from tests.spine.test_guards import run_until_settled
from worker.execution import run_plan
from worker.runtime import Runtime

RI = "ec2:PurchaseReservedInstancesOffering"


def ris(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ACCOUNT, type="reserved-instances")


def test_a_plan_that_already_holds_its_signature_lock_goes_ahead_and_buys_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """A worker that died between taking a signature's lock and recording the intent leaves the lock in its plan's
    name; the plan's next run must take it as its own, not wait for itself until it expires.
    Kills worker/lease.py SignatureLock.take: ``holder == self.plan_id`` -> ``holder is self.plan_id``."""
    assert intake.submit_raw(json.dumps(ri_plan("probe", instance_count=1)), "test").outcome == "accepted"
    assert run_plan(runtime, "probe", ACTIONS) == "succeeded"
    probe = runtime.ledger.get("probe")
    signature = probe.intent["signature"]
    lock = runtime.key("inflight", signature)
    assert runtime.redis.get(lock) is None  # settled plans release it

    runtime.redis.set(lock, "self-held")  # what the dead worker left
    assert intake.submit_raw(json.dumps(ri_plan("self-held", instance_count=1)), "test").outcome == "accepted"
    # One run: with the bug it raises RequeueLater ("waiting for plan self-held") instead.
    assert run_plan(runtime, "self-held", ACTIONS) == "succeeded"
    record = runtime.ledger.get("self-held")
    assert record.intent["signature"] == signature
    assert runtime.redis.get(lock) is None
    assert len(ris(sandbox)) == 2
    assert len(record.result["resource_ids"]) == 1 and record.result["resource_ids"] != probe.result["resource_ids"]


def _accounts_with_limits(accounts_file: Path, directory: Path, upfront: Decimal, commitment: Decimal) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    registry = json.loads(accounts_file.read_text())
    [account] = [a for a in registry["accounts"] if a["account_id"] == ACCOUNT]
    account["limits"] = {"max_upfront_usd_per_plan": str(upfront), "max_commitment_usd_per_plan": str(commitment)}
    path = directory / "accounts.json"
    path.write_text(json.dumps(registry))
    return path


def test_a_plan_exactly_at_the_accounts_limits_is_accepted_one_cent_over_is_not(
    runtime: Runtime, accounts_file: Path, tmp_path: Path
) -> None:
    """The account's per-plan limits are maxima: a plan whose ceilings reach them exactly is accepted.
    Kills worker/intake.py _check_limits: ``upfront > max_upfront_usd_per_plan`` -> ``>=`` (and the same for the
    total commitment); the cent over shows each check is there at all."""
    from worker.celery_app import enqueue
    from worker.intake import Intake

    action = ACTIONS[RI]
    params = ri_plan("at-limits", max_upfront_usd="1200", max_hourly_usd="0.05")["params"]
    commitment = action.max_commitment_usd(action.params_model.model_validate(params))
    assert commitment is not None and commitment > Decimal("1200")
    limits = _accounts_with_limits(accounts_file, tmp_path, Decimal("1200"), commitment)
    own = Runtime(Settings(**{**runtime.settings.model_dump(), "accounts_file": limits}))
    intake = Intake(own, ACTIONS, enqueue)

    at_limits = intake.submit_raw(json.dumps(ri_plan("at-limits", **params)), "test")
    assert at_limits.outcome == "accepted", at_limits

    # The upfront a cent over (the commitment then too: it includes the upfront): refused for the upfront alone
    # once the commitment limit is raised out of the way.
    raised = _accounts_with_limits(accounts_file, tmp_path / "raised", Decimal("1200"), commitment + 100)
    own_raised = Runtime(Settings(**{**runtime.settings.model_dump(), "accounts_file": raised}))
    over_upfront = Intake(own_raised, ACTIONS, enqueue).submit_raw(
        json.dumps(ri_plan("upfront-over", **{**params, "max_upfront_usd": "1200.01"})), "test")
    assert over_upfront.outcome == "rejected" and "upfront" in over_upfront.message, over_upfront

    over_total = intake.submit_raw(
        json.dumps(ri_plan("total-over", **{**params, "max_hourly_usd": "0.051"})), "test")
    assert over_total.outcome == "rejected" and "in total" in over_total.message, over_total
    assert [own.ledger.get(p).state.value for p in ("at-limits", "upfront-over", "total-over")] == [
        "queued", "rejected", "rejected"]


def test_a_queued_purchase_whose_answer_is_lost_is_found_by_its_purchase_time_and_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """A queued RI purchase (purchase_time set) is matched in reconciliation by its start, within AWS's clock
    tolerance of the purchase time, not by started_after. The only test of that branch.
    Kills tasks/ec2_reserved_instances.py _matching: ``start - intent.purchase_time`` -> ``start % ...``."""
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    sandbox.add_fault(RI, "commit_then_drop", count=1)
    plan = ri_plan("queued-lost", instance_count=1, purchase_time=when.isoformat().replace("+00:00", "Z"))
    assert intake.submit_raw(json.dumps(plan), "test").outcome == "accepted"

    assert run_until_settled(runtime, "queued-lost") == "succeeded"
    record = runtime.ledger.get("queued-lost")
    assert sandbox.faults()["fired"]["commit_then_drop"] == 1
    assert record.book["sends"] == 1  # found by reconciliation, never sent again
    [ri] = ris(sandbox)
    assert record.result["resource_ids"] == [ri["id"]]


def test_reconciliation_never_adopts_a_smaller_ri_of_the_same_offering_bought_meanwhile(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, aws: Any
) -> None:
    """Someone queues 1 RI of the same offering by hand (its start is later than the plan's intent); the plan's
    2-instance purchase is dropped before AWS takes it. Reconciliation must not take the 1-instance RI for the
    plan's: it finds nothing of the plan's and buys once.
    Kills tasks/ec2_reserved_instances.py _matching: ``InstanceCount != intent.instance_count`` -> ``>``."""
    from tests.spine.conftest import EXTERNAL_ID

    ec2 = aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID)
    [offering] = ec2.describe_reserved_instances_offerings(
        InstanceType="m5.large", ProductDescription="Linux/UNIX", OfferingClass="standard",
        OfferingType="No Upfront", InstanceTenancy="default",
        Filters=[{"Name": "duration", "Values": ["31536000"]}, {"Name": "scope", "Values": ["Region"]}],
    )["ReservedInstancesOfferings"]
    foreign = ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=offering["ReservedInstancesOfferingId"], InstanceCount=1,
        PurchaseTime=datetime.now(UTC) + timedelta(days=1))["ReservedInstancesId"]

    sandbox.add_fault(RI, "reset", count=1)
    assert intake.submit_raw(json.dumps(ri_plan("not-the-smaller")), "test").outcome == "accepted"
    assert run_until_settled(runtime, "not-the-smaller") == "succeeded"
    record = runtime.ledger.get("not-the-smaller")
    assert sandbox.faults()["fired"]["reset"] == 1 and record.book["sends"] == 2
    [mine] = [ri for ri in ris(sandbox) if ri["id"] != foreign]
    assert record.result["resource_ids"] == [mine["id"]]
    assert len(ris(sandbox)) == 2
