"""The organization sub-account transfer family (organizations:CreateAccount, RemoveAccountFromOrganization,
InviteAccountToOrganization) and the operator's transfer (``commitd transfer``), through the real path: intake →
a Celery worker process → the sandbox over HTTP, real boto3, a private Redis.

Each test checks the sandbox's ground truth (the accounts, create-account requests and invitations AWS would
hold), not only the plan's record. The source organization is managed by ORG_ACCOUNT, the buying one by
ORG_BUYER_ACCOUNT; both grant the optional "organizations" block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from tasks import ACTIONS
from tests.families.harness import (
    assert_session_confined,
    eventually,
    family_plan,
    settled,
    submit,
)
from tests.production_role import PRODUCTION_ROLE_POLICY
from tests.spine.conftest import ACCOUNT, EXTERNAL_ID, ORG_ACCOUNT, ORG_BUYER_ACCOUNT, ROOT
from tests.spine.test_exactly_once import hook_fired, hooks, lease_expired
from worker import transfer
from worker.actions import Failed, Found, Pending, family_permissions
from worker.handle import PlanHandle
from worker.plans import PlanState
from worker.runtime import Runtime

CREATE = "organizations:CreateAccount"
REMOVE = "organizations:RemoveAccountFromOrganization"
INVITE = "organizations:InviteAccountToOrganization"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
CREATE_EXAMPLE = EXAMPLES / "organizations-create-account.json"
REMOVE_EXAMPLE = EXAMPLES / "organizations-remove-account-from-organization.json"
INVITE_EXAMPLE = EXAMPLES / "organizations-invite-account-to-organization.json"

MEMBER = "222233335555"  # in the source organization for 30 days: the account the examples move
MEMBER_2 = "222233336666"
MEMBER_3 = "222233337777"
NEW_MEMBER = "222233338888"  # created in the source organization a day ago: AWS's waiting period is on
DELEGATED = "222233339999"  # a delegated administrator of the source organization
BUYER_MEMBER = "888899991111"  # a member of the buying organization, with its own email
BUYER_MEMBER_EMAIL = "finance@buyer.example"
STANDALONE = "333344445555"  # accounts in no organization
STANDALONE_2 = "333344446666"
DAY = 86_400
CREATION_SECONDS = 30  # the sandbox finishes a CreateAccount request 20 sandbox seconds after it was made


def seed_organizations(sandbox: SandboxControl) -> None:
    sandbox.seed([
        {"kind": "organizations:organization", "management_account_id": ORG_ACCOUNT, "members": [
            {"account_id": MEMBER, "email": "commitments@customer.example", "name": "commitments"},
            {"account_id": MEMBER_2}, {"account_id": MEMBER_3},
            {"account_id": NEW_MEMBER, "joined_days_ago": 1},
            {"account_id": DELEGATED, "delegated_admin_for": ["securityhub.amazonaws.com"]}]},
        {"kind": "organizations:organization", "management_account_id": ORG_BUYER_ACCOUNT, "members": [
            {"account_id": BUYER_MEMBER, "email": BUYER_MEMBER_EMAIL, "joined_method": "INVITED"}]},
    ])


def example(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def created_accounts(sandbox: SandboxControl) -> list[dict[str, Any]]:
    """Accounts a CreateAccount call made in the source organization (seeded ones excluded)."""
    return [r for r in sandbox.resources(account_id=ORG_ACCOUNT, type="account")
            if r["created_by"]["operation"] == CREATE]


def create_requests(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ORG_ACCOUNT, type="create-account-status")


def account_state(sandbox: SandboxControl, account_id: str) -> str:
    [account] = [r for r in sandbox.resources(type="account") if r["id"] == account_id]
    return str(account["state"])


def invitations(sandbox: SandboxControl) -> list[dict[str, Any]]:
    return sandbox.resources(account_id=ORG_BUYER_ACCOUNT, type="handshake")


def create_plan(plan_id: str, email: str, name: str = "commitments-transfer") -> dict[str, Any]:
    return family_plan(CREATE, plan_id, {"email": email, "account_name": name}, account=ORG_ACCOUNT)


def remove_plan(plan_id: str, member: str) -> dict[str, Any]:
    return family_plan(REMOVE, plan_id, {"account_id": member}, account=ORG_ACCOUNT)


def invite_plan(plan_id: str, target: str, account: str = ORG_BUYER_ACCOUNT) -> dict[str, Any]:
    return family_plan(INVITE, plan_id, {"target": {"type": "ACCOUNT", "id": target}}, account=account)


def finish_creations_once_requested(sandbox: SandboxControl, count: int = 1) -> None:
    """Wait until AWS holds ``count`` create-account requests, then move the sandbox clock past their end."""
    eventually(lambda: len(create_requests(sandbox)) >= count, f"{count} create-account requests")
    sandbox.advance_clock(CREATION_SECONDS)


def handle(runtime: Runtime, action_name: str, account: str, plan_id: str) -> PlanHandle:
    """The handle an action gets, bound to a plan, for driving an action step by step in this process."""
    action = ACTIONS[action_name]
    config = runtime.accounts.get(account)
    assert config is not None
    return PlanHandle(runtime.sessions, action, config, "us-east-1", plan_id,
                      family_permissions(action.family, config.extra_permissions))


def assert_declared(aws: PlanHandle, action_name: str) -> None:
    """Every call the action made through its handle is one it declares (the session policy is built from them)."""
    declared = {p.lower() for p in ACTIONS[action_name].permissions}
    assert {c.lower() for c in aws.calls} <= declared, set(aws.calls)


# --- organizations:CreateAccount ---------------------------------------------------------------------------------
def test_create_account_example_followed_to_its_end_across_a_worker_restart(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any
) -> None:
    """The example plan: AWS accepts the creation and answers with a request id; the plan waits on it, its
    worker is killed, another one follows the request to SUCCEEDED. One account, the plan's."""
    seed_organizations(sandbox)
    plan = example(CREATE_EXAMPLE)
    first = start_worker("w1")
    submit(intake_loop, plan)
    waiting = eventually(lambda: (r := runtime.ledger.get(plan["plan_id"])) is not None and r.book
                         and r.book.get("accepted") and r, "the plan to wait on the account creation")
    assert waiting.state.value == "submitted"
    request_id = waiting.book["accepted"]["create_account_request_id"]
    first.kill()
    start_worker("w2")
    sandbox.advance_clock(CREATION_SECONDS)
    record = settled(runtime, plan["plan_id"])
    assert record.state.value == "succeeded", record.error
    [account] = created_accounts(sandbox)
    [request] = create_requests(sandbox)
    assert request["id"] == request_id and request["state"] == "SUCCEEDED"
    assert account["state"] == "ACTIVE"
    result = record.result
    assert result["account_id"] == account["id"] and result["resource_ids"] == [account["id"]]
    assert result["create_account_request_id"] == request_id and result["found_by"] == "request id"
    assert result["email"] == plan["params"]["email"] and "commitment_usd" not in result


