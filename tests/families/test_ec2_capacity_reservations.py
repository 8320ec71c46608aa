"""EC2 capacity reservations through the real path: intake → a Celery worker process → the sandbox over HTTP.

Each test checks the sandbox's own state (ground truth, and the reservation or instance as AWS describes it), not
only the plan's record. Reservations and instances that a plan names are seeded with fixed ids (the example plans
name them too)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    eventually,
    family_plan,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, TAGGING_ACCOUNT
from worker.execution import derive_token
from worker.ledger import PlanRecord
from worker.runtime import Runtime

CREATE = "ec2:CreateCapacityReservation"
MODIFY = "ec2:ModifyCapacityReservation"
CANCEL = "ec2:CancelCapacityReservation"
ATTRIBUTES = "ec2:ModifyInstanceCapacityReservationAttributes"
KIND = "capacity-reservation"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
TRIAL_ACCOUNT = "444455556666"  # read_only in the test accounts: every plan runs as a dry run
PRICE = Decimal("0.096")  # the sandbox's on-demand price of an m5.large in us-east-1 (its RI catalogue's base)


def example(slug: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / f"{slug}.json").read_text()))


def in_days(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def created(sandbox: SandboxControl, account: str = ACCOUNT) -> list[dict[str, Any]]:
    """Reservations a CreateCapacityReservation call made (seeded ones excluded)."""
    return [r for r in ground_truth(sandbox, KIND, account) if r["created_by"]["operation"] == CREATE]


def seed_reservation(sandbox: SandboxControl, cr_id: str, **entry: Any) -> None:
    sandbox.seed([{"kind": "ec2:capacity-reservation", "account_id": ACCOUNT, "region": "us-east-1",
                   "instance_type": "m5.large", "availability_zone": "us-east-1a", "instance_count": 2,
                   "ends_in_days": 10, "id": cr_id, **entry}])


def seed_instance(sandbox: SandboxControl, instance_id: str | None, state: str = "stopped", **entry: Any) -> None:
    sandbox.seed([{"kind": "ec2:instance", "account_id": ACCOUNT, "region": "us-east-1",
                   "instance_type": "m5.large", "availability_zone": "us-east-1a", "instance_state": state,
                   **({"instance_ids": [instance_id]} if instance_id else {}), **entry}])


def create_plan(plan_id: str, account: str = ACCOUNT, **params: Any) -> dict[str, Any]:
    base = {"instance_type": "m5.large", "instance_platform": "Linux/UNIX", "availability_zone": "us-east-1a",
            "instance_count": 2, "instance_match_criteria": "targeted", "end_date_type": "limited",
            "end_date": in_days(30), "on_demand_hourly_usd": str(PRICE), "max_total_usd": "200.00"}
    return family_plan(CREATE, plan_id, {**base, **params}, account=account)


def ec2(aws: Any, account: str = ACCOUNT) -> Any:
    return aws("ec2", account_id=account, external_id=EXTERNAL_ID)


def reservation(client: Any, cr_id: str) -> dict[str, Any]:
    [cr] = client.describe_capacity_reservations(CapacityReservationIds=[cr_id])["CapacityReservations"]
    return dict(cr)


def instance_spec(client: Any, instance_id: str) -> dict[str, Any]:
    [found] = client.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(found["Instances"][0].get("CapacityReservationSpecification") or {})


def run(runtime: Runtime, intake: Any, plan: dict[str, Any]) -> PlanRecord:
    submit(intake, plan)
    return settled(runtime, plan["plan_id"])


def succeeded(record: PlanRecord) -> dict[str, Any]:
    assert record.state.value == "succeeded", record.model_dump()
    assert record.result is not None
    return record.result


def failed_with(record: PlanRecord, code: str) -> dict[str, Any]:
    assert record.state.value == "failed", record.model_dump()
    assert record.error is not None and record.error["code"] == code, record.error
    return record.error


def deny(*actions: str) -> dict[str, Any]:
    """The production role's policy with these write actions explicitly denied."""
    return {**PRODUCTION_ROLE_POLICY, "Statement": [
        *PRODUCTION_ROLE_POLICY["Statement"], {"Effect": "Deny", "Action": list(actions), "Resource": "*"}]}


