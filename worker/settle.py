"""The send/reconcile loop: send at most once per plan, and settle every unknown outcome by reading AWS.

The executor's bookkeeping (``SendBook``) lives beside the action's intent in the plan record: how many sends were
recorded, when (on Redis's clock, the one clock all workers share), whether a holder was inside a send when it
stopped, until when a new holder must wait. docs/exactly-once.md states the protocol and its assumptions; in short:

1. a resumed plan always reconciles before it sends, whatever the counter says (the counter may be a lost write);
2. a send starts only when the lease has more time left than the send can take (``SendGuard``), after its record
   is durable; a worker taking over from a holder that stopped inside a send waits until the old lease plus the
   margin has passed, then reconciles;
3. "absent" is conclusive only after the last send's timeouts, the margin and AWS's consistency delay; until then
   the plan is re-queued with a delay (no attempt used, no sleeping worker);
4. found → claimed and succeeded; several candidates → a person decides at once; a pending AWS operation → look
   again later; after success of a call without a token, a later read looks for look-alikes (``worker.verify``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import redis
from pydantic import BaseModel, ConfigDict
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from config.accounts import AccountConfig
from config.settings import ConfigurationError
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Pending,
    Reconciled,
    Submitted,
)
from worker.claims import Claims
from worker.controls import cap_error, pause_note, pause_over, reserve_budget, settle_budget
from worker.durability import DurabilityUnavailable
from worker.errors import Outcome, classify, describe, error_code
from worker.handle import PlanHandle
from worker.lease import Lease, LeaseLost, SignatureLock, redis_now_ms
from worker.ledger import ConcurrentUpdate, Ledger, PlanRecord
from worker.logs import get_logger
from worker.plans import PlanEnvelope, PlanState
from worker.requeue import RequeueLater
from worker.runtime import Runtime
from worker.testhooks import checkpoint

log = get_logger("commitd.settle")


class SendBook(BaseModel):
    """The executor's bookkeeping of a plan's sends (times in milliseconds on Redis's clock)."""

    model_config = ConfigDict(extra="forbid")

    sends: int = 0
    first_send_ms: int | None = None
    last_send_ms: int | None = None
    sending_holder: str | None = None  # set from just before a send until its outcome is recorded
    gave_up: bool = False  # out of rounds: a conclusive absence now fails the plan instead of sending again
    intent_aws_time: datetime | None = None
    worker_clock_skew_s: float | None = None
    lock_key: str | None = None
    accepted: dict[str, Any] | None = None  # AWS's answer to an asynchronous operation it accepted (followed)
    pending_since_ms: int | None = None  # when reconciliation first found the AWS operation still in progress
    done_signal: dict[str, Any] | None = None  # AWS's "already done" answer to the last send, until a read settles it


@dataclass
class PlanRun:
    """One run of one plan by one worker: everything the loop needs, explicitly."""

    runtime: Runtime
    action: Action[Any, Any]
    plan: PlanEnvelope
    account: AccountConfig
    lease: Lease
    record: PlanRecord
    claims: Claims
    handle: PlanHandle
    params: Any = None
    intent: Intent | None = None
    book: SendBook = field(default_factory=SendBook)
    conclusively_absent: bool = False
    last_error: dict[str, Any] | None = None

    @property
    def ledger(self) -> Ledger:
        return self.runtime.ledger

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id

    def now_ms(self) -> int:
        return redis_now_ms(self.runtime.redis)

    def save_book(self, note: str, ledger: Ledger | None = None) -> None:
        self.record = (ledger or self.ledger).update(self.record, note, book=self.book.model_dump(mode="json"))

    def transition(self, to: PlanState, note: str, **changes: Any) -> PlanRecord:
        self.record = self.ledger.transition(self.record, to, note, book=self.book.model_dump(mode="json"), **changes)
        settle_budget(self.runtime, self.record)  # used on success, released when nothing was committed
        return self.record

    def wait(self, seconds: float, reason: str) -> RequeueLater:
        """Record why the plan waits (giving back this run's attempt) and return the exception to raise."""
        self.record = self.ledger.update(
            self.record, f"waiting {seconds:.1f} s: {reason}", attempts=max(self.record.attempts - 1, 0),
            book=self.book.model_dump(mode="json"),
        )
        return RequeueLater(reason, max(seconds, 0.05))

    def release_lock(self) -> None:
        if self.book.lock_key:
            SignatureLock(self.runtime.redis, self.book.lock_key, self.plan_id).release()


class SendNotMade(Exception):
    """The guard stopped before the AWS call (Redis went away while recording the send, say): nothing was sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class SendGuard:
    """What happens right before and after the mutating call (``PlanHandle.send`` calls it)."""

    def __init__(self, run: PlanRun) -> None:
        self.run = run
        settings = run.runtime.settings
        self.window_ms = int(settings.send_window * 1000)
        # The send record and the wait for its durability go over one connection (WAIT/WAITAOF count the writes
        # of the connection that asks).
        self.connection = run.runtime.send_record_redis
        self.durability = run.runtime.send_record_durability
        self.ledger = Ledger(self.connection, settings.key_prefix, results_maxlen=settings.results_maxlen)

    def _fence(self) -> int:
        remaining, now_ms = self.run.lease.renew_remaining()
        if remaining < self.window_ms:  # the settings forbid this; a clock jump or a slow Redis could cause it
            raise LeaseLost(f"lease has {remaining} ms left, a send may take {self.window_ms} ms")
        return now_ms

    def before_send(self) -> None:
        try:
            self._before_send()
        except (LeaseLost, DurabilityUnavailable, RequeueLater):
            raise
        except Exception as exc:  # anything else before the call: the call was not made
            raise SendNotMade(exc) from exc

    def _before_send(self) -> None:
        run = self.run
        now_ms = self._fence()
        book = run.book
        book.sends += 1
        book.first_send_ms = book.first_send_ms or now_ms
        book.last_send_ms = now_ms
        book.sending_holder = run.runtime.worker_id
        run.save_book(f"send {book.sends}", self.ledger)
        method = self.durability.wait()
        self._fence()  # the lease check: nothing but the hook below stands between it and the call
        log.info("send_starting", plan_id=run.plan_id, send=book.sends, durability=method)
        checkpoint("BEFORE_SEND")

    def after_send(self, outcome: str) -> None:
        checkpoint("AFTER_SEND")


class _Unsettled(Exception):
    """This round did not settle the plan; tenacity decides whether and when to try again."""


def settle(run: PlanRun, resumed: bool) -> PlanRecord:
    """Send (at most once per plan) and reconcile until the outcome is known, within bounds."""
    settings = run.runtime.settings
    run.handle.accepted = run.book.accepted
    must_reconcile = [resumed or run.book.sends > 0]
    if resumed and run.book.sending_holder:
        # The last holder stopped inside a send: it may still send until its lease plus the margin have passed,
        # which the absence window below waits out before anything is concluded from an empty read.
        run.book.sending_holder = None
        run.save_book("took over from a holder that stopped during a send")
    retrying = Retrying(
        stop=stop_after_attempt(settings.call_attempts),
        wait=wait_exponential(multiplier=settings.retry_base_seconds, max=settings.retry_max_seconds),
        retry=retry_if_exception_type(_Unsettled),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                settled = _round(run, must_reconcile)
                if settled is not None:
                    return settled
                raise _Unsettled()
    except _Unsettled:
        pass
    return _give_up(run)


def _round(run: PlanRun, must_reconcile: list[bool]) -> PlanRecord | None:
    """One round: reconcile when the last outcome is unknown, else send. Returns the record once settled."""
    if must_reconcile[0]:
        settled = _reconcile(run)
        if settled is not None:
            return settled
        if not run.conclusively_absent:
            return None  # the read failed: another round
        must_reconcile[0] = False
    blocked = _before_sending(run)
    if blocked is not None:
        return blocked
    try:
        submitted = run.action.submit(run.handle, run.params, run.intent)
    except (LeaseLost, RequeueLater):
        raise
    except SendNotMade as exc:
        # Whether the send record was written is unknown: read it back (a recorded send that was not made only
        # makes reconciliation more careful), and try again in the next round.
        fresh = run.ledger.get(run.plan_id)
        assert fresh is not None
        run.record, run.book = fresh, SendBook.model_validate(fresh.book or {})
        run.book.sending_holder = None
        run.last_error = describe(exc.cause)
        log.warning("send_not_made", plan_id=run.plan_id, error=run.last_error)
        return None
    except DurabilityUnavailable as exc:
        # The call was not made: the record of it is withdrawn, and what held before it holds (nothing exists).
        run.book.sends -= 1
        run.book.sending_holder = None
        run.conclusively_absent = True
        return _nothing_more_sent(run, "DurabilityUnavailable", str(exc))
    except Exception as exc:
        return _send_failed(run, exc, must_reconcile)
    if submitted.follow is not None:
        return _follow(run, submitted)
    return record_success(run, submitted, "AWS accepted the call")


def _follow(run: PlanRun, submitted: Submitted) -> NoReturn:
    """AWS accepted an asynchronous operation: keep its answer, and look again later (``reconcile`` follows it
    to its end; the worker never sleeps on it)."""
    run.book.accepted = submitted.result
    run.book.sending_holder = None
    run.handle.accepted = submitted.result
    raise run.wait(run.runtime.settings.reconcile_interval_seconds, f"AWS accepted; {submitted.follow}")


def _reconcile(run: PlanRun) -> PlanRecord | None:
    settings = run.runtime.settings
    try:
        found: Reconciled = run.action.reconcile(run.handle, run.params, run.intent)
    except (LeaseLost, RequeueLater):
        raise
    except redis.RedisError:
        raise  # Redis failed, not AWS: this run stops; the plan is sent again and reconciles again
    except Exception as exc:
        run.last_error = describe(exc)
        log.warning("reconcile_failed", plan_id=run.plan_id, error=run.last_error)
        return None
    if isinstance(found, Found):
        if run.book.accepted is not None:  # an operation AWS accepted, followed to its end: not a lost answer
            return record_success(run, Submitted({**found.result, "followed": True}, found.resource_ids),
                                  "AWS completed the operation")
        return record_success(run, Submitted(found.result, found.resource_ids), "found by reconciliation",
                              reconciled=True)
    if isinstance(found, Ambiguous):
        return needs_attention(run, "several candidates match; a person decides", {
            "code": "AmbiguousOutcome", "message": f"several {run.action.nouns.resource} could be this plan's: "
            f"{list(found.candidates)}; check AWS and settle with commitd plans resolve",
            "candidates": list(found.candidates)})
    if isinstance(found, Failed):
        run.release_lock()
        return run.transition(PlanState.FAILED, f"AWS operation failed: {found.code}", error={
            "code": found.code, "message": found.message, **({"details": found.evidence} if found.evidence else {})})
    if isinstance(found, Pending):
        now = run.now_ms()
        run.book.pending_since_ms = run.book.pending_since_ms or now
        waited = (now - run.book.pending_since_ms) / 1000
        if waited > settings.max_pending_seconds:
            return needs_attention(run, "AWS operation still in progress", {
                "code": "OperationStillPending", "message": f"AWS's operation has been in progress for "
                f"{waited:.0f} s (COMMITD_MAX_PENDING_SECONDS {settings.max_pending_seconds:.0f}): {found.reason}; "
                "check it in AWS and settle this plan with commitd plans resolve", "evidence": found.evidence})
        raise run.wait(settings.reconcile_interval_seconds, f"AWS operation in progress: {found.reason}")
    assert isinstance(found, Absent)
    absent_after = absence_conclusive_after_ms(run)
    now = run.now_ms()
    if absent_after is not None and now < absent_after:
        delay = min(settings.reconcile_interval_seconds, (absent_after - now) / 1000)
        raise run.wait(delay, "nothing found yet; AWS may still apply or show the last send")
    run.conclusively_absent = True
    if run.book.done_signal is not None:
        signal = run.book.done_signal
        return _nothing_more_sent(run, str(signal.get("code")), f"AWS answered {signal.get('code')} "
                                  f"({signal.get('message')}), and nothing shows this plan's effect")
    if run.book.gave_up:
        return _nothing_more_sent(run, "OutOfRounds", "rounds used up and AWS shows nothing")
    return None


def absence_conclusive_after_ms(run: PlanRun) -> int | None:
    """When an empty read proves nothing was done. The send was recorded at ``last_send_ms``; its call started at
    most the durability wait later, with at least the send window of lease left, so the lease of a holder that
    stopped inside it expired by then plus the window, and a new holder acquired it after that. The call reached
    AWS by then, unless its holder paused longer than the margin (docs/exactly-once.md, residual risks), and
    shows in describe calls after the consistency delay. Absence is conclusive after all of that: this is also
    the wait of a worker taking over from one that stopped inside a send (the old lease plus the margin)."""
    if not run.book.last_send_ms:
        return None
    s = run.runtime.settings
    window = s.durability_timeout_ms / 1000 + s.send_window + s.send_margin_seconds + s.consistency_delay_seconds
    return run.book.last_send_ms + int(window * 1000)


def _before_sending(run: PlanRun) -> PlanRecord | None:
    """Never send after expires_at, when the account's current configuration no longer allows the plan, while a
    pause is in force, or beyond the account's spend caps."""
    checkpoint("BEFORE_CONTROLS")
    if run.plan.expires_at and run.handle.now() >= run.plan.expires_at:
        if run.book.sends == 0 or run.conclusively_absent:
            run.release_lock()
            return run.transition(PlanState.EXPIRED, "expired before it was sent")
        return needs_attention(run, "expired while its outcome is unknown", {
            "code": "ExpiredOutcomeUnknown", "message": "expires_at passed after a send whose outcome is unknown",
            "last_error": run.last_error})
    problem = account_refusal(run)
    if problem is not None:
        return _nothing_more_sent(run, "AccountConfigurationChanged", problem)
    settings = run.runtime.settings
    pause = pause_over(run.runtime, run.action.family.name, run.plan.account_id)
    if pause is not None:  # the last look before the call: wait, and go on by itself after a resume
        raise run.wait(settings.pause_recheck_seconds, pause_note(pause))
    cap = reserve_budget(run.runtime, run.plan_id, run.account, run.intent)  # held already: a no-op
    if cap is not None:  # the cap was lowered, or the reservation lost, since the intent was recorded
        error = cap_error(cap, run.account.account_id)
        if run.account.limits.on_cap == "fail":
            return _nothing_more_sent(run, "SpendCapReached", error["message"])
        raise run.wait(settings.cap_recheck_seconds, f"waiting for budget: {error['message']}")
    return None


def account_refusal(run: PlanRun) -> str | None:
    """The account as configured now (the registry is reloaded when its file changes): may this plan be sent?"""
    try:
        account = run.runtime.accounts.get(run.plan.account_id)
    except ConfigurationError as exc:
        raise run.wait(run.runtime.settings.reconcile_interval_seconds, f"account registry unreadable: {exc}") from None
    if account is None:
        return f"account {run.plan.account_id} is no longer configured"
    run.account = account
    if not account.allows(run.action.action):
        return f"{run.action.action} is no longer allowed for account {account.account_id}"
    block = run.action.family.optional_block
    if block is not None and not account.grants_block(block):
        return f"account {account.account_id} no longer grants the optional '{block}' block"
    if account.read_only:
        return f"account {account.account_id} became read-only (a trial role)"
    commitment = run.intent.commitment_usd if run.intent is not None else None
    limit = account.limits.max_commitment_usd_per_plan
    if commitment is not None and limit is not None and commitment > limit:
        return f"the plan commits {commitment} USD; account {account.account_id} now allows at most {limit} per plan"
    upfront_limit = account.limits.max_upfront_usd_per_plan
    upfront = getattr(run.intent, "upfront_usd", None)
    if upfront is not None and upfront_limit is not None and upfront > upfront_limit:
        return f"the plan pays {upfront} USD upfront; account {account.account_id} now allows at most {upfront_limit}"
    return None


def _nothing_more_sent(run: PlanRun, code: str, message: str) -> PlanRecord:
    """Stop without sending: failed when nothing can exist, a person decides otherwise."""
    run.release_lock()
    if run.book.sends == 0 or run.conclusively_absent:
        return run.transition(PlanState.FAILED, message, error={
            "code": code, "message": f"{message}; nothing was {run.action.nouns.done}"})
    return needs_attention(run, message, {"code": code, "message": f"{message}; an earlier send's outcome is unknown",
                                          "last_error": run.last_error})


def _send_failed(run: PlanRun, exc: Exception, must_reconcile: list[bool]) -> PlanRecord | None:
    outcome = classify(exc)
    code = error_code(exc)
    run.last_error = describe(exc)
    run.book.sending_holder = None
    if code in run.action.done_signals:
        # "Already done" is a reason to look, never to send again: if the look finds nothing, the plan fails with
        # AWS's answer (below, in _reconcile) instead of re-sending a call AWS refuses.
        run.book.done_signal = run.last_error
        must_reconcile[0], run.conclusively_absent = True, False
        return None
    if outcome == Outcome.TERMINAL:
        run.release_lock()
        return run.transition(PlanState.FAILED, f"AWS refused: {code}", error=run.last_error)
    if outcome in (Outcome.SERVER_ERROR, Outcome.UNKNOWN):
        # The call may have taken effect: never re-send before a read shows it did not.
        must_reconcile[0], run.conclusively_absent = True, False
    else:
        # Throttled, or the connection never opened: AWS did nothing, so nothing exists, as before this send
        # (which went out only when nothing had been sent or absence was conclusive).
        run.conclusively_absent = True
    log.warning("send_failed", plan_id=run.plan_id, outcome=outcome.value, error=run.last_error)
    return None


def record_success(run: PlanRun, submitted: Submitted, note: str, reconciled: bool = False) -> PlanRecord:
    """Claim what AWS made, then record success. A claim held by another plan, or a plan already settled with
    other resources, is a duplicate: a person must see it."""
    conflicts = run.claims.claim(run.plan_id, submitted.resource_ids)
    run.book.sending_holder = None
    if not run.lease.held():
        run.runtime.audit.append({"event": "sent_after_lease_lost", "plan_id": run.plan_id,
                                  "resource_ids": list(submitted.resource_ids)})
        run.runtime.metrics.incr("sent_after_lease_lost")
    if conflicts:
        return needs_attention(run, "a resource of this plan is claimed by another plan", {
            "code": "ClaimConflict", "message": f"AWS returned {list(conflicts)}, which plans "
            f"{sorted(set(conflicts.values()))} already hold: one of them may be a duplicate", "conflicts": conflicts})
    try:
        run.action.after_success(run.handle, submitted.resource_ids)
    except Exception as exc:  # tags and the like: the outcome stands without them
        log.warning("after_success_failed", plan_id=run.plan_id, error=describe(exc))
    result = {**submitted.result, "resource_ids": list(submitted.resource_ids)}
    if reconciled:
        result["reconciled"] = True
    if run.intent is not None and run.intent.commitment_usd is not None:
        result["commitment_usd"] = str(run.intent.commitment_usd)
    try:
        record = run.transition(PlanState.SUCCEEDED, note, result=result, error=None,
                                verification="due" if run.action.idempotency == Idempotency.NONE else None)
    except ConcurrentUpdate:
        return _settled_elsewhere(run, submitted)
    from worker.verify import after_success

    # The signature lock released and the look-alike check made due, in one round trip.
    after_success(run.runtime, run.action, run.plan_id, run.book.lock_key, due=record.verification == "due")
    return record


def _settled_elsewhere(run: PlanRun, submitted: Submitted) -> PlanRecord:
    """Another worker moved the plan while this one was sending: if it settled with other resources, both sends
    happened, and the plan needs a person."""
    current = run.ledger.get(run.plan_id)
    assert current is not None
    theirs = set((current.result or {}).get("resource_ids", []))
    if current.state == PlanState.SUCCEEDED and not set(submitted.resource_ids) <= theirs:
        run.record = current
        return needs_attention(run, "sent twice: another worker settled this plan during this worker's send", {
            "code": "DuplicateSend", "message": f"this plan's call was made twice: {sorted(theirs)} and "
            f"{list(submitted.resource_ids)}", "resource_ids": sorted(theirs | set(submitted.resource_ids))})
    raise ConcurrentUpdate(run.plan_id)


def _give_up(run: PlanRun) -> PlanRecord:
    """Out of rounds. One last look settles it when it can; otherwise a person decides."""
    run.book.gave_up = True
    settled = _reconcile(run) if run.book.sends > 0 else None
    if settled is not None:
        return settled
    if run.conclusively_absent or run.book.sends == 0:
        return _nothing_more_sent(run, (run.last_error or {}).get("code", "OutOfRounds"),
                                  f"AWS never completed the call ({(run.last_error or {}).get('code')})")
    return needs_attention(run, "outcome unknown after bounded reconciliation", {
        "code": "OutcomeUnknown", "message": "the call may or may not have taken effect; check AWS before settling "
        "this plan (commitd plans resolve)", "last_error": run.last_error})


def needs_attention(run: PlanRun, note: str, error: dict[str, Any]) -> PlanRecord:
    run.runtime.metrics.incr("needs_attention")
    return run.transition(PlanState.NEEDS_ATTENTION, note, error={**error, "book": run.book.model_dump(mode="json")})

