"""Intake: plans from the Redis stream ``{prefix}plans`` (and ``commitd submit``) into the ledger.

Nothing is dropped: every entry ends as a plan record (accepted or ``rejected`` with a reason a person can act
on), and rejected input is also copied to the dead-letter stream ``{prefix}rejected``. A stream entry is
acknowledged only after its plan is recorded; entries left pending by a dead consumer are claimed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from config.accounts import AccountLimits
from worker.actions import Action
from worker.ledger import SWEPT_STATES, ConcurrentUpdate, InvalidTransition, PlanExists, PlanRecord
from worker.logs import get_logger
from worker.plans import PLAN_ID_CHARS, PlanEnvelope, PlanState, describe_validation_error, regions_for
from worker.runtime import Runtime

log = get_logger("commitd.intake")
GROUP = "commitd-intake"
# A plan id named in text that could not be parsed (too large, or broken further on).
_PLAN_ID_IN_TEXT = re.compile(r'"plan_id"\s*:\s*"([A-Za-z0-9._:-]{1,128})"')


@dataclass(frozen=True)
class IntakeResult:
    plan_id: str
    state: str
    outcome: str  # "accepted", "rejected", "existing", "conflict"
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("accepted", "existing")


class Rejection(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _now() -> datetime:
    return datetime.now(UTC)


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` bytes of ``text`` in UTF-8 (the plan size limit counts bytes, not characters)."""
    return _stored(text).encode()[:limit].decode("utf-8", "ignore")


