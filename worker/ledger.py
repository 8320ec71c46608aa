"""The plan ledger: one Redis record per plan, changed only by atomic, audited transitions.

A record is a Redis hash ``{prefix}plan:<id>`` with ``record`` (JSON) and ``version``. Every change is a
compare-and-set on the version, done in one Lua script together with the audit entry that describes it, so a
transition and its audit record are never separated, and two workers can never both move a plan. The state
machine itself (which state may follow which) is checked here, before the script runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, Field

from worker.audit import AuditKey, AuditLog, lua_append, lua_check
from worker.plans import TERMINAL_STATES, TRANSITIONS, PlanState
from worker.results import RESULTS_MAXLEN, lua_publish, publish_args, results_stream

IN_FLIGHT_STATES = frozenset({PlanState.RECEIVED, PlanState.QUEUED, PlanState.RUNNING, PlanState.SUBMITTED})
# Every state a plan leaves by itself: the sweeper's index holds all of them, so a plan whose next step was lost
# (a task message, or a scheduled plan's entry in the schedule) is found again.
SWEPT_STATES = IN_FLIGHT_STATES | {PlanState.SCHEDULED}


def _sweep_score(record: PlanRecord) -> str:
    """When the sweeper should first look at the plan: its last change, or for a scheduled plan, when it is due
    (until then it needs nothing). Empty: the plan leaves the index."""
    if record.state not in SWEPT_STATES:
        return ""
    at = record.updated_at.timestamp()
    not_before = (record.plan or {}).get("not_before")
    if record.state == PlanState.SCHEDULED and isinstance(not_before, str):
        at = max(at, datetime.fromisoformat(not_before).timestamp())
    return str(at)

# KEYS: plan, old state index, new state index, audit stream, audit meta, plan index, in-flight index, results
# stream. ARGV: old version ('' to create), new version, record, plan id, received-at score, sweep score, the result
# entry ('' for none) and the results stream's MAXLEN (worker.results), then the audit entry (worker.audit: the
# chain's previous id and the entry's fields).
_WRITE = """
local v = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if v then return {0, 'exists'} end
elseif v ~= ARGV[1] then
  return {0, 'version'}
