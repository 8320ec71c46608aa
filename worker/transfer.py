"""An organization sub-account transfer: the operator's one command for three plans.

A transfer moves an AWS account from the source organization to the buying one, in steps that are each an
ordinary plan of the ``org_transfer`` family (``tasks/org_transfer.py``), submitted through the normal intake:

1. ``create`` (optional): organizations:CreateAccount in the source organization's management account. A
   transfer may instead start from an existing member account (``account_id``).
2. ``remove``: organizations:RemoveAccountFromOrganization, in the source organization's management account.
3. ``invite``: organizations:InviteAccountToOrganization, in the buying organization's management account.

The transfer ends at "invited": accepting the invitation (AcceptHandshake) happens in the moved account itself,
outside the production role, so commitd never does it.

The transfer record (``{prefix}transfer:<id>``, JSON, changed by compare-and-set on its version) keeps the
operator's request, each step's plan ids (one per attempt) and what each finished step reported. Everything else
is read from the plans' own records. Plan ids are derived from the transfer id, the step and the attempt number
(``transfer.<id>.<step>.<n>``), and a step's plan id is recorded before its plan is submitted: running the
transfer again (after a crash of the command, or twice at once) submits the same plan id, which intake answers
"existing", so a step is never carried out by a second plan. A transfer stops at the first step whose plan did
not succeed, with that plan's reason; ``resume`` carries it on from there: a step that failed is tried again as a
new attempt (a new plan: the failed one settled with nothing done), a finished step is never repeated, and a plan
that needs a person is left to ``commitd plans resolve``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.families import ORG_TRANSFER
from tasks.org_transfer import CreateAccountParams
from worker.intake import Intake
from worker.ledger import PlanRecord
from worker.plans import PlanState
from worker.runtime import Runtime

TRANSFER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
REGION = "us-east-1"  # Organizations is global; AWS serves it in us-east-1
StepName = Literal["create", "remove", "invite"]
ACTIONS: dict[str, str] = {
    "create": "organizations:CreateAccount",
    "remove": "organizations:RemoveAccountFromOrganization",
    "invite": "organizations:InviteAccountToOrganization",
}
IN_FLIGHT = frozenset({PlanState.RECEIVED, PlanState.SCHEDULED, PlanState.AWAITING_APPROVAL, PlanState.QUEUED,
                       PlanState.RUNNING, PlanState.SUBMITTED})
# A worker may be carrying these; ``resume`` sends their task message again when no worker holds the plan.
RUNNABLE = frozenset({PlanState.QUEUED, PlanState.RUNNING, PlanState.SUBMITTED})
# Settled with nothing done (a failed plan sent nothing, or AWS finished its operation as failed): a new attempt
# may follow. A plan that needs a person is left to ``commitd plans resolve``.
RETRYABLE = frozenset({PlanState.FAILED, PlanState.REJECTED, PlanState.EXPIRED, PlanState.CANCELLED})
NOT_SUBMITTED = "not submitted"


class TransferError(Exception):
    """The transfer cannot be started or carried on (a person must act); nothing was submitted."""


class _Changed(Exception):
    """Another process changed the transfer record first: read it again and decide again."""


# --- the record ----------------------------------------------------------------------------------------------------
class TransferSpec(BaseModel):
    """What the operator asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    transfer_id: str = Field(pattern=TRANSFER_ID_PATTERN)
    source_account_id: str = Field(pattern=r"^\d{12}$", description="management account of the source organization")
    buyer_account_id: str = Field(pattern=r"^\d{12}$", description="management account of the buying organization")
    account_id: str | None = Field(None, pattern=r"^\d{12}$", description="an existing member account to move")
    new_account: CreateAccountParams | None = Field(None, description="create the account to move")
    notes: str | None = Field(None, max_length=1024, description="sent with the invitation")
    requested_by: str = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _one_account(self) -> TransferSpec:
        if (self.account_id is None) == (self.new_account is None):
            raise ValueError("give either account_id (an existing member account) or new_account (create one)")
        if self.source_account_id == self.buyer_account_id:
            raise ValueError("the source and the buying organization's management accounts are the same")
        if self.account_id in (self.source_account_id, self.buyer_account_id):
            raise ValueError("account_id is a management account; a management account cannot be moved")
        return self

    def step_names(self) -> list[StepName]:
        return ["create", "remove", "invite"] if self.new_account is not None else ["remove", "invite"]


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StepName
    plan_ids: list[str] = Field(default_factory=list, description="one plan per attempt, oldest first")
    result: dict[str, Any] | None = Field(None, description="what the step's succeeded plan reported")


class Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: TransferSpec
    steps: list[Step]
    account_id: str | None = Field(None, description="the account being moved, once known")
    created_at: datetime
    updated_at: datetime
    version: int = 0


# --- what status shows ---------------------------------------------------------------------------------------------
class StepView(BaseModel):
    name: StepName
    action: str
    account_id: str  # where the step's plan runs
    state: str  # the current plan's state, or "not submitted"
    plan_id: str | None
    attempts: list[str]
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class TransferView(BaseModel):
    transfer_id: str
    phase: Literal["in_progress", "stopped", "invited"]
    step: StepName | None  # where the transfer is (None once invited)
    account_id: str | None
    reason: str | None = None  # why it stopped
    message: str
    steps: list[StepView]


# --- storage -------------------------------------------------------------------------------------------------------
def _key(runtime: Runtime, transfer_id: str) -> str:
    return runtime.key("transfer", transfer_id)


def _now() -> datetime:
    return datetime.now(UTC)


def load(runtime: Runtime, transfer_id: str) -> Transfer | None:
    raw = runtime.redis.get(_key(runtime, transfer_id))
    return Transfer.model_validate_json(raw) if raw is not None else None


def _load(runtime: Runtime, transfer_id: str) -> Transfer:
    transfer = load(runtime, transfer_id)
    if transfer is None:
        raise TransferError(f"no transfer {transfer_id}")
    return transfer


def _save(runtime: Runtime, old: Transfer, new: Transfer) -> Transfer:
    """Compare-and-set on the version: two operators running the same transfer never both take a step."""
    new.version, new.updated_at = old.version + 1, _now()
    key = _key(runtime, old.spec.transfer_id)
    with runtime.redis.pipeline() as pipe:
        try:
            pipe.watch(key)
            raw: Any = pipe.get(key)  # immediate while watching
            if raw is None or Transfer.model_validate_json(raw).version != old.version:
                raise _Changed()
            pipe.multi()
            pipe.set(key, new.model_dump_json())
            pipe.execute()
        except redis.WatchError:
            raise _Changed() from None
    return new


def _plan_id(transfer_id: str, step: str, attempt: int) -> str:
    return f"transfer.{transfer_id}.{step}.{attempt}"


# --- starting ------------------------------------------------------------------------------------------------------
def refusal(runtime: Runtime, spec: TransferSpec) -> str | None:
    """Why the accounts' configuration cannot carry this transfer to its end, before anything is submitted: a
    transfer must never stop half-way (an account removed from its organization and never invited) for a reason
    known at the start."""
    block = ORG_TRANSFER.optional_block
    needs = {spec.source_account_id: [ACTIONS[s] for s in spec.step_names() if s != "invite"],
             spec.buyer_account_id: [ACTIONS["invite"]]}
    for account_id, actions in needs.items():
        account = runtime.accounts.get(account_id)
        if account is None:
            return f"account {account_id} is not a configured account"
        if block is not None and not account.grants_block(block):
            return (f"account {account_id} does not grant the optional '{block}' block of the production role "
                    f"(optional_blocks), which the transfer's plans need")
        if account.read_only:
            return f"account {account_id} is read-only (a trial role): its plans would only be dry runs"
        for action in actions:
            if not account.allows(action):
                return f"{action} is not allowed for account {account_id}"
    return None


def start(runtime: Runtime, intake: Intake, spec: TransferSpec) -> TransferView:
    """Record the transfer and submit its first step. The same request again carries on the existing transfer;
    a different request under the same id is refused."""
    problem = refusal(runtime, spec)
    if problem is not None:
        raise TransferError(f"{problem}; nothing was started")
    now = _now()
    transfer = Transfer(spec=spec, steps=[Step(name=name) for name in spec.step_names()],
                        account_id=spec.account_id, created_at=now, updated_at=now)
    if runtime.redis.set(_key(runtime, spec.transfer_id), transfer.model_dump_json(), nx=True):
        runtime.audit.append({"event": "transfer_started", "transfer_id": spec.transfer_id,
                              "spec": spec.model_dump(mode="json")})
    else:
        existing = _load(runtime, spec.transfer_id)
        if existing.spec != spec:
            raise TransferError(f"transfer {spec.transfer_id} already exists with a different request; "
                                f"nothing changed (see commitd transfer status {spec.transfer_id})")
    return advance(runtime, intake, spec.transfer_id)