def _stored(text: str) -> str:
    """Text as it can be stored: a lone surrogate (not encodable in UTF-8) kept visible as an escape (``\\ud83d``)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _check_utf8(raw: bytes) -> None:
    """Bytes that are not UTF-8 are refused, never decoded with replacement characters (that would change the
    plan's text silently). The reason names the field that holds them when the rest parses as JSON."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = ""
        try:  # the bad bytes as lone surrogates: the same search as for a lone surrogate in a field
            path = _unencodable_string(json.loads(raw.decode("utf-8", "surrogateescape")))
            where = f", in {path}" if path else ""
        except (ValueError, RecursionError):
            pass
        raise Rejection(f"plan is not valid UTF-8 (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}{where}); "
                        "send UTF-8 text") from None


def _unencodable_string(value: Any) -> str | None:
    """Where a parsed plan holds a string (or key) with a lone surrogate, which no UTF-8 store can keep: the
    field's path, or None. Iterative: the value may nest deeper than Python's recursion."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path or "plan"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = _stored(str(key))
                if name != key:
                    return f"{path}.{name}".lstrip(".")
                stack.append((child, f"{path}.{key}".lstrip(".")))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


MAX_STORED_DEPTH = 64
SWEEP_BATCH = 200  # plans the sweeper looks at per sweep (the intake reads the stream between sweeps)


def _nesting(value: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: the value may be deeper than Python's recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _field_text(value: Any) -> str:
    """A stream field as text that can be stored: bytes that are not UTF-8 kept visible as ``\\xNN``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return _stored(str(value))


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type ('an array', not Python's 'list')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


class Intake:
    def __init__(self, runtime: Runtime, actions: dict[str, Action[Any, Any]], enqueue: Any) -> None:
        self.runtime = runtime
        self.actions = actions
        self.enqueue = enqueue  # (family, plan_id) -> None
        self.ledger = runtime.ledger
        self.redis = runtime.redis
        self.stream = runtime.key("plans")
        self.dead_letter = runtime.key("rejected")
        self.scheduled = runtime.key("scheduled")

    # --- one plan --------------------------------------------------------------------------------------------
    def submit_raw(self, raw: str | bytes, source: str, entry_id: str | None = None) -> IntakeResult:
        """Record one plan given as JSON text. Never raises for bad input: bad input becomes a rejection."""
        limit = self.runtime.settings.max_plan_bytes
        data: Any = None
        oversized = False
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
        try:
            if isinstance(raw, bytes):
                _check_utf8(raw)
            size = len(_stored(text).encode())
            if size > limit:
                oversized = True
                raise Rejection(f"plan is {size} bytes; the limit is {limit} (COMMITD_MAX_PLAN_BYTES)")
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise Rejection(f"not valid JSON: {exc}") from None
            except RecursionError:
                raise Rejection("not valid JSON: nested too deeply") from None
            if not isinstance(data, dict):
                raise Rejection(f"a plan is a JSON object, not {_json_type(data)}")
            return self.submit(data, source)
        except Rejection as rejection:
            plan_id = self._rejected_id(data, text, entry_id, oversized)
            keep = data if isinstance(data, dict) and _unencodable_string(data) is None else None
            return self._reject(plan_id, keep, _stored(text), rejection.reason, source)

    def submit(self, data: dict[str, Any], source: str) -> IntakeResult:
        bad = _unencodable_string(data)
        if bad is not None:
            raise Rejection(f"{bad}: contains a lone UTF-16 surrogate (text cut through a character, e.g. an "
                            "emoji); send valid Unicode")
        try:
            envelope = PlanEnvelope.model_validate(data)
        except ValidationError as exc:
            raise Rejection(describe_validation_error(exc)) from None
        action = self._action(envelope.action)
        envelope = envelope.model_copy(update={"action": action.action})
        account = self.runtime.accounts.get(envelope.account_id)
        if account is None:
            raise Rejection(f"account_id: {envelope.account_id} is not a configured account")
        if not account.allows(action.action):
            raise Rejection(f"action: {action.action} is not allowed for account {envelope.account_id}")
        block = action.family.optional_block
        if block is not None and not account.grants_block(block):
            raise Rejection(f"action: {action.action} is in the optional '{block}' block of the production role, "
                            f"which account {envelope.account_id} does not grant (optional_blocks)")
        if envelope.region not in regions_for(action.service):
            raise Rejection(f"region: {envelope.region!r} is not a region where {action.service} exists")
        try:
            params = action.params_model.model_validate(envelope.params)
        except ValidationError as exc:
            raise Rejection(describe_validation_error(exc, "params")) from None
        self._check_limits(action, params, envelope.account_id, account.limits)
        return self._record(envelope, source)

    @staticmethod
    def _check_limits(action: Action[Any, Any], params: Any, account_id: str, limits: AccountLimits) -> None:
        """The most the plan's own ceilings allow it to commit, against the account's limits (the executor checks
        the real price again right before the call)."""
        commitment = action.max_commitment_usd(params)
        if commitment is None:
            return
        if limits.max_commitment_usd_per_plan is not None and commitment > limits.max_commitment_usd_per_plan:
            raise Rejection(
                f"params: the plan may commit up to {commitment} USD in total (upfront plus recurring over the "
                f"term); account {account_id} allows at most {limits.max_commitment_usd_per_plan} per plan"
            )
        upfront = getattr(params, "max_upfront_usd", None)
        if upfront is not None and limits.max_upfront_usd_per_plan is not None \
                and upfront > limits.max_upfront_usd_per_plan:
            raise Rejection(
                f"params: the plan may spend up to {upfront} USD upfront; account {account_id} allows at most "
                f"{limits.max_upfront_usd_per_plan} per plan"
            )

    def _action(self, name: str) -> Action[Any, Any]:
        from tasks.families import family_of

        for key, action in self.actions.items():
            if key.lower() == name.lower():
                return action
        callers = sorted(key for key, action in self.actions.items()
                         if name.lower() in {p.lower() for p in action.permissions})
        if callers:  # a role "write" action that is a step of another (redshift:GetReservedNodeExchangeOfferings)
            raise Rejection(f"action: {name} is not carried out on its own; it is a call {', '.join(callers)} makes: "
                            "plan that action")
        if family_of(name) is not None:
            raise Rejection(f"action: {name} is in the production role but not supported by this commitd yet")
        raise Rejection(f"action: {name!r} is not one of the IAM write actions commitd carries out")

    def _record(self, envelope: PlanEnvelope, source: str) -> IntakeResult:
        canonical = envelope.canonical()
        stone = self.ledger.tombstone(envelope.plan_id)
        if stone is not None:  # purged: a replayed entry or a resubmission is never carried out again
            same = stone["canonical_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
            message = (f"plan_id {envelope.plan_id} was {stone['state']} and purged; "
                       + ("nothing changed" if same else "refused: it already ran with different content"))
            if not same:
                self._dead_letter(envelope.plan_id, canonical, message, source)
            return IntakeResult(envelope.plan_id, stone["state"], "existing" if same else "conflict", message)
        # Create first: the script refuses an existing plan_id atomically, so no read is needed before.
        now = _now()
        record = PlanRecord(
            plan_id=envelope.plan_id,
            state=PlanState.RECEIVED,
            plan=envelope.model_dump(mode="json"),
            canonical=canonical,
            received_at=now,
            updated_at=now,
        )
        try:
            record = self.ledger.create(record, note=f"received from {source}")
        except PlanExists:
            existing = self.ledger.get(envelope.plan_id)
            assert existing is not None
            return self._existing(existing, canonical, source)
        record = self._route_once(record, envelope)
        return IntakeResult(record.plan_id, record.state.value, "accepted")

    def _route_once(self, record: PlanRecord, envelope: PlanEnvelope) -> PlanRecord:
        """Route a ``received`` plan; if another intake routed it first, report what it did."""
        try:
            return self.route(record, envelope)
        except ConcurrentUpdate:
            current = self.ledger.get(record.plan_id)
            assert current is not None
            return current

    def route(self, record: PlanRecord, envelope: PlanEnvelope) -> PlanRecord:
        """received → expired | scheduled | queued (and the task message sent)."""
        now = _now()
        if envelope.expires_at and envelope.expires_at <= now:
            return self.ledger.transition(record, PlanState.EXPIRED, "expired before intake")
        if envelope.not_before and envelope.not_before > now:
            record = self.ledger.transition(record, PlanState.SCHEDULED, f"not before {envelope.not_before}")
            self.redis.zadd(self.scheduled, {record.plan_id: envelope.not_before.timestamp()})
            return record
        record = self.ledger.transition(record, PlanState.QUEUED, "queued for its family's worker")
        self.enqueue(self.actions[envelope.action].family, record.plan_id)
        return record

    def _existing(self, existing: PlanRecord, canonical: str, source: str) -> IntakeResult:
        if existing.canonical == canonical:
            if existing.state == PlanState.RECEIVED and existing.plan is not None:
                # Recorded, then the intake died before routing it (its stream entry was claimed again, or
                # the same plan was submitted again): finish the job.
                existing = self._route_once(existing, PlanEnvelope.model_validate(existing.plan))
            return IntakeResult(existing.plan_id, existing.state.value, "existing", "already recorded; nothing changed")
        reason = f"plan_id {existing.plan_id} already exists with different content; refused as a conflict"
        self._dead_letter(existing.plan_id, canonical, reason, source)
        self.runtime.audit.append({"event": "plan_conflict", "plan_id": existing.plan_id, "source": source})
        return IntakeResult(existing.plan_id, existing.state.value, "conflict", reason)

    # --- rejections ----------------------------------------------------------------------------------------
    def _rejected_id(self, data: Any, text: str, entry_id: str | None, oversized: bool = False) -> str:
        """The plan's own id when it has a valid one (for a plan too large to parse, when its text names exactly
        one), else ``rejected-<stream entry id, '-' as '.'>`` or ``rejected-<16 hex>``."""
        candidate = data.get("plan_id") if isinstance(data, dict) else None
        if oversized:
            named = _PLAN_ID_IN_TEXT.findall(text)
            candidate = named[0] if len(named) == 1 else None
        if isinstance(candidate, str) and PLAN_ID_CHARS.fullmatch(candidate):
            return candidate
        digest = hashlib.sha256(_stored(text).encode()).hexdigest()[:16]
        return f"rejected-{entry_id.replace('-', '.') if entry_id else digest}"

    def _reject(self, plan_id: str, data: dict[str, Any] | None, text: str, reason: str, source: str) -> IntakeResult:
        if data is not None and _nesting(data) > MAX_STORED_DEPTH:
            data = None  # too deep to dump safely (json.dumps recurses): its text is kept instead
        limit = self.runtime.settings.max_plan_bytes
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":")) if data is not None else text
        if len(canonical.encode()) > limit:  # stored (and compared) as its digest
            canonical = hashlib.sha256(canonical.encode()).hexdigest()
        existing = self.ledger.get(plan_id)
        if existing is not None:
            if existing.canonical == canonical and existing.state == PlanState.RECEIVED:
                # Recorded, then the intake died before rejecting it: finish the job.
                return self._finish_rejection(existing, text, reason, source)
            if existing.canonical == canonical:
                return IntakeResult(plan_id, existing.state.value, "existing", existing.error["message"]
                                    if existing.error else "already recorded")
            self._dead_letter(plan_id, _clip(text, limit), reason, source)
            return IntakeResult(plan_id, existing.state.value, "conflict",
                                f"{reason} (and plan_id {plan_id} already exists)")
        now = _now()
        record = PlanRecord(
            plan_id=plan_id,
            state=PlanState.RECEIVED,
            # Only content the ledger can store and read back (pydantic's JSON parser stops at depth 200);
            # the dead letter keeps the text either way.
            plan=data if data is not None and _nesting(data) <= MAX_STORED_DEPTH else None,
            canonical=canonical,
            received_at=now,
            updated_at=now,
        )
        try:
            record = self.ledger.create(record, note=f"received from {source}")
        except PlanExists:  # another intake recorded it a moment ago: decide again against its record
            return self._reject(plan_id, data, text, reason, source)
        return self._finish_rejection(record, text, reason, source)

    def _finish_rejection(self, record: PlanRecord, text: str, reason: str, source: str) -> IntakeResult:
        try:
            self.ledger.transition(record, PlanState.REJECTED, reason,
                                   error={"code": "InvalidPlan", "message": reason})
        except ConcurrentUpdate:
            current = self.ledger.get(record.plan_id)  # another intake rejected it (and wrote the dead letter)
            assert current is not None
            return IntakeResult(record.plan_id, current.state.value, "existing", reason)
        self._dead_letter(record.plan_id, _clip(text, self.runtime.settings.max_plan_bytes), reason, source)
        log.warning("plan_rejected", plan_id=record.plan_id, reason=reason, source=source)
        return IntakeResult(record.plan_id, PlanState.REJECTED.value, "rejected", reason)

    def _dead_letter(self, plan_id: str, text: str, reason: str, source: str) -> None:
        self.redis.xadd(
            self.dead_letter,
            {"plan_id": plan_id, "reason": reason, "source": source, "plan": text, "at": _now().isoformat()},
        )

    # --- the stream ----------------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def consume_once(self, consumer: str, block_ms: int = 1000, count: int = 50, claim_idle_ms: int = 30_000) -> int:
        """Read (and re-claim stale) entries, record each, acknowledge each after it is recorded."""
        self.ensure_group()
        handled = 0
        _, claimed, _ = self.redis.xautoclaim(self.stream, GROUP, consumer, min_idle_time=claim_idle_ms, count=count)
        batches = [claimed] if claimed else []
        response = self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        for _, entries in response or []:
            batches.append(entries)
        for entries in batches:
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    result = self._consume_entry(eid, fields)
                except redis.RedisError as exc:
                    # Redis, not the entry: leave it pending (claimed again later) and go on with the others.
                    log.error("intake_entry_redis_error", entry_id=eid, error=str(exc))
                    continue
                except Exception as exc:  # caused by the entry's content: it ends rejected, never stalls the rest
                    result = self._unprocessable(eid, fields, exc)
                self.redis.xack(self.stream, GROUP, eid)
                log.info("intake_entry", entry_id=eid, plan_id=result.plan_id, outcome=result.outcome,
                         state=result.state)
                handled += 1
        return handled

    def _consume_entry(self, eid: str, fields: dict[Any, Any]) -> IntakeResult:
        raw = fields.get(b"plan", fields.get("plan"))
        if raw is None:
            text = json.dumps({_field_text(k): _field_text(v) for k, v in fields.items()})
            return self._reject(self._rejected_id(None, text, eid), None, text, "stream entry has no 'plan' field",
                                f"stream {eid}")
        return self.submit_raw(raw, f"stream {eid}", eid)

    def _unprocessable(self, eid: str, fields: dict[Any, Any], exc: Exception) -> IntakeResult:
        """An entry whose content made the intake fail unexpectedly: reject it with what can be stored safely."""
        log.exception("intake_entry_failed", entry_id=eid, error=type(exc).__name__)
        reason = f"the intake could not process this entry ({type(exc).__name__}); it was not carried out"
        text = json.dumps({_field_text(k): _field_text(v) for k, v in fields.items()})
        return self._reject(f"rejected-{eid.replace('-', '.')}", None, text, reason, f"stream {eid}")

    # --- the sweeper -----------------------------------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Move due scheduled plans to the queue and re-send plans whose worker vanished."""
        counts = {"due": 0, "resent": 0, "routed": 0, "rescheduled": 0, "checks": self._resend_overdue_checks()}
        now = _now()
        for raw in self.redis.zrangebyscore(self.scheduled, 0, now.timestamp()):
            plan_id = raw.decode() if isinstance(raw, bytes) else raw
            record = self.ledger.get(plan_id)
            if record is not None and record.state == PlanState.SCHEDULED:
                envelope = PlanEnvelope.model_validate(record.plan)
                try:
                    if envelope.expires_at and envelope.expires_at <= now:
                        self.ledger.transition(record, PlanState.EXPIRED, "expired while scheduled")
                    else:
                        self.ledger.transition(record, PlanState.QUEUED, "not_before reached")
                        self.enqueue(self.actions[envelope.action].family, plan_id)
                except (ConcurrentUpdate, InvalidTransition):
                    continue  # changed meanwhile (cancelled, or another intake moved it): look again next sweep
                counts["due"] += 1
            self.redis.zrem(self.scheduled, plan_id)
        stalled_after = self.runtime.settings.stalled_after
        lease_seconds = self.runtime.settings.lease_seconds
        # Only the plans idle for at least the shorter threshold are read (an index, not a scan of every plan), and
        # at most SWEEP_BATCH per sweep, longest idle first: with workers down and a large backlog, a sweep over all
        # of it would keep the intake from reading the stream. A plan re-sent restarts its idle clock, so the next
        # sweep takes the next ones.
        for plan_id in self.ledger.idle_in_flight(min(stalled_after, lease_seconds), limit=SWEEP_BATCH):
            record = self.ledger.get(plan_id)
            if record is None or record.state not in SWEPT_STATES:
                continue
            if record.state == PlanState.SCHEDULED:
                # Due a while ago and still scheduled: its entry in the schedule was lost (the write after the
                # transition failed). Put it back; the loop above moves it on the next sweep.
                if self.redis.zscore(self.scheduled, plan_id) is None:
                    due = PlanEnvelope.model_validate(record.plan).not_before
                    self.redis.zadd(self.scheduled, {plan_id: due.timestamp() if due else now.timestamp()})
                    log.warning("scheduled_plan_rescheduled", plan_id=plan_id)
                    counts["rescheduled"] += 1
                continue
            idle = (now - record.updated_at).total_seconds()
            threshold = stalled_after if record.state in (PlanState.RECEIVED, PlanState.QUEUED) else lease_seconds
            if record.state == PlanState.RECEIVED:
                if idle >= threshold:
                    self._finish_intake(record)
                    counts["routed"] += 1
                continue
            if idle < threshold or self.redis.exists(self.runtime.key("lease", record.plan_id)):
                continue
            envelope = PlanEnvelope.model_validate(record.plan)
            self.enqueue(self.actions[envelope.action].family, record.plan_id)
            try:
                # Noted in the ledger, which also restarts the idle clock: one re-send per threshold.
                self.ledger.update(record, "re-sent by the sweeper: no worker holds it")
            except ConcurrentUpdate:
                pass  # a worker took it meanwhile; the extra message finds it leased or settled
            counts["resent"] += 1
        return counts

    def _resend_overdue_checks(self) -> int:
        """Look-alike checks whose task message was lost (worker.verify): send them again, one per lease period."""
        from worker.verify import due_verifications, verify_key

        sent = 0
        for plan_id in due_verifications(self.runtime, overdue_by=self.runtime.settings.lease_seconds):
            record = self.ledger.get(plan_id)
            if record is None or record.verification != "due" or record.plan is None:
                self.redis.zrem(verify_key(self.runtime), plan_id)
                continue
            self.enqueue(self.actions[record.plan["action"]].family, plan_id)
            self.redis.zadd(verify_key(self.runtime), {plan_id: self.redis.time()[0]})
            sent += 1
        return sent

    def _finish_intake(self, record: PlanRecord) -> None:
        """A plan recorded as received whose intake stopped before routing it: check and route it now."""
        if record.plan is not None:
            # The same content again: intake's resubmission path finishes the routing (or the rejection).
            self.submit_raw(json.dumps(record.plan), "sweeper")
            return
        reason = "intake stopped before checking this plan, and its content was not kept (too large or not JSON)"
        try:
            self.ledger.transition(record, PlanState.REJECTED, reason, error={"code": "InvalidPlan", "message": reason})
        except (ConcurrentUpdate, InvalidTransition):
            pass  # settled meanwhile

    def run_forever(self, stop: threading.Event, consumer: str | None = None) -> None:
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        last_sweep = last_retention = 0.0
        while not stop.is_set():
            try:
                self.consume_once(consumer, block_ms=500)
                if time.monotonic() - last_sweep >= self.runtime.settings.sweep_interval:
                    self.sweep()
                    last_sweep = time.monotonic()
                if time.monotonic() - last_retention >= self.runtime.settings.retention_interval:
                    from worker.retention import run_retention  # imports this module

                    last_retention = time.monotonic()
                    run_retention(self.runtime)
            except redis.RedisError as exc:
                log.error("intake_redis_error", error=str(exc))
                stop.wait(1.0)
            except Exception:
                # Never let one bad entry or race stop the intake; entries not acknowledged are read again.
                log.exception("intake_error")
                stop.wait(1.0)
