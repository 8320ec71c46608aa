"""The exactly-once executor: what a family task does with a plan id.

Protocol (docs/exactly-once.md has the full argument):
1. Only the holder of the plan's lease runs it; the ledger's compare-and-set makes every step atomic.
2. ``prepare`` does the reads; the plan then moves to ``submitted`` with its intent (the token or customer id
   derived from the plan id, the offering, the time) *before* anything is sent.
3. Each send is written to the ledger before it goes out, so a worker that takes over after a crash knows a
   send may have happened, and reconciles first.
4. Mutating clients never retry on their own. The loop here re-sends directly where AWS deduplicates by token;
   for calls without one, only after a reconciling read shows the effect is absent.
5. When the outcome stays unknown after bounded reconciliation, the plan needs attention. It is never sent
   again automatically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from config.accounts import AccountConfig
from worker.actions import Action, Idempotency, PlanFailed
from worker.errors import Outcome, classify, describe, error_code
from worker.lease import Lease, LeaseLost
from worker.ledger import ConcurrentUpdate, PlanRecord
from worker.logs import get_logger, redact
from worker.plans import PlanEnvelope, PlanState, describe_validation_error
from worker.runtime import Runtime

log = get_logger("commitd.execution")


_RELEASE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _NotFound(Exception):
    pass


class RequeueLater(Exception):
    """Give the plan back to the queue (nothing was sent); the task re-sends its message after a delay."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


