"""es:PurchaseReservedElasticsearchInstanceOffering (and its alias es:PurchaseReservedElasticsearchInstance) through
the real path: intake → a Celery worker process → the sandbox over HTTP, real boto3, a private Redis.

Each test checks the sandbox's ground truth (the reservations AWS would hold), not only the plan's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from tasks.opensearch_reservations import reservation_name
from tests.families.harness import (
    assert_nothing_spent,
    assert_session_confined,
    eventually,
    family_plan,
    ground_truth,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, TAGGING_ACCOUNT
from worker.runtime import Runtime

ACTION = "es:PurchaseReservedElasticsearchInstanceOffering"
ALIAS = "es:PurchaseReservedElasticsearchInstance"
KIND = "reserved-elasticsearch-instance"
OPENSEARCH_KIND = "reserved-instance"
EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "plans"
           / "es-purchase-reserved-elasticsearch-instance-offering.json")


def bought(sandbox: SandboxControl, kind: str = KIND, account: str = ACCOUNT) -> list[dict[str, Any]]:
    """Reservations a purchase call made (seeded ones excluded)."""
    return [r for r in ground_truth(sandbox, kind, account) if r["created_by"]["operation"] != "seed"]


def es_plan(plan_id: str, action: str = ACTION, **params: Any) -> dict[str, Any]:
    base = {"instance_type": "m5.large.elasticsearch", "payment_option": "NO_UPFRONT", "duration_years": 1,
            "instance_count": 1, "max_upfront_usd": "0", "max_hourly_usd": "0.10", "max_total_usd": "1800.00"}
    return family_plan(action, plan_id, {**base, **params})


def test_example_plan_and_the_alias_buy_once_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """The example plan, and a plan naming the role's other action name, with the production role's policy
    enforced: each buys one reservation named after its plan; the family's session is confined."""
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    plan = json.loads(EXAMPLE.read_text())
    alias = es_plan("es-alias", action=ALIAS, instance_type="r5.large.elasticsearch", max_hourly_usd="0.13",
                    max_total_usd="1200")
    start_worker()
    submit(intake, plan)
    submit(intake, alias)
    record = settled(runtime, plan["plan_id"])
    assert record.state.value == "succeeded", record.error
    truth = {r["created_by"]["token"]: r for r in bought(sandbox)}  # the sandbox keeps the name as the token
    made = truth[reservation_name(plan["plan_id"])]
    assert made["created_by"]["operation"] == ACTION
    assert record.result["reserved_instance_id"] == made["id"] and record.result["resource_ids"] == [made["id"]]
    assert record.result["reservation_name"] == record.intent["reservation_name"] == reservation_name(plan["plan_id"])
    assert record.result["instance_count"] == 2 and record.result["commitment_usd"] == "1716.960"  # 0.098 × 2 × 8760
    assert record.idempotency == {"kind": "none", "value": record.intent["signature"]}

    record = settled(runtime, "es-alias")
    assert record.state.value == "succeeded", record.error
    assert record.plan is not None and record.plan["action"] == ALIAS
    truth = {r["created_by"]["token"]: r for r in bought(sandbox)}
    assert record.result["reserved_instance_id"] == truth[reservation_name("es-alias")]["id"]
    assert len(bought(sandbox)) == 2
    assert_session_confined(runtime, ACTION)
    eventually(lambda: runtime.ledger.get(plan["plan_id"]).verification == "clean",  # type: ignore[union-attr]
               "the look-alike check")


def test_lost_answer_and_throttles_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    sandbox.add_fault(ACTION, "commit_then_drop", count=1)
    submit(intake, es_plan("es-dropped"))
    record = settled(runtime, "es-dropped")
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True and record.result["found_by"] == "attributes"
    assert record.book["sends"] == 1  # found by offering, count, start and name; never sent again
    [made] = bought(sandbox)
    assert record.result["reserved_instance_id"] == made["id"]

    sandbox.add_fault(ACTION, "throttle", count=2)
    submit(intake, es_plan("es-throttled", instance_count=2, max_total_usd="1800"))
    record = settled(runtime, "es-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    assert sorted(r["created_by"]["token"] for r in bought(sandbox)) == sorted(
        [reservation_name("es-dropped"), reservation_name("es-throttled")])  # one per plan


def test_terminal_aws_error_fails_with_awss_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # The sandbox's limit: 100 reserved instances per region and API.
    submit(intake, es_plan("es-limit", instance_count=101, max_total_usd="90000"))
    record = settled(runtime, "es-limit")
    assert record.state.value == "failed"
    assert record.error["code"] == "LimitExceededException"
    assert "limit of 100 per region" in record.error["message"]
    assert bought(sandbox) == []


def test_guards_refuse_with_nothing_bought(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    refusals = {
        "es-total": (es_plan("es-total", instance_count=2, max_total_usd="1716.95"), "PriceAboveCeiling"),
        "es-upfront": (es_plan("es-upfront", payment_option="ALL_UPFRONT", max_upfront_usd="796.10",
                               max_hourly_usd="0"), "PriceAboveCeiling"),
        "es-none": (es_plan("es-none", instance_type="t3.medium.elasticsearch"), "NoMatchingOffering"),
        # The newer API without the extra permission (account 111122223333 grants none).
        "es-opensearch": (es_plan("es-opensearch", api="opensearch", instance_type="m5.large.search"),
                          "OptionalPermissionNotGranted"),
    }
    for plan, _ in refusals.values():
        submit(intake, plan)
    for plan_id, (_, code) in refusals.items():
        record = settled(runtime, plan_id)
        assert record.error and record.error["code"] == code, (plan_id, record.error)
        assert_nothing_spent(record, sandbox, KIND)
    assert ground_truth(sandbox, OPENSEARCH_KIND) == []
    refused = runtime.ledger.get("es-opensearch")
    assert refused is not None and "es:PurchaseReservedInstanceOffering" in refused.error["message"]
    assert [e for e in runtime.audit.records(plan_id="es-opensearch")  # refused before any AWS read
            if e.get("event") == "aws_call" and e.get("service") != "sts"] == []
    total = runtime.ledger.get("es-total")
    assert total is not None and total.error["details"] == {"total_usd": "1716.960", "max_total_usd": "1716.95"}
    # An instance type of the other API is refused at intake.
    result = intake.submit_raw(json.dumps(es_plan("es-wrong-suffix", instance_type="m5.large.search")), "test")
    assert result.outcome == "rejected" and "*.elasticsearch" in result.message


def test_opensearch_api_where_the_account_granted_it(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """api "opensearch" for the account that granted es:PurchaseReservedInstanceOffering: bought through the
    opensearch client, once even when the answer is lost."""
    start_worker()
    sandbox.add_fault("es:PurchaseReservedInstanceOffering", "commit_then_drop", count=1)
    plan = {**es_plan("os-granted", api="opensearch", instance_type="m5.large.search", instance_count=2),
            "account_id": TAGGING_ACCOUNT}
    submit(intake, plan)
    record = settled(runtime, "os-granted")
    assert record.state.value == "succeeded", record.error
    assert record.result["api"] == "opensearch" and record.result["reconciled"] is True
    [made] = bought(sandbox, OPENSEARCH_KIND, TAGGING_ACCOUNT)
    assert made["created_by"]["operation"] == "es:PurchaseReservedInstanceOffering"
    assert made["created_by"]["token"] == reservation_name("os-granted")
    assert record.result["reserved_instance_id"] == made["id"]
    assert bought(sandbox, KIND, TAGGING_ACCOUNT) == []
