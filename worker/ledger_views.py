"""Reads of the ledger for people: a page of plans, newest first, reading only what it returns.

``Ledger.list`` reads every record (tens of MB at 10,000 plans); a page walks the received-time index from a
cursor, keeps the ids in the wanted state (checked against the state's index in batches, without reading
records), and reads only the records it returns."""

from __future__ import annotations

from dataclasses import dataclass

from worker.ledger import Ledger, PlanRecord
from worker.plans import PlanState

INDEX_BATCH = 500


@dataclass(frozen=True)
class Page:
    records: list[PlanRecord]
    # Where the next page starts (the received time of the last plan returned, exclusive); None: this page was
    # not full, so there is no more.
    cursor: str | None


def plans_page(ledger: Ledger, state: PlanState | None, limit: int, cursor: str | None = None) -> Page:
    """Up to ``limit`` plans (optionally only those in ``state``), newest first, from ``cursor`` on."""
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
    pipe = redis.pipeline(transaction=False)
    for plan_id, _ in picked:
        pipe.hget(ledger._plan_key(plan_id), "record")
    raws = pipe.execute() if picked else []
    records = [PlanRecord.model_validate_json(raw) for raw in raws if raw is not None]
    # A full page may be followed by an empty one: finding out would mean reading on.
    return Page(records, repr(picked[-1][1]) if picked and len(picked) == limit else None)

