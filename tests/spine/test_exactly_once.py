"""The exactly-once holes of the executor v2 issue, each through real processes: Celery workers frozen, killed and
with a skewed clock, a Redis record rolled back, the sandbox's latency and commit-then-error faults, purge and
resubmit, a second tagged RI. Each test checks the sandbox's ground truth (what was really bought)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tasks.families import EC2_RESERVED_INSTANCES
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ROOT, TAGGING_ACCOUNT, ri_plan, wait_for_state
from worker.celery_app import enqueue
from worker.runtime import Runtime

SETTLED = {"succeeded", "failed", "needs_attention", "expired"}


def bought(sandbox: SandboxControl, account: str = ACCOUNT) -> list[dict[str, Any]]:
    return [r for r in sandbox.resources(account_id=account, type="reserved-instances")
            if r["created_by"]["operation"] == "ec2:PurchaseReservedInstancesOffering"]


def hook_fired(redis_url: str, point: str, timeout: float = 30) -> tuple[int, float]:
    """Wait until a worker reached a test hook; return its pid and when."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.lindex(f"testhook:{point}", 0)
        if raw is not None:
            pid, at = raw.decode().split()
            return int(pid), float(at)
        time.sleep(0.02)
    raise AssertionError(f"no worker reached the test hook {point}")


def hooks(env: dict[str, str], **points: str) -> dict[str, str]:
    return {"COMMITD_TEST_HOOK_REDIS": env["COMMITD_REDIS_URL"],
            **{f"COMMITD_TEST_HOOK_{k.upper()}": v for k, v in points.items()}}


def lease_expired(runtime: Runtime, plan_id: str) -> None:
    """Wait until the dead worker's lease on the plan has run out (a message sent before would find it leased)."""
    deadline = time.monotonic() + runtime.settings.lease_seconds + 5
    while runtime.redis.exists(runtime.key("lease", plan_id)):
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.05)


def audit_notes(runtime: Runtime, plan_id: str) -> list[str]:
    """Every note the ledger wrote for the plan, updates included (the history keeps state changes only)."""
    return [e.get("note", "") for e in runtime.audit.records(plan_id=plan_id)]


def submit(intake: Any, plan: dict[str, Any]) -> None:
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result


# --- hole 1: a paused worker ----------------------------------------------------------------------------------
def test_a_worker_frozen_between_the_lease_check_and_the_send_buys_once(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any, env: dict[str, str]
) -> None:
    """Frozen (SIGSTOP) past its lease but less than the lease plus the margin: the worker taking over waits out
    the old holder's send window, then finds its purchase. Before v2 it reconciled at once and bought again."""
    start_worker("frozen", **hooks(env, before_send="stop"))
    submit(intake_loop, ri_plan("frozen-1"))
    pid, stopped_at = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    start_worker("taker")
    lease, margin = runtime.settings.lease_seconds, runtime.settings.send_margin_seconds
    time.sleep(max(0.0, stopped_at + lease + margin / 2 - time.time()))  # past the lease, inside the margin
    os.kill(pid, signal.SIGCONT)
    record = wait_for_state(runtime, "frozen-1", SETTLED, timeout=60)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]]
    notes = audit_notes(runtime, "frozen-1")
    assert any("took over from a holder that stopped during a send" in note for note in notes), notes


