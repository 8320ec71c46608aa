"""A person's controls through real processes: approvals (one approver, two, denied, expired, a price above what was
approved), ``plans cancel``, and kill switches that stop a plan right at its call and let it finish after a resume.
Every command is the real CLI in a subprocess; plans go through the intake to a real Celery worker and the sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from sandbox.control import SandboxControl
from tests.spine.conftest import ACCOUNT, ROOT, eventually, ri_plan, wait_budget_settled, wait_for_state
from tests.spine.test_exactly_once import hook_fired, hooks
from tests.spine.test_purchase import bought
from worker.runtime import Runtime, set_runtime

APPROVAL_ACCOUNT = {
    "account_id": ACCOUNT,
    "name": "acme-prod",
    "role_arn": f"arn:aws:iam::{ACCOUNT}:role/commitd",
    "external_id_env": "COMMITD_TEST_EXTERNAL_ID",
    # The RI plans of these tests commit a few hundred dollars: above 100 they wait for approval.
    "approvals": {"above": {"commitment_usd": "100"}, "approvers": 1, "valid_seconds": 3600},
}


def write_accounts(path: Path, **approvals: Any) -> Path:
    account = {**APPROVAL_ACCOUNT, "approvals": {**APPROVAL_ACCOUNT["approvals"], **approvals}}
    path.write_text(json.dumps({"accounts": [account]}))
    return path


@pytest.fixture
def approval_env(tmp_path: Path, env: dict[str, str], runtime: Runtime) -> Iterator[dict[str, str]]:
    """The test's environment with an accounts file whose account needs approvals; the test's runtime on it."""
    path = write_accounts(tmp_path / "accounts.json")
    os.environ["COMMITD_ACCOUNTS_FILE"] = str(path)
    set_runtime(Runtime(Settings()))
    yield {**env, "COMMITD_ACCOUNTS_FILE": str(path)}


@pytest.fixture
def rt(approval_env: dict[str, str]) -> Runtime:
    from worker.runtime import get_runtime

    return get_runtime()


@pytest.fixture
def approval_intake(rt: Runtime) -> Any:
    from tasks import ACTIONS
    from worker.celery_app import enqueue
    from worker.intake import Intake

    return Intake(rt, ACTIONS, enqueue)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def submit(intake: Any, plan: dict[str, Any]) -> None:
    result = intake.submit_raw(json.dumps(plan), "test")
    assert result.outcome == "accepted", result


def audit_events(rt: Runtime, plan_id: str | None = None) -> list[dict[str, Any]]:
    return list(rt.audit.records(plan_id=plan_id))


def test_a_plan_above_threshold_waits_is_approved_and_runs_once(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"])
    submit(approval_intake, ri_plan("big-1"))
    waiting = wait_for_state(rt, "big-1", {"awaiting_approval", "succeeded", "failed"})
    assert waiting.state.value == "awaiting_approval"
    assert bought(sandbox) == []
    request = waiting.approval["request"]
    commitment = request["commitment_usd"]
    assert float(commitment) > 100 and waiting.intent["commitment_usd"] == commitment
    assert "above the approval threshold of 100" in waiting.history[-1].note

    shown = cli(approval_env, "plans", "show", "big-1", "--json")
    assert json.loads(shown.stdout)["approval"]["request"]["commitment_usd"] == commitment
    approved = cli(approval_env, "approve", "big-1", "--by", "alice", "--note", "budgeted in Q4")
    assert approved.returncode == 0, approved.stderr
    assert "queued" in approved.stdout
    again = cli(approval_env, "approve", "big-1", "--by", "bob")  # one approval queues it; a second is refused
    assert again.returncode == 1 and "not awaiting_approval" in again.stderr

    done = wait_for_state(rt, "big-1", {"succeeded", "failed", "needs_attention", "awaiting_approval"})
    assert done.state.value == "succeeded", done.error
    assert len(bought(sandbox)) == 1
    given = done.approval["approvals"]
    assert [(a["by"], a["note"], a["commitment_usd"]) for a in given] == [("alice", "budgeted in Q4", commitment)]
    events = [(e["event"], e.get("to")) for e in audit_events(rt, "big-1")]
    assert ("approval_requested", None) in events and ("plan_transition", "succeeded") in events


def test_a_denied_plan_is_cancelled_and_never_runs(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    worker = start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"])
    submit(approval_intake, ri_plan("big-2"))
    wait_for_state(rt, "big-2", {"awaiting_approval"})
    denied = cli(approval_env, "deny", "big-2", "--by", "carol", "--reason", "not this quarter")
    assert denied.returncode == 0, denied.stderr
    record = wait_for_state(rt, "big-2", {"cancelled"})
    assert record.error == {"code": "Denied", "message": "denied by carol: not this quarter", "by": "carol"}
    # A stray message for the plan (a redelivery) finds it cancelled and does nothing.
    from tasks.families import EC2_RESERVED_INSTANCES
    from worker.celery_app import enqueue

    enqueue(EC2_RESERVED_INSTANCES, "big-2")
    eventually(lambda: "'cancelled'" in worker.log.read_text(), "the worker to run the stray message")
    assert bought(sandbox) == [] and rt.ledger.get("big-2").state.value == "cancelled"  # type: ignore[union-attr]
    approve_late = cli(approval_env, "approve", "big-2", "--by", "alice")
    assert approve_late.returncode == 1 and "is cancelled" in approve_late.stderr


def test_two_approvers_must_be_different_people(
        rt: Runtime, tmp_path: Path, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), approvers=2)
    start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"])
    submit(approval_intake, ri_plan("big-3"))
    wait_for_state(rt, "big-3", {"awaiting_approval"})
    first = cli(approval_env, "approve", "big-3", "--by", "alice")
    assert first.returncode == 0 and "awaiting_approval" in first.stdout, first.stderr
    same = cli(approval_env, "approve", "big-3", "--by", "alice")
    assert same.returncode == 1 and "someone else" in same.stderr
    assert rt.ledger.get("big-3").state.value == "awaiting_approval"  # type: ignore[union-attr]
    second = cli(approval_env, "approve", "big-3", "--by", "bob")
    assert second.returncode == 0 and "queued" in second.stdout, second.stderr
    done = wait_for_state(rt, "big-3", {"succeeded", "failed", "needs_attention"})
    assert done.state.value == "succeeded" and len(bought(sandbox)) == 1
    assert [a["by"] for a in done.approval["approvals"]] == ["alice", "bob"]


def test_an_expired_approval_or_one_for_less_than_the_price_asks_again(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), valid_seconds=1)
    start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"], COMMITD_PAUSE_RECHECK_SECONDS="0.3")
    submit(approval_intake, ri_plan("big-4"))
    wait_for_state(rt, "big-4", {"awaiting_approval"})
    # Approved while the account is paused: the approval is not used within its second, so it expires.
    assert cli(approval_env, "pause", "--account", ACCOUNT, "--reason", "hold", "--by", "ops").returncode == 0
    assert cli(approval_env, "approve", "big-4", "--by", "alice").returncode == 0
    time.sleep(1.2)  # the approval's validity (1 s, on Redis's clock) must pass: this wait is the point
    assert cli(approval_env, "resume", "--account", ACCOUNT, "--by", "ops").returncode == 0
    def asked_twice() -> Any:
        record = rt.ledger.get("big-4")
        waits = [h for h in record.history if h.state.value == "awaiting_approval"] if record else []
        return record if len(waits) >= 2 and record.state.value == "awaiting_approval" else None  # type: ignore

    asked_again = eventually(asked_twice, "the plan to ask for approval again")
    assert "expired: alice" in asked_again.history[-1].note
    assert bought(sandbox) == [] and asked_again.approval["approvals"][0]["by"] == "alice"

    # An approval for less than the amount now (given when the price was lower) does not count either.
    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), valid_seconds=3600)
    record = rt.ledger.get("big-4")
    assert record is not None
    lower = dict(record.approval or {})
    lower["approvals"] = [{"by": "dave", "note": "", "at": "2026-01-01T00:00:00+00:00",
                           "expires_at": "2999-01-01T00:00:00+00:00", "commitment_usd": "101", "upfront_usd": None}]
    from worker.plans import PlanState

    rt.ledger.transition(record, PlanState.QUEUED, "test: approved by dave for 101 USD", approval=lower)
    from tasks.families import EC2_RESERVED_INSTANCES
    from worker.celery_app import enqueue

    enqueue(EC2_RESERVED_INSTANCES, "big-4")
    eventually(lambda: "approved for less than the amount now (dave)" in rt.ledger.get("big-4").history[-1].note,  # type: ignore
               "the plan to wait for a new approval")
    assert bought(sandbox) == []
    assert cli(approval_env, "approve", "big-4", "--by", "erin").returncode == 0
    assert wait_for_state(rt, "big-4", {"succeeded", "failed"}).state.value == "succeeded"
    assert len(bought(sandbox)) == 1


def test_plans_cancel_before_the_send_and_refused_after(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), above={"commitment_usd": "1000000"})
    # No worker yet: the plan stays queued.
    submit(approval_intake, ri_plan("small-1"))
    submit(approval_intake, ri_plan("small-2", instance_type="c5.large"))
    wait_for_state(rt, "small-1", {"queued"})
    cancelled = cli(approval_env, "plans", "cancel", "small-1", "--by", "ops", "--reason", "planner withdrew it")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    worker = start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"])
    done = wait_for_state(rt, "small-2", {"succeeded", "failed", "needs_attention"})
    assert done.state.value == "succeeded"
    eventually(lambda: "'cancelled'" in worker.log.read_text(), "the worker to take the cancelled plan's message")
    assert [ri["id"] for ri in bought(sandbox)] == done.result["resource_ids"]  # small-2's only
    assert rt.ledger.get("small-1").error["by"] == "ops"  # type: ignore[union-attr]
    after = cli(approval_env, "plans", "cancel", "small-2", "--by", "ops", "--reason", "too late")
    assert after.returncode == 1 and "small-2 is succeeded" in after.stderr
    missing = cli(approval_env, "plans", "cancel", "nope", "--by", "ops", "--reason", "x")
    assert missing.returncode == 1 and "no plan nope" in missing.stderr
    empty = cli(approval_env, "plans", "cancel", "small-2", "--by", "", "--reason", "x")
    assert empty.returncode == 2


def test_a_pause_stops_the_plan_at_its_call_and_a_resume_finishes_it(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), above={"commitment_usd": "1000000"})
    worker = start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"],
                          COMMITD_PAUSE_RECHECK_SECONDS="0.3", **hooks(approval_env, before_controls="stop"))
    submit(approval_intake, ri_plan("p-1"))
    pid, _ = hook_fired(approval_env["COMMITD_REDIS_URL"], "BEFORE_CONTROLS")
    # The worker stands right before its last checks, the intent recorded: pause the family now, then let it go.
    paused = cli(approval_env, "pause", "--family", "ec2_reserved_instances", "--reason", "incident 42", "--by", "ops")
    assert paused.returncode == 0, paused.stderr
    os.kill(pid, signal.SIGCONT)
    note = eventually(lambda: any("paused (family:ec2_reserved_instances, by ops): incident 42" in e.get("note", "")
                                  for e in audit_events(rt, "p-1")), "the plan to wait on the pause")
    assert note
    status = json.loads(cli(approval_env, "status", "--json").stdout)
    assert status["switches"]["family:ec2_reserved_instances"]["reason"] == "incident 42"
    time.sleep(1.0)  # several rechecks (0.3 s apart) while paused: none may send
    assert bought(sandbox) == [] and rt.ledger.get("p-1").state.value == "submitted"  # type: ignore[union-attr]
    assert worker.process.poll() is None
    wrong = cli(approval_env, "resume", "--family", "ec2_reserved_instances", "--account", ACCOUNT)
    assert wrong.returncode == 1 and "is not paused" in wrong.stderr
    bad = cli(approval_env, "pause", "--family", "nope", "--reason", "x")
    assert bad.returncode == 2 and "no family 'nope'" in bad.stderr
    resumed = cli(approval_env, "resume", "--family", "ec2_reserved_instances", "--by", "ops", "--reason", "fixed")
    assert resumed.returncode == 0, resumed.stderr
    done = wait_for_state(rt, "p-1", {"succeeded", "failed", "needs_attention"})
    assert done.state.value == "succeeded" and len(bought(sandbox)) == 1
    events = [e["event"] for e in audit_events(rt) if e["event"] in ("paused", "resumed")]
    assert events == ["paused", "resumed"]


def test_many_approvals_at_once_queue_the_plan_once_and_buy_once(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    """Six people approve a plan that needs one approval at the same moment: six CLI processes, each held by a test
    barrier after it read the plan (awaiting approval) until all six have, so all six then write. The ledger's
    compare-and-set lets exactly one queue it; the other five are refused, and the plan is bought once."""
    start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"])
    submit(approval_intake, ri_plan("big-race"))
    wait_for_state(rt, "big-race", {"awaiting_approval"})
    people = ["alice", "bob", "carol", "dave", "erin", "frank"]
    barrier = {"COMMITD_TEST_HOOK_REDIS": approval_env["COMMITD_REDIS_URL"],
               "COMMITD_TEST_BARRIER_BEFORE_APPROVAL_WRITE": str(len(people))}
    processes = [subprocess.Popen([sys.executable, "-m", "worker.cli", "approve", "big-race", "--by", name],
                                  cwd=ROOT, env={**os.environ, **approval_env, **barrier}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for name in people]
    answers = [(p.wait(timeout=60), *p.communicate()) for p in processes]
    queued = [name for name, (code, out, _) in zip(people, answers, strict=True) if code == 0]
    assert len(queued) == 1, answers
    for code, _, err in (a for a in answers if a[0] != 0):  # all read it awaiting approval: each lost the race
        assert code == 1 and "changed while approving" in err, err
    done = wait_for_state(rt, "big-race", {"succeeded", "failed", "needs_attention"})
    assert done.state.value == "succeeded" and len(bought(sandbox)) == 1
    assert [a["by"] for a in done.approval["approvals"]] == queued
    # Queued once: one history entry "approved by", and the worker was handed the plan once after the approval.
    assert [h.note for h in done.history if h.note.startswith("approved by")] == [f"approved by {queued[0]}"]
    assert sum(1 for h in done.history if h.state.value == "running") == 2  # before the approval, and after it


def test_a_cancel_between_the_reads_and_the_intent_stops_the_worker_and_frees_its_budget(
        rt: Runtime, tmp_path: Path, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    """The worker has read AWS and is about to check its controls and record the intent; an operator cancels the plan
    right then (the cancel has no budget to release yet). The worker goes on: it reserves the plan's budget and takes
    its signature lock, then its compare-and-set fails. Nothing is sent, the worker releases the budget it reserved
    for a plan no longer running, and an identical plan submitted afterwards is not held up by the lock."""
    accounts = Path(approval_env["COMMITD_ACCOUNTS_FILE"])
    accounts.write_text(json.dumps({"accounts": [{
        **{k: v for k, v in APPROVAL_ACCOUNT.items() if k != "approvals"},
        "limits": {"commitment_usd_per_day": "100000"}}]}))
    worker = start_worker(COMMITD_ACCOUNTS_FILE=str(accounts), **hooks(approval_env, after_reads="stop"))
    submit(approval_intake, ri_plan("race-1"))
    pid, _ = hook_fired(approval_env["COMMITD_REDIS_URL"], "AFTER_READS")
    assert rt.ledger.get("race-1").state.value == "running"  # type: ignore[union-attr]
    budgets = json.loads(cli(approval_env, "status", "--json").stdout)["budgets"]
    assert f"{ACCOUNT}:day" not in budgets, budgets  # nothing reserved yet: figures appear with the first reservation

    cancelled = cli(approval_env, "plans", "cancel", "race-1", "--by", "ops", "--reason", "planner withdrew it")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    os.kill(pid, signal.SIGCONT)
    eventually(lambda: "plan_changed_concurrently" in worker.log.read_text(),
               "the worker to find the plan changed under it")
    record = rt.ledger.get("race-1")
    assert record is not None and record.state.value == "cancelled" and record.intent is None
    assert bought(sandbox) == []
    # The worker did reserve (after the cancel: the figures exist now), and released it when its write failed.
    wait_budget_settled(rt, "race-1")
    assert not rt.redis.exists(rt.key("budget_hold", "race-1"))
    day = json.loads(cli(approval_env, "status", "--json").stdout)["budgets"][f"{ACCOUNT}:day"]
    assert Decimal(day["reserved_usd"]) == 0 and Decimal(day["used_usd"]) == 0, day

    # The same purchase again, as a new plan: the cancelled plan's signature lock does not hold it up.
    submit(approval_intake, ri_plan("race-2"))
    done = wait_for_state(rt, "race-2", {"succeeded", "failed", "needs_attention"})
    assert done.state.value == "succeeded" and len(bought(sandbox)) == 1
    wait_budget_settled(rt, "race-2")
    day = json.loads(cli(approval_env, "status", "--json").stdout)["budgets"][f"{ACCOUNT}:day"]
    assert Decimal(day["reserved_usd"]) == 0 and Decimal(day["used_usd"]) > 0, day


def test_a_plan_that_goes_back_to_awaiting_approval_gives_its_budget_back(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    """Plan A was approved, reserved its budget, and went back to the queue: plan B, for the same offering, holds
    the call's lock (B's worker is stopped right before its send). While A waits for B its approval expires, so when
    A runs again it asks for approval again. A person may take days to answer: A's reservation is released then (it
    sends nothing until it runs again, and reserves again). Once B is let go and A approved again, both are bought
    and the day's figures hold both, nothing left reserved."""
    accounts = Path(approval_env["COMMITD_ACCOUNTS_FILE"])
    accounts.write_text(json.dumps({"accounts": [{
        **APPROVAL_ACCOUNT, "approvals": {**APPROVAL_ACCOUNT["approvals"], "valid_seconds": 8},
        "limits": {"commitment_usd_per_day": "100000"}}]}))
    # B's worker stops right before its send, holding B's lock; its lease (60 s) outlasts the stop.
    start_worker("w1", COMMITD_ACCOUNTS_FILE=str(accounts), COMMITD_LEASE_SECONDS="60",
                 **hooks(approval_env, before_send="stop"))
    submit(approval_intake, ri_plan("holder-b"))
    wait_for_state(rt, "holder-b", {"awaiting_approval"})
    assert cli(approval_env, "approve", "holder-b", "--by", "alice").returncode == 0
    b_pid, _ = hook_fired(approval_env["COMMITD_REDIS_URL"], "BEFORE_SEND")
    start_worker("w2", COMMITD_ACCOUNTS_FILE=str(accounts))

    submit(approval_intake, ri_plan("waiter-a"))
    wait_for_state(rt, "waiter-a", {"awaiting_approval"})
    assert cli(approval_env, "approve", "waiter-a", "--by", "alice").returncode == 0
    hold_a = rt.key("budget_hold", "waiter-a")
    def waits_for_b() -> bool:
        a = rt.ledger.get("waiter-a")
        return bool(rt.redis.exists(hold_a)) and a is not None and "waiting for plan holder-b" in a.history[-1].note

    eventually(waits_for_b, "plan A to reserve its budget and wait for plan B's lock")
    again = eventually(lambda: (lambda r: r if r.state.value == "awaiting_approval" and "expired: alice"
                                in r.history[-1].note else None)(rt.ledger.get("waiter-a")),
                       "plan A's approval to expire and A to ask again", timeout=60)
    assert again is not None
    wait_budget_settled(rt, "waiter-a")  # nothing else would settle it while A waits: without the release, a timeout
    assert not rt.redis.exists(hold_a), "A waits for a person: its budget is released"
    day = json.loads(cli(approval_env, "status", "--json").stdout)["budgets"][f"{ACCOUNT}:day"]
    b = rt.ledger.get("holder-b")
    assert b is not None and b.intent is not None
    b_cents = Decimal(b.intent["commitment_usd"]).quantize(Decimal("0.01"), rounding=ROUND_CEILING)
    assert Decimal(day["reserved_usd"]) == b_cents, day  # B's reservation only

    os.kill(b_pid, signal.SIGCONT)
    assert wait_for_state(rt, "holder-b", {"succeeded", "failed", "needs_attention"}).state.value == "succeeded"
    assert cli(approval_env, "approve", "waiter-a", "--by", "bob").returncode == 0
    assert wait_for_state(rt, "waiter-a", {"succeeded", "failed", "needs_attention"}).state.value == "succeeded"
    assert len(bought(sandbox)) == 2
    wait_budget_settled(rt, "waiter-a")
    day = json.loads(cli(approval_env, "status", "--json").stdout)["budgets"][f"{ACCOUNT}:day"]
    assert Decimal(day["reserved_usd"]) == 0 and Decimal(day["used_usd"]) > 0, day


