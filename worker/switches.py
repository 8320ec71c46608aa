"""Kill switches: ``commitd pause`` stops every mutating call in a scope until ``commitd resume``.

One Redis hash, ``{prefix}switches``: scope → JSON ``{"reason", "by", "at"}`` for each pause in force (what
``commitd status`` and the metrics show). Scopes: ``all``, ``family:<name>``, ``account:<id>``, and
``account:<id>:family:<name>`` for one family in one account. The executor reads the four scopes that can cover a
plan in one round trip right before every mutating call (and when it picks a plan up, so that a paused plan makes no
reads either); a paused plan goes back to its queue and looks again every ``COMMITD_PAUSE_RECHECK_SECONDS``, so it
continues on its own after a resume. A pause never interrupts a call already on the wire, and never changes a plan's
state: it only delays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.audit import AuditLog
from worker.family import Family


class SwitchError(ValueError):
    pass


def scope_of(family: str | None = None, account: str | None = None) -> str:
    if account and family:
        return f"account:{account}:family:{family}"
    if account:
        return f"account:{account}"
    if family:
        return f"family:{family}"
    return "all"


def scopes_covering(family: str, account: str) -> list[str]:
    """Every scope whose pause stops a plan of ``family`` in ``account``, widest first."""
    return ["all", f"family:{family}", f"account:{account}", f"account:{account}:family:{family}"]


@dataclass(frozen=True)
class Pause:
    scope: str
    reason: str
    by: str
    at: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Switches:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}switches"

    def pause_covering(self, family: str, account: str) -> Pause | None:
        """The pause in force over this family in this account, if any (one round trip)."""
        scopes = scopes_covering(family, account)
        for scope, raw in zip(scopes, self.client.hmget(self.key, scopes), strict=True):
            if raw is not None:
                data = json.loads(raw)
                return Pause(scope, str(data.get("reason", "")), str(data.get("by", "")), str(data.get("at", "")))
        return None

    def in_force(self) -> dict[str, dict[str, Any]]:
        return {_text(k): json.loads(v) for k, v in self.client.hgetall(self.key).items()}

    def pause(self, scope: str, reason: str, by: str, audit: AuditLog) -> bool:
        """Put a pause in force (replacing the reason of one already there). True when it is new."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        new = bool(self.client.hset(self.key, scope, json.dumps({"reason": reason, "by": by, "at": at})))
        audit.append({"event": "paused", "scope": scope, "reason": reason, "by": by})
        return new

    def resume(self, scope: str, by: str, reason: str, audit: AuditLog) -> bool:
        """Lift the pause of exactly this scope. False when that scope was not paused."""
        removed = bool(self.client.hdel(self.key, scope))
        if removed:
            audit.append({"event": "resumed", "scope": scope, "reason": reason, "by": by})
        return removed


def check_scope(family: str | None, account: str | None, families: list[Family]) -> None:
    """A pause for a family that does not exist would stop nothing: refuse it."""
    names = sorted(f.name for f in families)
    if family is not None and family not in names:
        raise SwitchError(f"no family {family!r}; families: {', '.join(names)}")
    if account is not None and not (len(account) == 12 and account.isdigit()):
        raise SwitchError(f"--account must be a 12-digit account id, not {account!r}")
