"""redshift:PurchaseReservedNodeOffering and redshift:AcceptReservedNodeExchange through the real path: intake → a
Celery worker process → the sandbox over HTTP, real boto3, a private Redis.

Each test checks the sandbox's ground truth (the reserved nodes AWS would hold), not only the plan's record."""

from __future__ import annotations

import json
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from sandbox.control import SandboxControl
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
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID
from tests.spine.test_exactly_once import hook_fired, hooks
from worker.runtime import Runtime

PURCHASE = "redshift:PurchaseReservedNodeOffering"
EXCHANGE = "redshift:AcceptReservedNodeExchange"
KIND = "reserved-node"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
PURCHASE_EXAMPLE = EXAMPLES / "redshift-purchase-reserved-node-offering.json"
EXCHANGE_EXAMPLE = EXAMPLES / "redshift-accept-reserved-node-exchange.json"


def made_by(sandbox: SandboxControl, action: str) -> list[dict[str, Any]]:
    """Reserved nodes that a call of ``action`` made (seeded ones excluded)."""
    return [r for r in ground_truth(sandbox, KIND) if r["created_by"]["operation"] == action]


def nodes(sandbox: SandboxControl) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in ground_truth(sandbox, KIND)}


def purchase_plan(plan_id: str, **params: Any) -> dict[str, Any]:
    base = {"node_type": "dc2.large", "offering_type": "No Upfront", "duration_years": 1, "node_count": 1,
            "max_upfront_usd": "0", "max_hourly_usd": "0.20", "max_total_usd": "3100.00"}
    return family_plan(PURCHASE, plan_id, {**base, **params})


def exchange_plan(plan_id: str, node_id: str, **params: Any) -> dict[str, Any]:
    base = {"reserved_node_id": node_id, "node_count": 2, "target_node_type": "dc2.large",
            "max_total_usd": "3000.00"}
    return family_plan(EXCHANGE, plan_id, {**base, **params})


def seed_dc1(sandbox: SandboxControl, node_id: str, **entry: Any) -> None:
    """An active DC1 reservation (2 × dc1.large, All Upfront, 1 year, bought 200 days ago)."""
    sandbox.seed([{"kind": "redshift:reserved-node", "account_id": ACCOUNT, "region": "us-east-1",
                   "node_type": "dc1.large", "offering_type": "All Upfront", "duration_years": 1, "node_count": 2,
                   "start_days_ago": 200, "id": node_id, **entry}])


def assert_exchanged_once(sandbox: SandboxControl, source_id: str, result: dict[str, Any]) -> None:
    """The source retired, and exactly one DC2 reservation made by the exchange: the plan's."""
    truth = nodes(sandbox)
    assert truth[source_id]["state"] == "retired"
    [made] = made_by(sandbox, EXCHANGE)
    assert made["state"] == "active" and result["exchanged_reserved_node_id"] == made["id"]
    assert result["resource_ids"] == [made["id"]] and result["source_reserved_node_id"] == source_id


# --- redshift:PurchaseReservedNodeOffering ----------------------------------------------------------------------
def test_example_purchase_and_exchange_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """Both example plans with the production role's policy enforced: the purchase buys one reservation (its
    look-alike check comes out clean), the exchange retires the DC1 node for one DC2 node, and the family's
    session cannot make another family's write call."""
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    purchase = json.loads(PURCHASE_EXAMPLE.read_text())
    exchange = json.loads(EXCHANGE_EXAMPLE.read_text())
    seed_dc1(sandbox, exchange["params"]["reserved_node_id"])
    start_worker()
    submit(intake, purchase)
    submit(intake, exchange)

    record = settled(runtime, purchase["plan_id"])
    assert record.state.value == "succeeded", record.error
    [bought] = made_by(sandbox, PURCHASE)
    assert record.result["reserved_node_id"] == bought["id"] and record.result["resource_ids"] == [bought["id"]]
    assert record.result["node_count"] == 2 and record.result["found_by"] == "response"
    assert Decimal(record.result["commitment_usd"]) == Decimal("3022.2")  # 0.1725 USD/h × 2 nodes × 8760 h
    assert record.idempotency == {"kind": "none", "value": record.intent["signature"]}

    record = settled(runtime, exchange["plan_id"])
    assert record.state.value == "succeeded", record.error
    assert_exchanged_once(sandbox, exchange["params"]["reserved_node_id"], record.result)
    assert record.result["node_type"] == "dc2.large" and record.result["node_count"] == 2
    assert Decimal(record.result["commitment_usd"]) == Decimal("2715.6")  # 1357.8 upfront × 2 nodes
    assert_session_confined(runtime, PURCHASE)
    eventually(lambda: runtime.ledger.get(purchase["plan_id"]).verification == "clean",  # type: ignore[union-attr]
               "the purchase's look-alike check")


