"""The controls a person has over plans: dry runs, pauses, approvals, spend caps, cancelling (docs/controls.md).

The executor asks these questions at fixed places (``worker.execution._prepare`` after its reads, and
``worker.settle._before_sending`` right before every mutating call); the operator's commands (``commitd approve``,
``deny``, ``plans cancel``, ``pause``, ``resume``: ``worker.controls_cli``) change the answers. Every operator
action is a compare-and-set on the plan's record, so it races safely with workers: a plan is cancelled only while
nothing can have been sent (its intent not yet recorded), and an approval queues a plan exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from config.accounts import AccountConfig, AccountLimits
from config.settings import Settings
from worker.approvals import ApprovalError, add_approval, enough
from worker.budgets import CapReached
from worker.lease import redis_now_ms
from worker.ledger import ConcurrentUpdate, PlanRecord
from worker.logs import get_logger
from worker.plans import PlanEnvelope, PlanState
from worker.runtime import Runtime
from worker.switches import Pause
from worker.testhooks import barrier

log = get_logger("commitd.controls")

# A plan is cancelled only before its intent is recorded: from then on a send may be on its way.
CANCELLABLE = frozenset({PlanState.SCHEDULED, PlanState.AWAITING_APPROVAL, PlanState.QUEUED, PlanState.RUNNING})
# Awaiting approval releases too: a plan given back to the queue after it reserved (waiting for another plan's
# identical call) may find its approval expired when it runs again, and a person may take days to answer.
BUDGET_SETTLING = frozenset({PlanState.SUCCEEDED, PlanState.FAILED, PlanState.EXPIRED, PlanState.CANCELLED,
                             PlanState.AWAITING_APPROVAL})


class ControlRefused(ValueError):
    """An operator's command cannot apply to the plan as it is now; the message names its state."""


# --- dry runs --------------------------------------------------------------------------------------------------
def dry_run_reason(plan: PlanEnvelope, settings: Settings, account: AccountConfig) -> str | None:
    """Why this plan runs as a dry run (recorded in its result), or None when it runs for real."""
    if plan.dry_run:
        return "the plan asks for a dry run"
    if settings.dry_run:
        return "COMMITD_DRY_RUN is set"
    if account.dry_run:
        return f"account {account.account_id} runs every plan as a dry run"
    if account.read_only and account.read_only_plans == "dry_run":
        return f"read-only trial role (account {account.account_id})"
    return None


# --- pauses ----------------------------------------------------------------------------------------------------
def pause_over(runtime: Runtime, family: str, account_id: str) -> Pause | None:
    return runtime.switches.pause_covering(family, account_id)


def pause_note(pause: Pause) -> str:
    return f"paused ({pause.scope}, by {pause.by}): {pause.reason}"


# --- budgets ---------------------------------------------------------------------------------------------------
def reserve_budget(runtime: Runtime, plan_id: str, account: AccountConfig, intent: Any) -> CapReached | None:
    """Reserve the intent's amounts against the account's caps (idempotent per plan). None: reserved, or the
    intent commits no money."""
    commitment = getattr(intent, "commitment_usd", None)
    upfront = getattr(intent, "upfront_usd", None)
    if commitment is None and upfront is None:
        return None
    return runtime.budgets.reserve(plan_id, account.account_id, account.limits, commitment, upfront,
                                   redis_now_ms(runtime.redis))


def cap_error(cap: CapReached, account_id: str) -> dict[str, Any]:
    return {"code": "SpendCapReached", "message": cap.message(account_id),
            "details": {"period": cap.period, "measure": cap.measure, "used_usd": cap.used_usd,
                        "reserved_usd": cap.reserved_usd, "amount_usd": cap.amount_usd, "cap_usd": cap.cap_usd}}


def settle_budget(runtime: Runtime, record: PlanRecord) -> None:
    """After a plan reached a final state: its budget hold becomes used, or is released. A failure here leaves the
    hold reserved, which only makes the caps stricter (logged; a person can see it in ``commitd status``)."""
    if record.state not in BUDGET_SETTLING:
        return
    plan = record.plan or {}
    account_id = str(plan.get("account_id", ""))
    try:
        account = runtime.accounts.get(account_id)
    except Exception:  # an unreadable registry: the published caps are only figures
        account = None
    limits = account.limits if account is not None else AccountLimits()
    try:
        runtime.budgets.settle(record.plan_id, record.state, account_id, limits)
    except redis.RedisError as exc:
        log.warning("budget_settle_failed", plan_id=record.plan_id, state=record.state.value, error=str(exc))