def test_example_plans_run_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """The four example plans, with the production role's policy enforced: each effect is in the sandbox's state
    and in the plan's result, and the family's session is confined."""
    seed_reservation(sandbox, "cr-0c0ffee0000000a01", instance_count=4)
    seed_reservation(sandbox, "cr-0c0ffee0000000c01")
    seed_reservation(sandbox, "cr-0c0ffee0000000b01", instance_count=1, instance_match_criteria="targeted")
    seed_instance(sandbox, "i-0c0ffee0000000e01")
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    client = ec2(aws)
    start_worker()
    plans = [example(slug) for slug in ("ec2-create-capacity-reservation", "ec2-modify-capacity-reservation",
                                        "ec2-cancel-capacity-reservation",
                                        "ec2-modify-instance-capacity-reservation-attributes")]
    for plan in plans:
        submit(intake, plan)
    create, modify, cancel, attributes = (settled(runtime, p["plan_id"]) for p in plans)

    result = succeeded(create)
    [made] = created(sandbox)
    assert result["capacity_reservation_id"] == made["id"] and result["resource_ids"] == [made["id"]]
    assert made["created_by"]["token"] == derive_token(plans[0]["plan_id"]) == create.idempotency["value"]
    assert made["state"] == "active" and result["state"] == "active" and result["found_by"] == "response"
    assert result["open_ended"] is False and result["hourly_usd"] == "0.192"
    hours = result["billable_hours"]
    assert Decimal(result["total_usd"]) == Decimal("0.192") * hours == Decimal(result["commitment_usd"])
    assert Decimal(result["total_usd"]) <= Decimal("6000.00")
    described = reservation(client, made["id"])
    assert (described["TotalInstanceCount"], described["InstanceMatchCriteria"]) == (2, "targeted")
    assert described["EndDate"] == datetime(2029, 12, 31, tzinfo=UTC)

    result = succeeded(modify)
    after = reservation(client, "cr-0c0ffee0000000a01")
    assert after["TotalInstanceCount"] == 6 and after["EndDate"] == datetime(2029, 6, 30, tzinfo=UTC)
    assert result["before"]["instance_count"] == 4 and result["changed"]["instance_count"] == 6
    assert result["hourly_usd"] == "0.576" and result["commitment_usd"] == result["total_usd"]

    result = succeeded(cancel)
    [truth] = [r for r in ground_truth(sandbox, KIND) if r["id"] == "cr-0c0ffee0000000c01"]
    assert truth["state"] == "cancelled" and result["state"] == "cancelled" and result["state_before"] == "active"

    result = succeeded(attributes)
    target = {"CapacityReservationTarget": {"CapacityReservationId": "cr-0c0ffee0000000b01"}}
    assert instance_spec(client, "i-0c0ffee0000000e01") == target
    assert result["capacity_reservation_specification"] == target
    assert result["before"] == {"CapacityReservationPreference": "open"}
    assert_session_confined(runtime, CREATE)


