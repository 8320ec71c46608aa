"""Guards on the money path that a deliberate bug once slipped past (tests-that-bite): lease renewal, a plan
blocked by an unsettled one, expiry after a send whose outcome is unknown, and a poison plan after a send."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, ri_plan
from tests.spine.test_exactly_once import hook_fired, hooks, lease_expired
from worker.execution import RequeueLater, run_plan
from worker.runtime import Runtime

SETTLED = ("succeeded", "failed", "needs_attention", "expired")


def ris(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ACCOUNT, type="reserved-instances")


def run_until_settled(runtime: Runtime, plan_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = str(run_plan(runtime, plan_id, ACTIONS))
        except RequeueLater as later:
            time.sleep(later.delay)
            continue
        if state in SETTLED:
            return state
    raise AssertionError(f"{plan_id} never settled")


def submit(intake: Any, plan: dict[str, Any]) -> None:
    assert intake.submit_raw(json.dumps(plan), "test").outcome == "accepted"


def test_a_plan_that_runs_longer_than_its_lease_keeps_it_by_renewal(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """The offerings read takes more than twice the lease: only the heartbeat's renewals, again and again, let the
    send happen (a heartbeat that renewed once would give the lease 4/3 of its time, and the send would be refused)."""
    assert runtime.settings.lease_seconds < 5
    sandbox.add_fault("ec2:DescribeReservedInstancesOfferings", "latency", count=1,
                      latency_ms=int(runtime.settings.lease_seconds * 2250))
    submit(intake, ri_plan("long-run"))
    assert run_plan(runtime, "long-run", ACTIONS) == "succeeded"
    record = runtime.ledger.get("long-run")
    assert record.attempts == 1 and len(ris(sandbox)) == 1


def _unsettled(runtime: Runtime, sandbox: SandboxControl, intake: Any, plan_id: str) -> None:
    """A plan whose purchase was dropped and whose reconciling reads all fail: it needs attention, holding the
    offering's signature."""
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    submit(intake, ri_plan(plan_id))
    assert run_until_settled(runtime, plan_id) == "needs_attention"
    assert runtime.ledger.get(plan_id).error["code"] == "OutcomeUnknown"
    sandbox.clear_faults()


