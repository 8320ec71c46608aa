"""After success of a call without a token: look again later for look-alikes that betray a duplicate send.

A worker paused for longer than the send margin (docs/exactly-once.md, residual risks) could send after another
worker already settled the plan. Nothing in AWS can refuse that second call, so it is *detected*: once AWS's
consistency delay has passed after success, the action's ``look_alikes`` read lists resources made since the
intent that look like this plan's; any that are not the plan's own result and that no other plan claims move the
plan to ``needs_attention`` (audited, counted in the ``duplicates_suspected`` metric). The check is due in a sorted
set the sweeper also reads, so a lost task message does not lose it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from worker.actions import Action
from worker.logs import get_logger
from worker.runtime import Runtime

log = get_logger("commitd.verify")


def verify_key(runtime: Runtime) -> str:
    return runtime.key("verify-due")


# After a plan's success: release its signature lock if it still holds it (RELEASE_IF_HELD), and make its
# look-alike check due on Redis's clock; one script, so one round trip instead of three (the lock's release, TIME,
# ZADD). KEYS: the lock, the due set. ARGV: the plan id, '1' to release the lock, the delay in seconds ('' for no
# check).
_AFTER_SUCCESS = """
if ARGV[2] == '1' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(ARGV[3]), ARGV[1])
end
return 1
"""


def after_success(runtime: Runtime, action: Action[Any, Any], plan_id: str, lock_key: str | None, due: bool) -> None:
    """Release the plan's signature lock (if it has one) and, for a check due, schedule it: in the sorted set the
    sweeper reads (so a lost task message does not lose it) and as a task with a countdown."""
    settings = runtime.settings
    delay = settings.consistency_delay_seconds + settings.send_margin_seconds
    if lock_key is None and not due:
        return
    script = runtime.redis.register_script(_AFTER_SUCCESS)
    lock = lock_key or runtime.key("inflight", "none")  # not touched without a lock
    script(keys=[lock, verify_key(runtime)], args=[plan_id, "1" if lock_key else "", str(delay) if due else ""])
    if due:
        from worker.celery_app import enqueue

        enqueue(action.family, plan_id, countdown=delay)


def due_verifications(runtime: Runtime, overdue_by: float) -> list[str]:
    """Plans whose check is overdue (its message was lost): the sweeper re-sends them."""
    now = runtime.redis.time()[0]
    return [i.decode() if isinstance(i, bytes) else i
            for i in runtime.redis.zrangebyscore(verify_key(runtime), 0, now - overdue_by)]


def done(runtime: Runtime, plan_id: str) -> None:
    runtime.redis.zrem(verify_key(runtime), plan_id)


def _not_another_plans(run: Any, intent: Any, unclaimed: dict[str, Any]) -> list[str]:
    """A later plan for the same call holds the signature while its outcome is open (in flight, or needing
    attention): what started after its intent may be its purchase, not a duplicate of this plan's."""
    if not intent.signature or not unclaimed:
        return list(unclaimed)
    raw = run.runtime.redis.get(run.runtime.key("inflight", intent.signature))
    holder = raw.decode() if isinstance(raw, bytes) else raw
    if holder is None or holder == run.plan_id:
        return list(unclaimed)
    record = run.ledger.get(holder)
    since = (record.book or {}).get("intent_aws_time") if record is not None else None
    if since is None:
        return list(unclaimed)
    from datetime import datetime

    started_after = datetime.fromisoformat(since.replace("Z", "+00:00")) - timedelta(seconds=10)
    theirs = [c for c, start in unclaimed.items() if start >= started_after]
    if theirs:
        run.runtime.audit.append({"event": "look_alikes_attributed", "plan_id": run.plan_id, "to_plan": holder,
                                  "resource_ids": sorted(theirs)})
    return [c for c in unclaimed if c not in theirs]


def check_look_alikes(run: Any) -> Any:
    """Run the action's look-alike read for a succeeded plan; flag the plan if it finds a suspect."""
    from worker.plans import PlanState

    record = run.record
    action = run.action
    own = tuple((record.result or {}).get("resource_ids", []))
    params = action.params_model.model_validate(run.plan.params)
    intent = action.intent_model.model_validate(record.intent)
    try:
        candidates = action.look_alikes(run.handle, params, intent, own)
    except Exception as exc:  # the check stays due: the sweeper sends it again
        log.warning("look_alike_check_failed", plan_id=run.plan_id, error=str(exc))
        return record
    holders = run.claims.holders(candidates)
    unclaimed = {c: start for c, start in candidates.items() if c not in own and holders.get(c) in (None, run.plan_id)}
    suspects = sorted(_not_another_plans(run, intent, unclaimed))
    done(run.runtime, run.plan_id)
    if not suspects:
        run.record = run.ledger.update(record, "look-alike check: nothing else found", verification="clean")
        return run.record
    run.runtime.metrics.incr("duplicates_suspected")
    run.runtime.audit.append({"event": "duplicate_suspected", "plan_id": run.plan_id, "own": list(own),
                              "suspects": suspects})
    run.record = run.ledger.transition(
        record, PlanState.NEEDS_ATTENTION, "look-alikes found after success: a duplicate send is suspected",
        verification="flagged",
        error={"code": "DuplicateSuspected", "message": f"{action.nouns.resource} {suspects} look like this plan's "
               f"result {list(own)} and no plan claims them: check whether this plan's call was made twice",
               "suspects": suspects},
    )
    return run.record
