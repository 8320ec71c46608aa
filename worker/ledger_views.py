"""Reads of the ledger for people: a page of plans, newest first, reading only what it returns.

``Ledger.list`` reads every record (tens of MB at 10,000 plans); a page walks the received-time index from a
cursor, keeps the ids in the wanted state (checked against the state's index in batches, without reading
records), and reads only the records it returns. For a state few plans are in, the state's own index is read and
sorted instead (its size, not the ledger's)."""

from __future__ import annotations

from dataclasses import dataclass

from worker.ledger import Ledger, PlanRecord
from worker.plans import PlanState

INDEX_BATCH = 500
RARE_STATE_SHARE = 4  # a state holding under a quarter of the plans is read from its own index


@dataclass(frozen=True)
class Page:
    records: list[PlanRecord]
    # Where the next page starts (the received time of the last plan returned, exclusive); None: this page was
    # not full, so there is no more.
    cursor: str | None


def plans_page(ledger: Ledger, state: PlanState | None, limit: int, cursor: str | None = None) -> Page:
    """Up to ``limit`` plans (optionally only those in ``state``), newest first, from ``cursor`` on."""
    redis, index = ledger.redis, ledger._index_key
    if state is not None and redis.scard(ledger._state_key(state)) * RARE_STATE_SHARE < redis.zcard(index):
        picked = _rare_state(ledger, state, limit, cursor)
    else:
        picked = _walk_index(ledger, state, limit, cursor)
    pipe = redis.pipeline(transaction=False)
    for plan_id, _ in picked:
        pipe.hget(ledger._plan_key(plan_id), "record")
    raws = pipe.execute() if picked else []
    records = [PlanRecord.model_validate_json(raw) for raw in raws if raw is not None]
    # A full page may be followed by an empty one: finding out would mean reading on.
    return Page(records, repr(picked[-1][1]) if picked and len(picked) == limit else None)


def _rare_state(ledger: Ledger, state: PlanState, limit: int, cursor: str | None) -> list[tuple[str, float]]:
    """A state few plans are in (failed among thousands succeeded): its own index, sorted by received time, costs
    the state's size instead of a walk through every plan."""
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in ledger.redis.smembers(ledger._state_key(state))]
    if not ids:
        return []
    scores = ledger.redis.zmscore(ledger._index_key, ids)
    upper = float(cursor) if cursor is not None else float("inf")
    found = [(plan_id, float(score)) for plan_id, score in zip(ids, scores, strict=True)
             if score is not None and float(score) < upper]
    found.sort(key=lambda item: item[1], reverse=True)
    return found[:limit]


def _walk_index(ledger: Ledger, state: PlanState | None, limit: int, cursor: str | None) -> list[tuple[str, float]]:
    redis, index = ledger.redis, ledger._index_key
    upper = f"({float(cursor)!r}" if cursor is not None else "+inf"
    picked: list[tuple[str, float]] = []
    while len(picked) < limit:
        batch = redis.zrevrangebyscore(index, upper, "-inf", start=0, num=INDEX_BATCH, withscores=True)
        if not batch:
            break
        ids = [member.decode() if isinstance(member, bytes) else str(member) for member, _ in batch]
        wanted = redis.smismember(ledger._state_key(state), ids) if state is not None else [1] * len(ids)
        for plan_id, (_, score), keep in zip(ids, batch, wanted, strict=True):
            if keep:
                picked.append((plan_id, float(score)))
                if len(picked) == limit:
                    break
        upper = f"({float(batch[-1][1])!r}"
        if len(batch) < INDEX_BATCH:
            break
    return picked

