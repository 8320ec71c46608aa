"""Money guards: strict plans, the total commitment, the account's current configuration, ceilings, LimitPrice,
the reconciliation time filter, the allow-list, and every AWS call an action makes declared in its permissions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.spine.conftest import ACCOUNT, RESTRICTED_ACCOUNT, ri_plan
from worker.execution import RequeueLater, run_plan
from worker.runtime import Runtime


def ris(sandbox: SandboxControl, account: str = ACCOUNT) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=account, type="reserved-instances")


@pytest.mark.parametrize(("where", "value"), [
    ("params.instance_count", "2"), ("params.instance_count", 2.0), ("params.instance_count", True),
    ("dry_run", "false"), ("dry_run", 0), ("params.max_upfront_usd", 0), ("params.max_hourly_usd", 0.1),
    ("params.max_hourly_usd", "1e2"), ("expires_at", 1900000000), ("expires_at", "2030-01-01T00:00:00"),
    ("params.duration_years", "1"), ("params.duration_years", True),
])
def test_nothing_in_a_plan_is_coerced(runtime: Runtime, intake: Any, where: str, value: Any) -> None:
    plan = ri_plan(f"strict-{abs(hash((where, str(value))))}")
    target = plan["params"] if where.startswith("params.") else plan
    target[where.removeprefix("params.")] = value
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "rejected", (where, value, result)
    assert where.removeprefix("params.").split(".")[-1] in result.message


def test_the_total_commitment_is_bounded_not_only_the_upfront(runtime: Runtime, intake: Any) -> None:
    """No Upfront, 10,000 instances for a year at up to 0.10 USD/h: 8.76 M USD, though the upfront is 0."""
    result = intake.submit_raw(json.dumps(ri_plan("huge", instance_count=10_000)), "test")
    assert result.outcome == "rejected"
    assert "8760000" in result.message and "5000000" in result.message and "in total" in result.message


def test_the_result_records_the_total_commitment(runtime: Runtime, sandbox: SandboxControl, intake: Any) -> None:
    intake.submit_raw(json.dumps(ri_plan("total-1")), "test")
    assert run_plan(runtime, "total-1", ACTIONS) == "succeeded"
    record = runtime.ledger.get("total-1")
    hourly = float(record.result["hourly_usd"])
    assert float(record.result["commitment_usd"]) == pytest.approx(hourly * 2 * 8760, abs=0.01)


def test_the_intake_allow_list_is_enforced(runtime: Runtime, intake: Any) -> None:
    result = intake.submit_raw(json.dumps({**ri_plan("not-allowed"), "account_id": RESTRICTED_ACCOUNT}), "test")
    assert result.outcome == "rejected" and "is not allowed for account" in result.message


def test_the_hourly_ceiling_fails_the_plan_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    intake.submit_raw(json.dumps(ri_plan("hourly", max_hourly_usd="0.0100")), "test")
    assert run_plan(runtime, "hourly", ACTIONS) == "failed"
    error = runtime.ledger.get("hourly").error
    assert error["code"] == "PriceAboveCeiling" and error["details"]["max_hourly_usd"] == "0.0100"
    assert ris(sandbox) == []


def test_the_purchase_carries_limit_price_at_the_checked_upfront_total(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    plan = ri_plan("limit-price", offering_type="All Upfront", max_upfront_usd="2000", max_hourly_usd="0")
    intake.submit_raw(json.dumps(plan), "test")
    assert run_plan(runtime, "limit-price", ACTIONS) == "succeeded", runtime.ledger.get("limit-price").error
    [call] = [e for e in runtime.audit.records(plan_id="limit-price")
              if e.get("operation") == "purchase_reserved_instances_offering"]
    upfront = runtime.ledger.get("limit-price").result["upfront_usd"]
    assert float(upfront) > 0
    assert call["params"]["LimitPrice"] == {"Amount": float(upfront), "CurrencyCode": "USD"}


def test_an_ri_bought_before_the_plan_is_never_taken_for_its_purchase(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """A look-alike (same offering, same count) bought by hand the day before; the plan's answer is lost."""
    sandbox.seed([{"kind": "ec2:reserved-instances", "account_id": ACCOUNT, "region": "us-east-1",
                   "instance_type": "m5.large", "offering_class": "standard", "offering_type": "No Upfront",
                   "duration_years": 1, "instance_count": 2, "start_days_ago": 1}])
    [before] = ris(sandbox)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    intake.submit_raw(json.dumps(ri_plan("after-look-alike")), "test")
    state = _run_until_settled(runtime, "after-look-alike")
    record = runtime.ledger.get("after-look-alike")
    assert state == "succeeded", record.error
    assert record.result["resource_ids"] != [before["id"]]
    assert len(ris(sandbox)) == 2


