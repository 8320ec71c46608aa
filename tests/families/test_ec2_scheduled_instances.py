"""ec2:PurchaseScheduledInstances and ec2:RunScheduledInstances through the real path (intake → a Celery worker
process → the sandbox over HTTP), plus the purchase branch AWS no longer reaches, on a canned availability.

AWS no longer sells Scheduled Instances: a purchase plan fails with AWS's empty availability and sends nothing.
Schedules bought before come from the sandbox's seed (sandbox/data/example-commitments.json, given the example
plan's fixed id here); the tests move the sandbox clock into (or out of) one of their slots.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sandbox.control import SandboxControl
from tasks.ec2_scheduled_instances import (
    PurchaseScheduledInstances,
    PurchaseScheduledInstancesParams,
    RunScheduledInstances,
    RunScheduledInstancesParams,
    ScheduledRunIntent,
    client_token,
)
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    family_plan,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID
from worker.actions import Absent, Found, PlanFailed, Submitted, family_permissions
from worker.handle import AWS_CLOCK_TOLERANCE, PlanHandle
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "plans"
RUN_EXAMPLE = json.loads((EXAMPLES / "ec2-run-scheduled-instances.json").read_text())
BUY_EXAMPLE = json.loads((EXAMPLES / "ec2-purchase-scheduled-instances.json").read_text())
SCI_ID = RUN_EXAMPLE["params"]["scheduled_instance_id"]
RUN, BUY = "ec2:RunScheduledInstances", "ec2:PurchaseScheduledInstances"
RUN_KIND = "scheduled-instance-run"


def seed_schedule(sandbox: SandboxControl) -> None:
    """The seed file's scheduled instance (c5.large, us-east-1b, Mon/Wed 09:00 UTC for 8 h, 2 instances)."""
    seeds = json.loads((ROOT / "sandbox" / "data" / "example-commitments.json").read_text())["existing_commitments"]
    [entry] = [e for e in seeds if e["kind"] == "ec2:scheduled-instance"]
    sandbox.seed([{**entry, "id": SCI_ID}])


def sandbox_now(sandbox: SandboxControl) -> datetime:
    return datetime.fromisoformat(sandbox.health()["now"].replace("Z", "+00:00"))


def next_slot(aws: Any) -> datetime:
    [schedule] = aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID).describe_scheduled_instances(
        ScheduledInstanceIds=[SCI_ID])["ScheduledInstanceSet"]
    return schedule["NextSlotStartTime"].astimezone(UTC)


def move_clock_to(sandbox: SandboxControl, when: datetime) -> None:
    sandbox.advance_clock((when - sandbox_now(sandbox)).total_seconds())


def run_plan(plan_id: str, **params: Any) -> dict[str, Any]:
    return family_plan(RUN, plan_id, {**RUN_EXAMPLE["params"], **params})