# --- carrying it on ------------------------------------------------------------------------------------------------
def _step_plan(transfer: Transfer, step: Step, plan_id: str) -> dict[str, Any]:
    """The step's plan: the same content for the same plan id, whenever it is built (intake compares it)."""
    spec = transfer.spec
    plan: dict[str, Any] = {"plan_id": plan_id, "action": ACTIONS[step.name], "region": REGION,
                            "requested_by": spec.requested_by, "trigger": "operator",
                            "notes": f"transfer {spec.transfer_id}: step {step.name}"}
    if step.name == "create":
        assert spec.new_account is not None
        return {**plan, "account_id": spec.source_account_id,
                "params": spec.new_account.model_dump(mode="json", exclude_none=True)}
    assert transfer.account_id is not None
    if step.name == "remove":
        return {**plan, "account_id": spec.source_account_id, "params": {"account_id": transfer.account_id}}
    params: dict[str, Any] = {"target": {"type": "ACCOUNT", "id": transfer.account_id}}
    if spec.notes:
        params["notes"] = spec.notes
    return {**plan, "account_id": spec.buyer_account_id, "params": params}


def _submit(runtime: Runtime, intake: Intake, transfer: Transfer, step: Step, plan_id: str) -> None:
    result = intake.submit_raw(json.dumps(_step_plan(transfer, step, plan_id)),
                               source=f"transfer {transfer.spec.transfer_id}")
    if result.outcome == "conflict":
        raise TransferError(f"plan id {plan_id} is taken by a different plan: {result.message}")
    if result.outcome == "accepted":
        runtime.audit.append({"event": "transfer_step_submitted", "transfer_id": transfer.spec.transfer_id,
                              "step": step.name, "plan_id": plan_id, "attempt": len(step.plan_ids)})


class _Plan(BaseModel):
    """A step plan's state as its record (or, once purged, its tombstone) says."""

    state: PlanState | None  # None: not recorded (submitted next)
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


def _plan(runtime: Runtime, plan_id: str) -> _Plan:
    record: PlanRecord | None = runtime.ledger.get(plan_id)
    if record is not None:
        return _Plan(state=record.state, error=record.error, result=record.result)
    stone = runtime.ledger.tombstone(plan_id)
    if stone is not None:
        return _Plan(state=PlanState(stone["state"]), error={"code": "PlanPurged", "message": (
            f"plan {plan_id} was {stone['state']} and has been purged from the ledger")})
    return _Plan(state=None)


def _account_of(result: dict[str, Any]) -> str | None:
    """The created account: the plan's result, or the resource an operator settled the plan with."""
    found = result.get("account_id") or next(iter(result.get("resource_ids") or []), None)
    return str(found) if found else None


def advance(runtime: Runtime, intake: Intake, transfer_id: str, retry_failed: bool = False) -> TransferView:
    """Carry the transfer on as far as it can go now: note each step whose plan succeeded, submit the next
    step's plan, and stop at a step still in flight or one that did not succeed. With ``retry_failed``, a step
    whose plan failed (or was rejected, expired or cancelled) gets one new attempt."""
    retried = False
    for _ in range(50):  # each round records one change; a transfer has at most 3 steps
        transfer = _load(runtime, transfer_id)
        try:
            if not _take_one_step(runtime, intake, transfer, retry_failed and not retried):
                return view(runtime, transfer)
        except _Retried:
            retried = True
        except _Changed:
            continue
    raise TransferError(f"transfer {transfer_id} kept changing under this command; run it again")


class _Retried(Exception):
    """A failed step got a new attempt (once per call)."""


def _take_one_step(runtime: Runtime, intake: Intake, transfer: Transfer, retry: bool) -> bool:
    """Make one change towards the end of the transfer. False: nothing more can be done now."""
    for index, step in enumerate(transfer.steps):
        if step.result is not None:
            continue
        if not step.plan_ids:
            _new_attempt(runtime, intake, transfer, index)
            return True
        plan_id = step.plan_ids[-1]
        plan = _plan(runtime, plan_id)
        if plan.state is None:  # recorded, then the command stopped before submitting it
            _submit(runtime, intake, transfer, step, plan_id)
            return True
        if plan.state == PlanState.SUCCEEDED and plan.result is not None:
            _finish_step(runtime, transfer, index, plan_id, plan.result)
            return True
        if plan.state in IN_FLIGHT:
            return False
        if retry and plan.state in RETRYABLE and (plan.error or {}).get("code") != "PlanPurged":
            _new_attempt(runtime, intake, transfer, index)
            raise _Retried()
        return False
    return False


def _new_attempt(runtime: Runtime, intake: Intake, transfer: Transfer, index: int) -> None:
    """Record the step's next plan id, then submit it (a crash in between is finished by the next run)."""
    new = transfer.model_copy(deep=True)
    step = new.steps[index]
    plan_id = _plan_id(transfer.spec.transfer_id, step.name, len(step.plan_ids) + 1)
    step.plan_ids.append(plan_id)
    new = _save(runtime, transfer, new)
    _submit(runtime, intake, new, new.steps[index], plan_id)


