"""The executor in this process (no Celery): attempts, leases, dry runs, sessions and IAM under the sandbox."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tasks.families import EC2_RESERVED_INSTANCES
from tests.production_role import PRODUCTION_ROLE_POLICY, ROLE_READ_VERBS, ROLE_WRITES
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ri_plan
from worker.aws import role_session_name
from worker.execution import run_plan
from worker.lease import Lease
from worker.runtime import Runtime


def record_plan(intake: Any, plan: dict[str, Any]) -> None:
    """Record a plan without a worker picking it up: the message goes to a queue nobody consumes here."""
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result


def ris(sandbox: SandboxControl, account: str = ACCOUNT) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=account, type="reserved-instances")


def test_purchase_under_the_production_role_and_the_family_session_policy(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, aws: Any
) -> None:
    assert len(ROLE_WRITES) == 27 and ROLE_READ_VERBS == ["List", "Get", "Describe"]
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    record_plan(intake, ri_plan("least-privilege"))
    assert run_plan(runtime, "least-privilege", ACTIONS) == "succeeded"
    [ri] = ris(sandbox)
    assert runtime.ledger.get("least-privilege").result["resource_ids"] == [ri["id"]]
    # The family's session cannot use anything outside the family, though the role grants it (a session with the
    # role alone can).
    from worker.actions import family_permissions
    from worker.handle import PlanHandle

    aws("rds", account_id=ACCOUNT, external_id=EXTERNAL_ID).describe_reserved_db_instances()
    action = ACTIONS["ec2:PurchaseReservedInstancesOffering"]
    handle = PlanHandle(runtime.sessions, action, runtime.accounts.get(ACCOUNT), "us-east-1", "probe",
                        family_permissions(action.family))
    with pytest.raises(ClientError) as denied:
        handle.read("describe_reserved_db_instances", service="rds")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_a_role_without_the_action_fails_the_plan_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    policy = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}
    sandbox.set_iam(True, policy, external_id=EXTERNAL_ID)
    record_plan(intake, ri_plan("not-granted"))
    assert run_plan(runtime, "not-granted", ACTIONS) == "failed"
    record = runtime.ledger.get("not-granted")
    assert record.error["code"] == "UnauthorizedOperation"
    assert ris(sandbox) == []


def test_wrong_external_id_never_reaches_the_account(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    sandbox.set_iam(False, None, external_id="another-customers-id")
    record_plan(intake, ri_plan("wrong-external-id"))
    state = run_plan(runtime, "wrong-external-id", ACTIONS)
    assert state == "failed"
    record = runtime.ledger.get("wrong-external-id")
    assert record.error["code"] == "AccessDenied"
    assert EXTERNAL_ID not in json.dumps(record.public())
    assert ris(sandbox) == []


def test_dry_run_buys_nothing(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    record_plan(intake, {**ri_plan("dry"), "dry_run": True})
    assert run_plan(runtime, "dry", ACTIONS) == "succeeded"
    result = runtime.ledger.get("dry").result
    assert result["dry_run"] is True and result["aws_answer"] == "DryRunOperation" and result["permitted"] is True
    assert ris(sandbox) == []


def test_read_only_trial_account_runs_every_plan_as_a_dry_run(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    record_plan(intake, {**ri_plan("trial"), "account_id": "444455556666"})
    assert run_plan(runtime, "trial", ACTIONS) == "succeeded"
    record = runtime.ledger.get("trial")
    assert record.result["dry_run"] is True
    assert "read-only trial role" in record.history[-1].note
    assert ris(sandbox, "444455556666") == []


def test_a_plan_leased_by_another_worker_is_not_run(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    record_plan(intake, ri_plan("leased"))
    other = Lease(runtime.redis, runtime.key("lease", "leased"), "another-worker", 30)
    assert other.acquire()
    try:
        assert run_plan(runtime, "leased", ACTIONS) == "leased_elsewhere"
        assert runtime.ledger.get("leased").state.value == "queued"
    finally:
        other.release()
    assert run_plan(runtime, "leased", ACTIONS) == "succeeded"
    # Running a settled plan again does nothing.
    assert run_plan(runtime, "leased", ACTIONS) == "succeeded"
    assert len(ris(sandbox)) == 1


def test_poison_plan_stops_after_max_attempts(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    record_plan(intake, ri_plan("poison"))
    record = runtime.ledger.get("poison")
    runtime.ledger.update(record, "crashed workers", attempts=runtime.settings.max_attempts)
    assert run_plan(runtime, "poison", ACTIONS) == "failed"
    record = runtime.ledger.get("poison")
    assert record.error["code"] == "AttemptsExhausted"
    assert "nothing was sent" in record.error["message"]
    assert ris(sandbox) == []


def test_reads_share_a_session_per_account_and_family_and_each_plan_writes_in_its_own(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    from tests.spine.conftest import TAGGING_ACCOUNT
    from worker.actions import family_permissions

    for n in range(3):
        record_plan(intake, ri_plan(f"cached-{n}", instance_type="c5.large", max_hourly_usd="0.10"))
        assert run_plan(runtime, f"cached-{n}", ACTIONS) == "succeeded"
    assert runtime.sessions.assume_role_calls == 1 + 3  # one read session, one write session per plan
    record_plan(intake, {**ri_plan("other-account", instance_type="c5.large"), "account_id": TAGGING_ACCOUNT})
    assert run_plan(runtime, "other-account", ACTIONS) == "succeeded"
    assert runtime.sessions.assume_role_calls == 1 + 3 + 2  # another account: its own read session
    sessions = [e["params"]["RoleSessionName"] for e in runtime.audit.records() if e.get("operation") == "assume_role"]
    assert sessions == ["commitd-reads", "commitd-cached-0", "commitd-cached-1", "commitd-cached-2",
                        "commitd-reads", "commitd-other-account"]
    allowed = family_permissions(EC2_RESERVED_INSTANCES)
    assert "ec2:PurchaseReservedInstancesOffering" in allowed
    assert "rds:PurchaseReservedDbInstancesOffering" not in allowed


def test_role_session_name_is_valid_for_sts() -> None:
    assert role_session_name("ri:2026/11 #1") == "commitd-ri-2026-11--1"
    assert len(role_session_name("x" * 128)) == 64


def test_waiting_for_the_same_purchase_does_not_use_up_attempts(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    from worker.execution import RequeueLater

    record_plan(intake, ri_plan("holder"))
    record_plan(intake, ri_plan("waiter"))
    # "holder" is mid-flight on the same offering: it holds the purchase signature.
    assert run_plan(runtime, "holder", ACTIONS) == "succeeded"
    signature = runtime.ledger.get("holder").intent["signature"]
    runtime.redis.set(runtime.key("inflight", signature), "in-flight-elsewhere")
    record_plan(intake, ri_plan("in-flight-elsewhere", instance_count=3))
    for _ in range(runtime.settings.max_attempts + 2):
        with pytest.raises(RequeueLater):
            run_plan(runtime, "waiter", ACTIONS)
        record = runtime.ledger.get("waiter")
        assert record.state.value == "queued" and record.attempts == 0
    runtime.redis.delete(runtime.key("inflight", signature))
    assert run_plan(runtime, "waiter", ACTIONS) == "succeeded"
    assert len(ris(sandbox)) == 2


def test_never_sent_after_expires_at(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    from datetime import UTC, datetime, timedelta

    # Every purchase is throttled; the plan's clock passes expires_at once the first send was answered (an event,
    # not a wall-clock budget: the worker's clock jumps an hour after the sandbox has seen one purchase).
    import worker.handle

    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "throttle", probability=1.0)
    expires = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    record_plan(intake, {**ri_plan("expiring"), "expires_at": expires})

    def offset() -> float:
        return 3600.0 if sandbox.faults()["fired"].get("throttle", 0) >= 1 else 0.0

    original = worker.handle.clock_offset_seconds
    worker.handle.clock_offset_seconds = offset
    try:
        assert run_plan(runtime, "expiring", ACTIONS) == "expired"
    finally:
        worker.handle.clock_offset_seconds = original
    record = runtime.ledger.get("expiring")
    assert record.book["sends"] == 1
    assert record.history[-1].note == "expired before it was sent"
    assert ris(sandbox) == []


def test_client_tokens_derive_from_the_plan_id() -> None:
    from worker.execution import derive_token

    token = derive_token("acme:ri:2026-11-28")
    assert token == derive_token("acme:ri:2026-11-28") != derive_token("acme:ri:2026-11-29")
    assert len(token) <= 64 and token.isascii()


def test_the_sweeper_reads_only_plans_in_flight(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    record_plan(intake, ri_plan("in-flight"))
    assert runtime.ledger.idle_in_flight(0) == ["in-flight"]
    assert runtime.ledger.idle_in_flight(3600) == []  # changed just now
    assert run_plan(runtime, "in-flight", ACTIONS) == "succeeded"
    assert runtime.ledger.idle_in_flight(0) == []


def test_the_sweeper_finishes_plans_whose_intake_stopped_after_recording(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    from datetime import UTC, datetime, timedelta

    from worker.ledger import PlanRecord
    from worker.plans import PlanEnvelope, PlanState

    long_ago = datetime.now(UTC) - timedelta(hours=1)
    valid = PlanEnvelope.model_validate(ri_plan("orphan-valid"))
    invalid = {**ri_plan("orphan-invalid"), "region": "mars-1"}
    for plan_id, plan, canonical in [
        ("orphan-valid", valid.model_dump(mode="json"), valid.canonical()),
        ("orphan-invalid", invalid, json.dumps(invalid, sort_keys=True, separators=(",", ":"))),
        ("orphan-lost", None, "x" * 64),
    ]:
        runtime.ledger.create(PlanRecord(plan_id=plan_id, state=PlanState.RECEIVED, plan=plan, canonical=canonical,
                                         received_at=long_ago, updated_at=long_ago))
    assert intake.sweep()["routed"] == 3
    assert runtime.ledger.get("orphan-valid").state.value == "queued"
    assert runtime.ledger.get("orphan-invalid").state.value == "rejected"
    assert "region" in runtime.ledger.get("orphan-invalid").error["message"]
    assert runtime.ledger.get("orphan-lost").state.value == "rejected"
    assert intake.sweep()["routed"] == 0