def test_a_pause_longer_than_the_margin_is_detected_as_a_duplicate(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any, env: dict[str, str]
) -> None:
    """The residual risk: frozen longer than the lease plus the margin, the old holder sends after the new one
    settled the plan. Nothing in AWS can refuse it, so it must be seen: the plan needs attention, audited."""
    start_worker("frozen", **hooks(env, before_send="stop"))
    submit(intake_loop, ri_plan("frozen-2"))
    pid, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    start_worker("taker")
    wait_for_state(runtime, "frozen-2", {"succeeded"}, timeout=60)
    os.kill(pid, signal.SIGCONT)
    record = wait_for_state(runtime, "frozen-2", {"needs_attention"}, timeout=60)
    assert len(bought(sandbox)) == 2
    assert record.error["code"] in ("DuplicateSend", "DuplicateSuspected"), record.error
    # The error names both purchases, so a person can resolve it: the other send's, and this plan's result.
    named = record.error.get("resource_ids") or [*record.error.get("suspects", []), *record.result["resource_ids"]]
    assert sorted(named) == sorted(ri["id"] for ri in bought(sandbox)), record.error
    events = [e["event"] for e in runtime.audit.records(plan_id="frozen-2")]
    assert "sent_after_lease_lost" in events
    printed = dict(line.split("\t") for line in commitd(env, "metrics").stdout.splitlines())
    assert int(printed["sent_after_lease_lost"]) >= 1 and int(printed["needs_attention"]) >= 1, printed


# --- hole 2: a lost Redis write ---------------------------------------------------------------------------------
def roll_back_send_record(runtime: Runtime, plan_id: str) -> None:
    """What a Redis that lost its last writes would hold: the plan as it was before its send was recorded."""
    key = runtime.key("plan", plan_id)
    record = json.loads(runtime.redis.hget(key, "record"))
    assert record["state"] == "submitted" and record["book"]["sends"] == 1
    record["book"].update(sends=0, first_send_ms=None, last_send_ms=None, sending_holder=None)
    runtime.redis.hset(key, "record", json.dumps(record))


def test_a_send_record_lost_by_redis_is_reconciled_not_sent_again(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str]
) -> None:
    worker = start_worker("dies", **hooks(env, after_send="kill"))
    submit(intake, ri_plan("rollback-1"))
    hook_fired(env["COMMITD_REDIS_URL"], "AFTER_SEND")
    worker.kill()
    assert len(bought(sandbox)) == 1
    roll_back_send_record(runtime, "rollback-1")
    lease_expired(runtime, "rollback-1")
    start_worker("resumes")
    enqueue(EC2_RESERVED_INSTANCES, "rollback-1")
    record = wait_for_state(runtime, "rollback-1", SETTLED, timeout=60)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]] and record.result["reconciled"] is True


def test_no_send_without_a_durable_send_record(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """Redis 7.0 here has no WAITAOF: with appendfsync everysec and no replica, nothing may be sent."""
    runtime.redis.config_set("appendfsync", "everysec")
    try:
        start_worker()
        submit(intake, ri_plan("not-durable"))
        record = wait_for_state(runtime, "not-durable", SETTLED, timeout=60)
    finally:
        runtime.redis.config_set("appendfsync", "always")
    assert record.state.value == "failed" and record.error["code"] == "DurabilityUnavailable", record.error
    assert "nothing was bought" in record.error["message"]
    assert record.book["sends"] == 0, "the send record of a call not made is withdrawn"
    assert bought(sandbox) == []


# --- hole 3: a fast worker clock --------------------------------------------------------------------------------
def test_a_worker_clock_three_minutes_fast_still_finds_its_own_purchase(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    start_worker("fast-clock", COMMITD_TEST_CLOCK_OFFSET_SECONDS="180")
    submit(intake, ri_plan("fast-clock-1"))
    record = wait_for_state(runtime, "fast-clock-1", SETTLED, timeout=60)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]]
    [skew] = [e for e in runtime.audit.records(plan_id="fast-clock-1") if e["event"] == "clock_skew"]
    assert 170 <= skew["worker_minus_aws_s"] <= 190


# --- hole 4: a slow purchase ------------------------------------------------------------------------------------
def test_a_purchase_applied_after_the_read_timeout_is_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """The sandbox applies the purchase 2.5 s after it arrives; the client gave up after 1 s. One early read
    sees nothing: absence is conclusive only after the timeouts, the margin and the consistency delay."""
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", count=1, latency_ms=2500)
    start_worker()
    submit(intake, ri_plan("slow-1"))
    record = wait_for_state(runtime, "slow-1", SETTLED, timeout=60)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]]
    notes = audit_notes(runtime, "slow-1")
    assert any("nothing found yet" in n for n in notes), notes