def _finish_step(runtime: Runtime, transfer: Transfer, index: int, plan_id: str, result: dict[str, Any]) -> None:
    new = transfer.model_copy(deep=True)
    step = new.steps[index]
    step.result = {**result, "plan_id": plan_id}
    if step.name == "create":
        account_id = _account_of(result)
        if account_id is None:
            raise TransferError(f"plan {plan_id} succeeded without naming the account it created; settle it with "
                                f"commitd plans resolve {plan_id} --resource-id <account id>")
        new.account_id = account_id
    _save(runtime, transfer, new)
    runtime.audit.append({"event": "transfer_step_done", "transfer_id": transfer.spec.transfer_id,
                          "step": step.name, "plan_id": plan_id, "account_id": new.account_id})


def resume(runtime: Runtime, intake: Intake, transfer_id: str) -> TransferView:
    """Carry a transfer on from where it stopped: a failed step is tried again as a new plan; a step in flight
    gets its task message again when no worker holds its plan (its worker died); finished steps are skipped."""
    current = advance(runtime, intake, transfer_id, retry_failed=True)
    for step in current.steps:
        if step.plan_id is not None and step.state in {s.value for s in RUNNABLE} \
                and not runtime.redis.exists(runtime.key("lease", step.plan_id)):
            intake.enqueue(ORG_TRANSFER, step.plan_id)
    return current


def follow(runtime: Runtime, intake: Intake, transfer_id: str, timeout: float, poll_seconds: float = 0.5,
           first: TransferView | None = None) -> TransferView:
    """Keep carrying the transfer on until it is invited or stopped, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    current = first or advance(runtime, intake, transfer_id)
    while current.phase == "in_progress" and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        current = advance(runtime, intake, transfer_id)
    return current


# --- reading -------------------------------------------------------------------------------------------------------
def status(runtime: Runtime, transfer_id: str) -> TransferView:
    """Where the transfer is, from its record and each step's plan record. Changes nothing."""
    return view(runtime, _load(runtime, transfer_id))


def view(runtime: Runtime, transfer: Transfer) -> TransferView:
    spec = transfer.spec
    steps: list[StepView] = []
    for step in transfer.steps:
        plan_id = step.plan_ids[-1] if step.plan_ids else None
        plan = _plan(runtime, plan_id) if plan_id else _Plan(state=None)
        where = spec.buyer_account_id if step.name == "invite" else spec.source_account_id
        steps.append(StepView(
            name=step.name, action=ACTIONS[step.name], account_id=where,
            state=plan.state.value if plan.state is not None else NOT_SUBMITTED, plan_id=plan_id,
            attempts=list(step.plan_ids), error=plan.error, result=step.result or plan.result))
    base = {"transfer_id": spec.transfer_id, "account_id": transfer.account_id, "steps": steps}
    for step_view, step in zip(steps, transfer.steps, strict=True):
        if step.result is not None:
            continue
        if step_view.state == NOT_SUBMITTED or (step_view.state == PlanState.SUCCEEDED.value
                                                 and step_view.error is None):
            return TransferView(**base, phase="in_progress", step=step.name,
                                message=f"step {step.name}: next (commitd transfer resume {spec.transfer_id} "
                                        "carries it on)")
        if PlanState(step_view.state) in IN_FLIGHT:
            return TransferView(**base, phase="in_progress", step=step.name,
                                message=f"step {step.name}: plan {step_view.plan_id} is {step_view.state}")
        error = step_view.error or {}
        reason = f"{step.name} {step_view.state}"
        if error:
            reason += f": {error.get('code')}: {error.get('message')}"
        if step_view.state == PlanState.NEEDS_ATTENTION.value:
            advice = (f"plan {step_view.plan_id} needs a person: check AWS, settle it with commitd plans resolve "
                      f"{step_view.plan_id}, then commitd transfer resume {spec.transfer_id}")
        else:
            advice = (f"commitd transfer resume {spec.transfer_id} tries step {step.name} again as a new plan once "
                      "the cause is dealt with; finished steps are not repeated")
        return TransferView(**base, phase="stopped", step=step.name, reason=reason, message=advice)
    invite = transfer.steps[-1].result or {}
    return TransferView(
        **base, phase="invited", step=None,
        message=(f"account {transfer.account_id} is invited into the organization of {spec.buyer_account_id} "
                 f"(handshake {invite.get('handshake_id')}); the transfer ends here: the account joins when it "
                 "accepts the invitation (AcceptHandshake, made in the moved account itself, outside commitd's role)"))
