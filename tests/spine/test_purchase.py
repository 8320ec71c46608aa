"""End to end: plans through a real Celery worker, the sandbox over HTTP, real boto3, a private Redis."""

from __future__ import annotations

import json
import time
from typing import Any

from sandbox.control import SandboxControl
from tasks.families import EC2_RESERVED_INSTANCES
from tests.spine.conftest import ACCOUNT, ri_plan, wait_for_state
from worker.celery_app import enqueue
from worker.runtime import Runtime


def bought(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ACCOUNT, type="reserved-instances")


def test_full_purchase(runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any) -> None:
    start_worker()
    result = intake.submit_raw(json.dumps(ri_plan("buy-1")), "test")
    assert result.outcome == "accepted" and result.state == "queued"
    record = wait_for_state(runtime, "buy-1", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["reserved_instances_id"] == ri["id"]
    assert ri["created_by"]["operation"] == "ec2:PurchaseReservedInstancesOffering"
    assert [h.state.value for h in record.history] == ["received", "queued", "running", "submitted", "succeeded"]
    assert record.idempotency == {"kind": "none", "value": record.intent["signature"]}


def submit(intake: Any, plan: dict[str, Any]) -> None:
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result


def test_price_above_ceiling_fails_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    submit(intake, ri_plan("too-dear", offering_type="All Upfront", max_upfront_usd="100.00", max_hourly_usd="0"))
    record = wait_for_state(runtime, "too-dear", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "failed"
    assert record.error["code"] == "PriceAboveCeiling"
    assert "exceeds max_upfront_usd 100.00" in record.error["message"]
    assert bought(sandbox) == []


def test_ambiguous_offering_fails_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # An AWS offering and a marketplace offering share these attributes in the sandbox's catalogue.
    plan = ri_plan(
        "ambiguous",
        offering_type="All Upfront",
        scope="Availability Zone",
        availability_zone="us-east-1a",
        instance_count=1,
        max_upfront_usd="5000",
        max_hourly_usd="0",
    )
    submit(intake, plan)
    record = wait_for_state(runtime, "ambiguous", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "failed"
    assert record.error["code"] == "AmbiguousOffering"
    assert len(record.error["details"]["offering_ids"]) == 2
    assert bought(sandbox) == []
    # Pinning one of them resolves it.
    pinned = ri_plan(
        "pinned", **{**plan["params"], "offering_id": record.error["details"]["offering_ids"][0]}
    )
    submit(intake, pinned)
    assert wait_for_state(runtime, "pinned", {"succeeded", "failed"}).state.value == "succeeded"
    assert len(bought(sandbox)) == 1


def test_throttling_is_retried_and_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "throttle", count=2)
    submit(intake, ri_plan("throttled"))
    record = wait_for_state(runtime, "throttled", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 3
    assert len(bought(sandbox)) == 1
    assert sandbox.faults()["fired"]["throttle"] == 2


def test_commit_then_drop_is_reconciled_and_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    submit(intake, ri_plan("dropped"))
    record = wait_for_state(runtime, "dropped", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True
    [ri] = bought(sandbox)
    assert record.result["reserved_instances_id"] == ri["id"]
    assert record.book["sends"] == 1  # never sent again


def test_outcome_unknown_goes_to_needs_attention_and_is_never_bought_again(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # The purchase is dropped before it happens, and every reconciling read fails: nothing can be known.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    submit(intake, ri_plan("unknowable"))
    record = wait_for_state(runtime, "unknowable", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert record.state.value == "needs_attention"
    assert record.error["code"] == "OutcomeUnknown"
    assert record.book["sends"] == 1
    assert bought(sandbox) == []


def test_worker_killed_mid_plan_completes_after_redelivery_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    first = start_worker("doomed")
    # The purchase takes effect 3 s after the request arrives; the worker is killed while it waits.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", count=1, latency_ms=3000)
    submit(intake_loop, ri_plan("killed"))
    wait_for_state(runtime, "killed", {"submitted"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (runtime.ledger.get("killed").book or {}).get("sends", 0) == 0:
        time.sleep(0.05)
    time.sleep(0.3)
    first.kill()
    time.sleep(3.5)  # the sandbox completes the purchase nobody will hear about
    assert len(bought(sandbox)) == 1
    start_worker("rescuer")
    record = wait_for_state(runtime, "killed", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True
    assert len(bought(sandbox)) == 1


def test_two_workers_racing_on_one_plan_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker("racer-a")
    start_worker("racer-b")
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", count=1, latency_ms=1000)
    submit(intake, ri_plan("raced"))
    # A duplicated message, as a redelivery or a second producer would make.
    for _ in range(3):
        enqueue(EC2_RESERVED_INSTANCES, "raced")
    record = wait_for_state(runtime, "raced", {"succeeded", "failed", "needs_attention"})
    time.sleep(2)  # let the duplicates run out
    record = runtime.ledger.get("raced")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 1
    assert len(bought(sandbox)) == 1


def test_two_plans_for_the_same_offering_each_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker("pair", concurrency=2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=2)
    submit(intake, ri_plan("twin-1"))
    submit(intake, ri_plan("twin-2"))
    first = wait_for_state(runtime, "twin-1", {"succeeded", "failed", "needs_attention"})
    second = wait_for_state(runtime, "twin-2", {"succeeded", "failed", "needs_attention"})
    assert first.state.value == second.state.value == "succeeded"
    ids = {first.result["reserved_instances_id"], second.result["reserved_instances_id"]}
    assert ids == {ri["id"] for ri in bought(sandbox)} and len(ids) == 2


def test_redis_killed_and_restarted_loses_nothing(
    runtime: Runtime, sandbox: SandboxControl, redis_server: Any, intake_loop: Any, start_worker: Any
) -> None:
    start_worker("survivor")
    submit(intake_loop, ri_plan("before-restart"))
    assert wait_for_state(runtime, "before-restart", {"succeeded", "failed"}).state.value == "succeeded"
    time.sleep(1.5)  # appendfsync everysec: what was written a second ago is on disk
    redis_server.kill()
    redis_server.start()
    # The ledger and the audit trail come back from the AOF; the intake and the worker reconnect.
    assert runtime.ledger.get("before-restart").state.value == "succeeded"
    runtime.redis.xadd(runtime.key("plans"), {"plan": json.dumps(ri_plan("after-restart", instance_type="c5.large"))})
    record = wait_for_state(runtime, "after-restart", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert record.state.value == "succeeded", record.error
    assert len(bought(sandbox)) == 2
    assert runtime.audit.verify().ok


def test_with_create_tags_granted_the_ri_is_tagged_and_found_by_tag_after_a_crash(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any, aws: Any
) -> None:
    from tests.spine.conftest import EXTERNAL_ID, TAGGING_ACCOUNT

    first = start_worker("tagger")
    # The worker dies while its CreateTags is in flight; the tag still lands after 3 s.
    sandbox.add_fault("ec2:CreateTags", "latency", count=1, latency_ms=3000)
    submit(intake_loop, {**ri_plan("tagged"), "account_id": TAGGING_ACCOUNT})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not sandbox.resources(account_id=TAGGING_ACCOUNT, type="reserved-instances"):
        time.sleep(0.05)
    time.sleep(0.5)
    first.kill()
    time.sleep(3)
    start_worker("finder")
    record = wait_for_state(runtime, "tagged", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert record.state.value == "succeeded", record.error
    assert record.result["found_by"] == "tag"
    [ri] = sandbox.resources(account_id=TAGGING_ACCOUNT, type="reserved-instances")
    assert record.result["reserved_instances_id"] == ri["id"]
    ec2 = aws("ec2", account_id=TAGGING_ACCOUNT, external_id=EXTERNAL_ID)
    tags = ec2.describe_reserved_instances()["ReservedInstances"][0]["Tags"]
    assert {"Key": "commitd:plan-id", "Value": "tagged"} in tags