# --- reconcile after a 5xx (tests-that-bite) -------------------------------------------------------------------
def test_a_server_error_after_the_purchase_took_effect_is_reconciled_not_resent(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_error", count=1)
    start_worker()
    submit(intake, ri_plan("five-hundred"))
    record = wait_for_state(runtime, "five-hundred", SETTLED, timeout=60)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]] and record.result["reconciled"] is True


# --- hole 5: purge --------------------------------------------------------------------------------------------
def commitd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_purged_plan_resubmitted_or_replayed_is_never_bought_again(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str]
) -> None:
    start_worker()
    plan = ri_plan("purged-1")
    runtime.redis.xadd(runtime.key("plans"), {"plan": json.dumps(plan)})
    intake.consume_once("c1", block_ms=100)
    wait_for_state(runtime, "purged-1", {"succeeded"}, timeout=60)
    # A plan whose look-alike check is still due is not purged yet: wait for the check.
    deadline = time.monotonic() + 60
    while runtime.ledger.get("purged-1").verification == "due":
        assert time.monotonic() < deadline, "the look-alike check never ran"
        time.sleep(0.1)
    done = commitd(env, "plans", "purge", "--older-than-days", "0", "--yes")
    assert done.returncode == 0 and done.stdout.startswith("1 plans purged"), done.stderr
    assert runtime.ledger.get("purged-1") is None
    again = intake.submit_raw(json.dumps(plan), "test")
    assert again.outcome == "existing" and again.state == "succeeded" and "purged" in again.message
    # A recreated consumer group reads the stream from the start: the old entry comes back.
    runtime.redis.xgroup_destroy(runtime.key("plans"), "commitd-intake")
    assert intake.consume_once("c2", block_ms=100) == 1
    changed = intake.submit_raw(json.dumps({**plan, "notes": "different"}), "test")
    assert changed.outcome == "conflict"
    time.sleep(1.0)  # a task message, had one been sent, would have run by now on the idle worker
    assert runtime.ledger.get("purged-1") is None
    assert len(bought(sandbox)) == 1


# --- hole 7: CloudTrail -------------------------------------------------------------------------------------
def test_each_plans_purchase_names_the_plan_in_its_role_session(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    submit(intake, ri_plan("trail-1"))
    wait_for_state(runtime, "trail-1", {"succeeded"})
    submit(intake, ri_plan("trail-2", instance_type="c5.large"))
    wait_for_state(runtime, "trail-2", {"succeeded"})
    keys = {}
    for plan_id in ("trail-1", "trail-2"):
        [call] = [e for e in runtime.audit.records(plan_id=plan_id)
                  if e["event"] == "aws_call" and e.get("mutating") and e["operation"].startswith("purchase")]
        assert call["cloudtrail"]["roleSessionName"] == f"commitd-{plan_id}"
        assert call["cloudtrail"]["sourceIdentity"] == "commitd"
        assert call["cloudtrail"]["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/commitd/commitd-{plan_id}"
        keys[plan_id] = call["cloudtrail"]["arn"]
        assumed = [e["params"]["RoleSessionName"] for e in runtime.audit.records(plan_id=plan_id)
                   if e.get("operation") == "assume_role"]
        assert f"commitd-{plan_id}" in assumed
    assert keys["trail-1"] != keys["trail-2"]


# --- hole 8: duplicates that would go unseen ----------------------------------------------------------------
def test_a_second_ri_tagged_with_the_plan_needs_attention(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str],
    ec2_client: Any,
) -> None:
    worker = start_worker("dies", **hooks(env, after_send="kill"))
    submit(intake, {**ri_plan("two-tags"), "account_id": TAGGING_ACCOUNT})
    hook_fired(env["COMMITD_REDIS_URL"], "AFTER_SEND")
    worker.kill()
    [first] = bought(sandbox, TAGGING_ACCOUNT)
    ec2 = ec2_client(TAGGING_ACCOUNT)
    offering = runtime.ledger.get("two-tags").intent["offering_id"]
    second = ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering, InstanceCount=2)
    for ri_id in (first["id"], second["ReservedInstancesId"]):
        ec2.create_tags(Resources=[ri_id], Tags=[{"Key": "commitd:plan-id", "Value": "two-tags"}])
    lease_expired(runtime, "two-tags")
    start_worker("resumes")
    enqueue(EC2_RESERVED_INSTANCES, "two-tags")
    record = wait_for_state(runtime, "two-tags", SETTLED, timeout=60)
    assert record.state.value == "needs_attention" and record.error["code"] == "AmbiguousOutcome", record.error
    assert sorted(record.error["candidates"]) == sorted([first["id"], second["ReservedInstancesId"]])


