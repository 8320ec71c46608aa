"""Settling a plan that needs attention: `commitd plans resolve`, after a person checked AWS."""

from __future__ import annotations

import json
from typing import Any

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ri_plan
from tests.spine.test_cli import commitd
from worker.execution import run_plan
from worker.runtime import Runtime


def unknowable(runtime: Runtime, sandbox: SandboxControl, intake: Any, plan_id: str) -> None:
    """A plan whose purchase was dropped and whose reconciling reads are all refused: it needs attention."""
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    no_reconcile = {"Statement": [{"Effect": "Allow", "Action": "*"},
                                  {"Effect": "Deny", "Action": "ec2:DescribeReservedInstances"}]}
    sandbox.set_iam(True, no_reconcile, external_id=EXTERNAL_ID)
    assert intake.submit_raw(json.dumps(ri_plan(plan_id)), "test").outcome == "accepted"
    assert run_plan(runtime, plan_id, ACTIONS) == "needs_attention"
    sandbox.clear_faults()
    sandbox.set_iam(False, None, external_id=EXTERNAL_ID)


def test_retry_after_checking_that_nothing_was_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, env: dict[str, str]
) -> None:
    unknowable(runtime, sandbox, intake, "stuck")
    signature = runtime.ledger.get("stuck").intent["signature"]
    assert runtime.redis.get(runtime.key("inflight", signature)) == b"stuck"  # blocks the same purchase
    result = commitd(env, "plans", "resolve", "stuck", "--as", "retry", "--note", "nothing in DescribeRIs")
    assert result.returncode == 0, result.stderr
    record = runtime.ledger.get("stuck")
    assert record.state.value == "queued" and record.intent is None and record.attempts == 0
    assert record.history[-1].note == "operator: nothing in DescribeRIs"
    assert runtime.redis.get(runtime.key("inflight", signature)) is None
    assert run_plan(runtime, "stuck", ACTIONS) == "succeeded"
    assert len(sandbox.resources(account_id=ACCOUNT, type="reserved-instances")) == 1


def test_succeeded_with_the_resource_a_person_found(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, env: dict[str, str]
) -> None:
    unknowable(runtime, sandbox, intake, "found-by-hand")
    result = commitd(env, "plans", "resolve", "found-by-hand", "--as", "succeeded", "--resource-id", "ri-123",
                     "--note", "seen in the console")
    assert result.returncode == 0, result.stderr
    record = runtime.ledger.get("found-by-hand")
    assert record.state.value == "succeeded"
    assert record.result == {"resolved_by_operator": True, "resource_ids": ["ri-123"]}
    again = commitd(env, "plans", "resolve", "found-by-hand", "--as", "failed", "--note", "oops")
    assert again.returncode != 0 and "only plans needing attention" in again.stderr
