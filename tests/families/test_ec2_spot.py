"""EC2 spot, end to end: intake → a Celery worker process → the sandbox over HTTP with real boto3, private Redis.

Spot requests are evaluated by the sandbox ``FULFIL_SECONDS`` after they arrive, and a fleet cancelled with its
instances ends ``TERMINATE_SECONDS`` later: tests move the sandbox clock once the request exists in its ground
truth, instead of waiting. The example plans in examples/plans/ are the happy paths (a cancel's example names
placeholder ids, which each test replaces by requests it made)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from sandbox.services.ec2_spot import FULFIL_SECONDS, TERMINATE_SECONDS
from tasks.ec2_spot import client_token
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    eventually,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, TAGGING_ACCOUNT
from worker.ledger import PlanRecord
from worker.policy import extras_policy
from worker.runtime import Runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
SIR, FLEET = "ec2:RequestSpotInstances", "ec2:RequestSpotFleet"
CANCEL_SIR, CANCEL_FLEET = "ec2:CancelSpotInstanceRequests", "ec2:CancelSpotFleetRequests"
SIR_KIND, FLEET_KIND = "spot-instances-request", "spot-fleet-request"
IMAGE = "ami-0123456789abcdef0"
EVALUATED = FULFIL_SECONDS + 1


def example(name: str, plan_id: str | None = None, **params: Any) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    if plan_id is not None:
        plan["plan_id"] = plan_id
    plan["params"] = {**plan["params"], **params}
    return plan


def made_by(sandbox: SandboxControl, kind: str, token: str, account: str = ACCOUNT) -> list[dict[str, Any]]:
    """The sandbox's resources of ``kind`` that a call with this client token made."""
    return [r for r in ground_truth(sandbox, kind, account) if r["created_by"]["token"] == token]


def evaluated(sandbox: SandboxControl, kind: str, token: str, count: int, account: str = ACCOUNT) -> None:
    """Once the request exists, move the sandbox clock past AWS's evaluation of it."""
    eventually(lambda: len(made_by(sandbox, kind, token, account)) >= count, f"the {kind} to exist")
    sandbox.advance_clock(EVALUATED)


def run_spot(runtime: Runtime, sandbox: SandboxControl, intake: Any, plan: dict[str, Any], kind: str,
             count: int) -> PlanRecord:
    """Submit a request plan, let AWS evaluate what it made, and return the settled record."""
    submit(intake, plan)
    evaluated(sandbox, kind, client_token(plan["action"], plan["plan_id"]), count, plan["account_id"])
    return settled(runtime, plan["plan_id"])


def following(runtime: Runtime, plan_id: str) -> PlanRecord:
    """Wait until the plan holds AWS's answer and follows the operation (Submitted.follow)."""
    def check() -> PlanRecord | None:
        record = runtime.ledger.get(plan_id)
        assert record is not None and not record.terminal, record.model_dump() if record else plan_id
        return record if (record.book or {}).get("accepted") else None

    return eventually(check, f"plan {plan_id} to follow its AWS operation")


def ec2(aws: Any, account: str = ACCOUNT) -> Any:
    return aws("ec2", account_id=account, external_id=EXTERNAL_ID)


def warm(aws: Any, *accounts: str) -> None:
    """Have the sandbox build each account's EC2 state (moto's default VPC and images) before a plan's first send:
    built inside that send, it can outlast the write client's 1 s read timeout of these tests, which would turn
    the happy path under test into a reconciled one."""
    for account in accounts:
        ec2(aws, account).describe_vpcs()


def fleet_config(account: str = ACCOUNT, **extra: Any) -> dict[str, Any]:
    return {"IamFleetRole": f"arn:aws:iam::{account}:role/fleet", "TargetCapacity": 2, "AllocationStrategy":
            "lowestPrice", "LaunchSpecifications": [{"ImageId": IMAGE, "InstanceType": "m5.large"}], **extra}


def states(sandbox: SandboxControl, kind: str, account: str = ACCOUNT) -> dict[str, str]:
    return {r["id"]: r["state"] for r in ground_truth(sandbox, kind, account)}


