"""Approvals: a plan above its account's threshold waits in ``awaiting_approval`` until enough people approve it.

The executor decides after its reads, on the live amounts (the intent's commitment and upfront): a plan that needs
approval moves ``running → awaiting_approval`` with what must be approved in its record (``approval.request``).
``commitd approve`` adds an approval *for those amounts*, valid for the account's ``valid_seconds``; with enough
different approvers the plan is queued (once: the ledger's compare-and-set lets one command do it). When the plan
runs again it reads AWS again: it goes on only if its new amounts are covered by approvals still valid, otherwise it
waits again (a price that rose needs a new approval; an approval not used in time has expired). ``commitd deny``
cancels the plan. Every step is in the audit trail with who did it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from config.accounts import AccountConfig
from worker.actions import Intent


class ApprovalError(ValueError):
    """The approval or denial cannot be given (wrong state, same approver twice...): the message says why."""


@dataclass(frozen=True)
class Requirement:
    commitment_usd: Decimal | None
    upfront_usd: Decimal | None
    reasons: tuple[str, ...]
    approvers: int
    valid_seconds: float

    def as_request(self, now: datetime) -> dict[str, Any]:
        return {"commitment_usd": None if self.commitment_usd is None else str(self.commitment_usd),
                "upfront_usd": None if self.upfront_usd is None else str(self.upfront_usd),
                "reasons": list(self.reasons), "approvers": self.approvers, "requested_at": now.isoformat()}


def requirement(account: AccountConfig, action: str, intent: Intent) -> Requirement | None:
    """What must be approved before this intent is sent, or None (no policy, or under every threshold)."""
    policy = account.approvals
    if policy is None:
        return None
    threshold = policy.threshold(action)
    commitment = intent.commitment_usd
    upfront: Decimal | None = getattr(intent, "upfront_usd", None)
    reasons = []
    if threshold.commitment_usd is not None and commitment is not None and commitment > threshold.commitment_usd:
        reasons.append(f"commits {commitment} USD, above the approval threshold of {threshold.commitment_usd}")
    if threshold.upfront_usd is not None and upfront is not None and upfront > threshold.upfront_usd:
        reasons.append(f"pays {upfront} USD upfront, above the approval threshold of {threshold.upfront_usd}")
    if not reasons:
        return None
    return Requirement(commitment, upfront, tuple(reasons), policy.approvers, policy.valid_seconds)


def requested(request: dict[str, Any]) -> Requirement:
    """The requirement a stored request describes."""
    def amount(key: str) -> Decimal | None:
        return None if request.get(key) is None else Decimal(request[key])

    return Requirement(amount("commitment_usd"), amount("upfront_usd"), tuple(request.get("reasons", [])),
                       int(request["approvers"]), float(request["valid_seconds"]))


def _covers(approval: dict[str, Any], need: Requirement) -> bool:
    for key, amount in (("commitment_usd", need.commitment_usd), ("upfront_usd", need.upfront_usd)):
        if amount is None:
            continue
        approved = approval.get(key)
        if approved is None or Decimal(approved) < amount:
            return False
    return True


def valid_approvers(approval: dict[str, Any] | None, need: Requirement, now: datetime) -> list[str]:
    """The different people whose approvals cover ``need`` and have not expired at ``now``."""
    names: list[str] = []
    for given in (approval or {}).get("approvals", []):
        if datetime.fromisoformat(given["expires_at"]) <= now or not _covers(given, need):
            continue
        if given["by"] not in names:
            names.append(given["by"])
    return names


def why_waiting(approval: dict[str, Any] | None, need: Requirement, now: datetime) -> str:
    """The note of a plan that (still) waits: what is missing."""
    given = (approval or {}).get("approvals", [])
    expired = [a["by"] for a in given if datetime.fromisoformat(a["expires_at"]) <= now]
    short = [a["by"] for a in given if a["by"] not in expired and not _covers(a, need)]
    have = len(valid_approvers(approval, need, now))
    parts = ["; ".join(need.reasons), f"{have} of {need.approvers} approval(s)"]
    if expired:
        parts.append(f"expired: {', '.join(expired)}")
    if short:
        parts.append(f"approved for less than the amount now ({', '.join(short)})")
    return "; ".join(parts)


def add_approval(approval: dict[str, Any] | None, by: str, note: str, now: datetime) -> dict[str, Any]:
    """The record's approval with one more approval, for the amounts requested. Refused when ``by`` already
    gave an approval that still counts."""
    if not by.strip():
        raise ApprovalError("--by must name the approver")
    current = dict(approval or {})
    request = current.get("request")
    if not request:
        raise ApprovalError("the plan has no approval request")
    need = requested(request)
    if by in valid_approvers(current, need, now):
        raise ApprovalError(f"{by} has already approved this plan; a second approval must come from someone else")
    valid_seconds = need.valid_seconds
    given = {"by": by, "note": note, "at": now.isoformat(),
             "expires_at": (now + timedelta(seconds=valid_seconds)).isoformat(),
             "commitment_usd": request.get("commitment_usd"), "upfront_usd": request.get("upfront_usd")}
    current["approvals"] = [*current.get("approvals", []), given]
    return current


def request_of(need: Requirement, previous: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The approval field of a plan that starts waiting: the new request, the approvals given so far kept."""
    return {"request": {**need.as_request(now), "valid_seconds": need.valid_seconds},
            "approvals": list((previous or {}).get("approvals", []))}


def enough(approval: dict[str, Any], now: datetime) -> bool:
    need = requested(approval["request"])
    return len(valid_approvers(approval, need, now)) >= need.approvers


def utc_now() -> datetime:
    return datetime.now(UTC)