def test_a_plan_for_the_same_offering_as_an_unsettled_one_needs_attention_too(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    _unsettled(runtime, sandbox, intake, "unsettled")
    submit(intake, ri_plan("blocked", instance_count=3))
    assert run_until_settled(runtime, "blocked") == "needs_attention"
    error = runtime.ledger.get("blocked").error
    assert error["code"] == "BlockedByUnsettledPlan" and "unsettled" in error["message"]
    assert ris(sandbox) == []


def _clock_jumps_after_first_purchase(monkeypatch: pytest.MonkeyPatch, sandbox: SandboxControl, fault: str) -> None:
    """The worker's clock passes the plan's expires_at once the sandbox saw the first purchase (an event)."""
    import worker.handle

    monkeypatch.setattr(worker.handle, "clock_offset_seconds",
                        lambda: 3600.0 if sandbox.faults()["fired"].get(fault, 0) >= 1 else 0.0)


def test_a_plan_that_expires_after_a_send_that_took_effect_succeeds_never_expires(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    _clock_jumps_after_first_purchase(monkeypatch, sandbox, "commit_then_drop")
    expires = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    submit(intake, {**ri_plan("expires-after-send"), "expires_at": expires})
    assert run_until_settled(runtime, "expires-after-send") == "succeeded"
    [ri] = ris(sandbox)
    assert runtime.ledger.get("expires-after-send").result["resource_ids"] == [ri["id"]]


def test_a_plan_that_expires_after_a_lost_send_expires_only_once_absence_is_conclusive(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    _clock_jumps_after_first_purchase(monkeypatch, sandbox, "reset")
    expires = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    submit(intake, {**ri_plan("expires-unknown"), "expires_at": expires})
    assert run_until_settled(runtime, "expires-unknown") == "expired"
    reads = [e for e in runtime.audit.records(plan_id="expires-unknown")
             if e.get("operation") == "describe_reserved_instances"]
    assert reads, "expired without a reconciling read after a send whose outcome was unknown"
    assert ris(sandbox) == []
    assert sandbox.faults()["fired"]["reset"] == 1  # never sent again after expiry


def test_a_poison_plan_after_a_send_needs_attention_never_nothing_was_sent(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str]
) -> None:
    worker = start_worker("dies", **hooks(env, after_send="kill"))
    submit(intake, ri_plan("poison-after-send"))
    hook_fired(env["COMMITD_REDIS_URL"], "AFTER_SEND")
    worker.kill()
    lease_expired(runtime, "poison-after-send")
    record = runtime.ledger.get("poison-after-send")
    runtime.ledger.update(record, "test: the plan crashed its workers this often",
                          attempts=runtime.settings.max_attempts)
    assert run_plan(runtime, "poison-after-send", ACTIONS) == "needs_attention"
    error = runtime.ledger.get("poison-after-send").error
    assert error["code"] == "AttemptsExhausted" and "a send may have happened" in error["message"]
    assert len(ris(sandbox)) == 1


def test_a_throttled_dry_run_is_retried_like_a_read_never_reported_as_not_permitted(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """Five throttles in a row outlast botocore's read retries (3): the plan waits and tries again."""
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "throttle", count=5)
    submit(intake, {**ri_plan("dry-throttled"), "dry_run": True})
    assert run_until_settled(runtime, "dry-throttled") == "succeeded"
    result = runtime.ledger.get("dry-throttled").result
    assert result["dry_run"] is True and result["permitted"] is True and result["aws_answer"] == "DryRunOperation"
    assert sandbox.faults()["fired"]["throttle"] == 5 and ris(sandbox) == []


def test_a_dry_run_whose_connection_drops_is_retried(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    submit(intake, {**ri_plan("dry-dropped"), "dry_run": True})
    assert run_until_settled(runtime, "dry-dropped") == "succeeded"
    assert runtime.ledger.get("dry-dropped").result["permitted"] is True
    assert ris(sandbox) == []


@pytest.mark.parametrize(("service", "operation", "result_key", "page_size"), [
    ("ec2", "describe_reserved_instances_offerings", "ReservedInstancesOfferings", {"MaxResults": 5}),
    ("rds", "describe_reserved_db_instances_offerings", "ReservedDBInstancesOfferings", {"MaxRecords": 20}),
    ("elasticache", "describe_reserved_cache_nodes_offerings", "ReservedCacheNodesOfferings", {"MaxRecords": 20}),
    ("savingsplans", "describe_savings_plans_offerings", "searchResults", {"maxResults": 5}),
])
def test_paginate_follows_each_apis_own_token(
    runtime: Runtime, sandbox: SandboxControl, service: str, operation: str, result_key: str,
    page_size: dict[str, int],
) -> None:
    """NextToken, Marker, nextToken: every page is read, each one an audited call."""
    from worker.actions import family_permissions
    from worker.handle import PlanHandle

    action = ACTIONS["ec2:PurchaseReservedInstancesOffering"]
    handle = PlanHandle(runtime.sessions, action, runtime.accounts.get(ACCOUNT), "us-east-1", "paging",
                        family_permissions(action.family))
    paged = handle.paginate(operation, result_key, service=service, **page_size)
    first_page = handle.read(operation, service=service, **page_size)[result_key]
    size = next(iter(page_size.values()))
    assert len(first_page) == size and len(paged) > size, (len(first_page), len(paged))
    ids = [json.dumps(item, sort_keys=True, default=str) for item in paged]
    assert len(set(ids)) == len(ids), "a page was read twice"
    pages = [e for e in runtime.audit.records(plan_id="paging") if e.get("operation") == operation]
    assert len(pages) == -(-len(paged) // size) + 1


def test_the_look_alike_check_does_not_take_a_later_plans_purchase_for_a_duplicate(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """X succeeds; Y, for the same offering and count, buys but loses the answer and its reads fail, so it needs
    attention, holding the offering. X's check must not flag Y's RI as X's duplicate."""
    submit(intake, ri_plan("first-x"))
    assert run_plan(runtime, "first-x", ACTIONS) == "succeeded"
    assert runtime.ledger.get("first-x").verification == "due"
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    submit(intake, ri_plan("later-y"))
    assert run_until_settled(runtime, "later-y") == "needs_attention"
    sandbox.clear_faults()
    assert run_plan(runtime, "first-x", ACTIONS) == "succeeded"
    assert runtime.ledger.get("first-x").verification == "clean"
    y_ri = next(r["id"] for r in ris(sandbox) if r["id"] not in runtime.ledger.get("first-x").result["resource_ids"])
    [attributed] = [e for e in runtime.audit.records(plan_id="first-x") if e["event"] == "look_alikes_attributed"]
    assert attributed["to_plan"] == "later-y" and attributed["resource_ids"] == [y_ri]


def test_settings_refuse_a_lease_too_short_for_any_send() -> None:
    from config.settings import ConfigurationError, load_settings

    with pytest.raises(ConfigurationError) as refused:
        load_settings(lease_seconds=40, write_connect_timeout=5, write_read_timeout=30, send_margin_seconds=15)
    message = str(refused.value)
    assert "lease_seconds (40.0) must exceed" in message and "(50.0)" in message
    assert load_settings(lease_seconds=51, write_connect_timeout=5, write_read_timeout=30,
                         send_margin_seconds=15).send_window == 50


def test_a_tombstone_lasts_while_its_stream_entry_can_replay_it(runtime: Runtime, intake: Any) -> None:
    """Purged plans leave tombstones; trimming keeps one while the intake stream still holds an entry as old as
    the plan, or while a task message could still be redelivered, and drops it after both."""
    from worker.plans import PlanState

    stream = runtime.key("plans")
    runtime.redis.xadd(stream, {"plan": json.dumps(ri_plan("stone-1", max_hourly_usd="0.0001"))})
    intake.consume_once("c", block_ms=100)
    assert runtime.ledger.get("stone-1").state.value == "queued"
    record = runtime.ledger.get("stone-1")
    record = runtime.ledger.transition(record, PlanState.CANCELLED, "test: cancelled")
    future = datetime.now(UTC) + timedelta(days=1)
    assert runtime.ledger.purge([PlanState.CANCELLED], future, stream=stream, replay_seconds=0) == 1
    assert runtime.ledger.tombstone("stone-1")["state"] == "cancelled"  # its entry is still in the stream
    time.sleep(1.1)  # trimming allows a second of clock difference between the intake and Redis
    runtime.redis.xadd(stream, {"plan": "{}"})
    runtime.redis.xtrim(stream, maxlen=1, approximate=False)  # the plan's entry is gone now
    assert runtime.ledger.trim_tombstones(stream, replay_seconds=3600) == 0  # a redelivery could still come
    assert runtime.ledger.tombstone("stone-1") is not None
    assert runtime.ledger.trim_tombstones(stream, replay_seconds=0) == 1
    assert runtime.ledger.tombstone("stone-1") is None


def test_claims_take_every_resource_and_report_each_held_elsewhere(runtime: Runtime) -> None:
    from worker.claims import Claims

    claims = Claims(runtime.redis, runtime.key("claimed", "test", ACCOUNT, "us-east-1"))
    assert claims.claim("plan-a", ["r-1", "r-2"]) == {}
    assert claims.holders(["r-1", "r-2", "r-3"]) == {"r-1": "plan-a", "r-2": "plan-a", "r-3": None}
    assert claims.claim("plan-a", ["r-2"]) == {}  # claiming again is idempotent
    assert claims.claim("plan-b", ["r-3", "r-1", "r-2"]) == {"r-1": "plan-a", "r-2": "plan-a"}
    assert claims.holder("r-3") == "plan-b"
    assert claims.elsewhere("plan-b", ["r-1", "r-3"]) == {"r-1"}


def test_a_plan_that_expires_between_its_intent_and_its_first_send_expires_with_nothing_sent(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.handle

    monkeypatch.setattr(worker.handle, "clock_offset_seconds",
                        lambda: 3600.0 if runtime.ledger.get("expires-at-intent").state.value == "submitted" else 0.0)
    expires = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    submit(intake, {**ri_plan("expires-at-intent"), "expires_at": expires})
    assert run_until_settled(runtime, "expires-at-intent") == "expired"
    record = runtime.ledger.get("expires-at-intent")
    assert record.book["sends"] == 0 and record.history[-2].state.value == "submitted"
    assert ris(sandbox) == []


def test_a_look_alike_check_whose_message_was_lost_is_sent_again_by_the_sweeper(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    from worker.verify import verify_key

    submit(intake, ri_plan("check-lost"))
    assert run_plan(runtime, "check-lost", ACTIONS) == "succeeded"
    assert runtime.ledger.get("check-lost").verification == "due"
    # Due once AWS's reads have caught up and a frozen worker's late send would show: consistency delay + margin
    # after the success (scores count from whole seconds of Redis's clock; 2 s of slack for a busy machine).
    wait = runtime.settings.consistency_delay_seconds + runtime.settings.send_margin_seconds
    assert runtime.redis.zscore(verify_key(runtime), "check-lost") >= runtime.redis.time()[0] + wait - 2
    sent: list[tuple[str, str]] = []
    intake.enqueue = lambda family, plan_id: sent.append((family.name, plan_id))
    assert intake.sweep()["checks"] == 0  # not overdue yet: its own message may still come
    now = runtime.redis.time()[0]
    runtime.redis.zadd(verify_key(runtime), {"check-lost": now - runtime.settings.lease_seconds - 1})
    assert intake.sweep()["checks"] == 1 and sent == [("ec2_reserved_instances", "check-lost")]
    assert intake.sweep()["checks"] == 0, "one re-send per lease period"
    assert run_plan(runtime, "check-lost", ACTIONS) == "succeeded"
    assert runtime.ledger.get("check-lost").verification == "clean"
    assert runtime.redis.zscore(verify_key(runtime), "check-lost") is None


def test_durability_is_detected_again_when_the_server_changes(runtime: Runtime) -> None:
    """An operator turning appendfsync off under a running worker: the next check after the re-check period
    sees it, and sending stops."""
    from worker.durability import DurabilityUnavailable, SendRecordDurability

    durability = SendRecordDurability(runtime.redis, "auto", recheck_seconds=0)
    assert durability.method() == "fsync_always" and durability.wait() == "fsync_always"
    runtime.redis.config_set("appendfsync", "everysec")
    try:
        time.sleep(0.01)
        assert durability.method() == "unavailable"
        with pytest.raises(DurabilityUnavailable):
            durability.wait()
    finally:
        runtime.redis.config_set("appendfsync", "always")
    time.sleep(0.01)
    assert durability.method() == "fsync_always"
