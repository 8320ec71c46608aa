"""ec2:PurchaseHostReservation through the real path: intake → a Celery worker process → the sandbox over HTTP.

Hosts are seeded with fixed ids (seed kind ``ec2:dedicated-host``) so that the example plan can name them. The
reservation is ``payment-pending`` for 30 sandbox seconds: each plan follows it until it is ``active``, and the
tests move the sandbox clock once the reservation exists.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from sandbox.control import SandboxControl
from sandbox.services.ec2_host_reservations import offering_id
from tasks.ec2_host_reservations import client_token
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
from tests.spine.test_exactly_once import hook_fired, hooks
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "examples" / "plans" / "ec2-purchase-host-reservation.json").read_text())
ACTION = "ec2:PurchaseHostReservation"
KIND = "host-reservation"
# m5 PartialUpfront 1 year in us-east-1 (the sandbox's catalogue), for one host.
PER_HOST_UPFRONT, PER_HOST_HOURLY = "14653.470", "1.673"


def seed_hosts(sandbox: SandboxControl, host_ids: list[str], family: str = "m5", account: str = ACCOUNT) -> None:
    sandbox.seed([{"kind": "ec2:dedicated-host", "account_id": account, "region": "us-east-1",
                   "availability_zone": "us-east-1a", "instance_family": family, "host_ids": host_ids}])


def host_ids(n: int, start: int) -> list[str]:
    return [f"h-{start + i:017x}" for i in range(n)]


def plan(plan_id: str, hosts: list[str], account: str = ACCOUNT, **params: Any) -> dict[str, Any]:
    return family_plan(ACTION, plan_id, {
        "host_ids": hosts, "payment_option": "PartialUpfront", "duration_years": 1,
        "max_upfront_usd": "50000", "max_hourly_usd": "10", "max_total_usd": "200000", **params}, account=account)


def reservations_of(sandbox: SandboxControl, plan_id: str, account: str = ACCOUNT) -> list[dict[str, Any]]:
    return [r for r in ground_truth(sandbox, KIND, account) if r["created_by"]["token"] == client_token(plan_id)]


def pay_when_bought(sandbox: SandboxControl, plan_id: str, account: str = ACCOUNT) -> None:
    """Once the plan's reservation exists (payment-pending), move the sandbox clock past AWS taking the payment."""
    eventually(lambda: reservations_of(sandbox, plan_id, account), f"{plan_id}'s reservation")
    sandbox.advance_clock(60)


def test_example_plan_buys_once_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """Happy path, the example plan, IAM: the reservation is in the sandbox's ground truth and in the result,
    bought with the plan's ClientToken, followed from payment-pending to active, in a confined session."""
    seed_hosts(sandbox, EXAMPLE["params"]["host_ids"])
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    submit(intake, EXAMPLE)
    pay_when_bought(sandbox, EXAMPLE["plan_id"])
    record = settled(runtime, EXAMPLE["plan_id"])
    assert record.state.value == "succeeded", record.model_dump()
    [truth] = ground_truth(sandbox, KIND)
    assert truth["state"] == "active" and truth["created_by"]["token"] == client_token(EXAMPLE["plan_id"])
    result = record.result or {}
    assert result["resource_ids"] == [truth["id"]] == [result["host_reservation_id"]]
    assert (result["state"], result["found_by"]) == ("active", "response")  # followed by the id AWS answered
    assert result["host_ids"] == EXAMPLE["params"]["host_ids"]
    assert result["upfront_usd"] == "29306.940" and result["hourly_usd"] == "3.346"
    assert result["commitment_usd"] == "58617.900"  # 29306.94 upfront + 3.346 × 8760 h
    assert record.idempotency == {"kind": "client_token", "value": client_token(EXAMPLE["plan_id"])}
    notes = [e.get("note", "") for e in runtime.audit.records(plan_id=EXAMPLE["plan_id"])]
    assert any("awaits its payment" in note for note in notes), notes
    assert_session_confined(runtime, ACTION)


