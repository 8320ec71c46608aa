"""Reserved Instances after purchase, through the real path (intake → Celery worker process → sandbox over HTTP):
ec2:ModifyReservedInstances (family ec2_reserved_instances), ec2:AcceptReservedInstancesExchangeQuote
(ec2_ri_exchange), ec2:CreateReservedInstancesListing and ec2:CancelReservedInstancesListing (ec2_ri_marketplace).

Each test checks the sandbox's ground truth. The RIs are seeded with the ages each rule needs; the example plans
of examples/plans/ run as they are, on RIs seeded with the ids they name.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from sandbox.server import SandboxServer
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    eventually,
    family_plan,
    ground_truth,
    run_plan_through,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID
from tests.spine.test_exactly_once import hook_fired, hooks
from worker.ledger import PlanRecord
from worker.requeue import RequeueLater
from worker.runtime import Runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
REGION = "us-east-1"
MODIFICATION_SECONDS = 300  # sandbox.services.ec2_ri_lifecycle.MODIFICATION_SECONDS
# The RIs the example plans name.
MODIFY_RI = "7c1f3e2a-5b4d-4e6f-8a9b-0c1d2e3f4a51"
EXCHANGE_RI = "7c1f3e2a-5b4d-4e6f-8a9b-0c1d2e3f4a52"
LISTED_RI = "7c1f3e2a-5b4d-4e6f-8a9b-0c1d2e3f4a53"

MODIFY = "ec2:ModifyReservedInstances"
EXCHANGE = "ec2:AcceptReservedInstancesExchangeQuote"
LIST = "ec2:CreateReservedInstancesListing"
CANCEL = "ec2:CancelReservedInstancesListing"
MODIFICATIONS, LISTINGS, RIS = "reserved-instances-modification", "reserved-instances-listing", "reserved-instances"


def example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / name).read_text()))


def seed_ri(sandbox: SandboxControl, ri_id: str, **overrides: Any) -> None:
    entry = {"kind": "ec2:reserved-instances", "account_id": ACCOUNT, "region": REGION, "id": ri_id,
             "instance_type": "m5.large", "offering_class": "standard", "offering_type": "All Upfront",
             "duration_years": 1, "instance_count": 4, "start_days_ago": 40}
    sandbox.seed([{**entry, **overrides}])


def seed_convertible(sandbox: SandboxControl, ri_id: str, **overrides: Any) -> None:
    seed_ri(sandbox, ri_id, **{"offering_class": "convertible", "offering_type": "No Upfront",
                               "instance_count": 2, **overrides})


def made_by(sandbox: SandboxControl, operation: str, kind: str = RIS) -> list[dict[str, Any]]:
    return [r for r in ground_truth(sandbox, kind) if r["created_by"]["operation"] == operation]


def state_of(sandbox: SandboxControl, resource_id: str, kind: str = RIS) -> str:
    [resource] = [r for r in ground_truth(sandbox, kind) if r["id"] == resource_id]
    return str(resource["state"])


def plan_and_wait(runtime: Runtime, intake: Any, plan: dict[str, Any]) -> PlanRecord:
    submit(intake, plan)
    return settled(runtime, plan["plan_id"])


def failed_with(record: PlanRecord, code: str) -> dict[str, Any]:
    assert record.state.value == "failed", record.model_dump()
    assert record.error is not None and record.error["code"] == code, record.error
    return record.error


def ec2_client(aws: Any) -> Any:
    return aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID)


def production_role_without(action: str) -> dict[str, Any]:
    statements = [dict(s) for s in PRODUCTION_ROLE_POLICY["Statement"]]
    for statement in statements:
        statement["Action"] = [a for a in statement["Action"] if a.lower() != action.lower()]
    return {**PRODUCTION_ROLE_POLICY, "Statement": statements}


# --- ec2:ModifyReservedInstances -------------------------------------------------------------------------------
def test_modify_example_under_the_production_role_is_followed_to_fulfilled_across_a_worker_restart(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    seed_ri(sandbox, MODIFY_RI, offering_type="No Upfront")
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    first = start_worker("w1")
    plan = example("ec2-modify-reserved-instances.json")
    submit(intake_loop, plan)
    plan_id = plan["plan_id"]

    def waiting_on_aws() -> PlanRecord | None:
        record = runtime.ledger.get(plan_id)
        return record if record is not None and (record.book or {}).get("accepted") else None

    record = eventually(waiting_on_aws, "the plan to wait on its modification")
    assert record.state.value == "submitted"
    modification_id = record.book["accepted"]["reserved_instances_modification_id"]
    [modification] = ground_truth(sandbox, MODIFICATIONS)
    assert (modification["id"], modification["state"]) == (modification_id, "processing")
    assert modification["created_by"]["token"] == record.intent["idempotency_value"]
    first.kill()  # the plan now waits on AWS with no worker
    start_worker("w2")
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    record = settled(runtime, plan_id)
    assert record.state.value == "succeeded", record.error
    assert [h.state.value for h in record.history].count("succeeded") == 1
    assert record.book["sends"] == 1
    assert record.idempotency == {"kind": "client_token", "value": record.intent["idempotency_value"]}
    [modification] = ground_truth(sandbox, MODIFICATIONS)
    assert (modification["id"], modification["state"]) == (modification_id, "fulfilled")
    new = made_by(sandbox, MODIFY)
    assert sorted(record.result["resource_ids"]) == sorted(r["id"] for r in new) and len(new) == 2
    assert record.result["reserved_instances_modification_id"] == modification_id
    assert sorted((r["instance_type"], r["instance_count"], r["scope"], r["availability_zone"])
                  for r in record.result["new_reserved_instances"]) == [
        ("m5.large", 2, "Region", None), ("m5.xlarge", 1, "Availability Zone", "us-east-1a")]
    assert record.result["footprint"] == "16"
    assert state_of(sandbox, MODIFY_RI) == "retired"
    assert_session_confined(runtime, MODIFY)


def test_modify_lost_answer_and_throttles_modify_once_and_a_repeat_is_harmless(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    dropped_ri, throttled_ri = "5d000000-0000-4000-8000-000000000061", "5d000000-0000-4000-8000-000000000062"
    seed_ri(sandbox, dropped_ri)
    seed_ri(sandbox, throttled_ri)
    targets = [{"instance_count": 2, "scope": "Region"},
               {"instance_count": 2, "scope": "Availability Zone", "availability_zone": "us-east-1b"}]
    start_worker()
    sandbox.add_fault(MODIFY, "commit_then_drop", count=1)
    submit(intake, family_plan(MODIFY, "modify-dropped", {"reserved_instances_ids": [dropped_ri],
                                                          "target_configurations": targets}))
    eventually(lambda: ground_truth(sandbox, MODIFICATIONS), "the dropped modification to exist")
    sandbox.add_fault(MODIFY, "throttle", count=2)
    submit(intake, family_plan(MODIFY, "modify-throttled", {"reserved_instances_ids": [throttled_ri],
                                                            "target_configurations": targets}))
    eventually(lambda: len(ground_truth(sandbox, MODIFICATIONS)) == 2, "the throttled modification to exist")
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    dropped, throttled = settled(runtime, "modify-dropped"), settled(runtime, "modify-throttled")
    assert dropped.state.value == "succeeded" and throttled.state.value == "succeeded", (dropped.error, throttled.error)
    assert dropped.result["reconciled"] is True and dropped.result["found_by"] == "client_token"
    assert dropped.book["sends"] == 1
    assert throttled.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    modifications = ground_truth(sandbox, MODIFICATIONS)
    assert sorted(m["state"] for m in modifications) == ["fulfilled", "fulfilled"]
    assert len(made_by(sandbox, MODIFY)) == 4  # two new RIs per plan, once each
    # The same call again, with the plan's token: AWS answers with the same modification and changes nothing.
    again = ec2_client(aws).modify_reserved_instances(
        ReservedInstancesIds=[dropped_ri], ClientToken=dropped.intent["idempotency_value"],
        TargetConfigurations=[{"InstanceCount": 2, "InstanceType": "m5.large", "Scope": "Region"},
                              {"InstanceCount": 2, "InstanceType": "m5.large", "Scope": "Availability Zone",
                               "AvailabilityZone": "us-east-1b"}])
    assert again["ReservedInstancesModificationId"] == dropped.result["reserved_instances_modification_id"]
    assert ground_truth(sandbox, MODIFICATIONS) == modifications and len(made_by(sandbox, MODIFY)) == 4


def test_modify_refusals_a_terminal_aws_error_and_a_failed_modification_modify_nothing(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    active_ri, expired_ri, ending_ri = ("5d000000-0000-4000-8000-000000000063", "5d000000-0000-4000-8000-000000000064",
                                        "5d000000-0000-4000-8000-000000000065")
    seed_ri(sandbox, active_ri)
    seed_ri(sandbox, expired_ri, start_days_ago=400)  # its term ended: retired
    seed_ri(sandbox, ending_ri, start_days_ago=365 - 120 / 86400)  # ends in two minutes
    start_worker()
    bigger = plan_and_wait(runtime, intake, family_plan(MODIFY, "modify-bigger", {
        "reserved_instances_ids": [active_ri],
        "target_configurations": [{"instance_count": 3, "instance_type": "m5.xlarge"}]}))
    error = failed_with(bigger, "FootprintMismatch")
    assert error["details"] == {"source_footprint": "16", "target_footprint": "24",
                                "normalization_factors": {"m5.xlarge": "8"}}
    assert_nothing_spent(bigger, sandbox, MODIFICATIONS)
    retired = plan_and_wait(runtime, intake, family_plan(MODIFY, "modify-retired", {
        "reserved_instances_ids": [expired_ri],
        "target_configurations": [{"instance_count": 4, "scope": "Availability Zone",
                                   "availability_zone": "us-east-1a"}]}))
    assert failed_with(retired, "ReservedInstancesNotActive")["details"] == {"states": {expired_ri: "retired"}}
    # AWS refuses what commitd does not check (EC2-Classic is gone): the plan fails with AWS's code and message.
    classic = plan_and_wait(runtime, intake, family_plan(MODIFY, "modify-classic", {
        "reserved_instances_ids": [active_ri],
        "target_configurations": [{"instance_count": 4, "scope": "Availability Zone",
                                   "availability_zone": "us-east-1a", "platform": "EC2-Classic"}]}))
    error = failed_with(classic, "InvalidParameterValue")
    assert "EC2-Classic" in error["message"] and "not supported" in error["message"]
    assert_nothing_spent(classic, sandbox, MODIFICATIONS)
    assert state_of(sandbox, active_ri) == "active" and made_by(sandbox, MODIFY) == []
    # AWS accepts a modification, then fails it (the RI's term ends while it processes): AWS's status message.
    submit(intake, family_plan(MODIFY, "modify-ending", {
        "reserved_instances_ids": [ending_ri],
        "target_configurations": [{"instance_count": 4, "scope": "Availability Zone",
                                   "availability_zone": "us-east-1b"}]}))
    eventually(lambda: ground_truth(sandbox, MODIFICATIONS), "the modification to be accepted")
    sandbox.advance_clock(MODIFICATION_SECONDS + 1)
    ending = settled(runtime, "modify-ending")
    error = failed_with(ending, "ModificationFailed")
    assert "no longer active" in error["message"] and error["details"]["status"] == "failed"
    assert [m["state"] for m in ground_truth(sandbox, MODIFICATIONS)] == ["failed"] and made_by(sandbox, MODIFY) == []


@pytest.fixture(scope="module")
def metal_sandbox() -> Iterator[SandboxServer]:
    """A second sandbox whose catalogue also sells m5.metal (the shared one has no size without a factor), so a
    metal RI can be seeded."""
    from sandbox.app import SandboxApp
    from sandbox.catalogue import Catalogue

    catalogue = Catalogue.load()
    offerings = catalogue.section("ec2_ri_offerings")
    metal = [{**o, "InstanceType": "m5.metal", "ReservedInstancesOfferingId": f"metal-{n}"}
             for n, o in enumerate(offerings) if o["InstanceType"] == "m5.large" and not o["Marketplace"]]
    offerings.extend(metal)
    server = SandboxServer(SandboxApp(catalogue)).start()
    yield server
    server.stop()


def test_a_metal_ri_is_split_by_its_count_and_a_split_that_loses_an_instance_is_refused(
    runtime: Runtime, metal_sandbox: SandboxServer
) -> None:
    """A size without a normalization factor (metal) cannot change size, so its footprint is the count per instance
    type, summed over the target configurations: 4 × m5.metal split 2 + 1 over two zones loses one and commitd
    refuses it before any call; 2 + 2 keeps it and the modification is made. (A surviving mutant of `make mutants`
    summed the counts with % instead of +, which made every metal footprint 0 and let the lossy split through.)"""
    from config.settings import Settings
    from tasks import ACTIONS
    from tests.spine.test_guards import run_until_settled
    from worker.celery_app import enqueue
    from worker.execution import run_plan
    from worker.intake import Intake

    own = Runtime(Settings(**{**runtime.settings.model_dump(), "aws_endpoint_url": metal_sandbox.url}))
    control = SandboxControl(metal_sandbox.url)
    control.reset()
    intake = Intake(own, ACTIONS, enqueue)
    lossy_ri, split_ri = "5d000000-0000-4000-8000-000000000066", "5d000000-0000-4000-8000-000000000067"
    seed_ri(control, lossy_ri, instance_type="m5.metal")
    seed_ri(control, split_ri, instance_type="m5.metal")

    def zones(*counts: int) -> list[dict[str, Any]]:
        return [{"instance_count": n, "scope": "Availability Zone", "availability_zone": f"us-east-1{zone}"}
                for n, zone in zip(counts, "ab", strict=False)]

    submit(intake, family_plan(MODIFY, "modify-metal-lossy", {
        "reserved_instances_ids": [lossy_ri], "target_configurations": zones(2, 1)}))
    assert run_until_settled(own, "modify-metal-lossy") == "failed"
    lossy = own.ledger.get("modify-metal-lossy")
    assert lossy is not None
    error = failed_with(lossy, "FootprintMismatch")
    assert error["details"]["source_footprint"] == {"m5.metal": 4}, error
    assert error["details"]["target_footprint"] == {"m5.metal": 3}, error
    assert_nothing_spent(lossy, control, MODIFICATIONS)

    submit(intake, family_plan(MODIFY, "modify-metal-split", {
        "reserved_instances_ids": [split_ri], "target_configurations": zones(2, 2)}))
    try:
        run_plan(own, "modify-metal-split", ACTIONS)
    except RequeueLater:  # accepted by AWS, processing: followed later
        pass
    split = own.ledger.get("modify-metal-split")
    assert split is not None and split.state.value == "submitted" and split.book["sends"] == 1, split.error
    assert len(ground_truth(control, MODIFICATIONS)) == 1  # AWS took the split
    assert state_of(control, lossy_ri) == "active"


# --- ec2:AcceptReservedInstancesExchangeQuote ------------------------------------------------------------------
def test_exchange_example_under_the_production_role_retires_the_sources_and_claims_the_new_ri(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_convertible(sandbox, EXCHANGE_RI)
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    record = run_plan_through(runtime, intake, start_worker, example("ec2-accept-exchange-quote.json"))
    assert record.state.value == "succeeded", record.error
    [new] = made_by(sandbox, EXCHANGE)
    assert record.result["resource_ids"] == [new["id"]] == [record.result["reserved_instances_id"]]
    assert record.result["exchange_id"].startswith("riex-") and record.result["found_by"] == "accepted"
    assert (record.result["instance_type"], record.result["instance_count"]) == ("m5.xlarge", 1)
    assert record.result["payment_due_usd"] == "0.00"
    assert 0 < float(record.result["commitment_usd"]) <= 1200
    assert state_of(sandbox, EXCHANGE_RI) == "retired" and new["state"] == "active"
    # One plan at a time per target offering, shared with purchases of it.
    target = record.intent["target"]["offering_id"]
    assert record.idempotency == {"kind": "none", "value": f"ec2-ri:{ACCOUNT}:{REGION}:{target}"}
    checked = eventually(lambda: (r := runtime.ledger.get(record.plan_id)) and r.verification != "due" and r,
                         "the look-alike check")
    assert checked.verification == "clean" and checked.state.value == "succeeded"
    assert_session_confined(runtime, EXCHANGE)


def test_exchange_lost_answer_and_throttles_exchange_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    dropped_ri, throttled_ri = "5d000000-0000-4000-8000-000000000071", "5d000000-0000-4000-8000-000000000072"
    seed_convertible(sandbox, dropped_ri)
    seed_convertible(sandbox, throttled_ri)
    params = example("ec2-accept-exchange-quote.json")["params"]
    start_worker()
    sandbox.add_fault(EXCHANGE, "commit_then_drop", count=1)
    dropped = plan_and_wait(runtime, intake, family_plan(EXCHANGE, "exchange-dropped", {
        **params, "reserved_instance_ids": [dropped_ri]}))
    assert dropped.state.value == "succeeded", dropped.error
    assert dropped.result["reconciled"] is True and dropped.result["found_by"] == "sources_retired"
    assert dropped.book["sends"] == 1
    [first] = made_by(sandbox, EXCHANGE)
    assert dropped.result["resource_ids"] == [first["id"]]
    sandbox.add_fault(EXCHANGE, "throttle", count=2)
    throttled = plan_and_wait(runtime, intake, family_plan(EXCHANGE, "exchange-throttled", {
        **params, "reserved_instance_ids": [throttled_ri]}))
    assert throttled.state.value == "succeeded", throttled.error
    assert throttled.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    assert len(made_by(sandbox, EXCHANGE)) == 2  # one new RI per plan
    assert state_of(sandbox, dropped_ri) == state_of(sandbox, throttled_ri) == "retired"


def test_exchange_refusals_and_a_quote_gone_stale_before_the_send_exchange_nothing(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str], aws: Any
) -> None:
    three_year, standard = "5d000000-0000-4000-8000-000000000081", "5d000000-0000-4000-8000-000000000082"
    seed_convertible(sandbox, three_year, duration_years=3)
    seed_ri(sandbox, standard)
    start_worker("hooked", **hooks(env, before_send="stop"))

    def exchange(plan_id: str, source: str, target: dict[str, Any], **ceilings: str) -> PlanRecord:
        return plan_and_wait(runtime, intake, family_plan(EXCHANGE, plan_id, {
            "reserved_instance_ids": [source], "target_configurations": [target],
            "max_payment_due_usd": "10000", "max_total_usd": "100000", **ceilings}))

    xlarge = {"instance_type": "m5.xlarge", "offering_type": "No Upfront", "duration_years": 3}
    failed_with(exchange("exchange-standard", standard, xlarge), "NotConvertible")
    shorter = failed_with(exchange("exchange-shorter", three_year, {**xlarge, "duration_years": 1}), "InvalidExchange")
    assert "shorter term" in shorter["details"]["validation_failure_reason"]
    due = failed_with(exchange("exchange-due", three_year, {**xlarge, "offering_type": "All Upfront"},
                               max_payment_due_usd="0"), "PriceAboveCeiling")
    assert float(due["details"]["payment_due_usd"]) > 0
    total = failed_with(exchange("exchange-total", three_year, xlarge, max_total_usd="10.00"), "PriceAboveCeiling")
    assert float(total["details"]["total_usd"]) > 10
    dry = plan_and_wait(runtime, intake, family_plan(EXCHANGE, "exchange-dry", {
        "reserved_instance_ids": [three_year], "target_configurations": [xlarge],
        "max_payment_due_usd": "0", "max_total_usd": "100000"}, dry_run=True))
    assert dry.state.value == "succeeded" and dry.result["dry_run"] is True and dry.result["permitted"] is True
    assert dry.result["would_exchange"]["instance_count"] == 1
    # The quote was valid when read; before the send, someone starts a modification of the source. AWS refuses.
    submit(intake, family_plan(EXCHANGE, "exchange-stale", {
        "reserved_instance_ids": [three_year], "target_configurations": [xlarge],
        "max_payment_due_usd": "10000", "max_total_usd": "100000"}))
    pid, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    ec2_client(aws).modify_reserved_instances(
        ReservedInstancesIds=[three_year], ClientToken="by-hand",
        TargetConfigurations=[{"InstanceCount": 1, "InstanceType": "m5.large", "Scope": "Region"},
                              {"InstanceCount": 1, "InstanceType": "m5.large", "Scope": "Availability Zone",
                               "AvailabilityZone": "us-east-1a"}])
    os.kill(pid, signal.SIGCONT)
    stale = settled(runtime, "exchange-stale")
    error = failed_with(stale, "InvalidParameterValue")
    assert "pending modification" in error["message"]
    assert made_by(sandbox, EXCHANGE) == [] and state_of(sandbox, three_year) == "active"


# --- ec2:CreateReservedInstancesListing, ec2:CancelReservedInstancesListing ------------------------------------
def test_listing_examples_under_the_production_role_list_then_cancel_reporting_units_sold(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_ri(sandbox, LISTED_RI)
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    created = run_plan_through(runtime, intake, start_worker, example("ec2-create-ri-listing.json"))
    assert created.state.value == "succeeded", created.error
    [listing] = ground_truth(sandbox, LISTINGS)
    assert created.result["resource_ids"] == [listing["id"]] == [created.result["reserved_instances_listing_id"]]
    assert listing["created_by"]["token"] == created.intent["idempotency_value"]
    assert created.idempotency == {"kind": "client_token", "value": created.intent["idempotency_value"]}
    assert created.result["status"] == "active" and created.result["instance_counts"]["available"] == 2
    assert [(s["term"], s["price_usd"]) for s in created.result["price_schedules"]] == [
        (10, "450.0"), (6, "270.0"), (3, "130.0")]
    # A buyer takes one instance; then the rest of the listing is cancelled (through the example's RI selector).
    sandbox.seed([{"kind": "ec2:ri-listing-sale", "account_id": ACCOUNT, "region": REGION,
                   "reserved_instances_id": LISTED_RI, "instance_count": 1}])
    cancelled = plan_and_wait(runtime, intake, example("ec2-cancel-ri-listing.json"))
    assert cancelled.state.value == "succeeded", cancelled.error
    assert cancelled.result["status"] == "cancelled" and cancelled.result["units_sold"] == 1
    assert cancelled.result["instance_counts"] == {"available": 0, "sold": 1, "cancelled": 1, "pending": 0}
    assert cancelled.result["resource_ids"] == [listing["id"]]
    assert state_of(sandbox, listing["id"], LISTINGS) == "cancelled"
    assert_session_confined(runtime, LIST)


def test_listing_and_cancel_lost_answers_and_throttles_act_once_and_a_repeat_cancel_is_harmless(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, aws: Any
) -> None:
    dropped_ri, throttled_ri = "5d000000-0000-4000-8000-000000000091", "5d000000-0000-4000-8000-000000000092"
    seed_ri(sandbox, dropped_ri)
    seed_ri(sandbox, throttled_ri)
    params = example("ec2-create-ri-listing.json")["params"]
    start_worker()
    sandbox.add_fault(LIST, "commit_then_drop", count=1)
    dropped = plan_and_wait(runtime, intake, family_plan(LIST, "list-dropped", {
        **params, "reserved_instances_id": dropped_ri}))
    assert dropped.state.value == "succeeded", dropped.error
    assert dropped.result["reconciled"] is True and dropped.result["found_by"] == "client_token"
    assert dropped.book["sends"] == 1 and len(ground_truth(sandbox, LISTINGS)) == 1
    sandbox.add_fault(LIST, "throttle", count=2)
    throttled = plan_and_wait(runtime, intake, family_plan(LIST, "list-throttled", {
        **params, "reserved_instances_id": throttled_ri}))
    assert throttled.state.value == "succeeded", throttled.error
    assert throttled.book["sends"] == 3 and len(ground_truth(sandbox, LISTINGS)) == 2
    sandbox.clear_faults()
    sandbox.add_fault(CANCEL, "commit_then_drop", count=1)
    cancel_dropped = plan_and_wait(runtime, intake, family_plan(CANCEL, "cancel-dropped", {
        "reserved_instances_id": dropped_ri}))
    assert cancel_dropped.state.value == "succeeded", cancel_dropped.error
    assert cancel_dropped.result["reconciled"] is True and cancel_dropped.result["found_by"] == "status"
    assert cancel_dropped.book["sends"] == 1
    sandbox.add_fault(CANCEL, "throttle", count=2)
    cancel_throttled = plan_and_wait(runtime, intake, family_plan(CANCEL, "cancel-throttled", {
        "reserved_instances_listing_id": throttled.result["reserved_instances_listing_id"]}))
    assert cancel_throttled.state.value == "succeeded", cancel_throttled.error
    assert cancel_throttled.book["sends"] == 3
    listings = ground_truth(sandbox, LISTINGS)
    assert sorted(r["state"] for r in listings) == ["cancelled", "cancelled"]
    # Cancelling again is refused as not active and changes nothing; a plan to do it is refused before the call.
    with pytest.raises(ClientError) as again:
        ec2_client(aws).cancel_reserved_instances_listing(
            ReservedInstancesListingId=dropped.result["reserved_instances_listing_id"])
    assert again.value.response["Error"]["Code"] == "InvalidInput"
    repeat = plan_and_wait(runtime, intake, family_plan(CANCEL, "cancel-repeat", {
        "reserved_instances_listing_id": dropped.result["reserved_instances_listing_id"]}))
    failed_with(repeat, "ListingNotActive")
    assert ground_truth(sandbox, LISTINGS) == listings


def test_listing_refusals_an_unregistered_seller_a_cancel_done_by_hand_and_a_denied_cancel(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str], aws: Any
) -> None:
    young, convertible, held = ("5d000000-0000-4000-8000-0000000000a1", "5d000000-0000-4000-8000-0000000000a2",
                                "5d000000-0000-4000-8000-0000000000a3")
    seed_ri(sandbox, young, start_days_ago=10)
    seed_convertible(sandbox, convertible)
    seed_ri(sandbox, held)
    params = example("ec2-create-ri-listing.json")["params"]
    start_worker("hooked", **hooks(env, before_send="stop"))
    # The first send of this worker: a cancel that someone does by hand between the plan's checks and its call.
    ec2 = ec2_client(aws)
    by_hand = ec2.create_reserved_instances_listing(
        ReservedInstancesId=held, InstanceCount=1, ClientToken="by-hand",
        PriceSchedules=[{"Term": 6, "Price": 300.0, "CurrencyCode": "USD"}])["ReservedInstancesListings"][0]
    submit(intake, family_plan(CANCEL, "cancel-raced", {"reserved_instances_id": held}))
    pid, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    ec2.cancel_reserved_instances_listing(ReservedInstancesListingId=by_hand["ReservedInstancesListingId"])
    os.kill(pid, signal.SIGCONT)
    raced = settled(runtime, "cancel-raced")
    assert raced.state.value == "succeeded", raced.error
    assert raced.result["found_by"] == "already_cancelled" and raced.result["status"] == "cancelled"
    assert raced.book["sends"] == 1

    def listing(plan_id: str, ri_id: str, **changes: Any) -> PlanRecord:
        return plan_and_wait(runtime, intake, family_plan(LIST, plan_id, {
            **params, "reserved_instances_id": ri_id, **changes}))

    failed_with(listing("list-young", young), "HeldLessThan30Days")
    failed_with(listing("list-convertible", convertible), "NotStandard")
    below = failed_with(listing("list-cheap", held, min_price_usd="200.00"), "PriceBelowFloor")
    assert below["details"]["below_floor"] == [{"term": 3, "price_usd": "130.00"}]
    too_many = listing("list-too-many", held, instance_count=5)
    failed_with(too_many, "CountAboveReservedInstances")
    assert_nothing_spent(too_many, sandbox, LISTINGS, before=1)  # the listing cancelled by hand
    # Seller registration is an account setting no EC2 API reports: AWS's refusal names it.
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": ACCOUNT, "registered": False}])
    unregistered = listing("list-unregistered", held)
    error = failed_with(unregistered, "SellerNotRegistered")
    assert "not registered as a seller" in error["message"] and "AWS answered InvalidInput" in error["message"]
    assert_nothing_spent(unregistered, sandbox, LISTINGS, before=1)
    sandbox.seed([{"kind": "ec2:ri-marketplace-seller", "account_id": ACCOUNT, "registered": True}])
    assert listing("list-ok", held).state.value == "succeeded"
    failed_with(listing("list-twice", held), "ListingAlreadyActive")
    failed_with(plan_and_wait(runtime, intake, family_plan(CANCEL, "cancel-unknown", {
        "reserved_instances_listing_id": "00000000-0000-4000-8000-000000000000"})), "ListingNotFound")
    # A role that does not grant the cancel: AWS refuses it, and the plan fails with AWS's code and message.
    sandbox.set_iam(True, production_role_without(CANCEL), external_id=EXTERNAL_ID)
    denied = plan_and_wait(runtime, intake, family_plan(CANCEL, "cancel-denied", {"reserved_instances_id": held}))
    error = failed_with(denied, "UnauthorizedOperation")
    assert CANCEL in error["message"]
    assert sorted(r["state"] for r in ground_truth(sandbox, LISTINGS)) == ["active", "cancelled"]


def test_normalization_factors_follow_awss_rule_for_every_size() -> None:
    """A modification must keep the footprint (factor × count), so a wrong factor refuses a valid split or merge, or
    lets one through that changes what is reserved. AWS's rule ("Instance size flexibility"): small is 1, each step
    down halves it (micro 0.5, nano 0.25), medium 2, large 4, xlarge 8, and N·xlarge is 8·N. (A surviving mutant of
    `make mutants` changed 18xlarge's 144 to 143 and no test noticed.)"""
    from decimal import Decimal

    from tasks.ec2_reserved_instances import NORMALIZATION_FACTORS

    below_xlarge = {"nano": Decimal("0.25"), "micro": Decimal("0.5"), "small": Decimal(1), "medium": Decimal(2),
                    "large": Decimal(4), "xlarge": Decimal(8)}
    for size, factor in NORMALIZATION_FACTORS.items():
        expected = below_xlarge.get(size) or 8 * Decimal(size.removesuffix("xlarge"))
        assert factor == expected, (size, factor, expected)
    # Every size AWS sells up to 112xlarge in the families this table serves.
    assert {"nano", "small", "large", "9xlarge", "18xlarge", "56xlarge", "112xlarge"} <= set(NORMALIZATION_FACTORS)


def test_listing_counts_are_zero_for_a_state_aws_leaves_out() -> None:
    """A listing's InstanceCounts as a dict, every state present: one AWS leaves out counts 0 (the result's
    units_sold reads 'sold'). (Two surviving mutants of `make mutants` changed those defaults to 1 and -1.)"""
    from tasks.ec2_ri_marketplace import _counts

    assert _counts({}) == {"available": 0, "sold": 0, "cancelled": 0, "pending": 0}
    assert _counts({"InstanceCounts": [{"State": "available", "InstanceCount": 3}]}) == {
        "available": 3, "sold": 0, "cancelled": 0, "pending": 0}