# --- operator commands -----------------------------------------------------------------------------------------
def _now(runtime: Runtime) -> datetime:
    """Redis's clock: the one the workers' approval checks use too."""
    return datetime.fromtimestamp(redis_now_ms(runtime.redis) / 1000, UTC)


def _get(runtime: Runtime, plan_id: str) -> PlanRecord:
    record = runtime.ledger.get(plan_id)
    if record is None:
        raise ControlRefused(f"no plan {plan_id}")
    return record


def _enqueue(record: PlanRecord) -> None:
    from tasks import ACTIONS
    from worker.celery_app import enqueue

    enqueue(ACTIONS[(record.plan or {})["action"]].family, record.plan_id)


def cancel_plan(runtime: Runtime, plan_id: str, by: str, reason: str) -> PlanRecord:
    """Cancel a plan not yet sent. Refused, naming its state, once its intent is recorded or it has settled."""
    if not by.strip() or not reason.strip():
        raise ControlRefused("--by and --reason must not be empty")
    for _ in range(5):  # a worker may move the plan between the read and the write: read again
        record = _get(runtime, plan_id)
        if record.state not in CANCELLABLE:
            raise ControlRefused(f"plan {plan_id} is {record.state.value}: only a plan not yet sent "
                                 f"({', '.join(sorted(s.value for s in CANCELLABLE))}) can be cancelled")
        error = {"code": "Cancelled", "message": f"cancelled by {by}: {reason}", "by": by}
        try:
            cancelled = runtime.ledger.transition(record, PlanState.CANCELLED, f"cancelled by {by}: {reason}",
                                                  error=error)
        except ConcurrentUpdate:
            continue
        settle_budget(runtime, cancelled)
        return cancelled
    raise ControlRefused(f"plan {plan_id} keeps changing; try again")


def approve_plan(runtime: Runtime, plan_id: str, by: str, note: str) -> PlanRecord:
    """Approve a plan awaiting approval, for the amounts it asks. With enough approvers it is queued (once)."""
    record = _get(runtime, plan_id)
    if record.state != PlanState.AWAITING_APPROVAL:
        raise ControlRefused(f"plan {plan_id} is {record.state.value}, not awaiting_approval")
    now = _now(runtime)
    expired = _expired(runtime, record, now)
    if expired is not None:
        raise ControlRefused(f"plan {plan_id} passed its expires_at; it is now {expired.state.value}")
    try:
        approval = add_approval(record.approval, by, note, now)
    except ApprovalError as exc:
        raise ControlRefused(str(exc)) from None
    barrier("BEFORE_APPROVAL_WRITE")  # tests: several approvers read the plan before any of them writes
    try:
        if enough(approval, now):
            queued = runtime.ledger.transition(record, PlanState.QUEUED, f"approved by {by}", approval=approval)
            _enqueue(queued)
            return queued
        return runtime.ledger.update(record, f"approved by {by}; more approvals needed", approval=approval)
    except ConcurrentUpdate:
        raise ControlRefused(f"plan {plan_id} changed while approving (another approval?); look and try again") \
            from None


def deny_plan(runtime: Runtime, plan_id: str, by: str, reason: str) -> PlanRecord:
    """Deny a plan awaiting approval: it is cancelled, and never runs."""
    record = _get(runtime, plan_id)
    if record.state != PlanState.AWAITING_APPROVAL:
        raise ControlRefused(f"plan {plan_id} is {record.state.value}, not awaiting_approval")
    if not by.strip() or not reason.strip():
        raise ControlRefused("--by and --reason must not be empty")
    approval = {**(record.approval or {}), "denied": {"by": by, "reason": reason, "at": _now(runtime).isoformat()}}
    try:
        denied = runtime.ledger.transition(record, PlanState.CANCELLED, f"denied by {by}: {reason}", approval=approval,
                                           error={"code": "Denied", "message": f"denied by {by}: {reason}", "by": by})
    except ConcurrentUpdate:
        raise ControlRefused(f"plan {plan_id} changed while denying; look and try again") from None
    settle_budget(runtime, denied)
    return denied


def _expired(runtime: Runtime, record: PlanRecord, now: datetime) -> PlanRecord | None:
    expires_at = (record.plan or {}).get("expires_at")
    if not isinstance(expires_at, str) or datetime.fromisoformat(expires_at) > now:
        return None
    expired = runtime.ledger.transition(record, PlanState.EXPIRED, "expired while awaiting approval")
    settle_budget(runtime, expired)
    return expired
