"""savingsplans:CreateSavingsPlan through the real path: intake → a Celery worker process → the sandbox over HTTP.

Each test checks the sandbox's ground truth (the Savings Plans AWS would hold), not only the plan's record."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.catalogue import stable_uuid
from sandbox.control import SandboxControl
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    family_plan,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID
from worker.execution import derive_token
from worker.runtime import Runtime

ACTION = "savingsplans:CreateSavingsPlan"
KIND = "savings-plan"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plans" / "savingsplans-create-savings-plan.json"
# The sandbox answers DescribeSavingsPlans in pages of 1000 (AWS's largest maxResults).
PAGE = 1000


def bought(sandbox: SandboxControl) -> list[dict[str, Any]]:
    """Savings Plans a CreateSavingsPlan call made (seeded ones excluded)."""
    return [r for r in ground_truth(sandbox, KIND) if r["created_by"]["operation"] == ACTION]


def sp_plan(plan_id: str, **params: Any) -> dict[str, Any]:
    base = {"plan_type": "Compute", "payment_option": "No Upfront", "duration_years": 1,
            "commitment_usd_per_hour": "0.50", "max_total_usd": "4380.00", "max_upfront_usd": "0"}
    return family_plan(ACTION, plan_id, {**base, **params})


def outcome(runtime: Runtime, plan_id: str) -> Any:
    """The settled record (its result, error and book are read as JSON-like dicts)."""
    return settled(runtime, plan_id)


def seed_plans(sandbox: SandboxControl, n: int, start_days_ago: int, **entry: Any) -> None:
    sandbox.seed([{"kind": "savingsplans:savings-plan", "account_id": ACCOUNT, "plan_type": "Compute",
                   "payment_option": "No Upfront", "duration_years": 1, "commitment": "0.01",
                   "start_days_ago": start_days_ago, **entry} for _ in range(n)])


def test_example_plan_buys_once_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """The example plan (EC2 Instance, Partial Upfront, selected by region and family) with the production role's
    policy enforced: one Savings Plan with the plan's client token, and the family's session is confined."""
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    plan = json.loads(EXAMPLE.read_text())
    start_worker()
    submit(intake, plan)
    record = outcome(runtime, plan["plan_id"])
    assert record.state.value == "succeeded", record.error
    [made] = bought(sandbox)
    assert record.result["savings_plan_id"] == made["id"] and record.result["resource_ids"] == [made["id"]]
    assert made["created_by"]["token"] == derive_token(plan["plan_id"]) == record.idempotency["value"]
    assert record.idempotency["kind"] == "client_token"
    assert record.result["commitment_usd"] == "10512.00"  # 1.20 USD/h × 8760 h
    assert record.result["upfront_usd"] == "5256" and record.result["recurring_usd_per_hour"] == "0.60000"
    assert record.result["plan_type"] == "EC2Instance" and record.result["payment_option"] == "Partial Upfront"
    assert_session_confined(runtime, ACTION)


def test_lost_answer_is_found_by_tag_through_pages_and_throttles_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    # More retired plans than one page holds, so this plan's Savings Plan is on the second page: only a
    # reconciliation that follows nextToken finds it (else it would wait, then re-send).
    seed_plans(sandbox, PAGE + 1, start_days_ago=400)
    start_worker()
    sandbox.add_fault(ACTION, "commit_then_drop", count=1)
    submit(intake, sp_plan("sp-dropped"))
    record = outcome(runtime, "sp-dropped")
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True and record.result["found_by"] == "tag"
    assert record.book["sends"] == 1  # found, never sent again
    [made] = bought(sandbox)
    assert record.result["savings_plan_id"] == made["id"]
    reads = [e for e in runtime.audit.records(plan_id="sp-dropped") if e.get("operation") == "describe_savings_plans"]
    assert len(reads) >= 2  # two pages

    sandbox.add_fault(ACTION, "throttle", count=2)
    submit(intake, sp_plan("sp-throttled"))
    record = outcome(runtime, "sp-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    assert len(bought(sandbox)) == 2  # one per plan
    assert record.result["savings_plan_id"] in {r["id"] for r in bought(sandbox)}


def test_every_plan_type_and_a_queued_plan(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """Selectors for Compute, SageMaker and Database plans each resolve to one offering; a purchase_time queues."""
    start_worker()
    starts = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    plans = {
        "sp-compute": sp_plan("sp-compute", payment_option="All Upfront", max_upfront_usd="4380.00"),
        "sp-sagemaker": sp_plan("sp-sagemaker", plan_type="SageMaker", duration_years=3,
                                commitment_usd_per_hour="0.10", max_total_usd="2628.00",
                                purchase_time=starts.isoformat().replace("+00:00", "Z")),
        "sp-database": sp_plan("sp-database", plan_type="Database"),
    }
    for plan in plans.values():
        submit(intake, plan)
    records = {plan_id: outcome(runtime, plan_id) for plan_id in plans}
    assert {p: r.state.value for p, r in records.items()} == dict.fromkeys(plans, "succeeded"), \
        {p: r.error for p, r in records.items()}
    assert {r.result["plan_type"] for r in records.values()} == {"Compute", "SageMaker", "Database"}
    assert records["sp-compute"].result["upfront_usd"] == "4380.00"
    truth = {r["id"]: r for r in bought(sandbox)}
    assert set(truth) == {r.result["savings_plan_id"] for r in records.values()}
    assert truth[records["sp-sagemaker"].result["savings_plan_id"]]["state"] == "queued"
    assert records["sp-sagemaker"].result["commitment_usd"] == "2628.00"  # 0.10 × 3 × 8760


def test_terminal_aws_error_fails_with_awss_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    # The sandbox's quota: 50 live Savings Plans per account.
    seed_plans(sandbox, 50, start_days_ago=1)
    start_worker()
    submit(intake, sp_plan("sp-quota"))
    record = outcome(runtime, "sp-quota")
    assert record.state.value == "failed"
    assert record.error["code"] == "ServiceQuotaExceededException"
    assert "quota of 50 Savings Plans" in record.error["message"]
    assert bought(sandbox) == []


def test_guards_refuse_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # An offering pinned by id alone: its term (hence the total) is known only from the live offering. The
    # sandbox's offering ids are stable (uuid5 of their attributes).
    pinned = {"offering_id": stable_uuid("savingsplans", "Compute", 1, "All Upfront", "any", "any"),
              "commitment_usd_per_hour": "0.50", "max_upfront_usd": "5000.00"}
    in_past = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    refusals = {
        "sp-total": (family_plan(ACTION, "sp-total", {**pinned, "max_total_usd": "4379.99"}), "PriceAboveCeiling"),
        "sp-upfront": (family_plan(ACTION, "sp-upfront", {**pinned, "max_total_usd": "5000.00",
                                                          "max_upfront_usd": "4000.00"}), "PriceAboveCeiling"),
        "sp-low-upfront": (sp_plan("sp-low-upfront", payment_option="Partial Upfront",
                                   upfront_payment_amount="2189", max_upfront_usd="4380"), "InvalidUpfrontPayment"),
        "sp-past": (sp_plan("sp-past", purchase_time=in_past), "PurchaseTimePassed"),
        # Database plans: one year only in the sandbox's catalogue.
        "sp-db-3y": (sp_plan("sp-db-3y", plan_type="Database", duration_years=3,
                             max_total_usd="13140.00"), "NoMatchingOffering"),
    }
    for plan, _ in refusals.values():
        submit(intake, plan)
    for plan_id, (_, code) in refusals.items():
        record = outcome(runtime, plan_id)
        assert record.error and record.error["code"] == code, (plan_id, record.error)
        assert_nothing_spent(record, sandbox, KIND)
        if plan_id == "sp-total":
            assert "4380.00" in record.error["message"] and "4379.99" in record.error["message"]
        if plan_id == "sp-upfront":
            assert record.error["details"] == {"total_usd": "4380.00", "upfront_usd": "4380.00",
                                               "payment_option": "All Upfront"}