def test_a_paused_plan_past_its_expires_at_is_expired_without_waiting_for_the_resume(
        rt: Runtime, approval_env: dict[str, str], approval_intake: Any, sandbox: SandboxControl,
        start_worker: Any) -> None:
    """The account is paused; a plan that must be sent within 8 s waits at its pickup check (no reads, no writes).
    When its expires_at passes it is expired there and then, still without a read: the planner learns it now, not
    whenever someone resumes the account."""
    from datetime import UTC, datetime, timedelta

    write_accounts(Path(approval_env["COMMITD_ACCOUNTS_FILE"]), above={"commitment_usd": "1000000"})
    assert cli(approval_env, "pause", "--account", ACCOUNT, "--reason", "quarter close", "--by", "ops").returncode == 0
    worker = start_worker(COMMITD_ACCOUNTS_FILE=approval_env["COMMITD_ACCOUNTS_FILE"],
                          COMMITD_PAUSE_RECHECK_SECONDS="0.3")
    expires = datetime.now(UTC) + timedelta(seconds=8)
    submit(approval_intake, {**ri_plan("short-lived"), "expires_at": expires.isoformat()})
    eventually(lambda: "plan_paused" in worker.log.read_text(), "the worker to find the plan paused")
    assert rt.ledger.get("short-lived").state.value == "queued"  # type: ignore[union-attr]
    done = wait_for_state(rt, "short-lived", {"expired", "succeeded", "failed", "needs_attention"})
    assert done.state.value == "expired" and done.history[-1].note == "expired before it ran"
    assert [h.state.value for h in done.history] == ["received", "queued", "expired"]  # never ran: no reads
    assert done.history[-1].at >= expires and bought(sandbox) == []
    assert json.loads(cli(approval_env, "status", "--json").stdout)["switches"]  # still paused