def test_a_limit_lowered_under_a_running_worker_stops_the_next_send(
    runtime: Runtime, sandbox: SandboxControl, accounts_file: Path, tmp_path: Path, start_worker: Any,
    env: dict[str, str],
) -> None:
    from worker.intake import Intake

    accounts = tmp_path / "accounts.json"
    accounts.write_text(accounts_file.read_text())
    own = Runtime(Settings(**{**runtime.settings.model_dump(), "accounts_file": accounts}))
    from worker.celery_app import enqueue

    intake = Intake(own, ACTIONS, enqueue)
    start_worker(COMMITD_ACCOUNTS_FILE=str(accounts))
    assert intake.submit_raw(json.dumps(ri_plan("before-change")), "test").outcome == "accepted"
    _wait(own, "before-change", {"succeeded"})
    plan = {**ri_plan("after-change", instance_type="c5.large"), "not_before": _in_seconds(2)}
    assert intake.submit_raw(json.dumps(plan), "test").state == "scheduled"
    registry = json.loads(accounts.read_text())
    registry["accounts"][0]["limits"]["max_commitment_usd_per_plan"] = "10"
    accounts.write_text(json.dumps(registry))
    time.sleep(2.1)
    intake.sweep()
    record = _wait(own, "after-change", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "failed" and "allows at most 10" in record.error["message"], record.error
    assert len(ris(sandbox)) == 1


def test_a_limit_lowered_between_the_intent_and_the_send_stops_the_send(
    runtime: Runtime, sandbox: SandboxControl, accounts_file: Path, tmp_path: Path, start_worker: Any,
    env: dict[str, str],
) -> None:
    """The worker dies with its send recorded but not made; the limit is lowered; the worker that resumes the plan
    re-reads the account right before it would send, and stops (the check at intake and prepare passed)."""
    from tests.spine.test_exactly_once import hook_fired, hooks, lease_expired
    from worker.celery_app import enqueue
    from worker.intake import Intake

    accounts = tmp_path / "accounts.json"
    accounts.write_text(accounts_file.read_text())
    own = Runtime(Settings(**{**runtime.settings.model_dump(), "accounts_file": accounts}))
    dying = start_worker("dies", COMMITD_ACCOUNTS_FILE=str(accounts), **hooks(env, before_send="kill"))
    assert Intake(own, ACTIONS, enqueue).submit_raw(json.dumps(ri_plan("lowered")), "test").outcome == "accepted"
    hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    dying.kill()
    registry = json.loads(accounts.read_text())
    registry["accounts"][0]["limits"]["max_commitment_usd_per_plan"] = "10"
    accounts.write_text(json.dumps(registry))
    lease_expired(own, "lowered")
    start_worker("resumes", COMMITD_ACCOUNTS_FILE=str(accounts))
    enqueue(ACTIONS["ec2:PurchaseReservedInstancesOffering"].family, "lowered")
    record = _wait(own, "lowered", {"succeeded", "failed", "needs_attention"})
    assert record.state.value == "failed", record.error
    assert record.error["code"] == "AccountConfigurationChanged" and "allows at most 10" in record.error["message"]
    assert ris(sandbox) == []


def test_every_aws_call_an_action_makes_is_declared_in_its_permissions(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record the IAM names of every call made through the handle on the purchase, reconcile (attributes and tag),
    dry-run and look-alike paths, and compare them with what the action declares."""
    from tests.spine.conftest import TAGGING_ACCOUNT
    from worker import handle as handle_module

    seen: list[str] = []
    original = handle_module.PlanHandle._call

    def recording(self: Any, purpose: str, service: str | None, operation: str, params: dict[str, Any],
                  **options: Any) -> Any:
        seen.append(handle_module.iam_action_name(service or self._action.service, operation).lower())
        return original(self, purpose, service, operation, params, **options)

    monkeypatch.setattr(handle_module.PlanHandle, "_call", recording)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=2)
    plans = [ri_plan("perm-1"), {**ri_plan("perm-2", instance_type="c5.large"), "account_id": TAGGING_ACCOUNT},
             {**ri_plan("perm-3", instance_type="r5.large"), "dry_run": True}]
    for plan in plans:
        intake.submit_raw(json.dumps(plan), "test")
        assert _run_until_settled(runtime, plan["plan_id"]) == "succeeded"
    action = ACTIONS["ec2:PurchaseReservedInstancesOffering"]
    declared = {p.lower() for p in action.permissions | action.optional_permissions}
    assert set(seen) <= declared, set(seen) - declared
    assert {"ec2:purchasereservedinstancesoffering", "ec2:describereservedinstances",
            "ec2:describereservedinstancesofferings", "ec2:createtags"} <= set(seen)


def _run_until_settled(runtime: Runtime, plan_id: str) -> str:
    for _ in range(200):
        try:
            state = str(run_plan(runtime, plan_id, ACTIONS))
        except RequeueLater as later:
            time.sleep(later.delay)
            continue
        if state in ("succeeded", "failed", "needs_attention", "expired"):
            return state
    raise AssertionError(f"{plan_id} never settled")


def _wait(runtime: Runtime, plan_id: str, states: set[str], timeout: float = 60) -> Any:
    from tests.spine.conftest import wait_for_state

    return wait_for_state(runtime, plan_id, states, timeout)


def _in_seconds(seconds: float) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