def test_create_lost_answers_and_throttles_reserve_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    start_worker()
    # The reservation is made, the answer lost: found by its attributes and a CreateDate after the intent.
    sandbox.add_fault(CREATE, "commit_then_drop", count=1)
    plan = create_plan("cr-dropped", availability_zone_id="use1-az6")  # us-east-1a's id
    del plan["params"]["availability_zone"]
    result = succeeded(run(runtime, intake, plan))
    [made] = created(sandbox)
    assert result["reconciled"] is True and result["found_by"] == "attributes"
    assert result["resource_ids"] == [made["id"]] and result["availability_zone"] == "us-east-1a"
    # Throttled twice: AWS did nothing, the plan sends again (same token) and reserves once.
    sandbox.add_fault(CREATE, "throttle", count=2)
    result = succeeded(run(runtime, intake, create_plan("cr-throttled", instance_count=3, max_total_usd="300.00")))
    assert len(created(sandbox)) == 2 and "reconciled" not in result
    assert sandbox.faults()["fired"] == {"commit_then_drop": 1, "throttle": 2}
    # Where ec2:CreateTags is granted the reservation carries the plan's tag, and the lost answer is found by it.
    sandbox.add_fault(CREATE, "commit_then_drop", count=1)
    result = succeeded(run(runtime, intake, create_plan("cr-tagged", account=TAGGING_ACCOUNT)))
    [tagged] = created(sandbox, TAGGING_ACCOUNT)
    assert result["found_by"] == "tag" and result["reconciled"] is True and result["resource_ids"] == [tagged["id"]]
    tags = {t["Key"]: t["Value"] for t in reservation(ec2(aws, TAGGING_ACCOUNT), tagged["id"])["Tags"]}
    assert tags["commitd:plan-id"] == "cr-tagged"
    assert len(created(sandbox)) == 2


