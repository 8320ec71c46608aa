"""IAM enforcement: the role's identity policy intersected with the session policy passed to AssumeRole.

Evaluated on the action only (every statement's Resource is taken as matching; conditions are not evaluated):
an explicit Deny in either policy wins; otherwise the call needs an Allow in the identity policy and, when the
session has a session policy, an Allow there too. This is the part of IAM that decides whether commitd stays
inside the customer's grant.
"""

from __future__ import annotations

import fnmatch
import json
import threading
from dataclasses import dataclass, field
from typing import Any


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def validate_policy(policy: Any) -> dict[str, Any]:
    if isinstance(policy, str):
        policy = json.loads(policy)
    if not isinstance(policy, dict) or "Statement" not in policy:
        raise ValueError("an IAM policy is a JSON object with a Statement")
    for statement in _as_list(policy["Statement"]):
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            raise ValueError("every statement needs Effect Allow or Deny")
        if "Action" not in statement and "NotAction" not in statement:
            raise ValueError("every statement needs Action or NotAction")
    return policy


def _matches(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in patterns)


def _effects(policy: dict[str, Any], action: str) -> set[str]:
    effects = set()
    for statement in _as_list(policy.get("Statement")):
        if "Action" in statement:
            hit = _matches(_as_list(statement["Action"]), action)
        else:
            hit = not _matches(_as_list(statement.get("NotAction")), action)
        if hit:
            effects.add(statement["Effect"])
    return effects


def is_allowed(identity: dict[str, Any], session: dict[str, Any] | None, action: str) -> bool:
    identity_effects = _effects(identity, action)
    session_effects = _effects(session, action) if session is not None else {"Allow"}
    if "Deny" in identity_effects or "Deny" in session_effects:
        return False
    return "Allow" in identity_effects and "Allow" in session_effects


@dataclass
class AssumedSession:
    role_arn: str
    session_name: str
    session_policy: dict[str, Any] | None


@dataclass
class IamEnforcer:
    enforce: bool = False
    identity_policy: dict[str, Any] = field(default_factory=lambda: {"Statement": []})
    # The ExternalId every role expects; None: AssumeRole does not check it.
    external_id: str | None = None
    sessions: dict[str, AssumedSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, enforce: bool, policy: Any | None, external_id: str | None) -> None:
        with self._lock:
            self.enforce = enforce
            if policy is not None:
                self.identity_policy = validate_policy(policy)
            self.external_id = external_id

    def remember_session(self, access_key: str, session: AssumedSession) -> None:
        with self._lock:
            self.sessions[access_key] = session

    def check(self, access_key: str, action: str) -> bool:
        """True when the call may proceed. Only assumed-role sessions are constrained: the daemon's own base
        identity is there to call sts:AssumeRole and nothing else."""
        if not self.enforce:
            return True
        session = self.sessions.get(access_key)
        if session is None:
            return action.lower().startswith("sts:")
        return is_allowed(self.identity_policy, session.session_policy, action)
