"""End to end: plans through a real Celery worker, the sandbox over HTTP, real boto3, a private Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tasks.families import EC2_RESERVED_INSTANCES
from tests.spine.conftest import ACCOUNT, WorkerProcess, eventually, ri_plan, wait_for_state
from tests.spine.test_exactly_once import SETTLED, hook_fired, hooks, lease_expired
from worker.audit import VerifyResult
from worker.celery_app import enqueue
from worker.intake import Intake
from worker.lease import Lease
from worker.runtime import Runtime

# Celery logs every task message a worker ran: ``Task <name>[<message id>] succeeded in 0.01s: '<return value>'``.
TASK_DONE = re.compile(r"^Task \S+\[(?P<id>[0-9a-f-]+)\] succeeded in \S+s: '(?P<result>[^']*)'$", re.M)


def bought(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ACCOUNT, type="reserved-instances")


def tasks_done(workers: Iterable[WorkerProcess]) -> dict[str, str]:
    """Every task message the workers ran to the end, in order: message id → what the task returned."""
    return {m["id"]: m["result"] for w in workers for m in TASK_DONE.finditer(w.log.read_text(errors="replace"))}


def consumed(workers: list[WorkerProcess], message_ids: list[str], timeout: float = 30) -> list[str]:
    """Wait until the workers ran each of these task messages; return what the task returned for each."""
    def all_ran() -> dict[str, str] | None:
        done = tasks_done(workers)
        return done if done.keys() >= set(message_ids) else None

    done = eventually(all_ran, f"the workers to run the task messages {message_ids}", timeout)
    return [done[m] for m in message_ids]


def send_messages(plan_id: str, n: int) -> list[str]:
    """``n`` more task messages for the plan, as a redelivery or a second producer would send: their ids."""
    return [enqueue(EC2_RESERVED_INSTANCES, plan_id).id for _ in range(n)]


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
    worker = start_worker()
    # The purchase is dropped before it happens, and every reconciling read fails: nothing can be known.
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "error", probability=1.0)
    submit(intake, ri_plan("unknowable"))
    record = wait_for_state(runtime, "unknowable", {"succeeded", "failed", "needs_attention"}, timeout=60)
    assert record.state.value == "needs_attention"
    assert record.error["code"] == "OutcomeUnknown"
    assert record.book["sends"] == 1
    assert bought(sandbox) == []
    # Redelivered messages, once AWS answers again (a resumed plan would now reconcile, find nothing and buy):
    # the worker runs each and leaves the plan to the person who must settle it.
    sandbox.clear_faults()
    again = send_messages("unknowable", 3)
    assert consumed([worker], again) == ["needs_attention"] * 3
    assert runtime.ledger.get("unknowable") == record  # untouched: same version, history, book and error
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


def test_duplicate_messages_for_a_leased_plan_are_refused_and_it_is_bought_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str]
) -> None:
    """Two workers, four messages for one plan. The worker that reaches the send first is frozen there (SIGSTOP)
    holding the plan's lease (30 s here, so it outlasts the test on a slow machine); the other worker runs the three
    duplicates and must refuse each as leased. Resumed, the holder sends once; duplicates after it settled do
    nothing."""
    lease = {"COMMITD_LEASE_SECONDS": "30", **hooks(env, before_send="stop")}
    workers = [start_worker("racer-a", **lease), start_worker("racer-b", **lease)]
    submit(intake, ri_plan("raced"))
    holder, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    assert consumed(workers, send_messages("raced", 3)) == ["leased_elsewhere"] * 3
    record = runtime.ledger.get("raced")
    assert record.state.value == "submitted" and record.book["sends"] == 1
    assert bought(sandbox) == []
    os.kill(holder, signal.SIGCONT)
    record = wait_for_state(runtime, "raced", SETTLED)
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]] and record.book["sends"] == 1
    # Settled: a late duplicate finds the plan succeeded, or leased by the worker running another duplicate.
    assert set(consumed(workers, send_messages("raced", 3))) <= {"succeeded", "leased_elsewhere"}
    assert len(bought(sandbox)) == 1
    assert runtime.ledger.get("raced").book["sends"] == 1


def test_a_worker_paused_until_another_took_its_lease_does_not_send(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """Fencing: the worker is frozen (SIGSTOP) in its reads, its lease runs out and another holder takes it. Resumed,
    the lease check before the send stops it: nothing is sent. The next message after that holder let go buys once."""
    sandbox.add_fault("ec2:DescribeReservedInstancesOfferings", "latency", count=1, latency_ms=5000)
    worker = start_worker("paused")
    submit(intake, ri_plan("fenced"))
    eventually(lambda: sandbox.faults()["fired"].get("latency"), "the worker to be inside its offerings read")
    lease_key = runtime.key("lease", "fenced")
    pid = int(runtime.redis.get(lease_key).decode().split(":")[1])  # the holder is host:pid:thread
    os.kill(pid, signal.SIGSTOP)
    lease_expired(runtime, "fenced")
    other = Lease(runtime.redis, lease_key, "another-worker", 30)
    assert other.acquire()
    try:
        os.kill(pid, signal.SIGCONT)
        [(_, outcome)] = eventually(lambda: list(tasks_done([worker]).items()), "the paused worker's task to end")
        assert outcome == "lease_lost"
        record = runtime.ledger.get("fenced")
        assert record.state.value == "submitted" and (record.book or {}).get("sends", 0) == 0, record.book
        assert bought(sandbox) == []
    finally:
        other.release()
    assert consumed([worker], send_messages("fenced", 1)) == ["succeeded"]
    record = runtime.ledger.get("fenced")
    [ri] = bought(sandbox)
    assert record.result["resource_ids"] == [ri["id"]] and record.book["sends"] == 1


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


def redis_contents(runtime: Runtime) -> dict[str, Any]:
    """Everything commitd keeps in Redis (Celery's own keys aside): plans, state indexes, the schedule, claims,
    signature locks, metrics, the audit stream and its head."""
    readers: dict[str, Callable[[str], Any]] = {
        "string": runtime.redis.get,
        "hash": runtime.redis.hgetall,
        "set": lambda k: sorted(runtime.redis.smembers(k)),
        "zset": lambda k: runtime.redis.zrange(k, 0, -1, withscores=True),
        "list": lambda k: runtime.redis.lrange(k, 0, -1),
        "stream": lambda k: runtime.redis.xrange(k),
    }
    celery = runtime.key("celery").encode()
    return {key.decode(): readers[runtime.redis.type(key).decode()](key)
            for key in sorted(runtime.redis.scan_iter(match=runtime.key("*"))) if not key.startswith(celery)}


def test_redis_killed_and_restarted_keeps_every_plan_and_the_audit_chain(
    runtime: Runtime, sandbox: SandboxControl, redis_server: Any, intake: Any, start_worker: Any
) -> None:
    """redis-server SIGKILLed and started again from its AOF (appendfsync always, no wait before the kill): plans in
    every state come back exactly as they were, the audit chain verifies and goes on from the same head, and the
    worker that ran throughout and the intake carry on with the plans left to do."""
    start_worker("survivor")
    submit(intake, ri_plan("r-succeeded"))
    submit(intake, ri_plan("r-failed", offering_type="All Upfront", max_upfront_usd="100.00", max_hourly_usd="0"))
    rejected = intake.submit_raw(json.dumps({**ri_plan("r-rejected"), "region": "mars-1"}), "test")
    now = datetime.now(UTC)
    submit(intake, {**ri_plan("r-scheduled"), "not_before": (now + timedelta(hours=1)).isoformat()})
    submit(intake, {**ri_plan("r-expired"), "expires_at": (now - timedelta(minutes=5)).isoformat()})
    assert wait_for_state(runtime, "r-succeeded", SETTLED).state.value == "succeeded"
    assert wait_for_state(runtime, "r-failed", SETTLED).state.value == "failed"
    eventually(lambda: runtime.ledger.get("r-succeeded").verification == "clean", "the look-alike check")
    # Recorded as queued, its task message not sent yet (an intake that stopped between the two).
    unsent = Intake(runtime, ACTIONS, lambda *args, **kwargs: None).submit_raw(
        json.dumps(ri_plan("r-queued", instance_type="c5.large")), "test")
    states = {p: runtime.ledger.get(p).state.value for p in
              ("r-succeeded", "r-failed", rejected.plan_id, "r-scheduled", "r-expired", unsent.plan_id)}
    assert list(states.values()) == ["succeeded", "failed", "rejected", "scheduled", "expired", "queued"]
    before = redis_contents(runtime)
    trail = [(entry_id, fields["hash"]) for entry_id, fields in runtime.audit.entries()]
    assert runtime.audit.verify().ok and trail[-1][1] == runtime.audit.head()

    redis_server.kill()
    redis_server.start()

    assert redis_contents(runtime) == before
    assert runtime.audit.verify() == VerifyResult(True, len(trail))
    # The worker reconnects: the queued plan's message and a plan that comes through the stream are run.
    send_messages(unsent.plan_id, 1)
    finished = wait_for_state(runtime, unsent.plan_id, SETTLED)
    assert finished.state.value == "succeeded"
    # The first send after the restart found the send-record connection closed: not a send, so not counted twice.
    assert finished.book["sends"] == 1, finished.book
    runtime.redis.xadd(runtime.key("plans"), {"plan": json.dumps(ri_plan("r-after", instance_type="r5.large",
                                                                          max_hourly_usd="1.00"))})
    assert intake.consume_once("after-restart", block_ms=100) == 1
    assert wait_for_state(runtime, "r-after", SETTLED).state.value == "succeeded"
    for plan_id, state in states.items():
        assert runtime.ledger.get(plan_id).state.value == ("succeeded" if plan_id == unsent.plan_id else state)
    results = {ri_id for p in ("r-succeeded", "r-queued", "r-after")
               for ri_id in runtime.ledger.get(p).result["resource_ids"]}
    assert {ri["id"] for ri in bought(sandbox)} == results and len(results) == 3
    after = runtime.audit.verify()
    assert after.ok and after.entries > len(trail)
    assert [(i, f["hash"]) for i, f in runtime.audit.entries()][:len(trail)] == trail


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