@dataclass
class ExecutionContext:
    """What an action sees: its plan, its account, and audited AWS calls through the customer's role."""

    runtime: Runtime
    action: Action
    plan: PlanEnvelope
    account: AccountConfig
    lease: Lease | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id

    @property
    def region(self) -> str:
        return self.plan.region

    def now(self) -> datetime:
        return datetime.now(UTC)

    def client(self, purpose: str, service: str | None = None) -> Any:
        return self.runtime.sessions.client(
            self.account,
            self.region,
            service or self.action.service,
            self.action.family,
            "write" if purpose == "write" else "read",
            self.plan_id,
        )

    def call(self, purpose: str, operation: str, service: str | None = None, **params: Any) -> dict[str, Any]:
        """One AWS call, audited: operation, account, region, request id, outcome, duration, parameters."""
        client = self.client(purpose, service)
        if purpose == "write" and self.lease is not None:
            self.lease.ensure_held()  # fencing: never send for a plan another worker has taken over
        started = time.monotonic()
        entry: dict[str, Any] = {
            "event": "aws_call",
            "plan_id": self.plan_id,
            "account_id": self.account.account_id,
            "region": self.region,
            "service": service or self.action.service,
            "operation": operation,
            "mutating": purpose == "write",
            "params": redact(_jsonable(params)),
        }
        try:
            response: dict[str, Any] = getattr(client, operation)(**params)
        except Exception as exc:
            entry.update(
                outcome=classify(exc).value,
                error=describe(exc),
                request_id=_request_id(getattr(exc, "response", None)),
                duration_ms=round((time.monotonic() - started) * 1000, 2),
            )
            self.runtime.audit.append(entry)
            raise
        entry.update(
            outcome="ok",
            request_id=_request_id(response),
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        self.runtime.audit.append(entry)
        self.calls.append({"operation": operation, "request_id": entry["request_id"]})
        return response

    def paginate(self, operation: str, result_key: str, service: str | None = None, **params: Any) -> list[Any]:
        """A read, followed through every page (each page one audited call)."""
        items: list[Any] = []
        token_param, token_key = "NextToken", "NextToken"
        while True:
            page = self.call("read", operation, service, **params)
            items.extend(page.get(result_key, []))
            token = page.get(token_key)
            if not token:
                return items
            params = {**params, token_param: token}

    def claim(self, kind: str, resource_id: str) -> bool:
        """Mark a resource as the result of a plan; False if another plan already holds it."""
        key = self.runtime.key("claimed", kind, self.account.account_id, self.region)
        return bool(self.runtime.redis.hsetnx(key, resource_id, self.plan_id)) or self.claimed_by(
            kind, resource_id
        ) == self.plan_id

    def claimed_by(self, kind: str, resource_id: str) -> str | None:
        key = self.runtime.key("claimed", kind, self.account.account_id, self.region)
        value = self.runtime.redis.hget(key, resource_id)
        return value.decode() if isinstance(value, bytes) else value

    def idempotency_token(self) -> str:
        return derive_token(self.plan_id)


def derive_token(plan_id: str) -> str:
    """A ClientToken derived from the plan id: stable across retries, crashes and workers (≤ 64 ASCII)."""
    import hashlib

    return "commitd-" + hashlib.sha256(plan_id.encode()).hexdigest()[:40]


def _request_id(response: Any) -> str | None:
    if not isinstance(response, dict):
        return None
    return response.get("ResponseMetadata", {}).get("RequestId")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------------------------
def run_plan(runtime: Runtime, plan_id: str, actions: dict[str, Action]) -> str:
    """Run one plan as far as it can go now. Returns the plan's state afterwards (or why it was not run)."""
    # The lease first (one round trip), then the record: a message for a settled plan costs no more than that.
    lease = Lease(runtime.redis, runtime.key("lease", plan_id), runtime.worker_id, runtime.settings.lease_seconds)
    if not lease.acquire():
        log.info("plan_leased_elsewhere", plan_id=plan_id)
        return "leased_elsewhere"
    with lease:
        try:
            return _run_leased(runtime, plan_id, actions, lease).value
        except ConcurrentUpdate:
            log.warning("plan_changed_concurrently", plan_id=plan_id)
            return "concurrent_update"
        except LeaseLost:
            log.warning("plan_lease_lost", plan_id=plan_id)
            return "lease_lost"
        except _NotFound:
            return "not_found"


def _run_leased(runtime: Runtime, plan_id: str, actions: dict[str, Action], lease: Lease) -> PlanState:
    ledger = runtime.ledger
    settings = runtime.settings
    record = ledger.get(plan_id)
    if record is None:
        log.warning("plan_not_found", plan_id=plan_id)
        raise _NotFound()
    if record.state not in (PlanState.QUEUED, PlanState.RUNNING, PlanState.SUBMITTED):
        return record.state
    plan = PlanEnvelope.model_validate(record.plan)

    if record.attempts >= settings.max_attempts:
        # A poison message or a plan that keeps crashing its worker: stop here.
        note = f"gave up after {record.attempts} attempts"
        if record.state == PlanState.SUBMITTED:
            return _needs_attention(runtime, record, note, {"code": "AttemptsExhausted", "message": note}).state
        if record.state == PlanState.QUEUED:
            record = ledger.transition(record, PlanState.RUNNING, "attempt limit reached")
        return ledger.transition(
            record, PlanState.FAILED, note, error={"code": "AttemptsExhausted", "message": note + "; nothing was sent"}
        ).state
    attempt = record.attempts + 1

    action = actions[plan.action]
    account = runtime.accounts.get(plan.account_id)
    if account is None:  # the account was removed from the configuration after intake
        if record.state == PlanState.QUEUED:
            record = ledger.transition(record, PlanState.RUNNING, "account check")
        error = {"code": "UnknownAccount", "message": f"account {plan.account_id} is no longer configured"}
        if record.state == PlanState.RUNNING:
            return ledger.transition(record, PlanState.FAILED, "account not configured", error=error).state
        # Submitted: something may have been sent, and without the account nothing can be checked.
        return _needs_attention(runtime, record, "account no longer configured", error).state
    ctx = ExecutionContext(runtime, action, plan, account, lease)

    if record.state == PlanState.QUEUED:
        if plan.expires_at and ctx.now() >= plan.expires_at:
            return ledger.transition(record, PlanState.EXPIRED, "expired before it ran", attempts=attempt).state
        record = ledger.transition(record, PlanState.RUNNING, f"picked up by a worker (attempt {attempt})",
                                   attempts=attempt)
    else:  # resumed after a crash or a redelivery: count the attempt on its own
        record = ledger.update(record, f"attempt {attempt}", attempts=attempt)
    if record.state == PlanState.RUNNING:
        record = _prepare(ctx, record)
    if record.state == PlanState.SUBMITTED:
        record = _settle(ctx, record)
    return record.state


def _prepare(ctx: ExecutionContext, record: PlanRecord) -> PlanRecord:
    ledger = ctx.runtime.ledger
    action = ctx.action
    try:
        params = action.params_model.model_validate(ctx.plan.params)
    except ValidationError as exc:
        error = {"code": "InvalidParams", "message": describe_validation_error(exc, "params")}
        return ledger.transition(record, PlanState.FAILED, "invalid params", error=error)
    if ctx.plan.expires_at and ctx.now() >= ctx.plan.expires_at:
        return ledger.transition(record, PlanState.EXPIRED, "expired before it was sent")
    try:
        intent = action.prepare(ctx, params)
    except PlanFailed as exc:
        failure: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.details:
            failure["details"] = exc.details
        return ledger.transition(record, PlanState.FAILED, exc.message, error=failure)
    except Exception as exc:  # a read that kept failing: nothing was sent, so trying later is safe
        if classify(exc) == Outcome.TERMINAL:
            return ledger.transition(record, PlanState.FAILED, "a read before the call failed", error=describe(exc))
        ledger.transition(record, PlanState.QUEUED, "reads failed; will try again", error=describe(exc))
        raise RequeueLater(f"reads failed: {describe(exc)['code']}", ctx.runtime.settings.retry_max_seconds) from exc

    dry_run = ctx.plan.dry_run or ctx.account.read_only
    if dry_run:
        result = action.dry_run(ctx, params, intent)
        note = "dry run (read-only trial role)" if ctx.account.read_only and not ctx.plan.dry_run else "dry run"
        return ledger.transition(record, PlanState.SUCCEEDED, note, result={**result, "dry_run": True})

    signature = intent.get("signature")
    if signature:
        holder = _take_signature(ctx, signature)
        if holder is not None:
            holder_record = ledger.get(holder)
            if holder_record is not None and holder_record.state == PlanState.NEEDS_ATTENTION:
                error = {
                    "code": "BlockedByUnsettledPlan",
                    "message": f"plan {holder} bought the same thing and its outcome is unknown; settle it first",
                }
                return ledger.transition(record, PlanState.NEEDS_ATTENTION, error["message"], error=error)
            # Waiting is not a failed attempt: give it back (Celery's max_retries and the sweeper bound the wait).
            ledger.transition(
                record, PlanState.QUEUED, f"waiting for plan {holder} (same purchase)", attempts=record.attempts - 1
            )
            raise RequeueLater(f"waiting for plan {holder}", 2.0)

    idempotency: dict[str, str] | None = None
    if intent.get("idempotency_value"):
        idempotency = {"kind": action.idempotency.value, "value": str(intent["idempotency_value"])}
    intent = {**intent, "sends": 0, "intent_time": ctx.now().isoformat()}
    return ledger.transition(record, PlanState.SUBMITTED, "intent recorded", intent=intent, idempotency=idempotency)


def _take_signature(ctx: ExecutionContext, signature: str) -> str | None:
    """One plan at a time per purchase signature (calls without a token): returns the other holder, if any."""
    key = ctx.runtime.key("inflight", signature)
    redis = ctx.runtime.redis
    for _ in range(3):
        if redis.set(key, ctx.plan_id, nx=True):
            return None
        holder_raw = redis.get(key)
        holder = holder_raw.decode() if isinstance(holder_raw, bytes) else holder_raw
        if holder is None:
            continue
        if holder == ctx.plan_id:
            return None
        holder_record = ctx.runtime.ledger.get(holder)
        if holder_record is None or holder_record.terminal:
            # A holder that settled but crashed before releasing: take over, only if it is still that holder.
            with redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    current = pipe.get(key)
                    if (current.decode() if isinstance(current, bytes) else current) == holder:
                        pipe.multi()
                        pipe.set(key, ctx.plan_id)
                        pipe.execute()
                        return None
                except Exception:
                    continue
            continue
        return holder
    return "unknown"


def _release_signature(ctx: ExecutionContext, record: PlanRecord) -> None:
    signature = (record.intent or {}).get("signature")
    if not signature:
        return
    release = ctx.runtime.redis.register_script(_RELEASE_IF_HELD)
    release(keys=[ctx.runtime.key("inflight", signature)], args=[ctx.plan_id])


class _Unsettled(Exception):
    """This round did not settle the plan; tenacity decides whether and when to try again."""


@dataclass
class _SettleState:
    intent: dict[str, Any]
    must_reconcile: bool
    last_error: dict[str, Any] | None = None
    last_outcome: Outcome | None = None
    reconciled_absent: bool = False


def _settle(ctx: ExecutionContext, record: PlanRecord) -> PlanRecord:
    """Send (at most once per plan) and reconcile until the outcome is known, within bounds."""
    settings = ctx.runtime.settings
    action = ctx.action
    params = action.params_model.model_validate(ctx.plan.params)
    intent = dict(record.intent or {})
    # Anything sent before (by this worker or one that died): for calls without a token, look before sending.
    state = _SettleState(intent=intent, must_reconcile=intent.get("sends", 0) > 0)
    holder = [record]
    retrying = Retrying(
        stop=stop_after_attempt(settings.call_attempts),
        wait=wait_exponential(multiplier=settings.retry_base_seconds, max=settings.retry_max_seconds),
        retry=retry_if_exception_type(_Unsettled),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                settled = _settle_round(ctx, holder, params, state)
                if settled is not None:
                    return settled
                raise _Unsettled()
    except _Unsettled:
        pass
    return _give_up(ctx, holder[0], params, state)


def _settle_round(
    ctx: ExecutionContext, holder: list[PlanRecord], params: Any, state: _SettleState
) -> PlanRecord | None:
    """One round: reconcile if the last outcome is unknown, else send. Returns the record once settled."""
    action = ctx.action
    if state.must_reconcile and action.idempotency != Idempotency.CLIENT_TOKEN:
        try:
            _settle_delay(ctx, state.intent)
            found = action.reconcile(ctx, params, state.intent)
        except LeaseLost:
            raise
        except Exception as exc:
            state.last_error, state.last_outcome, state.reconciled_absent = describe(exc), Outcome.UNKNOWN, False
            log.warning("reconcile_failed", plan_id=ctx.plan_id, error=state.last_error)
            return None
        if found.found is not None:
            return _succeed(ctx, holder[0], {**found.found, "reconciled": True}, "found by reconciliation")
        state.reconciled_absent = True
    if ctx.plan.expires_at and ctx.now() >= ctx.plan.expires_at:
        # Never send after expires_at. Expired only when nothing can exist; otherwise a person decides.
        if state.intent.get("sends", 0) == 0 or state.reconciled_absent:
            _release_signature(ctx, holder[0])
            return ctx.runtime.ledger.transition(holder[0], PlanState.EXPIRED, "expired before it was sent")
        return _needs_attention(
            ctx.runtime, holder[0], "expired while its outcome is unknown",
            {"code": "ExpiredOutcomeUnknown", "message": "expires_at passed after a send whose outcome is unknown",
             "intent": state.intent, "last_error": state.last_error},
        )
    # Write down that a send is about to happen, then send.
    state.intent["sends"] = state.intent.get("sends", 0) + 1
    state.intent["last_send_at"] = ctx.now().isoformat()
    holder[0] = ctx.runtime.ledger.update(holder[0], f"send {state.intent['sends']}", intent=state.intent)
    try:
        result = action.submit(ctx, params, state.intent)
    except LeaseLost:
        raise
    except Exception as exc:
        outcome = classify(exc)
        code = error_code(exc)
        state.last_error, state.last_outcome = describe(exc), outcome
        if code in action.done_signals:
            state.must_reconcile, state.last_outcome = True, Outcome.UNKNOWN
            return None
        if outcome == Outcome.TERMINAL:
            _release_signature(ctx, holder[0])
            return ctx.runtime.ledger.transition(
                holder[0], PlanState.FAILED, f"AWS refused: {code}", error=state.last_error
            )
        state.must_reconcile = outcome != Outcome.NOT_SENT or state.must_reconcile
        state.reconciled_absent = False
        log.warning("send_failed", plan_id=ctx.plan_id, outcome=outcome.value, error=state.last_error)
        return None
    return _succeed(ctx, holder[0], result, "AWS accepted the call")


def _settle_delay(ctx: ExecutionContext, intent: dict[str, Any]) -> None:
    """AWS's describe calls are eventually consistent: a purchase may take a moment to show. A read that could
    lead to a re-send waits until COMMITD_RECONCILE_DELAY_SECONDS have passed since the last send."""
    last = intent.get("last_send_at")
    if not last:
        return
    since_send = (ctx.now() - datetime.fromisoformat(last)).total_seconds()
    remaining = ctx.runtime.settings.reconcile_delay_seconds - since_send
    if remaining > 0:
        if ctx.lease is not None:
            ctx.lease.ensure_held()
        time.sleep(remaining)


def _give_up(ctx: ExecutionContext, record: PlanRecord, params: Any, state: _SettleState) -> PlanRecord:
    """Out of attempts. One last look settles it when it can; otherwise a person decides."""
    action = ctx.action
    try:
        _settle_delay(ctx, state.intent)
        found = action.reconcile(ctx, params, state.intent)
        if found.found is not None:
            return _succeed(ctx, record, {**found.found, "reconciled": True}, "found by reconciliation")
        # The reads, made after AWS had time to show it, confirm nothing exists: the plan failed, nothing spent.
        _release_signature(ctx, record)
        return ctx.runtime.ledger.transition(
            record, PlanState.FAILED, "AWS never completed the call; nothing was bought", error=state.last_error or {}
        )
    except LeaseLost:
        raise
    except Exception as exc:
        state.last_error = describe(exc)
    return _needs_attention(
        ctx.runtime,
        record,
        "outcome unknown after bounded reconciliation",
        {
            "code": "OutcomeUnknown",
            "message": "the call may or may not have taken effect; check AWS before settling this plan "
            "(commitd plans resolve)",
            "last_error": state.last_error,
            "intent": state.intent,
        },
    )


def _succeed(ctx: ExecutionContext, record: PlanRecord, result: dict[str, Any], note: str) -> PlanRecord:
    result = {**result, "aws_calls": ctx.calls[-10:]}
    record = ctx.runtime.ledger.transition(record, PlanState.SUCCEEDED, note, result=result, error=None)
    _release_signature(ctx, record)
    return record


def _needs_attention(runtime: Runtime, record: PlanRecord, note: str, error: dict[str, Any]) -> PlanRecord:
    return runtime.ledger.transition(record, PlanState.NEEDS_ATTENTION, note, error=error)