def test_resolving_as_succeeded_claims_the_resource_for_the_plan(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, env: dict[str, str]
) -> None:
    from worker.execution import run_plan

    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1000)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", count=1000)
    for plan_id in ("unknown-1", "unknown-2"):
        submit(intake, ri_plan(plan_id, instance_type="r5.large" if plan_id == "unknown-2" else "m5.large"))
        while (state := _run_until_settled(runtime, plan_id, run_plan)) not in SETTLED:
            pass
        assert state == "needs_attention"
    ok = commitd(env, "plans", "resolve", "unknown-1", "--as", "succeeded", "--note", "checked",
                 "--resource-id", "ri-checked-by-hand")
    assert ok.returncode == 0, ok.stderr
    claims = runtime.redis.hgetall(runtime.key("claimed", "ec2-ri", ACCOUNT, "us-east-1"))
    assert claims == {b"ri-checked-by-hand": b"unknown-1"}
    refused = commitd(env, "plans", "resolve", "unknown-2", "--as", "succeeded", "--note", "same one?",
                      "--resource-id", "ri-checked-by-hand")
    assert refused.returncode != 0 and "already belongs to plan(s) unknown-1" in refused.stderr
    assert runtime.ledger.get("unknown-2").state.value == "needs_attention"


def _run_until_settled(runtime: Runtime, plan_id: str, run_plan: Any) -> str:
    from worker.execution import RequeueLater

    try:
        return str(run_plan(runtime, plan_id, ACTIONS))
    except RequeueLater as later:
        time.sleep(later.delay)
        return "waiting"


@pytest.fixture
def ec2_client(aws: Any) -> Any:
    """A boto3 EC2 client in ``account`` (through AssumeRole): a person acting in the account by hand."""
    return lambda account: aws("ec2", account_id=account, external_id=EXTERNAL_ID)


def test_the_look_alike_check_after_success_flags_an_unclaimed_twin(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, ec2_client: Any
) -> None:
    """What a duplicate send by a worker that died right after it would leave: an RI just like the plan's that no
    plan claims. The check due after success finds it; a plan without a twin is checked clean."""
    start_worker()
    submit(intake, ri_plan("twin-checked"))
    submit(intake, ri_plan("clean-checked", instance_type="c5.large"))
    record = wait_for_state(runtime, "twin-checked", {"succeeded"})
    assert record.verification == "due"
    twin = ec2_client(ACCOUNT).purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=record.intent["offering_id"], InstanceCount=2)["ReservedInstancesId"]
    flagged = wait_for_state(runtime, "twin-checked", {"needs_attention"}, timeout=60)
    assert flagged.error["code"] == "DuplicateSuspected" and flagged.error["suspects"] == [twin]
    assert flagged.verification == "flagged"
    assert runtime.metrics.all()["duplicates_suspected"] == 1
    deadline = time.monotonic() + 60
    while runtime.ledger.get("clean-checked").verification != "clean":
        assert time.monotonic() < deadline, runtime.ledger.get("clean-checked")
        time.sleep(0.1)
    assert runtime.ledger.get("clean-checked").state.value == "succeeded"