def test_a_lost_answer_is_reconciled_and_a_throttle_retried_buying_once(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    """commit_then_drop: found by its hosts, offering and start (and by its plan tag where ec2:CreateTags is
    granted), never bought again; two throttles: sent again, bought once."""
    dropped, tagged, throttled = host_ids(2, 0x100), host_ids(1, 0x200), host_ids(1, 0x300)
    seed_hosts(sandbox, dropped)
    seed_hosts(sandbox, tagged, account=TAGGING_ACCOUNT)
    seed_hosts(sandbox, throttled)
    start_worker()
    cases = [("hr-dropped", dropped, ACCOUNT, "commit_then_drop", 1, "attributes"),
             ("hr-tagged", tagged, TAGGING_ACCOUNT, "commit_then_drop", 1, "tag"),
             ("hr-throttled", throttled, ACCOUNT, "throttle", 2, "response")]
    for plan_id, hosts, account, fault, count, found_by in cases:
        sandbox.add_fault(ACTION, fault, count=count)
        submit(intake, plan(plan_id, hosts, account=account))
        pay_when_bought(sandbox, plan_id, account)
        record = settled(runtime, plan_id)
        assert record.state.value == "succeeded", record.model_dump()
        [truth] = reservations_of(sandbox, plan_id, account)
        assert record.result and record.result["resource_ids"] == [truth["id"]], record.result
        assert record.result["found_by"] == found_by, record.result
        # A lost answer is found by reconciliation; an answered purchase is followed through its payment.
        lost = fault == "commit_then_drop"
        assert record.result.get("reconciled") is (True if lost else None), record.result
        assert record.result.get("followed") is (None if lost else True), record.result
        assert sandbox.faults()["fired"].get(fault) == count
        sandbox.clear_faults()
    assert len(ground_truth(sandbox, KIND)) == 2 and len(ground_truth(sandbox, KIND, TAGGING_ACCOUNT)) == 1


def test_aws_refusal_at_the_send_fails_the_plan_with_aws_reason(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any, env: dict[str, str], aws: Any
) -> None:
    """Someone else covers the hosts between the plan's reads and its send: AWS refuses the purchase
    (HostAlreadyCoveredByReservation), the plan fails with AWS's code and message, and buys nothing."""
    hosts = host_ids(1, 0x400)
    seed_hosts(sandbox, hosts)
    ec2 = aws("ec2", account_id=ACCOUNT, external_id=EXTERNAL_ID)
    start_worker("held", **hooks(env, before_send="stop"))
    submit(intake, plan("hr-refused", hosts))
    pid, _ = hook_fired(env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    try:
        offering = runtime.ledger.get("hr-refused").intent["offering_id"]  # type: ignore[union-attr]
        ec2.purchase_host_reservation(HostIdSet=hosts, OfferingId=offering)
    finally:
        os.kill(pid, signal.SIGCONT)
    record = settled(runtime, "hr-refused")
    assert record.state.value == "failed", record.model_dump()
    assert record.error and record.error["code"] == "HostAlreadyCoveredByReservation", record.error
    assert hosts[0] in record.error["message"]
    assert reservations_of(sandbox, "hr-refused") == [] and len(ground_truth(sandbox, KIND)) == 1


def test_guards_refuse_with_nothing_spent(runtime: Runtime, sandbox: SandboxControl, intake: Any,
                                          start_worker: Any) -> None:
    """Ceilings against the live preview, and hosts that are missing, of another family or already covered."""
    m5, c5 = host_ids(2, 0x500), host_ids(1, 0x600)
    seed_hosts(sandbox, m5)
    seed_hosts(sandbox, c5, family="c5")
    start_worker()
    cases = {
        "hr-upfront": (plan("hr-upfront", m5, max_upfront_usd="29306.93"), "PriceAboveCeiling", "max_upfront_usd"),
        "hr-hourly": (plan("hr-hourly", m5, max_hourly_usd="3.345"), "PriceAboveCeiling", "max_hourly_usd"),
        "hr-total": (plan("hr-total", m5, max_total_usd="58617.89"), "PriceAboveCeiling", "max_total_usd"),
        "hr-missing": (plan("hr-missing", host_ids(1, 0x700)), "HostNotFound", "do not exist"),
        "hr-mixed": (plan("hr-mixed", [m5[0], c5[0]]), "HostFamilyMismatch", "different instance families"),
        "hr-family": (plan("hr-family", c5, instance_family="m5"), "HostFamilyMismatch", "asks for m5"),
        "hr-3y": (plan("hr-3y", m5, duration_years=3, payment_option="AllUpfront"), "PriceAboveCeiling",
                  "max_upfront_usd"),
        # A pinned offering (stable ids) of another family than the hosts'.
        "hr-pinned": (plan("hr-pinned", m5, offering_id=offering_id("us-east-1", "c5", 1, "PartialUpfront")),
                      "HostFamilyMismatch", "offering"),
    }
    for body, _, _ in cases.values():
        submit(intake, body)
    submit(intake, {**plan("hr-dry", m5), "dry_run": True})
    for plan_id, (_, code, words) in cases.items():
        record = settled(runtime, plan_id)
        assert_nothing_spent(record, sandbox, KIND)
        assert record.error and record.error["code"] == code and words in record.error["message"], record.error
    # A dry run (the API has no DryRun): the reads and the preview, and what would be bought.
    dry = settled(runtime, "hr-dry")
    assert dry.state.value == "succeeded" and dry.result and dry.result["dry_run"] is True, dry.model_dump()
    assert dry.result["would_buy"]["upfront_usd"] == "29306.940" and ground_truth(sandbox, KIND) == []



def test_a_plan_waiting_on_the_payment_survives_a_worker_restart(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    """The worker following a payment-pending reservation is killed; another one finds the plan waiting, follows
    the reservation by the id AWS answered once the payment is taken, and settles it once."""
    hosts = host_ids(1, 0x800)
    seed_hosts(sandbox, hosts)
    first = start_worker("first")
    submit(intake_loop, plan("hr-restart", hosts))

    def waiting_on_payment() -> bool:
        record = runtime.ledger.get("hr-restart")
        return bool(record and record.state.value == "submitted" and (record.book or {}).get("accepted"))

    eventually(waiting_on_payment, "the plan to wait on the payment")
    first.kill()
    sandbox.advance_clock(60)
    start_worker("second")
    record = settled(runtime, "hr-restart")
    assert record.state.value == "succeeded", record.model_dump()
    [truth] = ground_truth(sandbox, KIND)
    assert record.result and record.result["resource_ids"] == [truth["id"]] and truth["state"] == "active"
    assert record.result["found_by"] == "response"
    assert sum(1 for t in record.history if t.state.value == "succeeded") == 1