end
""" + lua_check(4, 5, 9) + """
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'version', ARGV[2])
if KEYS[2] ~= KEYS[3] then redis.call('SREM', KEYS[2], ARGV[4]) end
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[1] == '' then redis.call('ZADD', KEYS[6], ARGV[5], ARGV[4]) end
if ARGV[6] == '' then redis.call('ZREM', KEYS[7], ARGV[4]) else redis.call('ZADD', KEYS[7], ARGV[6], ARGV[4]) end
""" + lua_publish(8, 7, 8) + lua_append(4, 5, 9) + """
return {1, audit_id}
"""


class InvalidTransition(RuntimeError):
    pass


class ConcurrentUpdate(RuntimeError):
    """Another process changed the plan first; reload and decide again."""


class PlanExists(RuntimeError):
    pass


class Transition(BaseModel):
    state: PlanState
    at: datetime
    note: str = ""
    # A wait that came back unchanged (the plan ran again and went back to queued with the same note) is counted here
    # instead of adding two entries per recheck: a plan waiting days for budget keeps a short record. The audit
    # trail still has every step.
    repeated: int = 0
    last_at: datetime | None = None


def _add_step(history: list[Transition], step: Transition) -> None:
    """Append ``step``, or, when it repeats the wait two entries back (``queued: n``, ``running``, ``queued: n``),
    count it on that entry and drop the ``running`` between them."""
    if (step.state == PlanState.QUEUED and len(history) >= 2 and history[-1].state == PlanState.RUNNING
            and history[-2].state == PlanState.QUEUED and history[-2].note == step.note):
        history.pop()
        history[-1] = history[-1].model_copy(update={"repeated": history[-1].repeated + 1, "last_at": step.at})
        return
    history.append(step)


class PlanRecord(BaseModel):
    plan_id: str
    state: PlanState
    plan: dict[str, Any] | None = None
    canonical: str | None = Field(None, description="the plan as stable JSON, for resubmission checks")
    received_at: datetime
    updated_at: datetime
    history: list[Transition] = Field(default_factory=list)
    attempts: int = 0
    idempotency: dict[str, str] | None = Field(None, description="the token or customer id used, and its kind")
    intent: dict[str, Any] | None = Field(None, description="the action's typed intent, recorded before any send")
    book: dict[str, Any] | None = Field(None, description="the executor's bookkeeping of sends (worker.settle)")
    verification: str | None = Field(None, description="look-alike check after success: due, clean or flagged")
    approval: dict[str, Any] | None = Field(
        None, description="what must be approved and the approvals given (worker.approvals)")
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def public(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"canonical", "version"})
        return data


def _now() -> datetime:
    return datetime.now(UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Ledger:
    def __init__(self, client: redis.Redis, prefix: str, audit_key: AuditKey | None | bool = True,
                 results_maxlen: int = RESULTS_MAXLEN) -> None:
        """``audit_key``: the audit trail's HMAC key, None for unkeyed, True for the runtime settings' key.
        ``results_maxlen``: about how many outcomes the results stream keeps (worker.results)."""
        self.redis = client
        self.prefix = prefix
        self.results_maxlen = results_maxlen
        self.audit = AuditLog(client, prefix, audit_key)
        self._write = client.register_script(_WRITE)

    # --- keys -----------------------------------------------------------------------------------------------
    def _plan_key(self, plan_id: str) -> str:
        return f"{self.prefix}plan:{plan_id}"

    def _state_key(self, state: PlanState | str) -> str:
        return f"{self.prefix}index:state:{PlanState(state).value}"

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}index:plans"

    @property
    def _in_flight_key(self) -> str:
        """Plans intake or a worker should be carrying (received to submitted), scored by their last change."""
        return f"{self.prefix}index:in-flight"

    def idle_in_flight(self, idle_seconds: float, limit: int | None = None) -> list[str]:
        """Plans in flight whose record has not changed for ``idle_seconds``, longest idle first: what the sweeper
        looks at (at most ``limit`` of them)."""
        cutoff = datetime.now(UTC).timestamp() - idle_seconds
        if limit is None:
            return [_text(i) for i in self.redis.zrangebyscore(self._in_flight_key, 0, cutoff)]
        return [_text(i) for i in self.redis.zrangebyscore(self._in_flight_key, 0, cutoff, start=0, num=limit)]

    # --- reads ----------------------------------------------------------------------------------------------
    def get(self, plan_id: str) -> PlanRecord | None:
        raw = self.redis.hget(self._plan_key(plan_id), "record")
        if raw is None:
            return None
        return PlanRecord.model_validate_json(raw)

    def ids(self, state: PlanState | None = None) -> list[str]:
        if state is None:
            return [_text(i) for i in self.redis.zrange(self._index_key, 0, -1)]
        return sorted(_text(i) for i in self.redis.smembers(self._state_key(state)))

    def list(self, state: PlanState | None = None) -> list[PlanRecord]:
        ids = self.ids(state)
        records = []
        pipe = self.redis.pipeline(transaction=False)
        for plan_id in ids:
            pipe.hget(self._plan_key(plan_id), "record")
        for raw in pipe.execute() if ids else []:
            if raw is not None:
                records.append(PlanRecord.model_validate_json(raw))
        records.sort(key=lambda r: r.received_at)
        return records

    # --- writes ---------------------------------------------------------------------------------------------
    def _commit(self, old: PlanRecord | None, new: PlanRecord, audit: dict[str, Any]) -> PlanRecord:
        """The compare-and-set and its audit entry, in one script call. The entry goes on this writer's own chain,
        so the call never waits on or retries against another writer's append."""
        new.version = (old.version if old else 0) + 1
        keys = [
            self._plan_key(new.plan_id),
            self._state_key(old.state if old else new.state),
            self._state_key(new.state),
            self.audit.stream,
            self.audit.meta_key,
            self._index_key,
            self._in_flight_key,
            results_stream(self.prefix),
        ]
        args = [str(old.version) if old else "", str(new.version), new.model_dump_json(), new.plan_id,
                new.received_at.timestamp(), _sweep_score(new),
                *publish_args(old.state if old else None, new, self.results_maxlen)]
        reply = self.audit.scripted(self._write, keys, args, audit)
        if reply[0] == 1:
            return new
        if _text(reply[1]) == "exists":
            raise PlanExists(new.plan_id)
        raise ConcurrentUpdate(new.plan_id)

    def create(self, record: PlanRecord, note: str = "") -> PlanRecord:
        record.history = [Transition(state=record.state, at=record.received_at, note=note)]
        return self._commit(
            None,
            record,
            {
                "event": "plan_recorded",
                "plan_id": record.plan_id,
                "state": record.state.value,
                "note": note,
                "action": (record.plan or {}).get("action"),
                "account_id": (record.plan or {}).get("account_id"),
            },
        )

    def transition(
        self,
        record: PlanRecord,
        to: PlanState,
        note: str = "",
        **changes: Any,
    ) -> PlanRecord:
        """Move ``record`` (as last read) to ``to``; refused if the state machine forbids it or if the plan
        changed since it was read."""
        if to not in TRANSITIONS[record.state]:
            raise InvalidTransition(f"plan {record.plan_id}: {record.state.value} -> {to.value} is not allowed")
        return self._update(record, to, note, **changes)

    def update(self, record: PlanRecord, note: str, **changes: Any) -> PlanRecord:
        """Change fields without changing state (an attempt count, a send recorded in the intent)."""
        return self._update(record, record.state, note, **changes)

    def _update(self, record: PlanRecord, to: PlanState, note: str, **changes: Any) -> PlanRecord:
        now = _now()
        new = record.model_copy(deep=True, update=changes)
        new.state = to
        new.updated_at = now
        if to != record.state:
            _add_step(new.history, Transition(state=to, at=now, note=note))
        audit = {
            "event": "plan_transition" if to != record.state else "plan_updated",
            "plan_id": record.plan_id,
            "from": record.state.value,
            "to": to.value,
            "note": note,
            "attempts": new.attempts,
        }
        for key in ("error", "result", "idempotency"):
            if key in changes and changes[key] is not None:
                audit[key] = changes[key]
        return self._commit(record, new, audit)

    @property
    def _tombstones_key(self) -> str:
        return f"{self.prefix}tombstones"

    def tombstone(self, plan_id: str) -> dict[str, Any] | None:
        """What remains of a purged plan: its final state and content digest (intake honours it)."""
        raw = self.redis.hget(self._tombstones_key, plan_id)
        return json.loads(raw) if raw is not None else None

    def purge(self, states: Iterable[PlanState], older_than: datetime, stream: str | None = None,
              replay_seconds: float = 0) -> int:
        """Delete terminal plan records last changed before ``older_than``. The audit trail is kept, and so is a
        tombstone per plan (its outcome and content digest), so that a replayed stream entry or a resubmission of
        a purged plan is never carried out again. Tombstones go once no stream entry and no retry can replay them
        (``trim_tombstones``)."""
        removed = 0
        for state in states:
            if state not in TERMINAL_STATES:
                raise ValueError(f"only terminal plans can be purged, not {state.value}")
            for record in self.list(state):
                if record.updated_at < older_than:
                    stone = {"state": state.value, "received_at": record.received_at.timestamp(),
                             "purged_at": _now().timestamp(),
                             "canonical_sha256": hashlib.sha256((record.canonical or "").encode()).hexdigest()}
                    pipe = self.redis.pipeline(transaction=True)
                    pipe.hset(self._tombstones_key, record.plan_id, json.dumps(stone))
                    pipe.delete(self._plan_key(record.plan_id))
                    pipe.srem(self._state_key(state), record.plan_id)
                    pipe.zrem(self._index_key, record.plan_id)
                    pipe.execute()
                    self.audit.append({"event": "plan_purged", "plan_id": record.plan_id, "state": state.value})
                    removed += 1
        if stream is not None:
            self.trim_tombstones(stream, replay_seconds)
        return removed

    def trim_tombstones(self, stream: str, replay_seconds: float) -> int:
        """Drop tombstones of plans received before the oldest entry still in the intake stream and purged
        longer ago than a task message can be redelivered (``replay_seconds``)."""
        oldest = self.redis.xrange(stream, count=1)
        oldest_ms = int(_text(oldest[0][0]).split("-")[0]) if oldest else None
        now = _now().timestamp()
        dropped = 0
        for plan_id, raw in self.redis.hgetall(self._tombstones_key).items():
            stone = json.loads(raw)
            # The plan's entry was added before it was received; a second allows for the intake's clock.
            replayable = oldest_ms is not None and stone["received_at"] * 1000 >= oldest_ms - 1000
            if not replayable and stone["purged_at"] < now - replay_seconds:
                self.redis.hdel(self._tombstones_key, plan_id)
                dropped += 1
        return dropped