def test_purchase_lost_answer_and_throttles_buy_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    sandbox.add_fault(PURCHASE, "commit_then_drop", count=1)
    submit(intake, purchase_plan("rs-dropped", node_count=2))
    record = settled(runtime, "rs-dropped")
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True and record.result["found_by"] == "attributes"
    assert record.book["sends"] == 1  # found by reconciliation, never sent again
    [bought] = made_by(sandbox, PURCHASE)
    assert record.result["reserved_node_id"] == bought["id"]

    sandbox.add_fault(PURCHASE, "throttle", count=2)
    submit(intake, purchase_plan("rs-throttled"))
    record = settled(runtime, "rs-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    assert len(made_by(sandbox, PURCHASE)) == 2  # one per plan
    assert record.result["reserved_node_id"] in {r["id"] for r in made_by(sandbox, PURCHASE)}


def test_purchase_terminal_aws_error_fails_with_awss_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    start_worker()
    # The sandbox's quota: 200 reserved nodes per account and region.
    submit(intake, purchase_plan("rs-quota", node_count=201, max_total_usd="310000"))
    record = settled(runtime, "rs-quota")
    assert record.state.value == "failed"
    assert record.error["code"] == "ReservedNodeQuotaExceeded"
    assert "quota of 200 reserved nodes" in record.error["message"]
    assert made_by(sandbox, PURCHASE) == []


def test_guards_refuse_with_nothing_spent(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_dc1(sandbox, "dc1-guarded")
    sandbox.seed([{"kind": "redshift:reserved-node", "account_id": ACCOUNT, "region": "us-east-1",
                   "node_type": "dc1.large", "offering_type": "All Upfront", "duration_years": 1,
                   "start_days_ago": 400, "id": "dc1-expired"}])
    start_worker()
    refusals = {
        "rs-total": (purchase_plan("rs-total", node_count=2, max_total_usd="3022.19"), "PriceAboveCeiling"),
        "rs-hourly": (purchase_plan("rs-hourly", max_hourly_usd="0.17"), "PriceAboveCeiling"),
        "rs-upgradable": (purchase_plan("rs-upgradable", reserved_node_offering_type="Upgradable"),
                          "NoMatchingOffering"),
        "ex-total": (exchange_plan("ex-total", "dc1-guarded", max_total_usd="2715.59"), "PriceAboveCeiling"),
        "ex-count": (exchange_plan("ex-count", "dc1-guarded", node_count=3), "NodeCountMismatch"),
        "ex-type": (exchange_plan("ex-type", "dc1-guarded", target_node_type="dc2.8xlarge"), "NoMatchingOffering"),
        "ex-retired": (exchange_plan("ex-retired", "dc1-expired", node_count=1), "InvalidReservedNodeState"),
        "ex-unknown": (exchange_plan("ex-unknown", "no-such-node"), "ReservedNodeNotFound"),
    }
    before = len(ground_truth(sandbox, KIND))
    for plan, _ in refusals.values():
        submit(intake, plan)
    for plan_id, (_, code) in refusals.items():
        record = settled(runtime, plan_id)
        assert record.error and record.error["code"] == code, (plan_id, record.error)
        assert_nothing_spent(record, sandbox, KIND, before=before)
    assert nodes(sandbox)["dc1-guarded"]["state"] == "active"
    total = runtime.ledger.get("rs-total")
    assert total is not None and "3022.2" in total.error["message"] and "3022.19" in total.error["message"]
    ex_total = runtime.ledger.get("ex-total")
    assert ex_total is not None and ex_total.error["details"] == {"total_usd": "2715.6", "max_total_usd": "2715.59"}


# --- redshift:AcceptReservedNodeExchange ------------------------------------------------------------------------
def test_exchange_lost_answer_and_throttles_exchange_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_dc1(sandbox, "dc1-dropped")
    seed_dc1(sandbox, "dc1-throttled")
    start_worker()
    sandbox.add_fault(EXCHANGE, "commit_then_drop", count=1)
    submit(intake, exchange_plan("ex-dropped", "dc1-dropped"))
    record = settled(runtime, "ex-dropped")
    assert record.state.value == "succeeded", record.error
    # Confirmed by the exchange status and the nodes' states, the new node found by offering and count.
    assert record.result["reconciled"] is True and record.result["found_by"] == "exchange-status"
    assert record.result["exchange_request_id"] and record.book["sends"] == 1
    assert_exchanged_once(sandbox, "dc1-dropped", record.result)

    sandbox.add_fault(EXCHANGE, "throttle", count=2)
    submit(intake, exchange_plan("ex-throttled", "dc1-throttled"))
    record = settled(runtime, "ex-throttled")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 3 and sandbox.faults()["fired"]["throttle"] == 2
    assert nodes(sandbox)["dc1-throttled"]["state"] == "retired"
    assert len(made_by(sandbox, EXCHANGE)) == 2  # one per plan
    assert record.result["exchanged_reserved_node_id"] in {r["id"] for r in made_by(sandbox, EXCHANGE)}


def test_exchange_already_migrated_is_looked_up_not_trusted(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str]
) -> None:
    """The exchange already took effect when the plan's send arrives (held at the send; the same exchange made
    meanwhile): AWS answers ReservedNodeAlreadyMigrated, which makes the plan look, and the exchange status
    settles it, with no second exchange."""
    seed_dc1(sandbox, "dc1-migrated")
    start_worker(**hooks(env, before_send="stop"))
    submit(intake, exchange_plan("ex-migrated", "dc1-migrated"))
    pid, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    intent = runtime.ledger.get("ex-migrated").intent  # type: ignore[union-attr]
    redshift = _client(sandbox)
    redshift.accept_reserved_node_exchange(ReservedNodeId="dc1-migrated",
                                           TargetReservedNodeOfferingId=intent["target_offering_id"])
    os.kill(pid, signal.SIGCONT)
    record = settled(runtime, "ex-migrated")
    assert record.state.value == "succeeded", record.error
    assert record.result["reconciled"] is True and record.book["sends"] == 1
    sends = [e for e in runtime.audit.records(plan_id="ex-migrated")
             if e.get("operation") == "accept_reserved_node_exchange"]
    assert [e["error"]["code"] for e in sends] == ["ReservedNodeAlreadyMigrated"]
    assert_exchanged_once(sandbox, "dc1-migrated", record.result)


def test_asynchronous_exchange_is_followed_across_a_worker_restart(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    # This node's exchange stays IN_PROGRESS for an hour of sandbox time.
    seed_dc1(sandbox, "dc1-slow", exchange_seconds=3600)
    first = start_worker("w1")
    submit(intake_loop, exchange_plan("ex-slow", "dc1-slow"))

    def following() -> Any:
        record = runtime.ledger.get("ex-slow")
        return record if record is not None and (record.book or {}).get("accepted") else None

    record = eventually(following, "the plan to wait on the exchange")
    assert record.state.value == "submitted" and record.book["accepted"]["state"] == "exchanging"
    assert nodes(sandbox)["dc1-slow"]["state"] == "exchanging"
    first.kill()
    sandbox.advance_clock(3600)
    start_worker("w2")
    record = settled(runtime, "ex-slow")
    assert record.state.value == "succeeded", record.error
    assert record.book["sends"] == 1 and record.result["state"] == "active"
    assert record.result["found_by"] == "exchange-status"
    assert_exchanged_once(sandbox, "dc1-slow", record.result)


def test_exchange_that_aws_fails_fails_the_plan(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_dc1(sandbox, "dc1-failing", exchange_seconds=60, exchange_outcome="FAILED")
    start_worker()
    submit(intake, exchange_plan("ex-failing", "dc1-failing"))
    eventually(lambda: (runtime.ledger.get("ex-failing").book or {}).get("accepted"),  # type: ignore[union-attr]
               "the plan to wait on the exchange")
    sandbox.advance_clock(60)
    record = settled(runtime, "ex-failing")
    assert record.state.value == "failed"
    assert record.error["code"] == "ReservedNodeExchangeFailed"
    assert "FAILED" in record.error["message"] and "nothing was exchanged" in record.error["message"]
    truth = nodes(sandbox)
    assert truth["dc1-failing"]["state"] == "active"  # AWS reverted the exchange
    assert [r["state"] for r in made_by(sandbox, EXCHANGE)] == ["retired"]


def test_exchange_terminal_aws_error_fails_with_awss_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """A customer role without the exchange: the reads pass, AWS refuses the call itself."""
    writes = [a for a in PRODUCTION_ROLE_POLICY["Statement"][1]["Action"] if a != EXCHANGE]
    policy = {**PRODUCTION_ROLE_POLICY, "Statement": [PRODUCTION_ROLE_POLICY["Statement"][0],
                                                      {**PRODUCTION_ROLE_POLICY["Statement"][1], "Action": writes}]}
    sandbox.set_iam(True, policy, external_id=EXTERNAL_ID)
    seed_dc1(sandbox, "dc1-denied")
    start_worker()
    submit(intake, exchange_plan("ex-denied", "dc1-denied"))
    record = settled(runtime, "ex-denied")
    assert record.state.value == "failed"
    assert record.error["code"] == "AccessDenied" and "AcceptReservedNodeExchange" in record.error["message"]
    assert nodes(sandbox)["dc1-denied"]["state"] == "active" and made_by(sandbox, EXCHANGE) == []


def _client(sandbox: SandboxControl) -> Any:
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=sandbox.url, aws_access_key_id="t",
                       aws_secret_access_key="t")
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/commitd", RoleSessionName="by-hand",
                            ExternalId=EXTERNAL_ID)["Credentials"]
    return boto3.client("redshift", region_name="us-east-1", endpoint_url=sandbox.url,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])