def test_create_account_once_after_a_lost_answer_and_after_throttles(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_organizations(sandbox)
    start_worker()
    # AWS makes the request, and the answer never arrives: found by the email and the account name, not re-sent.
    sandbox.add_fault(CREATE, "commit_then_drop", count=1)
    submit(intake, create_plan("create-dropped", "dropped@customer.example"))
    finish_creations_once_requested(sandbox)
    dropped = settled(runtime, "create-dropped")
    assert dropped.state.value == "succeeded", dropped.error
    assert dropped.result["reconciled"] is True and dropped.result["found_by"] == "email"
    [account] = created_accounts(sandbox)
    assert dropped.result["account_id"] == account["id"] and len(create_requests(sandbox)) == 1

    # Throttled twice: AWS did nothing those times; the third call creates it.
    sandbox.add_fault(CREATE, "throttle", count=2)
    submit(intake, create_plan("create-throttled", "throttled@customer.example"))
    finish_creations_once_requested(sandbox, count=2)
    throttled = settled(runtime, "create-throttled")
    assert throttled.state.value == "succeeded", throttled.error
    assert len(created_accounts(sandbox)) == 2 and len(create_requests(sandbox)) == 2
    assert throttled.result["account_id"] in {a["id"] for a in created_accounts(sandbox)}
    assert sandbox.faults()["fired"] == {"commit_then_drop": 1, "throttle": 2}, sandbox.faults()


def test_a_repeated_creation_is_settled_as_done_or_as_a_conflict(runtime: Runtime, sandbox: SandboxControl) -> None:
    """No token: a re-send after a lost answer is a second request. AWS refuses a second account for the email
    (EMAIL_ALREADY_EXISTS): settled as done when this plan's earlier request made the account, as a conflict
    when someone else's did. Driven step by step through the action, against the sandbox over HTTP."""
    seed_organizations(sandbox)
    action = ACTIONS[CREATE]
    params = action.params_model.model_validate({"email": "twice@customer.example", "account_name": "twice"})
    aws = handle(runtime, CREATE, ORG_ACCOUNT, "create-twice")
    intent = action.prepare(aws, params)
    first = action.submit(aws, params, intent)
    second = action.submit(aws, params, intent)  # what a re-send would do
    assert first.follow and second.follow
    aws.accepted = second.result
    assert isinstance(action.reconcile(aws, params, intent), Pending)
    sandbox.advance_clock(CREATION_SECONDS)
    done = action.reconcile(aws, params, intent)
    assert isinstance(done, Found), done
    [account] = created_accounts(sandbox)
    assert done.resource_ids == (account["id"],) and done.result["found_by"] == "email after EMAIL_ALREADY_EXISTS"
    states = sorted(r["state"] for r in create_requests(sandbox))
    assert states == ["FAILED", "SUCCEEDED"]
    # Its answer lost, found by the email; the look-alike check finds only the plan's own account.
    aws.accepted = None
    assert isinstance(action.reconcile(aws, params, intent), Found)
    assert set(action.look_alikes(aws, params, intent, done.resource_ids)) == {account["id"]}

    # Someone else's account got the email after this plan's intent: a conflict, nothing created by the plan.
    params = action.params_model.model_validate({"email": "raced@customer.example", "account_name": "raced"})
    raced = handle(runtime, CREATE, ORG_ACCOUNT, "create-raced")
    intent = action.prepare(raced, params)
    other = action.params_model.model_validate({"email": "raced@customer.example", "account_name": "by hand"})
    action.submit(raced, other, intent.model_copy(update={"account_name": "by hand"}))
    raced.accepted = action.submit(raced, params, intent).result
    sandbox.advance_clock(CREATION_SECONDS)
    conflict = action.reconcile(raced, params, intent)
    assert isinstance(conflict, Failed) and conflict.code == "EMAIL_ALREADY_EXISTS", conflict
    assert_declared(aws, CREATE)
    assert_declared(raced, CREATE)


def test_refusals_and_terminal_errors_of_the_three_actions(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_organizations(sandbox)
    members_before = {r["id"]: r["state"] for r in sandbox.resources(type="account")}
    # Refused at intake: the account's configuration does not grant the optional organizations block.
    refused = intake.submit_raw(json.dumps(create_plan("create-no-block", "x@customer.example") | {
        "account_id": ACCOUNT}), "test")
    assert refused.outcome == "rejected" and "optional 'organizations' block" in refused.message, refused
    assert runtime.ledger.get("create-no-block").state.value == "rejected"

    start_worker()
    plans = {
        # guards: nothing is sent
        "create-email-taken": create_plan("create-email-taken", "Commitments@customer.example"),
        "remove-delegated": remove_plan("remove-delegated", DELEGATED),
        "remove-management": remove_plan("remove-management", ORG_ACCOUNT),
        "invite-member": invite_plan("invite-member", BUYER_MEMBER),
        # AWS refuses
        "create-email-elsewhere": create_plan("create-email-elsewhere", BUYER_MEMBER_EMAIL),
        "remove-too-soon": remove_plan("remove-too-soon", NEW_MEMBER),
        "invite-in-another-org": invite_plan("invite-in-another-org", MEMBER),
    }
    for plan in plans.values():
        submit(intake, plan)
    finish_creations_once_requested(sandbox)
    records = {plan_id: settled(runtime, plan_id) for plan_id in plans}
    errors = {plan_id: (r.state.value, r.error["code"]) for plan_id, r in records.items()}
    assert errors == {
        "create-email-taken": ("failed", "EmailAlreadyInOrganization"),
        "remove-delegated": ("failed", "CannotRemoveDelegatedAdministrator"),
        "remove-management": ("failed", "MasterCannotLeaveOrganization"),
        "invite-member": ("failed", "AlreadyInOrganization"),
        "create-email-elsewhere": ("failed", "EMAIL_ALREADY_EXISTS"),
        "remove-too-soon": ("failed", "ConstraintViolationException"),
        "invite-in-another-org": ("failed", "HandshakeConstraintViolationException"),
    }, errors
    assert MEMBER in records["create-email-taken"].error["message"]
    assert "nothing was removed" in records["remove-delegated"].error["message"]
    assert "WAIT_PERIOD_ACTIVE" in records["remove-too-soon"].error["message"]
    assert "ALREADY_IN_AN_ORGANIZATION" in records["invite-in-another-org"].error["message"]
    assert "outside organization" in records["create-email-elsewhere"].error["message"]
    for plan_id in ("create-email-taken", "remove-delegated", "remove-management", "invite-member"):
        assert records[plan_id].book is None or records[plan_id].book.get("sends", 0) == 0, plan_id
    # Nothing happened: no account created or removed, no invitation; the one request AWS failed.
    assert created_accounts(sandbox) == [] and invitations(sandbox) == []
    assert [r["state"] for r in create_requests(sandbox)] == ["FAILED"]
    assert {r["id"]: r["state"] for r in sandbox.resources(type="account")} == members_before


# --- organizations:RemoveAccountFromOrganization and InviteAccountToOrganization ---------------------------------
def test_remove_and_invite_examples_then_each_once_after_lost_answers_and_throttles(
    runtime: Runtime, sandbox: SandboxControl, intake: Any, start_worker: Any
) -> None:
    seed_organizations(sandbox)
    start_worker()
    # The examples: the account leaves the seller's organization, then the buyer's invites it.
    submit(intake, example(REMOVE_EXAMPLE))
    removed = settled(runtime, "example-org-remove-account-1")
    assert removed.state.value == "succeeded", removed.error
    assert account_state(sandbox, MEMBER) == "REMOVED" and removed.result["account_id"] == MEMBER
    submit(intake, example(INVITE_EXAMPLE))
    invited = settled(runtime, "example-org-invite-account-1")
    assert invited.state.value == "succeeded", invited.error
    [handshake] = invitations(sandbox)
    assert handshake["state"] == "OPEN" and invited.result["resource_ids"] == [handshake["id"]]
    assert invited.result["handshake_state"] == "OPEN" and invited.result["target"] == {"type": "ACCOUNT",
                                                                                       "id": MEMBER}

    # Lost answers: AWS removed / invited, the connection dropped; reconciled, never sent twice.
    sandbox.add_fault(REMOVE, "commit_then_drop", count=1)
    sandbox.add_fault(INVITE, "commit_then_drop", count=1)
    submit(intake, remove_plan("remove-dropped", MEMBER_2))
    submit(intake, invite_plan("invite-dropped", STANDALONE))
    records = {p: settled(runtime, p) for p in ("remove-dropped", "invite-dropped")}
    assert sandbox.faults()["fired"] == {"commit_then_drop": 2}, sandbox.faults()
    # Throttled twice each: AWS did nothing; the third call does it.
    sandbox.clear_faults()
    sandbox.add_fault(REMOVE, "throttle", count=2)
    sandbox.add_fault(INVITE, "throttle", count=2)
    submit(intake, remove_plan("remove-throttled", MEMBER_3))
    submit(intake, invite_plan("invite-throttled", STANDALONE_2))
    records |= {p: settled(runtime, p) for p in ("remove-throttled", "invite-throttled")}
    assert sandbox.faults()["fired"] == {"throttle": 4}, sandbox.faults()
    assert {p: r.state.value for p, r in records.items()} == dict.fromkeys(records, "succeeded"), records
    assert records["remove-dropped"].result["reconciled"] is True
    assert records["invite-dropped"].result["reconciled"] is True
    assert account_state(sandbox, MEMBER_2) == "REMOVED" and account_state(sandbox, MEMBER_3) == "REMOVED"
    assert len(invitations(sandbox)) == 3
    own = {records["invite-dropped"].result["handshake_id"], records["invite-throttled"].result["handshake_id"],
           handshake["id"]}
    assert own == {h["id"] for h in invitations(sandbox)}


def test_repeating_a_removal_or_an_invitation_is_harmless_and_reconciled(
    runtime: Runtime, sandbox: SandboxControl
) -> None:
    """The answers AWS gives a repeat (AccountNotFoundException, DuplicateHandshakeException) are done signals:
    the executor reconciles on them, and reconciliation finds the first call's effect, nothing more."""
    seed_organizations(sandbox)
    remove, invite = ACTIONS[REMOVE], ACTIONS[INVITE]
    aws = handle(runtime, REMOVE, ORG_ACCOUNT, "remove-twice")
    params = remove.params_model.model_validate({"account_id": MEMBER})
    intent = remove.prepare(aws, params)
    remove.submit(aws, params, intent)
    with pytest.raises(ClientError) as repeat:
        remove.submit(aws, params, intent)
    assert repeat.value.response["Error"]["Code"] in remove.done_signals
    found = remove.reconcile(aws, params, intent)
    assert isinstance(found, Found) and found.result["account_id"] == MEMBER, found
    assert account_state(sandbox, MEMBER) == "REMOVED" and remove.look_alikes(aws, params, intent, ()) == {}
    assert_declared(aws, REMOVE)

    aws = handle(runtime, INVITE, ORG_BUYER_ACCOUNT, "invite-twice")
    params = invite.params_model.model_validate({"target": {"type": "ACCOUNT", "id": MEMBER}})
    intent = invite.prepare(aws, params)
    first = invite.submit(aws, params, intent)
    with pytest.raises(ClientError) as repeat:
        invite.submit(aws, params, intent)
    assert repeat.value.response["Error"]["Code"] in invite.done_signals
    found = invite.reconcile(aws, params, intent)
    assert isinstance(found, Found) and found.resource_ids == first.resource_ids, found
    assert len(invitations(sandbox)) == 1
    assert set(invite.look_alikes(aws, params, intent, first.resource_ids)) == set(first.resource_ids)
    assert_declared(aws, INVITE)


# --- the operator's transfer ---------------------------------------------------------------------------------------
def commitd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def steps_of(output: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for line in output.splitlines() if (row := line.split("\t"))[0] in
            ("create", "remove", "invite")}


def test_transfer_command_stops_at_aws_waiting_period_and_resumes_under_the_production_role(
    runtime: Runtime, sandbox: SandboxControl, start_worker: Any, env: dict[str, str]
) -> None:
    """`commitd transfer start|status|resume` as an operator runs them, every AWS call under the production role:
    the new account cannot leave before AWS's waiting period ends, so the transfer stops at its removal with
    AWS's reason; resumed after it, it carries on from there (the account is not created again) to "invited"."""
    seed_organizations(sandbox)
    sandbox.set_iam(True, PRODUCTION_ROLE_POLICY, external_id=EXTERNAL_ID)
    start_worker()
    started = commitd(env, "transfer", "start", "t1", "--from", ORG_ACCOUNT, "--to", ORG_BUYER_ACCOUNT,
                      "--email", "moved@customer.example", "--account-name", "moved", "--notes", "from acme",
                      "--requested-by", "operator@test", "--no-wait")
    assert started.returncode == 0, started.stderr + started.stdout
    state, plan_id, where, _ = steps_of(started.stdout)["create"]
    assert plan_id == "transfer.t1.create.1" and where == ORG_ACCOUNT, started.stdout
    assert state in ("queued", "running", "submitted"), started.stdout
    finish_creations_once_requested(sandbox)
    stopped = commitd(env, "transfer", "resume", "t1", "--timeout", "90")
    assert stopped.returncode == 1, stopped.stderr + stopped.stdout
    assert "transfer t1: stopped at remove" in stopped.stdout
    assert "WAIT_PERIOD_ACTIVE" in stopped.stdout and "ConstraintViolationException" in stopped.stdout
    status = commitd(env, "transfer", "status", "t1", "--json")
    view = json.loads(status.stdout)
    [account] = created_accounts(sandbox)
    assert view["phase"] == "stopped" and view["account_id"] == account["id"]
    assert [(s["name"], s["state"]) for s in view["steps"]] == [
        ("create", "succeeded"), ("remove", "failed"), ("invite", "not submitted")]

    sandbox.advance_clock(5 * DAY)  # AWS's waiting period is over
    resumed = commitd(env, "transfer", "resume", "t1", "--timeout", "90")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "transfer t1: invited" in resumed.stdout and "accepts the invitation" in resumed.stdout
    rows = steps_of(resumed.stdout)
    assert rows["create"][:2] == ["succeeded", "transfer.t1.create.1"]
    assert rows["remove"][:2] == ["succeeded", "transfer.t1.remove.2"]
    assert rows["invite"][:2] == ["succeeded", "transfer.t1.invite.1"]
    # One account created, removed from the seller's organization, one invitation from the buyer's.
    assert [a["id"] for a in created_accounts(sandbox)] == [account["id"]] and len(create_requests(sandbox)) == 1
    assert account_state(sandbox, account["id"]) == "REMOVED"
    [handshake] = invitations(sandbox)
    assert handshake["state"] == "OPEN"
    # Every step ran as one plan per attempt; running it again submits nothing.
    again = commitd(env, "transfer", "start", "t1", "--from", ORG_ACCOUNT, "--to", ORG_BUYER_ACCOUNT,
                    "--email", "moved@customer.example", "--account-name", "moved", "--notes", "from acme",
                    "--requested-by", "operator@test")
    assert again.returncode == 0 and "transfer t1: invited" in again.stdout, again.stderr + again.stdout
    assert sorted(p for p in runtime.ledger.ids() if p.startswith("transfer.t1.")) == [
        "transfer.t1.create.1", "transfer.t1.invite.1", "transfer.t1.remove.1", "transfer.t1.remove.2"]
    for action in (CREATE, REMOVE, INVITE):
        assert_session_confined(runtime, action, account=ORG_BUYER_ACCOUNT if action == INVITE else ORG_ACCOUNT)


def test_transfer_interrupted_by_a_killed_worker_after_each_step_resumes_with_one_account(
    runtime: Runtime, sandbox: SandboxControl, intake_loop: Any, start_worker: Any, env: dict[str, str]
) -> None:
    """After each step's call, its worker is SIGKILLed before it records AWS's answer; a new worker and
    `resume` carry the transfer on. Each step is one plan, reconciled, and exactly one account is created."""
    seed_organizations(sandbox)
    hook_redis = redis.Redis.from_url(env["COMMITD_REDIS_URL"])
    spec = transfer.TransferSpec.model_validate({
        "transfer_id": "killed", "source_account_id": ORG_ACCOUNT, "buyer_account_id": ORG_BUYER_ACCOUNT,
        "new_account": {"email": "killed@customer.example", "account_name": "killed"},
        "requested_by": "operator@test"})

    def moved_past(step: str) -> transfer.TransferView | None:
        current = transfer.advance(runtime, intake_loop, "killed")
        return current if current.phase != "in_progress" or current.step != step else None

    worker = start_worker("w0", **hooks(env, after_send="kill"))
    transfer.start(runtime, intake_loop, spec)
    for n, step in enumerate(("create", "remove", "invite"), start=1):
        plan_id = f"transfer.killed.{step}.1"
        hook_fired(env["COMMITD_REDIS_URL"], "AFTER_SEND")
        worker.kill()
        if step == "create":
            sandbox.advance_clock(5 * DAY)  # the account is created, and AWS's waiting period passes
        hook_redis.delete("testhook:fired:AFTER_SEND", "testhook:AFTER_SEND")  # armed again for the next step
        worker = start_worker(f"w{n}", **hooks(env, after_send="kill"))
        lease_expired(runtime, plan_id)
        transfer.resume(runtime, intake_loop, "killed")
        record = settled(runtime, plan_id)
        assert record.state.value == "succeeded" and record.result["reconciled"] is True, record.error
        view = eventually(partial(moved_past, step), f"the transfer to move past {step}")
    assert view.phase == "invited", view
    [account] = created_accounts(sandbox)
    assert len(create_requests(sandbox)) == 1 and view.account_id == account["id"]
    assert account_state(sandbox, account["id"]) == "REMOVED"
    [handshake] = invitations(sandbox)
    assert view.steps[-1].result["handshake_id"] == handshake["id"]
    assert [s.attempts for s in view.steps] == [[f"transfer.killed.{s}.1"] for s in ("create", "remove", "invite")]


def test_transfer_refused_at_start_and_never_submits_a_step_twice(
    runtime: Runtime, sandbox: SandboxControl, intake: Any
) -> None:
    """Refused before anything is submitted when an account does not grant the organizations block (it would
    stop half-way, with the account out of its organization); a step whose plan id was recorded but not submitted
    (the command died in between) is submitted by the next run, and two runs never make two plans."""
    spec = {"transfer_id": "t2", "source_account_id": ORG_ACCOUNT, "buyer_account_id": ACCOUNT,
            "account_id": MEMBER, "requested_by": "operator@test"}
    with pytest.raises(transfer.TransferError, match="optional 'organizations' block"):
        transfer.start(runtime, intake, transfer.TransferSpec.model_validate(spec))
    assert transfer.load(runtime, "t2") is None and runtime.ledger.ids() == []

    spec["buyer_account_id"] = ORG_BUYER_ACCOUNT
    started = transfer.start(runtime, intake, transfer.TransferSpec.model_validate(spec))
    assert [s.name for s in started.steps] == ["remove", "invite"] and started.steps[0].state == "queued"
    with pytest.raises(transfer.TransferError, match="different request"):
        transfer.start(runtime, intake, transfer.TransferSpec.model_validate({**spec, "notes": "other"}))
    # The command died after recording the next attempt's plan id, before submitting it.
    record = transfer.load(runtime, "t2")
    assert record is not None
    runtime.ledger.transition(runtime.ledger.get("transfer.t2.remove.1"), PlanState.CANCELLED, "operator: test")
    crashed = record.model_copy(deep=True)
    crashed.steps[0].plan_ids.append("transfer.t2.remove.2")
    transfer._save(runtime, record, crashed)
    assert transfer.status(runtime, "t2").steps[0].state == "not submitted"
    for _ in range(2):
        view = transfer.advance(runtime, intake, "t2")
        assert view.phase == "in_progress" and view.steps[0].state == "queued", view
    assert transfer.resume(runtime, intake, "t2").steps[0].attempts == ["transfer.t2.remove.1",
                                                                         "transfer.t2.remove.2"]
    assert sorted(runtime.ledger.ids()) == ["transfer.t2.remove.1", "transfer.t2.remove.2"]