def test_create_guards_spend_nothing_and_open_ended_says_so(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # 2 × 0.096 USD/hour for 30 days (721 billable hours) is 138.43 USD: above a 100 USD total.
    error = failed_with(run(runtime, intake, create_plan("too-long", max_total_usd="100.00")), "PriceAboveCeiling")
    assert "exceeds max_total_usd 100.00" in error["message"] and error["details"]["total_usd"] == "138.432"
    assert_nothing_spent(settled(runtime, "too-long"), sandbox, KIND)
    error = failed_with(run(runtime, intake, create_plan("too-dear", max_hourly_usd="0.10")), "PriceAboveCeiling")
    assert "0.192 USD/hour exceeds max_hourly_usd 0.10" in error["message"]
    assert_nothing_spent(settled(runtime, "too-dear"), sandbox, KIND)
    # Without a zone, the zones offering the type are the candidates: several, so the plan must name one.
    plan = create_plan("no-zone")
    del plan["params"]["availability_zone"]
    error = failed_with(run(runtime, intake, plan), "AmbiguousAvailabilityZone")
    assert "us-east-1a" in error["details"]["availability_zones"] and len(error["details"]["availability_zones"]) > 1
    # Open-ended without an hourly cap never reaches a worker.
    refused = intake.submit_raw(json.dumps(create_plan("open-uncapped", end_date_type="unlimited", end_date=None,
                                                       max_total_usd=None)), "test")
    assert refused.outcome == "rejected" and "max_hourly_usd" in refused.message
    # With one it runs, and its result says it is open-ended (no total, nothing but the hours it runs).
    plan = create_plan("open-capped", end_date_type="unlimited", max_hourly_usd="0.20")
    del plan["params"]["end_date"], plan["params"]["max_total_usd"]
    result = succeeded(run(runtime, intake, plan))
    assert result["open_ended"] is True and result["total_usd"] is None and result["hourly_usd"] == "0.192"
    assert "commitment_usd" not in result
    [made] = created(sandbox)
    assert made["id"] == result["capacity_reservation_id"]
    # The read-only trial account runs plans as dry runs: AWS's DryRun answer, the figures, nothing reserved.
    result = succeeded(run(runtime, intake, create_plan("dry", account=TRIAL_ACCOUNT)))
    assert result["dry_run"] is True and result["permitted"] is True and result["aws_answer"] == "DryRunOperation"
    assert result["would_reserve"]["total_usd"] == "138.432" and created(sandbox, TRIAL_ACCOUNT) == []


def test_create_refused_by_aws_fails_with_its_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # AWS: a future-dated reservation cannot end inside its commitment.
    plan = create_plan("inside-commitment", start_date=in_days(6), commitment_duration_seconds=14 * 86400,
                       end_date=in_days(10))
    error = failed_with(run(runtime, intake, plan), "InvalidParameterValue")
    assert "after the end of the commitment" in error["message"]
    assert created(sandbox) == []


def test_future_dated_reservation_is_followed_across_a_worker_restart(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    first = start_worker("w1")
    plan = create_plan("cr-future", start_date=in_days(6), commitment_duration_seconds=14 * 86400,
                       end_date=in_days(30))
    submit(intake_loop, plan)

    def following() -> PlanRecord | None:
        record = runtime.ledger.get("cr-future")
        return record if record is not None and (record.book or {}).get("accepted") else None

    record = eventually(following, "the plan to wait on the assessment")
    assert record.state.value == "submitted" and record.book["accepted"]["state"] == "assessing"
    first.kill()
    sandbox.advance_clock(61)  # the sandbox assesses a future-dated reservation for 60 s
    start_worker("w2")
    result = succeeded(settled(runtime, "cr-future"))
    [made] = created(sandbox)
    assert made["state"] == "scheduled" and result["state"] == "scheduled"
    assert result["resource_ids"] == [made["id"]] and result["found_by"] == "response"
    # Billed from its start date: 24 days + the end's hour.
    assert result["billable_hours"] == 24 * 24 + 1
    assert sum(1 for t in record_history(runtime, "cr-future") if t == "succeeded") == 1


def record_history(runtime: Runtime, plan_id: str) -> list[str]:
    record = runtime.ledger.get(plan_id)
    assert record is not None
    return [t.state.value for t in record.history]


def modify_plan(plan_id: str, cr_id: str, **params: Any) -> dict[str, Any]:
    return family_plan(MODIFY, plan_id, {"capacity_reservation_id": cr_id, **params})


def test_modify_lost_answer_throttles_and_repeat_change_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    cr_id = "cr-0c0ffee0000000a02"
    seed_reservation(sandbox, cr_id)
    client = ec2(aws)
    start_worker()
    money = {"on_demand_hourly_usd": "0.096", "max_total_usd": "150.00"}
    sandbox.add_fault(MODIFY, "commit_then_drop", count=1)
    result = succeeded(run(runtime, intake, modify_plan("grow-dropped", cr_id, instance_count=3, **money)))
    assert result["reconciled"] is True and result["now"]["instance_count"] == 3
    assert reservation(client, cr_id)["TotalInstanceCount"] == 3
    sandbox.add_fault(MODIFY, "throttle", count=2)
    result = succeeded(run(runtime, intake, modify_plan("grow-throttled", cr_id, instance_count=5, **money)))
    assert "reconciled" not in result and result["before"]["instance_count"] == 3
    assert sandbox.faults()["fired"] == {"commit_then_drop": 1, "throttle": 2}
    # The same change again: declarative, so harmless; the target already holds.
    result = succeeded(run(runtime, intake, modify_plan("grow-again", cr_id, instance_count=5, **money)))
    assert result["before"]["instance_count"] == 5
    after = reservation(client, cr_id)
    assert after["TotalInstanceCount"] == 5 and after["State"] == "active"
    assert len(ground_truth(sandbox, KIND)) == 1


def test_modify_refusals(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    seed_reservation(sandbox, "cr-0c0ffee0000000a03", instance_match_criteria="open")
    seed_reservation(sandbox, "cr-0c0ffee0000000a04", ends_in_days=None)
    seed_instance(sandbox, None, state="running")  # runs in the open reservation a03
    client = ec2(aws)
    start_worker()
    # AWS refuses to change the eligibility of a reservation an instance runs in.
    error = failed_with(run(runtime, intake, modify_plan("retarget", "cr-0c0ffee0000000a03",
                                                        instance_match_criteria="targeted")), "IncorrectState")
    assert "no instances run" in error["message"]
    # Ceilings: 50 × 0.096 USD/hour is above 1.00; an open-ended reservation needs an hourly cap.
    error = failed_with(run(runtime, intake, modify_plan("too-many", "cr-0c0ffee0000000a03", instance_count=50,
                                                        on_demand_hourly_usd="0.096", max_total_usd="100000",
                                                        max_hourly_usd="1.00")), "PriceAboveCeiling")
    assert "4.800 USD/hour exceeds max_hourly_usd 1.00" in error["message"]
    failed_with(run(runtime, intake, modify_plan("uncapped", "cr-0c0ffee0000000a04", instance_count=3,
                                                 on_demand_hourly_usd="0.096", max_total_usd="100")),
                "OpenEndedWithoutHourlyCap")
    # A reservation with an end date has a total to bound: an hourly cap alone is not enough (the plan's own rules
    # cannot know it ends; prepare reads it). An open-ended one needs only the hourly cap.
    error = failed_with(run(runtime, intake, modify_plan("no-total", "cr-0c0ffee0000000a03", instance_count=3,
                                                        on_demand_hourly_usd="0.096", max_hourly_usd="1.00")),
                        "MissingCeiling")
    assert "a limited reservation needs max_total_usd" in error["message"]
    assert reservation(client, "cr-0c0ffee0000000a03")["TotalInstanceCount"] == 2
    assert reservation(client, "cr-0c0ffee0000000a03")["InstanceMatchCriteria"] == "open"
    assert reservation(client, "cr-0c0ffee0000000a04")["TotalInstanceCount"] == 2
    succeeded(run(runtime, intake, modify_plan("hourly-capped", "cr-0c0ffee0000000a04", instance_count=3,
                                               on_demand_hourly_usd="0.096", max_hourly_usd="1.00")))
    assert reservation(client, "cr-0c0ffee0000000a04")["TotalInstanceCount"] == 3


def cancel_plan(plan_id: str, cr_id: str) -> dict[str, Any]:
    return family_plan(CANCEL, plan_id, {"capacity_reservation_id": cr_id})


def states(sandbox: SandboxControl) -> dict[str, str]:
    return {r["id"]: r["state"] for r in ground_truth(sandbox, KIND)}


def test_cancel_lost_answer_throttles_and_repeat(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_reservation(sandbox, "cr-0c0ffee0000000c02")
    seed_reservation(sandbox, "cr-0c0ffee0000000c03")
    start_worker()
    sandbox.add_fault(CANCEL, "commit_then_drop", count=1)
    result = succeeded(run(runtime, intake, cancel_plan("cancel-dropped", "cr-0c0ffee0000000c02")))
    assert result["reconciled"] is True and result["state"] == "cancelled"
    sandbox.add_fault(CANCEL, "throttle", count=2)
    result = succeeded(run(runtime, intake, cancel_plan("cancel-throttled", "cr-0c0ffee0000000c03")))
    assert "reconciled" not in result and result["state"] == "cancelled"
    assert sandbox.faults()["fired"] == {"commit_then_drop": 1, "throttle": 2}
    # Cancelling a cancelled reservation: AWS refuses it (IncorrectState), the plan looks, and it is done.
    record = run(runtime, intake, cancel_plan("cancel-again", "cr-0c0ffee0000000c02"))
    result = succeeded(record)
    assert result["state_before"] == "cancelled" and result["reconciled"] is True
    assert states(sandbox) == {"cr-0c0ffee0000000c02": "cancelled", "cr-0c0ffee0000000c03": "cancelled"}


def attributes_plan(plan_id: str, instance_id: str, **params: Any) -> dict[str, Any]:
    return family_plan(ATTRIBUTES, plan_id, {"instance_id": instance_id, **params})


def test_instance_settings_lost_answer_throttles_and_repeat(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    instance_id, cr_id = "i-0c0ffee0000000e02", "cr-0c0ffee0000000b02"
    seed_instance(sandbox, instance_id)
    seed_reservation(sandbox, cr_id, instance_count=1, instance_match_criteria="targeted")
    client = ec2(aws)
    start_worker()
    sandbox.add_fault(ATTRIBUTES, "commit_then_drop", count=1)
    result = succeeded(run(runtime, intake, attributes_plan("target-dropped", instance_id,
                                                            capacity_reservation_id=cr_id)))
    assert result["reconciled"] is True
    assert instance_spec(client, instance_id) == {"CapacityReservationTarget": {"CapacityReservationId": cr_id}}
    sandbox.add_fault(ATTRIBUTES, "throttle", count=2)
    none = {"capacity_reservation_preference": "none"}
    result = succeeded(run(runtime, intake, attributes_plan("none-throttled", instance_id, **none)))
    assert "reconciled" not in result and result["before"]["CapacityReservationTarget"]["CapacityReservationId"] \
        == cr_id
    assert sandbox.faults()["fired"] == {"commit_then_drop": 1, "throttle": 2}
    result = succeeded(run(runtime, intake, attributes_plan("none-again", instance_id, **none)))
    assert result["before"] == {"CapacityReservationPreference": "none"}
    assert instance_spec(client, instance_id) == {"CapacityReservationPreference": "none"}


def test_cancel_and_instance_setting_refusals(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    """Rules refused before anything is sent, then AWS's own refusals (IAM) ending the plans with AWS's reason."""
    client = ec2(aws)
    # A future-dated reservation, once assessed, is scheduled: AWS cancels it only after its commitment.
    scheduled = client.create_capacity_reservation(
        InstanceType="m5.large", InstancePlatform="Linux/UNIX", AvailabilityZone="us-east-1a", InstanceCount=2,
        StartDate=datetime.now(UTC) + timedelta(days=6), CommitmentDuration=14 * 86400,
        DeliveryPreference="incremental")["CapacityReservation"]["CapacityReservationId"]
    sandbox.advance_clock(61)
    seed_instance(sandbox, "i-0c0ffee0000000e03", state="running")
    seed_instance(sandbox, "i-0c0ffee0000000e04")
    seed_reservation(sandbox, "cr-0c0ffee0000000c04")
    seed_reservation(sandbox, "cr-0c0ffee0000000b03", instance_type="c5.large", instance_match_criteria="targeted")
    start_worker()
    before = len(ground_truth(sandbox, KIND))
    error = failed_with(run(runtime, intake, cancel_plan("cancel-scheduled", scheduled)), "CancelNotAllowed")
    assert "scheduled" in error["message"]
    assert states(sandbox)[scheduled] == "scheduled"
    record = run(runtime, intake, attributes_plan("running", "i-0c0ffee0000000e03",
                                                  capacity_reservation_preference="none"))
    error = failed_with(record, "InstanceNotStopped")
    assert "is running" in error["message"] and "stop it first" in error["message"]
    assert_nothing_spent(record, sandbox, KIND, before)
    assert instance_spec(client, "i-0c0ffee0000000e03") == {}
    error = failed_with(run(runtime, intake, attributes_plan("misfit", "i-0c0ffee0000000e04",
                                                             capacity_reservation_id="cr-0c0ffee0000000b03")),
                        "ReservationDoesNotFitInstance")
    assert "instance type" in error["message"]
    # AWS refuses the calls themselves: the plans fail with AWS's code and message.
    sandbox.set_iam(True, deny(CANCEL, ATTRIBUTES), external_id=EXTERNAL_ID)
    for record in (run(runtime, intake, cancel_plan("cancel-denied", "cr-0c0ffee0000000c04")),
                   run(runtime, intake, attributes_plan("attributes-denied", "i-0c0ffee0000000e04",
                                                        capacity_reservation_preference="none"))):
        error = failed_with(record, "UnauthorizedOperation")
        assert error["message"], error
    assert states(sandbox)["cr-0c0ffee0000000c04"] == "active"
