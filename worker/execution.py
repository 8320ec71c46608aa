"""The executor: what a family task does with a plan id. It never needs to know which action it runs.

1. Only the holder of the plan's lease runs it; the ledger's compare-and-set makes every step atomic.
2. ``queued → running``: the action's reads (``prepare``); the plan then moves to ``submitted`` with the action's
   typed intent *before* anything is sent (or fails with nothing spent, or is a dry run).
3. ``submitted``: the send/reconcile loop of ``worker.settle`` (at most one send per plan; every unknown outcome
   reconciled against AWS, never guessed).
4. ``succeeded`` with a check due: the look-alike check of ``worker.verify``.

docs/exactly-once.md states the whole protocol, its assumptions and its residual risks.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from config.accounts import AccountConfig
from worker import approvals
from worker.actions import Action, PlanFailed, family_permissions
from worker.claims import Claims
from worker.controls import cap_error, dry_run_reason, pause_note, pause_over, reserve_budget, settle_budget
from worker.errors import Outcome, classify, describe
from worker.handle import PlanHandle
from worker.lease import Lease, LeaseLost, SignatureLock
from worker.ledger import ConcurrentUpdate, PlanRecord
from worker.logs import get_logger
from worker.plans import PlanEnvelope, PlanState, describe_validation_error
from worker.ratelimit import RateLimited
from worker.runtime import Runtime
from worker.settle import PlanRun, RequeueLater, SendBook, SendGuard, account_refusal, needs_attention, settle
from worker.testhooks import checkpoint

log = get_logger("commitd.execution")
SIGNATURE_WAIT_SECONDS = 2.0

__all__ = ["RequeueLater", "derive_token", "run_plan"]


class _NotFound(Exception):
    pass


def derive_token(plan_id: str) -> str:
    """A client token derived from the plan id: stable across retries, crashes and workers (≤ 64 ASCII)."""
    import hashlib

    return "commitd-" + hashlib.sha256(plan_id.encode()).hexdigest()[:40]


def run_plan(runtime: Runtime, plan_id: str, actions: dict[str, Action[Any, Any]]) -> str:
    """Run one plan as far as it can go now. Returns the plan's state afterwards (or why it was not run).
    Raises ``RequeueLater`` when the plan must wait (the task re-queues it)."""
    # The lease and the record in one round trip (the record is read after the lease is taken): a message for a
    # settled plan costs no more than that.
    lease = Lease(runtime.redis, runtime.key("lease", plan_id), runtime.worker_id, runtime.settings.lease_seconds)
    acquired, raw = lease.acquire_reading(runtime.key("plan", plan_id), "record")  # the ledger's record of the plan
    if not acquired:
        log.info("plan_leased_elsewhere", plan_id=plan_id)
        return "leased_elsewhere"
    with lease:
        try:
            record = PlanRecord.model_validate_json(raw) if raw is not None else None
            return _run_leased(runtime, record, plan_id, actions, lease).value
        except ConcurrentUpdate:
            log.warning("plan_changed_concurrently", plan_id=plan_id)
            current = runtime.ledger.get(plan_id)  # cancelled by an operator during the reads, say
            if current is not None:
                settle_budget(runtime, current)
            return "concurrent_update"
        except LeaseLost as exc:
            log.warning("plan_lease_lost", plan_id=plan_id, reason=str(exc))
            return "lease_lost"
        except _NotFound:
            return "not_found"


def _run_leased(runtime: Runtime, record: PlanRecord | None, plan_id: str, actions: dict[str, Action[Any, Any]],
                lease: Lease) -> PlanState:
    if record is None:
        log.warning("plan_not_found", plan_id=plan_id)
        raise _NotFound()
    plan = PlanEnvelope.model_validate(record.plan)
    action = actions[plan.action]
    account = runtime.accounts.get(plan.account_id)
    if record.state == PlanState.SUCCEEDED and record.verification == "due" and account is not None:
        from worker.verify import check_look_alikes

        return check_look_alikes(_new_run(runtime, action, plan, account, lease, record)).state
    if record.state not in (PlanState.QUEUED, PlanState.RUNNING, PlanState.SUBMITTED):
        return record.state
    if record.attempts >= runtime.settings.max_attempts:
        return _poisoned(runtime, record)
    if account is None:  # the account was removed from the configuration after intake
        return _account_gone(runtime, record, plan)
    run = _new_run(runtime, action, plan, account, lease, record)
    if record.state in (PlanState.QUEUED, PlanState.RUNNING):
        # A paused plan makes no reads either, and its record is left as it is (no attempt, no note every recheck);
        # but one past its expires_at is expired now (by _run, before any read), not after the resume.
        pause = pause_over(runtime, action.family.name, plan.account_id)
        past_expiry = record.state == PlanState.QUEUED and _past_expiry(run)
        if pause is not None and not past_expiry:
            log.info("plan_paused", plan_id=plan_id, scope=pause.scope)
            raise RequeueLater(pause_note(pause), runtime.settings.pause_recheck_seconds)
    try:
        return _run(run, record)
    except RateLimited as limited:  # deferred, not failed: this attempt is given back
        raise run.wait(limited.delay, limited.reason) from None


def _run(run: PlanRun, record: PlanRecord) -> PlanState:
    ledger, plan, action = run.ledger, run.plan, run.action
    resumed = record.state == PlanState.SUBMITTED
    attempt = record.attempts + 1
    if record.state == PlanState.QUEUED:
        if _past_expiry(run):
            expired = ledger.transition(record, PlanState.EXPIRED, "expired before it ran", attempts=attempt)
            settle_budget(run.runtime, expired)  # a plan given back to wait for a lock may hold budget
            return expired.state
        run.record = ledger.transition(record, PlanState.RUNNING, f"picked up by a worker (attempt {attempt})",
                                       attempts=attempt)
    else:  # resumed after a crash, a redelivery or a wait: count the attempt on its own
        run.record = ledger.update(record, f"attempt {attempt}", attempts=attempt)
    if run.record.state == PlanState.RUNNING:
        _prepare(run)
    if run.record.state == PlanState.SUBMITTED:
        run.params = action.params_model.model_validate(plan.params)
        run.intent = action.intent_model.model_validate(run.record.intent)
        run.book = SendBook.model_validate(run.record.book or {})
        settle(run, resumed)
    return run.record.state


def _past_expiry(run: PlanRun) -> bool:
    """Whether the plan's expires_at has passed by the worker's (possibly test-shifted) clock."""
    return run.plan.expires_at is not None and run.handle.now() >= run.plan.expires_at


def _new_run(
    runtime: Runtime, action: Action[Any, Any], plan: PlanEnvelope, account: AccountConfig, lease: Lease,
    record: PlanRecord,
) -> PlanRun:
    claims = Claims(runtime.redis, runtime.key("claimed", action.nouns.claim_kind, plan.account_id, plan.region))

    def claimed_elsewhere(ids: Iterable[str]) -> set[str]:
        return claims.elsewhere(plan.plan_id, ids)

    limiter = runtime.rate_limiter

    def rate_limit(service: str) -> None:
        limiter.acquire(plan.account_id, plan.region, service)

    handle = PlanHandle(
        runtime.sessions, action, account, plan.region, plan.plan_id,
        family_permissions(action.family, account.extra_permissions), claimed_elsewhere=claimed_elsewhere,
        rate_limit=rate_limit if limiter.enabled else None,
    )
    run = PlanRun(runtime=runtime, action=action, plan=plan, account=account, lease=lease, record=record,
                  claims=claims, handle=handle)
    handle.bind_guard(SendGuard(run))
    return run


def _poisoned(runtime: Runtime, record: PlanRecord) -> PlanState:
    """A poison message or a plan that keeps crashing its worker: stop here."""
    note = f"gave up after {record.attempts} attempts"
    if record.state == PlanState.SUBMITTED:  # something may have been sent: never call that "nothing was sent"
        error = {"code": "AttemptsExhausted", "message": note + "; a send may have happened: check AWS",
                 "book": record.book}
        return runtime.ledger.transition(record, PlanState.NEEDS_ATTENTION, note, error=error).state
    if record.state == PlanState.QUEUED:
        record = runtime.ledger.transition(record, PlanState.RUNNING, "attempt limit reached")
    error = {"code": "AttemptsExhausted", "message": note + "; nothing was sent"}
    failed = runtime.ledger.transition(record, PlanState.FAILED, note, error=error)
    settle_budget(runtime, failed)
    return failed.state


def _account_gone(runtime: Runtime, record: PlanRecord, plan: PlanEnvelope) -> PlanState:
    error = {"code": "UnknownAccount", "message": f"account {plan.account_id} is no longer configured"}
    if record.state == PlanState.QUEUED:
        record = runtime.ledger.transition(record, PlanState.RUNNING, "account check")
    if record.state == PlanState.RUNNING:
        failed = runtime.ledger.transition(record, PlanState.FAILED, "account not configured", error=error)
        settle_budget(runtime, failed)
        return failed.state
    # Submitted: something may have been sent, and without the account nothing can be checked.
    return runtime.ledger.transition(record, PlanState.NEEDS_ATTENTION, "account no longer configured",
                                     error=error).state


def _prepare(run: PlanRun) -> None:
    """running → submitted (the intent recorded), or failed / succeeded (dry run) / back to queued."""
    action, plan = run.action, run.plan
    try:
        run.params = action.params_model.model_validate(plan.params)
    except ValidationError as exc:
        error = {"code": "InvalidParams", "message": describe_validation_error(exc, "params")}
        run.transition(PlanState.FAILED, "invalid params", error=error)
        return
    dry_reason = dry_run_reason(plan, run.runtime.settings, run.account)
    if dry_reason is None and run.account.read_only:  # its configuration says: fail, clearly
        run.transition(PlanState.FAILED, "read-only account", error={
            "code": "ReadOnlyAccount", "message": f"account {run.account.account_id} has a read-only (trial) role "
            f"and read_only_plans: fail; nothing was {action.nouns.done} (submit with dry_run: true to see what "
            "would be sent)"})
        return
    dry_run = dry_reason is not None
    try:
        run.intent = action.prepare(run.handle, run.params)
        dry_result = action.dry_run(run.handle, run.params, run.intent) if dry_run else None
    except PlanFailed as exc:
        failure: dict[str, Any] = {"code": exc.code, "message": exc.message, **({"details": exc.details}
                                                                                if exc.details else {})}
        run.transition(PlanState.FAILED, exc.message, error=failure)
        return
    except (LeaseLost, RequeueLater):
        raise
    except Exception as exc:  # a read (or a dry run) that kept failing: nothing was sent, trying later is safe
        if classify(exc) == Outcome.TERMINAL:
            run.transition(PlanState.FAILED, "a read before the call failed", error=describe(exc))
            return
        run.transition(PlanState.QUEUED, "reads failed; will try again", error=describe(exc))
        raise RequeueLater(f"reads failed: {describe(exc)['code']}", run.runtime.settings.retry_max_seconds) from exc
    _record_clock_skew(run)
    if _past_expiry(run):
        run.transition(PlanState.EXPIRED, "expired before it was sent")
        return
    refusal = account_refusal(run)
    if refusal is not None and not (dry_run and refusal.endswith("(a trial role)")):
        run.transition(PlanState.FAILED, refusal, error={
            "code": "AccountLimit", "message": f"{refusal}; nothing was {action.nouns.done}"})
        return
    if dry_result is not None:
        run.transition(PlanState.SUCCEEDED, f"dry run: {dry_reason}",
                       result={**dry_result, "dry_run": True, "dry_run_reason": dry_reason})
        return
    checkpoint("AFTER_READS")  # tests: an operator's cancel lands here, between the reads and the intent
    if not _controls_allow(run):
        return
    if run.intent.signature and not _take_signature(run, run.intent.signature):
        return
    idempotency = None
    handle_value = run.intent.idempotency_value or run.intent.signature
    if handle_value:  # the token or customer id sent, or (no token) the signature one plan at a time holds
        idempotency = {"kind": action.idempotency.value, "value": handle_value}
    run.transition(PlanState.SUBMITTED, "intent recorded", intent=run.intent.model_dump(mode="json"),
                   idempotency=idempotency)


def _controls_allow(run: PlanRun) -> bool:
    """After the reads, before the intent is recorded: the approval the live amounts need, a pause that came in
    during the reads, the budget reserved against the account's caps. False: the plan waits for approval or failed
    on a cap; raises RequeueLater when it must wait (back in the queue, this attempt given back)."""
    runtime, account, intent = run.runtime, run.account, run.intent
    assert intent is not None
    need = approvals.requirement(account, run.action.action, intent)
    now = datetime.fromtimestamp(run.now_ms() / 1000, UTC)
    if need is not None and len(approvals.valid_approvers(run.record.approval, need, now)) < need.approvers:
        note = approvals.why_waiting(run.record.approval, need, now)
        run.transition(PlanState.AWAITING_APPROVAL, note, intent=intent.model_dump(mode="json"),
                       approval=approvals.request_of(need, run.record.approval, now))
        run.runtime.audit.append({"event": "approval_requested", "plan_id": run.plan_id, "why": note})
        return False
    pause = pause_over(runtime, run.action.family.name, run.plan.account_id)
    if pause is not None:
        _back_to_queue(run, pause_note(pause), runtime.settings.pause_recheck_seconds)
    cap = reserve_budget(runtime, run.plan_id, account, intent)
    if cap is not None:
        error = cap_error(cap, account.account_id)
        if account.limits.on_cap == "fail":
            run.transition(PlanState.FAILED, "spend cap reached", error={
                **error, "message": f"{error['message']}; nothing was {run.action.nouns.done}"})
            return False
        _back_to_queue(run, f"waiting for budget: {error['message']}", runtime.settings.cap_recheck_seconds)
    return True


def _back_to_queue(run: PlanRun, note: str, delay: float) -> NoReturn:
    """Nothing was sent: the plan goes back to queued (its attempt given back) and its task re-queues it."""
    run.record = run.ledger.transition(run.record, PlanState.QUEUED, note, attempts=max(run.record.attempts - 1, 0))
    raise RequeueLater(note, delay)


def _record_clock_skew(run: PlanRun) -> None:
    """AWS's clock, not the worker's, bounds what reconciliation matches: record how far apart they are."""
    aws_now = run.handle.aws_now()
    if aws_now is None:
        return
    run.book.intent_aws_time = aws_now
    run.book.worker_clock_skew_s = round((run.handle.now() - aws_now).total_seconds(), 3)
    if abs(run.book.worker_clock_skew_s) > 5:
        log.warning("worker_clock_skew", plan_id=run.plan_id, skew_s=run.book.worker_clock_skew_s)
    run.runtime.audit.append({"event": "clock_skew", "plan_id": run.plan_id,
                              "worker_minus_aws_s": run.book.worker_clock_skew_s})


def _take_signature(run: PlanRun, signature: str) -> bool:
    """One plan at a time per signature (calls without a token). False: the plan waits or needs attention."""
    ledger = run.ledger
    key = run.runtime.key("inflight", signature)

    def settled(plan_id: str) -> bool:
        holder = ledger.get(plan_id)
        return holder is None or holder.terminal

    holder = SignatureLock(run.runtime.redis, key, run.plan_id).take(settled)
    if holder is None:
        run.book.lock_key = key
        return True
    holder_record = ledger.get(holder)
    if holder_record is not None and holder_record.state == PlanState.NEEDS_ATTENTION:
        needs_attention(run, f"blocked by unsettled plan {holder}", {
            "code": "BlockedByUnsettledPlan",
            "message": f"plan {holder} made the same call and its outcome is unknown; settle it first"})
        return False
    # Waiting is not a failed attempt: give it back.
    _back_to_queue(run, f"waiting for plan {holder} (same call)", SIGNATURE_WAIT_SECONDS)