def dry_run(runtime: Runtime, intake: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """Run the plan as a dry run (AWS's DryRun): it must be permitted, and its result is returned."""
    submit(intake, {**plan, "dry_run": True})
    record = settled(runtime, plan["plan_id"])
    assert record.state.value == "succeeded" and record.result, record.model_dump()
    assert record.result["dry_run"] is True and record.result["permitted"] is True, record.result
    assert (record.book or {}).get("sends", 0) == 0
    return record.result


def failed_with(record: PlanRecord, code: str) -> dict[str, Any]:
    assert record.state.value == "failed", record.model_dump()
    assert record.error is not None and record.error["code"] == code, record.error
    return record.error


# --- ec2:RequestSpotInstances ----------------------------------------------------------------------------------
def test_request_spot_instances_once_through_a_dropped_answer_and_throttling(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    warm(aws, ACCOUNT, TAGGING_ACCOUNT)
    start_worker()
    plan = example("ec2-request-spot-instances")
    token = client_token(SIR, plan["plan_id"])
    record = run_spot(runtime, sandbox, intake, plan, SIR_KIND, 2)
    assert record.state.value == "succeeded", record.error
    truth = made_by(sandbox, SIR_KIND, token)
    result = record.result or {}
    assert sorted(result["spot_instance_request_ids"]) == sorted(r["id"] for r in truth) and len(truth) == 2
    assert {r["state"] for r in truth} == {"active"} and set(result["states"].values()) == {"active"}
    assert len(result["instance_ids"]) == 2 and result["found_by"] == "response"
    # Followed from AWS's answer (pending-evaluation) to its decision; sent once, with the plan's token.
    assert record.book is not None and record.book["sends"] == 1 and record.book["accepted"]
    assert record.idempotency == {"kind": "client_token", "value": token} and len(token) <= 64
    # The bid is above the lowest current m5.large price; the bound is bid × 2 instances × 24 hours.
    assert (result["current_spot_price_usd_per_hour"], result["below_market"]) == ("0.028800", False)
    assert (result["hourly_bound_usd"], result["commitment_usd"]) == ("0.10", "2.40")

    # The answer is lost after AWS made the requests: found again by their attributes, never requested twice.
    sandbox.add_fault(SIR, "commit_then_drop", count=1)
    record = run_spot(runtime, sandbox, intake, example("ec2-request-spot-instances", "spot-dropped"), SIR_KIND, 2)
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["reconciled"] is True and record.result["found_by"] == "attributes"
    assert len(made_by(sandbox, SIR_KIND, client_token(SIR, "spot-dropped"))) == 2
    assert record.book is not None and record.book["sends"] == 1 and not record.book.get("accepted")
    # Where ec2:CreateTags is granted the requests carry the plan's tag, and are found by it.
    sandbox.add_fault(SIR, "commit_then_drop", count=1)
    tagged = {**example("ec2-request-spot-instances", "spot-tagged", instance_count=1), "account_id": TAGGING_ACCOUNT}
    record = run_spot(runtime, sandbox, intake, tagged, SIR_KIND, 1)
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["found_by"] == "tag" and record.result["reconciled"] is True
    assert len(made_by(sandbox, SIR_KIND, client_token(SIR, "spot-tagged"), TAGGING_ACCOUNT)) == 1

    # Throttled twice: AWS did nothing; the third send makes them, once.
    sandbox.add_fault(SIR, "throttle", count=2)
    record = run_spot(runtime, sandbox, intake, example("ec2-request-spot-instances", "spot-throttled"), SIR_KIND, 2)
    assert record.state.value == "succeeded", record.error
    assert record.book is not None and record.book["sends"] == 3
    assert len(made_by(sandbox, SIR_KIND, client_token(SIR, "spot-throttled"))) == 2
    assert len(ground_truth(sandbox, SIR_KIND)) == 6  # 3 plans × 2 requests in this account, nothing more


def test_request_spot_instances_refusals_and_aws_errors(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    warm(aws, ACCOUNT)
    start_worker()
    # The plan's own ceiling is below bid × 2 instances × 24 hours (2.40): refused before anything is requested.
    submit(intake, example("ec2-request-spot-instances", "spot-too-dear", max_total_usd="2.00"))
    record = settled(runtime, "spot-too-dear")
    assert_nothing_spent(record, sandbox, SIR_KIND)
    error = failed_with(record, "PriceAboveCeiling")
    assert "above max_total_usd 2.00" in error["message"] and error["details"]["total_bound_usd"] == "2.40"
    # An instance type with no spot market in the region.
    spec = {"image_id": IMAGE, "instance_type": "x9.unknown"}
    submit(intake, example("ec2-request-spot-instances", "spot-no-market", launch_specification=spec))
    assert_nothing_spent(record := settled(runtime, "spot-no-market"), sandbox, SIR_KIND)
    failed_with(record, "NoSpotPrice")
    # A terminal AWS error on the call itself: the subnet does not exist.
    spec = {"image_id": IMAGE, "instance_type": "m5.large", "subnet_id": "subnet-0123456789abcdef0"}
    submit(intake, example("ec2-request-spot-instances", "spot-no-subnet", launch_specification=spec))
    error = failed_with(record := settled(runtime, "spot-no-subnet"), "InvalidSubnetID.NotFound")
    assert "subnet-0123456789abcdef0" in error["message"] and ground_truth(sandbox, SIR_KIND) == []
    # A bid below the current price is no refusal: the request is made (and waits for the price to fall).
    low = example("ec2-request-spot-instances", "spot-low-bid", max_price_usd_per_hour="0.02")
    record = run_spot(runtime, sandbox, intake, low, SIR_KIND, 2)
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["below_market"] is True
    # Valid from tomorrow: AWS settles it at once (not-scheduled-yet), nothing to follow.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    submit(intake, example("ec2-request-spot-instances", "spot-later", instance_count=1, valid_from=tomorrow))
    record = settled(runtime, "spot-later")
    assert record.state.value == "succeeded" and record.result, record.error
    assert list(record.result["status_codes"].values()) == ["not-scheduled-yet"]
    assert record.book is not None and not record.book.get("accepted")
    later = datetime.fromisoformat(record.result["valid_until"]) - datetime.fromisoformat(tomorrow)
    assert later == timedelta(hours=24)
    # A dry run: AWS's DryRun answers that the call would be permitted; nothing is requested.
    would = dry_run(runtime, intake, example("ec2-request-spot-instances", "spot-dry"))["would_request"]
    assert (would["instance_count"], would["commitment_usd"]) == (2, "2.40")
    assert len(ground_truth(sandbox, SIR_KIND)) == 3  # the low bid's two requests and tomorrow's
    # Strict params: a bid of zero never reaches a worker.
    rejected = intake.submit_raw(json.dumps(example("ec2-request-spot-instances", "spot-zero",
                                                    max_price_usd_per_hour="0")), "test")
    assert rejected.outcome == "rejected" and "max_price_usd_per_hour" in rejected.message


# --- ec2:RequestSpotFleet --------------------------------------------------------------------------------------
def test_request_spot_fleet_once_through_a_dropped_answer_and_throttling(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    warm(aws, TAGGING_ACCOUNT)
    start_worker()
    plan = example("ec2-request-spot-fleet")
    token = client_token(FLEET, plan["plan_id"])
    record = run_spot(runtime, sandbox, intake, plan, FLEET_KIND, 1)
    assert record.state.value == "succeeded", record.error
    [fleet] = made_by(sandbox, FLEET_KIND, token, TAGGING_ACCOUNT)
    result = record.result or {}
    assert result["spot_fleet_request_id"] == fleet["id"] and fleet["state"] == "active"
    assert (result["state"], result["found_by"]) == ("active", "response")
    assert record.book is not None and record.book["sends"] == 1 and record.book["accepted"]
    # min(0.05 × 3 spot, SpotMaxTotalPrice 0.15) + OnDemandMaxTotalPrice 0.10, over 48 hours.
    assert (result["hourly_bound_usd"], result["commitment_usd"]) == ("0.25", "12.00")
    [sent] = ec2(aws, TAGGING_ACCOUNT).describe_spot_fleet_requests(
        SpotFleetRequestIds=[fleet["id"]])["SpotFleetRequestConfigs"]
    config = sent["SpotFleetRequestConfig"]
    assert config["ClientToken"] == token and config["TerminateInstancesWithExpiration"] is True
    assert (config["SpotMaxTotalPrice"], config["OnDemandMaxTotalPrice"]) == ("0.15", "0.10")
    assert (config["OnDemandTargetCapacity"], config["FulfilledCapacity"]) == (1, 4.0)

    sandbox.add_fault(FLEET, "commit_then_drop", count=1)
    record = run_spot(runtime, sandbox, intake, example("ec2-request-spot-fleet", "fleet-dropped"), FLEET_KIND, 1)
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["found_by"] == "client token" and record.result["reconciled"] is True
    [dropped] = made_by(sandbox, FLEET_KIND, client_token(FLEET, "fleet-dropped"), TAGGING_ACCOUNT)
    assert record.result["spot_fleet_request_id"] == dropped["id"]
    assert record.book is not None and record.book["sends"] == 1

    sandbox.add_fault(FLEET, "throttle", count=2)
    record = run_spot(runtime, sandbox, intake, example("ec2-request-spot-fleet", "fleet-throttled"), FLEET_KIND, 1)
    assert record.state.value == "succeeded", record.error
    assert record.book is not None and record.book["sends"] == 3
    assert len(made_by(sandbox, FLEET_KIND, client_token(FLEET, "fleet-throttled"), TAGGING_ACCOUNT)) == 1
    assert len(ground_truth(sandbox, FLEET_KIND, TAGGING_ACCOUNT)) == 3


def test_request_spot_fleet_refusals_and_a_fleet_aws_fails(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    start_worker()
    # The fleet's role must be passed to EC2: refused where the customer did not grant iam:PassRole.
    no_pass = {**example("ec2-request-spot-fleet", "fleet-no-passrole",
                         iam_fleet_role=f"arn:aws:iam::{ACCOUNT}:role/fleet"), "account_id": ACCOUNT}
    submit(intake, no_pass)
    record = settled(runtime, "fleet-no-passrole")
    assert_nothing_spent(record, sandbox, FLEET_KIND)
    assert "iam:PassRole" in failed_with(record, "PassRoleNotGranted")["message"]
    # The plan's hourly ceiling below the fleet's bound (0.25 USD/hour).
    submit(intake, example("ec2-request-spot-fleet", "fleet-too-dear", max_hourly_usd="0.20"))
    assert_nothing_spent(record := settled(runtime, "fleet-too-dear"), sandbox, FLEET_KIND, account=TAGGING_ACCOUNT)
    assert "above max_hourly_usd 0.20" in failed_with(record, "PriceAboveCeiling")["message"]
    # On-Demand capacity without OnDemandMaxTotalPrice: rejected at intake.
    unbounded = example("ec2-request-spot-fleet", "fleet-unbounded", on_demand_max_total_price_usd_per_hour=None)
    rejected = intake.submit_raw(json.dumps(unbounded), "test")
    assert rejected.outcome == "rejected" and "on_demand_max_total_price_usd_per_hour" in rejected.message
    would = dry_run(runtime, intake, example("ec2-request-spot-fleet", "fleet-dry"))["would_request"]
    assert (would["target_capacity"], would["hourly_bound_usd"]) == (4, "0.25")
    # A terminal AWS error on the call: the subnet does not exist.
    spec = {"image_id": IMAGE, "instance_type": "m5.large", "subnet_id": "subnet-0123456789abcdef0"}
    submit(intake, example("ec2-request-spot-fleet", "fleet-no-subnet", launch_specifications=[spec]))
    error = failed_with(settled(runtime, "fleet-no-subnet"), "InvalidSubnetID.NotFound")
    assert "subnet-0123456789abcdef0" in error["message"]
    assert ground_truth(sandbox, FLEET_KIND, TAGGING_ACCOUNT) == []

    # AWS accepts a fleet, then fails it (its subnet is gone when it launches): the plan fails with that.
    client = ec2(aws, TAGGING_ACCOUNT)
    vpc = client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="172.31.192.0/24", AvailabilityZone="us-east-1a")
    spec = {"image_id": IMAGE, "instance_type": "m5.large", "subnet_id": subnet["Subnet"]["SubnetId"]}
    submit(intake, example("ec2-request-spot-fleet", "fleet-fails", launch_specifications=[spec],
                           on_demand_target_capacity=0, on_demand_max_total_price_usd_per_hour=None))
    following(runtime, "fleet-fails")
    client.delete_subnet(SubnetId=spec["subnet_id"])
    sandbox.advance_clock(EVALUATED)
    error = failed_with(settled(runtime, "fleet-fails"), "SpotFleetRequestFailed")
    [failed_fleet] = ground_truth(sandbox, FLEET_KIND, TAGGING_ACCOUNT)
    assert failed_fleet["state"] == "failed" and failed_fleet["id"] in error["message"]
    # A failed fleet cannot be cancelled: the cancel plan is refused before anything is sent.
    cancel = {**example("ec2-cancel-spot-fleet-requests", "cancel-failed-fleet",
                        spot_fleet_request_ids=[failed_fleet["id"]]), "account_id": TAGGING_ACCOUNT}
    submit(intake, cancel)
    record = settled(runtime, "cancel-failed-fleet")
    failed_with(record, "FleetNotCancellable")
    assert record.book is None or record.book.get("sends", 0) == 0
    assert states(sandbox, FLEET_KIND, TAGGING_ACCOUNT) == {failed_fleet["id"]: "failed"}


def test_requests_and_a_cancel_followed_across_worker_restarts_in_their_own_sessions(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any, aws: Any
) -> None:
    """Under the production role's policy (IAM enforced), each plan in its family's session."""
    warm(aws, ACCOUNT, TAGGING_ACCOUNT)
    # The role's policy with the extras the tagging account grants: a fleet passes its role (iam:PassRole).
    role = {"Version": "2012-10-17", "Statement": [*PRODUCTION_ROLE_POLICY["Statement"], *extras_policy()["Statement"]]}
    sandbox.set_iam(True, role, external_id=EXTERNAL_ID)
    first = start_worker("first", concurrency=2)
    submit(intake_loop, example("ec2-request-spot-instances", "spot-restart"))
    submit(intake_loop, example("ec2-request-spot-fleet", "fleet-restart"))
    following(runtime, "spot-restart")  # AWS answered pending-evaluation; the plan waits for its decision
    following(runtime, "fleet-restart")  # AWS answered with the fleet, submitted
    first.kill()
    sandbox.advance_clock(EVALUATED)
    second = start_worker("second")
    record = settled(runtime, "spot-restart")
    assert record.state.value == "succeeded", record.error
    truth = made_by(sandbox, SIR_KIND, client_token(SIR, "spot-restart"))
    assert len(truth) == 2 and {r["state"] for r in truth} == {"active"}
    assert record.book is not None and record.book["sends"] == 1
    assert record.result and sorted(record.result["spot_instance_request_ids"]) == sorted(r["id"] for r in truth)
    record = settled(runtime, "fleet-restart")
    assert record.state.value == "succeeded", record.error
    [fleet] = ground_truth(sandbox, FLEET_KIND, TAGGING_ACCOUNT)
    assert record.result and record.result["spot_fleet_request_id"] == fleet["id"] and fleet["state"] == "active"
    assert record.book is not None and record.book["sends"] == 1

    # Cancelled with its instances: cancelled_terminating, followed until AWS reports it cancelled.
    cancel = {**example("ec2-cancel-spot-fleet-requests", "cancel-restart", spot_fleet_request_ids=[fleet["id"]]),
              "account_id": TAGGING_ACCOUNT}
    submit(intake_loop, cancel)
    following(runtime, "cancel-restart")
    assert states(sandbox, FLEET_KIND, TAGGING_ACCOUNT)[fleet["id"]] == "cancelled_terminating"
    second.kill()
    sandbox.advance_clock(TERMINATE_SECONDS + 1)
    start_worker("third")
    record = settled(runtime, "cancel-restart")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["states"] == {fleet["id"]: "cancelled"}
    assert record.book is not None and record.book["sends"] == 1
    assert states(sandbox, FLEET_KIND, TAGGING_ACCOUNT) == {fleet["id"]: "cancelled"}
    assert_session_confined(runtime, SIR)
    assert_session_confined(runtime, FLEET, TAGGING_ACCOUNT)


# --- ec2:CancelSpotInstanceRequests ----------------------------------------------------------------------------
def test_cancel_spot_instance_requests(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    client = ec2(aws)

    def request() -> str:
        [made] = client.request_spot_instances(
            InstanceCount=1, LaunchSpecification={"ImageId": IMAGE, "InstanceType": "m5.large"}
        )["SpotInstanceRequests"]
        return str(made["SpotInstanceRequestId"])

    start_worker()  # first: the requests below stay open for FULFIL_SECONDS of real time only
    fulfilled, guarded = request(), request()
    sandbox.advance_clock(EVALUATED)  # these two are active (their instances run); the next three stay open
    open_one, dropped, throttled = request(), request(), request()

    plan = example("ec2-cancel-spot-instance-requests", spot_instance_request_ids=[fulfilled, open_one])
    submit(intake, plan)
    record = settled(runtime, plan["plan_id"])
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["states"] == {fulfilled: "cancelled", open_one: "cancelled"}
    assert record.result["states_before"] == {fulfilled: "active", open_one: "open"}
    assert list(record.result["instance_ids"]) == [fulfilled]  # its instance keeps running: AWS does not stop it
    assert record.idempotency and record.idempotency["kind"] == "none"
    truth = states(sandbox, SIR_KIND)
    assert (truth[fulfilled], truth[open_one], truth[guarded]) == ("cancelled", "cancelled", "active")

    # A fulfilled request is not cancelled unless the plan allows it (its instance would go on running).
    submit(intake, example("ec2-cancel-spot-instance-requests", "cancel-guarded", allow_fulfilled=False,
                           spot_instance_request_ids=[guarded, throttled]))
    failed_with(settled(runtime, "cancel-guarded"), "FulfilledRequest")
    assert states(sandbox, SIR_KIND) == truth

    # The answer is lost after AWS cancelled: the state shows it; a second plan cancelling it again is harmless.
    sandbox.add_fault(CANCEL_SIR, "commit_then_drop", count=1)
    submit(intake, example("ec2-cancel-spot-instance-requests", "cancel-dropped", spot_instance_request_ids=[dropped]))
    record = settled(runtime, "cancel-dropped")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["reconciled"] is True and record.result["found_by"] == "state"
    assert record.book is not None and record.book["sends"] == 1
    submit(intake, example("ec2-cancel-spot-instance-requests", "cancel-again", spot_instance_request_ids=[dropped]))
    record = settled(runtime, "cancel-again")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["states"] == {dropped: "cancelled"}
    assert record.result["states_before"] == {dropped: "cancelled"}

    result = dry_run(runtime, intake, example("ec2-cancel-spot-instance-requests", "cancel-sir-dry",
                                              spot_instance_request_ids=[throttled]))
    assert result["would_cancel"] == {throttled: "open"} and states(sandbox, SIR_KIND)[throttled] == "open"
    sandbox.add_fault(CANCEL_SIR, "throttle", count=2)
    submit(intake, example("ec2-cancel-spot-instance-requests", "cancel-throttled",
                           spot_instance_request_ids=[throttled]))
    record = settled(runtime, "cancel-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book is not None and record.book["sends"] == 3
    assert states(sandbox, SIR_KIND) == {**truth, dropped: "cancelled", throttled: "cancelled"}

    # A request AWS does not know: AWS's own error and message.
    submit(intake, example("ec2-cancel-spot-instance-requests", "cancel-unknown",
                           spot_instance_request_ids=["sir-00000000"]))
    error = failed_with(settled(runtime, "cancel-unknown"), "InvalidSpotInstanceRequestID.NotFound")
    assert "sir-00000000" in error["message"]


# --- ec2:CancelSpotFleetRequests -------------------------------------------------------------------------------
def test_cancel_spot_fleet_requests(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    client = ec2(aws)
    terminated, running, dropped, throttled = (
        client.request_spot_fleet(SpotFleetRequestConfig=fleet_config())["SpotFleetRequestId"] for _ in range(4))
    sandbox.advance_clock(EVALUATED)  # all four are active, each with two instances
    start_worker()

    def instances(fleet_id: str) -> list[Any]:
        return list(client.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"])

    # The example: cancelled with its instances, followed until AWS reports it cancelled.
    plan = example("ec2-cancel-spot-fleet-requests", spot_fleet_request_ids=[terminated])
    submit(intake, plan)
    following(runtime, plan["plan_id"])
    sandbox.advance_clock(TERMINATE_SECONDS + 1)
    record = settled(runtime, plan["plan_id"])
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["states"] == {terminated: "cancelled"}
    assert states(sandbox, FLEET_KIND)[terminated] == "cancelled" and instances(terminated) == []

    # Without terminating: cancelled_running at once, and its instances run on.
    submit(intake, example("ec2-cancel-spot-fleet-requests", "cancel-keep", spot_fleet_request_ids=[running],
                           terminate_instances=False))
    record = settled(runtime, "cancel-keep")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["states"] == {running: "cancelled_running"}
    assert len(instances(running)) == 2

    # Again for the fleet already cancelled: AWS answers fleetRequestNotInCancellableState for it, a done signal
    # that its state confirms: harmless.
    submit(intake, example("ec2-cancel-spot-fleet-requests", "cancel-repeat", spot_fleet_request_ids=[terminated]))
    record = settled(runtime, "cancel-repeat")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["reconciled"] is True
    assert record.result["states"] == {terminated: "cancelled"}
    assert record.book is not None and record.book["sends"] == 1

    sandbox.add_fault(CANCEL_FLEET, "commit_then_drop", count=1)
    submit(intake, example("ec2-cancel-spot-fleet-requests", "cancel-dropped", spot_fleet_request_ids=[dropped],
                           terminate_instances=False))
    record = settled(runtime, "cancel-dropped")
    assert record.state.value == "succeeded", record.error
    assert record.result and record.result["reconciled"] is True and record.result["found_by"] == "state"
    assert record.book is not None and record.book["sends"] == 1

    result = dry_run(runtime, intake, example("ec2-cancel-spot-fleet-requests", "cancel-sfr-dry",
                                              spot_fleet_request_ids=[throttled]))
    assert result["would_cancel"] == {throttled: "active"} and states(sandbox, FLEET_KIND)[throttled] == "active"
    sandbox.add_fault(CANCEL_FLEET, "throttle", count=2)
    submit(intake, example("ec2-cancel-spot-fleet-requests", "cancel-throttled", spot_fleet_request_ids=[throttled],
                           terminate_instances=False))
    record = settled(runtime, "cancel-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book is not None and record.book["sends"] == 3
    assert states(sandbox, FLEET_KIND) == {terminated: "cancelled", running: "cancelled_running",
                                           dropped: "cancelled_running", throttled: "cancelled_running"}

    unknown = "sfr-00000000-0000-0000-0000-000000000000"
    submit(intake, example("ec2-cancel-spot-fleet-requests", "cancel-unknown", spot_fleet_request_ids=[unknown]))
    error = failed_with(settled(runtime, "cancel-unknown"), "InvalidSpotFleetRequestId.NotFound")
    assert unknown in error["message"]
