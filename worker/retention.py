"""Retention: what Redis keeps of settled plans, and for how long, so that memory stays flat at a steady rate.

Three parts, each bounded by its own setting (unset: kept for good):
- terminal plans (``COMMITD_RETENTION_PLANS_DAYS``): a plan record settled longer ago is replaced by its
  tombstone (final state and content digest: a replayed entry or a resubmission is never carried out again);
  a plan whose look-alike check is still due, or that changed since it was read, is left for the next run;
- the intake stream (``COMMITD_RETENTION_STREAM_DAYS``): entries older than that, never one the intake has not
  acknowledged (pending, or not yet delivered); tombstones go once no entry left can replay them;
- dead letters (same setting): exported to ``COMMITD_AUDIT_ARCHIVE_DIR`` as JSON Lines first, and trimmed only
  when that directory is set (they are the evidence of what was refused).
The audit trail has its own archive step (``worker.archive``). ``run_retention`` runs all of them; the intake's
sweeper calls it every ``COMMITD_RETENTION_INTERVAL`` seconds, and ``commitd retention run`` on demand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from worker.handle import WORKER_CLOCK_TOLERANCE
from worker.intake import GROUP
from worker.lease import RELEASE_IF_HELD
from worker.ledger import Ledger, PlanRecord
from worker.logs import get_logger
from worker.plans import TERMINAL_STATES, PlanState
from worker.runtime import Runtime

log = get_logger("commitd.retention")
INDEX_BATCH = 500
# A claim goes with its plan, and only if that plan still holds it.
_RELEASE_CLAIM = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(at: datetime) -> str:
    """The first stream id at or after ``at`` (stream ids start with milliseconds since the epoch)."""
    return f"{int(at.timestamp() * 1000)}-0"


@dataclass
class RetentionReport:
    plans_purged: int = 0
    plans_kept_busy: int = 0  # due for purge but changed meanwhile or still being checked: next run
    stream_trimmed: int = 0
    dead_letters_archived: int = 0
    tombstones_dropped: int = 0
    audit: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # another process was running retention

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- terminal plans ---------------------------------------------------------------------------------------------
def purge_settled_plans(ledger: Ledger, older_than: datetime,
                        states: frozenset[PlanState] = TERMINAL_STATES) -> tuple[int, int]:
    """Purge plans in ``states`` (terminal ones) last changed before ``older_than``. Only plans received before it
    can qualify, so the received-time index bounds what is read. Returns (purged, left for the next run)."""
    if not states <= TERMINAL_STATES:
        raise ValueError(f"only terminal plans can be purged, not {sorted(s.value for s in states - TERMINAL_STATES)}")
    purged = busy = 0
    start = "-inf"
    while True:
        batch = ledger.redis.zrangebyscore(ledger._index_key, start, older_than.timestamp(), start=0,
                                           num=INDEX_BATCH, withscores=True)
        if not batch:
            return purged, busy
        for member, _ in batch:
            outcome = _purge_one(ledger, _text(member), older_than, states)
            purged += outcome == "purged"
            busy += outcome == "busy"
        start = f"({float(batch[-1][1])!r}"
        if len(batch) < INDEX_BATCH:
            return purged, busy


def _purge_one(ledger: Ledger, plan_id: str, older_than: datetime, states: frozenset[PlanState]) -> str:
    """Replace one settled plan by its tombstone, only if its record is still the one read (WATCH): a plan that a
    late look-alike check moves from succeeded to needs_attention meanwhile is never purged."""
    key = ledger._plan_key(plan_id)
    with ledger.redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            raw: bytes | None = pipe.hget(key, "record")  # type: ignore[assignment]  # immediate mode after WATCH
            if raw is None:
                return "gone"
            record = PlanRecord.model_validate_json(raw)
            if record.state not in states or record.updated_at >= older_than:
                return "kept"
            if record.verification == "due":  # its look-alike check has not run yet
                return "busy"
            stone = {"state": record.state.value, "received_at": record.received_at.timestamp(),
                     "purged_at": datetime.now(UTC).timestamp(),
                     "canonical_sha256": hashlib.sha256((record.canonical or "").encode()).hexdigest()}
            pipe.multi()
            pipe.hset(ledger._tombstones_key, plan_id, json.dumps(stone))
            pipe.delete(key)
            pipe.delete(f"{ledger.prefix}budget_hold:{plan_id}")  # its amounts stay in the period's counters
            pipe.srem(ledger._state_key(record.state), plan_id)
            pipe.zrem(ledger._index_key, plan_id)
            pipe.execute()
        except redis.WatchError:
            return "busy"
    ledger.audit.append({"event": "plan_purged", "plan_id": plan_id, "state": record.state.value})
    if datetime.now(UTC) - record.updated_at >= CLAIM_RELEASE_AFTER:
        _release_claims(ledger, record)
    return "purged"


# A look-alike check or a reconciliation matches resources that started after its plan's intent, less the clock
# tolerance: the claims of a plan settled more recently than this still keep its resources from being taken for
# another plan's duplicate. (Retention ages are days in production; tests use seconds.)
CLAIM_RELEASE_AFTER = 2 * WORKER_CLOCK_TOLERANCE


def _release_claims(ledger: Ledger, record: PlanRecord) -> None:
    """Drop the purged plan's claims on what it made, once it settled long enough ago (CLAIM_RELEASE_AFTER) that no
    reconciliation still running can mistake those resources for its own (each matches only what started after
    its intent, less the clock tolerance). Claims of a plan purged sooner are kept: a few bytes each."""
    from tasks import find_action

    plan, result = record.plan or {}, record.result or {}
    action = find_action(str(plan.get("action")))
    ids = result.get("resource_ids") or []
    if action is None or not ids or not plan.get("account_id") or not plan.get("region"):
        return
    key = f"{ledger.prefix}claimed:{action.nouns.claim_kind}:{plan['account_id']}:{plan['region']}"
    release = ledger.redis.register_script(_RELEASE_CLAIM)
    for resource_id in ids:
        release(keys=[key], args=[str(resource_id), record.plan_id])


# --- streams ----------------------------------------------------------------------------------------------------
def trim_intake_stream(runtime: Runtime, older_than: datetime) -> int:
    """Trim the intake stream to entries after ``older_than``, never past an entry the intake has not
    acknowledged (its oldest pending entry) or not yet read (after the group's last delivered id)."""
    r, stream = runtime.redis, runtime.key("plans")
    groups = {_text(g["name"]): g for g in r.xinfo_groups(stream)} if r.exists(stream) else {}
    if GROUP not in groups:
        return 0  # the intake never read it: every entry is still to be recorded
    floor = min(_id(_stream_id(older_than)), _id(_next_id(_text(groups[GROUP]["last-delivered-id"]))))
    pending = r.xpending(stream, GROUP)
    if pending["pending"]:
        floor = min(floor, _id(_text(pending["min"])))
    before = r.xlen(stream)
    r.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)
    return int(before - r.xlen(stream))


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def archive_dead_letters(runtime: Runtime, older_than: datetime, archive_dir: Path) -> int:
    """Export dead letters older than ``older_than`` to a JSON Lines file in ``archive_dir``, then trim them."""
    r, stream = runtime.redis, runtime.key("rejected")
    rows = r.xrange(stream, "-", f"({_stream_id(older_than)}")
    if not rows:
        return 0
    archive_dir.mkdir(parents=True, exist_ok=True)
    first, last = _text(rows[0][0]), _text(rows[-1][0])
    path = archive_dir / f"dead-letters-{first}-{last}.jsonl"
    with path.open("w") as out:
        for entry_id, fields in rows:
            out.write(json.dumps({"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}},
                                 sort_keys=True) + "\n")
    # Exported first: a crash before the trim exports the same entries again next time (same file name), never
    # loses one.
    r.xtrim(stream, minid=_next_id(last), approximate=False)
    return len(rows)


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


# --- all of it --------------------------------------------------------------------------------------------------
def run_retention(runtime: Runtime, now: datetime | None = None) -> RetentionReport:
    """One run of every retention step. Several intakes may call it: one runs at a time (a lock in Redis), the
    others skip (``skipped``)."""
    s = runtime.settings
    now = now or datetime.now(UTC)
    report = RetentionReport()
    lock = runtime.key("retention", "lock")
    if not runtime.redis.set(lock, runtime.worker_id, nx=True, px=int(min(s.retention_interval, 600) * 1000)):
        report.skipped = True
        return report
    try:
        _run(runtime, now, report)
    finally:
        runtime.redis.register_script(RELEASE_IF_HELD)(keys=[lock], args=[runtime.worker_id])
    log.info("retention_run", **report.as_dict())
    return report


def _run(runtime: Runtime, now: datetime, report: RetentionReport) -> None:
    s = runtime.settings
    if s.retention_plans_days is not None:
        report.plans_purged, report.plans_kept_busy = purge_settled_plans(
            runtime.ledger, now - timedelta(days=s.retention_plans_days))
    if s.retention_stream_days is not None:
        cutoff = now - timedelta(days=s.retention_stream_days)
        report.stream_trimmed = trim_intake_stream(runtime, cutoff)
        if s.audit_archive_dir is not None:
            report.dead_letters_archived = archive_dead_letters(runtime, cutoff, Path(s.audit_archive_dir))
    report.tombstones_dropped = runtime.ledger.trim_tombstones(runtime.key("plans"), s.visibility_timeout)
    report.audit = _archive_audit(runtime)


def _archive_audit(runtime: Runtime) -> dict[str, Any]:
    """The audit trail's own archive step (worker.archive), where an archive directory is set."""
    if runtime.settings.audit_archive_dir is None:
        return {}
    from worker import archive
    try:
        result = archive.run_archive(runtime)
    except archive.ArchiveBusy:
        return {"skipped": "another archive run holds the lock"}
    return result.as_dict() if hasattr(result, "as_dict") else {"result": str(result)}
