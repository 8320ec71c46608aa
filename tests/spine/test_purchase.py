"""End to end: plans through a real Celery worker, the sandbox over HTTP, real boto3, a private Redis."""

from __future__ import annotations

from typing import Any

from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, ri_plan, wait_for_state
from worker.runtime import Runtime


def bought(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ACCOUNT, type="reserved-instances")


def test_full_purchase(runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any) -> None:
    start_worker()
    result = intake.submit_raw(__import__("json").dumps(ri_plan("buy-1")), "test")
    assert result.outcome == "accepted" and result.state == "queued"
    record = wait_for_state(runtime, "buy-1", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "succeeded", record.error
    [ri] = bought(sandbox)
    assert record.result["reserved_instances_id"] == ri["id"]
    assert ri["created_by"]["operation"] == "ec2:PurchaseReservedInstancesOffering"
    assert [h.state.value for h in record.history] == ["received", "queued", "running", "submitted", "succeeded"]
    assert record.idempotency == {"kind": "none", "value": record.intent["signature"]}