def launched(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return ground_truth(sandbox, RUN_KIND)


def test_example_run_launches_once_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """Happy path, the example plan, IAM: inside a slot, the instances are launched with the plan's ClientToken,
    visible in DescribeInstances and in the sandbox's ground truth, and recorded in the result."""
    seed_schedule(sandbox)
    move_clock_to(sandbox, next_slot(aws) + timedelta(minutes=5))
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    submit(intake, RUN_EXAMPLE)
    record = settled(runtime, RUN_EXAMPLE["plan_id"])
    assert record.state.value == "succeeded", record.model_dump()
    [run] = launched(sandbox)
    assert run["created_by"] == {**run["created_by"], "operation": RUN,
                                 "token": client_token("run", RUN_EXAMPLE["plan_id"])}
    result = record.result or {}
    assert result["found_by"] == "response" and result["scheduled_instance_id"] == SCI_ID
    ec2 = aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID)
    found = ec2.describe_instances(Filters=[{"Name": "client-token", "Values": [result["client_token"]]}])
    instances = [i for r in found["Reservations"] for i in r["Instances"]]
    assert [i["InstanceId"] for i in instances] == result["instance_ids"] == result["resource_ids"]
    assert instances[0]["InstanceType"] == "c5.large" and instances[0]["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert "commitment_usd" not in result  # running a schedule commits nothing new
    assert_session_confined(runtime, RUN)


def test_a_lost_answer_is_reconciled_and_a_throttle_retried_launching_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """commit_then_drop: the instances are found by the plan's ClientToken, never launched again; two throttles:
    sent again, launched once. The schedule holds two instances: a second launch of either would be refused."""
    seed_schedule(sandbox)
    move_clock_to(sandbox, next_slot(aws) + timedelta(minutes=5))
    start_worker()
    for plan_id, fault, count, found_by in (("run-dropped", "commit_then_drop", 1, "client-token"),
                                            ("run-throttled", "throttle", 2, "response")):
        sandbox.add_fault(RUN, fault, count=count)
        submit(intake, run_plan(plan_id))
        record = settled(runtime, plan_id)
        assert record.state.value == "succeeded", record.model_dump()
        assert sandbox.faults()["fired"].get(fault) == count
        sandbox.clear_faults()
        [run] = [r for r in launched(sandbox) if r["created_by"]["token"] == client_token("run", plan_id)]
        result = record.result or {}
        assert result["found_by"] == found_by and bool(result.get("reconciled")) == (fault == "commit_then_drop")
        assert len(result["resource_ids"]) == 1
    assert len(launched(sandbox)) == 2


def test_outside_the_slot_aws_refuses_and_the_plan_fails_with_its_answer(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """A minute before a slot opens: AWS answers ScheduledInstanceSlotNotOpen; the plan fails with AWS's code and
    message, nothing launched."""
    seed_schedule(sandbox)
    move_clock_to(sandbox, next_slot(aws) - timedelta(minutes=1))
    start_worker()
    submit(intake, run_plan("run-closed"))
    record = settled(runtime, "run-closed")
    assert_nothing_spent(record, sandbox, RUN_KIND)
    assert record.error and record.error["code"] == "ScheduledInstanceSlotNotOpen", record.error
    assert "next slot starts at" in record.error["message"]


def test_run_guards_refuse_before_any_launch(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """More instances than the schedule holds, a launch specification that does not fit it, a schedule that does
    not exist: refused with nothing launched (inside an open slot, where AWS would have launched)."""
    seed_schedule(sandbox)
    move_clock_to(sandbox, next_slot(aws) + timedelta(minutes=5))
    start_worker()
    spec = RUN_EXAMPLE["params"]["launch_specification"]
    cases = {
        "run-too-many": (run_plan("run-too-many", instance_count=3), "CountAboveSchedule"),
        "run-other-type": (run_plan("run-other-type", launch_specification={**spec, "instance_type": "m5.large"}),
                           "LaunchSpecificationMismatch"),
        "run-unknown": (run_plan("run-unknown", scheduled_instance_id="sci-0000-0000-0000-0000-000000000000"),
                        "InvalidScheduledInstance"),  # AWS's answer to the read before the call
    }
    for body, _ in cases.values():
        submit(intake, body)
    submit(intake, {**run_plan("run-dry"), "dry_run": True})
    for plan_id, (_, code) in cases.items():
        record = settled(runtime, plan_id)
        assert_nothing_spent(record, sandbox, RUN_KIND)
        assert record.error and record.error["code"] == code, record.error
    dry = settled(runtime, "run-dry")  # the API's DryRun: permitted, nothing launched
    assert dry.state.value == "succeeded" and dry.result and dry.result["permitted"] is True, dry.model_dump()
    assert launched(sandbox) == []


def test_run_reconciles_by_attributes_when_no_instance_carries_the_token(
    runtime: Runtime, sandbox: SandboxControl, aws: Any
) -> None:
    """Where AWS does not stamp the token on the instances, reconcile finds the one launch of the schedule's kind,
    the plan's image and count since the intent, and finds nothing before it (reads only, no worker)."""
    seed_schedule(sandbox)
    move_clock_to(sandbox, next_slot(aws) + timedelta(minutes=5))
    action = RunScheduledInstances()
    account = runtime.accounts.get(ACCOUNT)
    assert account is not None
    handle = PlanHandle(runtime.sessions, action, account, "us-east-1", "run-fallback",
                        family_permissions(action.family, account.extra_permissions))
    params = RunScheduledInstancesParams.model_validate(RUN_EXAMPLE["params"])
    intent = action.prepare(handle, params)
    assert isinstance(action.reconcile(handle, params, intent), Absent)
    ec2 = aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID)
    other = ec2.run_scheduled_instances(ScheduledInstanceId=SCI_ID, InstanceCount=1, ClientToken="not-the-plans",
                                        LaunchSpecification={"ImageId": params.launch_specification.image_id})
    found = action.reconcile(handle, params, intent)
    assert isinstance(found, Found) and found.resource_ids == tuple(other["InstanceIdSet"]), found
    assert found.result["found_by"] == "attributes"
    later = ScheduledRunIntent.model_validate({**intent.model_dump(), "started_after": datetime.now(UTC)
                                                 + timedelta(minutes=10)})
    assert isinstance(action.reconcile(handle, params, later), Absent)


# --- ec2:PurchaseScheduledInstances ----------------------------------------------------------------------------
def buy_plan(sandbox: SandboxControl, plan_id: str, days_ahead: int = 7, **params: Any) -> dict[str, Any]:
    """The example purchase, its first-slot window moved to ``days_ahead`` days from the sandbox's clock (AWS
    searches at most three months ahead; the example's fixed dates would age out)."""
    start = sandbox_now(sandbox).replace(microsecond=0) + timedelta(days=days_ahead)
    window = {"earliest_time": start.isoformat().replace("+00:00", "Z"),
              "latest_time": (start + timedelta(days=7)).isoformat().replace("+00:00", "Z")}
    return {**BUY_EXAMPLE, "plan_id": plan_id,
            "params": {**BUY_EXAMPLE["params"], "first_slot_start_time_range": window, **params}}


def test_purchase_fails_with_aws_empty_availability_and_sends_nothing(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """The example purchase (its window moved into AWS's three months): AWS's availability is empty, so the plan
    fails with that answer before any purchase call; a search further ahead than AWS allows fails with AWS's own
    error (a terminal read error), nothing sent either."""
    seed_schedule(sandbox)
    start_worker()
    submit(intake, buy_plan(sandbox, BUY_EXAMPLE["plan_id"]))
    submit(intake, buy_plan(sandbox, "buy-too-far", days_ahead=120))
    record = settled(runtime, BUY_EXAMPLE["plan_id"])
    assert_nothing_spent(record, sandbox, "scheduled-instance", before=1)
    assert record.error and record.error["code"] == "NoScheduledInstanceAvailability", record.error
    assert "no longer sells Scheduled Instances" in record.error["message"]
    assert record.error["details"]["aws_answer"] == {"ScheduledInstanceAvailabilitySet": []}
    far = settled(runtime, "buy-too-far")
    assert_nothing_spent(far, sandbox, "scheduled-instance", before=1)
    assert far.error and far.error["code"] == "InvalidParameterValue" and "3 months" in far.error["message"]
    calls = {e.get("operation") for e in runtime.audit.records() if e.get("plan_id") in (BUY_EXAMPLE["plan_id"],
                                                                                         "buy-too-far")}
    assert "describe_scheduled_instance_availability" in calls and "purchase_scheduled_instances" not in calls


class CannedHandle:
    """The reads a PlanHandle answers, from canned responses, and the one send recorded: the purchase branch that
    AWS (and so the sandbox) no longer reaches, since no availability is ever offered."""

    def __init__(self, responses: dict[str, dict[str, Any]]) -> None:
        self.responses = responses
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.plan_id = "buy-canned"
        self.region = "us-east-1"
        self.account = type("Account", (), {"account_id": ACCOUNT})()
        self.accepted = None

    def paginate(self, operation: str, result_key: str, **params: Any) -> list[Any]:
        return list(self.responses[operation][result_key])

    def send(self, operation: str, **params: Any) -> dict[str, Any]:
        self.sent.append((operation, params))
        return self.responses[operation]

    def aws_now(self) -> datetime:
        return datetime(2027, 1, 4, 8, 0, tzinfo=UTC)

    def earliest_start(self) -> datetime:
        return self.aws_now() - AWS_CLOCK_TOLERANCE

    def claimed_elsewhere(self, ids: list[str]) -> set[str]:
        return set()


OFFER = {"AvailabilityZone": "us-east-1b", "AvailableInstanceCount": 5, "FirstSlotStartTime": datetime(
    2027, 1, 11, 9, tzinfo=UTC), "HourlyPrice": "0.081", "InstanceType": "c5.large", "Platform": "Linux/UNIX",
    "PurchaseToken": "eyJ2IjoiMSIsInMiOjEsImMiOi", "Recurrence": {"Frequency": "Weekly", "Interval": 1,
                                                                  "OccurrenceDaySet": [2, 4]},
    "SlotDurationInHours": 8, "TotalScheduledInstanceHours": 832, "NetworkPlatform": "EC2-VPC"}


def test_purchase_branch_on_a_canned_availability() -> None:
    """Ceilings against the offered price, one ClientToken purchase with AWS's PurchaseToken, and reconciliation
    by the schedule's attributes and creation time."""
    action = PurchaseScheduledInstances()
    params = PurchaseScheduledInstancesParams.model_validate(
        {**BUY_EXAMPLE["params"], "max_total_usd": "134.78"})  # 0.081 × 832 h × 2 = 134.784
    handle: Any = CannedHandle({"describe_scheduled_instance_availability": {
        "ScheduledInstanceAvailabilitySet": [OFFER]}})
    with pytest.raises(PlanFailed) as refused:
        action.prepare(handle, params)
    assert refused.value.code == "PriceAboveCeiling" and not handle.sent
    params = PurchaseScheduledInstancesParams.model_validate(BUY_EXAMPLE["params"])
    intent = action.prepare(handle, params)
    assert intent.commitment_usd == Decimal("134.784") and intent.idempotency_value == client_token("sci",
                                                                                                    "buy-canned")
    handle.responses["purchase_scheduled_instances"] = {"ScheduledInstanceSet": [{"ScheduledInstanceId": "sci-1"}]}
    submitted = action.submit(handle, params, intent)
    assert isinstance(submitted, Submitted) and submitted.resource_ids == ("sci-1",)
    assert handle.sent == [("purchase_scheduled_instances", {"ClientToken": intent.idempotency_value,
                            "PurchaseRequests": [{"InstanceCount": 2, "PurchaseToken": OFFER["PurchaseToken"]}]})]
    bought = {"ScheduledInstanceId": "sci-2", "InstanceCount": 2, "SlotDurationInHours": 8,
              "Recurrence": {**OFFER["Recurrence"], "OccurrenceRelativeToEnd": False, "OccurrenceUnit": "DayOfWeek"},
              "CreateDate": datetime(2027, 1, 4, 8, 0, 5, tzinfo=UTC)}
    old = {**bought, "ScheduledInstanceId": "sci-old", "CreateDate": datetime(2026, 3, 1, tzinfo=UTC)}
    handle.responses["describe_scheduled_instances"] = {"ScheduledInstanceSet": [old, bought]}
    found = action.reconcile(handle, params, intent)
    assert isinstance(found, Found) and found.resource_ids == ("sci-2",)
    handle.responses["describe_scheduled_instances"] = {"ScheduledInstanceSet": [old]}
    assert isinstance(action.reconcile(handle, params, intent), Absent)
    handle.responses["describe_scheduled_instance_availability"]["ScheduledInstanceAvailabilitySet"] = [OFFER, {
        **OFFER, "AvailabilityZone": "us-east-1c"}]
    with pytest.raises(PlanFailed) as ambiguous:
        action.prepare(handle, params)
    assert ambiguous.value.code == "AmbiguousOffering"
