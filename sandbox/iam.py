"""IAM enforcement: the role's identity policy intersected with the session policy passed to AssumeRole, the role's
trust policy on AssumeRole, and the daemon's own (hub) policy.

A call is evaluated as AWS does, for what the shipped policies rely on (deploy/iam/, worker/policy.py):

- actions, case-insensitive, with wildcards; an explicit Deny in any policy wins; otherwise the identity policy
  and, when the session has one, the session policy must both Allow;
- resources: ``Resource``/``NotResource`` against the call's ARNs. Only the authorizations below carry ARNs; every
  other call is evaluated against ``*``, so a statement scoped to ARNs never allows it (as AWS does for an action
  without resource-level permissions);
- conditions: the String*, Arn*, Bool and Null operators, ``...IfExists``, ``ForAllValues:``/``ForAnyValue:``;
  a policy using another operator is refused (MalformedPolicyDocument), never evaluated as true;
- the authorizations one EC2 call implies: ``ec2:CreateTags`` for ``TagSpecifications`` (on the new resource's
  type, with ``ec2:CreateAction``), ``ec2:CreateTags`` itself on each tagged resource's ARN, ``iam:PassRole`` for a
  spot fleet's ``IamFleetRole`` (``iam:PassedToService``), each with ``aws:RequestTag/...`` and ``aws:TagKeys``;
- the trust policy on AssumeRole: its principal, ``sts:ExternalId``, and ``sts:SetSourceIdentity`` when the call
  sends a ``SourceIdentity`` (AWS refuses one the trust policy does not allow). The sandbox knows a caller by the
  account its access key belongs to: a Principal's account is compared, not its role name.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ContextValue = str | list[str]
_OPERATORS = {
    "StringEquals": ("equals", False),
    "StringNotEquals": ("equals", True),
    "StringEqualsIgnoreCase": ("iequals", False),
    "StringNotEqualsIgnoreCase": ("iequals", True),
    "StringLike": ("like", False),
    "StringNotLike": ("like", True),
    "ArnEquals": ("like", False),
    "ArnLike": ("like", False),
    "ArnNotEquals": ("like", True),
    "ArnNotLike": ("like", True),
    "Bool": ("iequals", False),
}
_SET_QUALIFIERS = ("ForAllValues:", "ForAnyValue:")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
# EC2 resource ids by prefix → the resource type of their ARN (a bare UUID is a Reserved Instance).
_EC2_ID_TYPES = {
    "cr": "capacity-reservation", "hr": "host-reservation", "sir": "spot-instances-request",
    "sfr": "spot-fleet-request", "i": "instance", "h": "dedicated-host", "fleet": "fleet", "vol": "volume",
    "snap": "snapshot", "sg": "security-group", "subnet": "subnet", "vpc": "vpc", "eni": "network-interface",
    "lt": "launch-template", "ami": "image",
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _operator(name: str) -> tuple[str, str, bool, bool]:
    """(set qualifier, match kind, negated, if-exists) of a condition operator; ValueError for one not evaluated."""
    qualifier = next((q for q in _SET_QUALIFIERS if name.startswith(q)), "")
    base = name[len(qualifier):]
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base == "Null" and not qualifier:
        return "", "null", False, False
    if base not in _OPERATORS:
        raise ValueError(f"the sandbox does not evaluate the condition operator {name}")
    kind, negated = _OPERATORS[base]
    return qualifier, kind, negated, if_exists


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
        condition = statement.get("Condition", {})
        if not isinstance(condition, dict) or not all(isinstance(v, dict) for v in condition.values()):
            raise ValueError("a Condition maps operators to {key: values}")
        for operator in condition:
            _operator(operator)
    return policy


# --- what one call asks IAM ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Authorization:
    """One question IAM answers for a call: may this principal do ``action`` on each of ``resources``, given
    ``context`` (condition keys, lower-case)."""

    action: str
    resources: tuple[str, ...] = ("*",)
    context: Mapping[str, ContextValue] = field(default_factory=dict)


@dataclass
class CallRequest:
    """The call being authorized: where it goes and its parameters (parsed only when a policy needs them)."""

    account_id: str
    region: str
    params: Callable[[], dict[str, Any]]


def _tag_context(tags: list[dict[str, Any]]) -> dict[str, ContextValue]:
    context: dict[str, ContextValue] = {f"aws:requesttag/{t['Key']}".lower(): str(t.get("Value", ""))
                                        for t in tags if t.get("Key")}
    context["aws:tagkeys"] = [str(t["Key"]) for t in tags if t.get("Key")]
    return context


def ec2_arn(region: str, account_id: str, resource_id: str) -> str:
    kind = "reserved-instances" if _UUID.match(resource_id) else _EC2_ID_TYPES.get(resource_id.split("-", 1)[0])
    return f"arn:aws:ec2:{region}:{account_id}:{kind or 'unknown'}/{resource_id}"


def authorizations(action: str, request: CallRequest | None) -> list[Authorization]:
    """What IAM evaluates for one call: the action itself and what its parameters imply."""
    if request is None or not action.lower().startswith("ec2:"):
        return [Authorization(action)]
    try:
        params = request.params()
    except Exception:  # a request that does not parse fails validation later, with AWS's own error
        params = {}
    operation = action.split(":", 1)[1]
    if operation.lower() == "createtags":
        context = _tag_context(params.get("Tags") or [])
        arns = tuple(ec2_arn(request.region, request.account_id, str(i)) for i in params.get("Resources") or [])
        return [Authorization(action, arns or ("*",), context)]
    found = [Authorization(action)]
    fleet = params.get("SpotFleetRequestConfig") or {}
    for spec in [*(params.get("TagSpecifications") or []), *(fleet.get("TagSpecifications") or [])]:
        context = {**_tag_context(spec.get("Tags") or []), "ec2:createaction": operation}
        arn = f"arn:aws:ec2:{request.region}:{request.account_id}:{spec.get('ResourceType', 'unknown')}/*"
        found.append(Authorization("ec2:CreateTags", (arn,), context))
    if operation.lower() == "requestspotfleet" and fleet.get("IamFleetRole"):
        found.append(Authorization("iam:PassRole", (str(fleet["IamFleetRole"]),),
                                   {"iam:passedtoservice": "spotfleet.amazonaws.com"}))
    return found


# --- evaluation --------------------------------------------------------------------------------------------------
def _matches(patterns: list[Any], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value.lower(), str(p).lower()) for p in patterns)


def _resource_matches(patterns: list[Any], resource: str) -> bool:
    """ARNs are matched with wildcards; a call evaluated against ``*`` matches only ``*``."""
    if resource == "*":
        return "*" in patterns
    return any(fnmatch.fnmatchcase(resource, str(p)) for p in patterns)


def _value_matches(kind: str, wanted: list[Any], value: str) -> bool:
    if kind == "equals":
        return value in [str(w) for w in wanted]
    if kind == "iequals":
        return value.lower() in [str(w).lower() for w in wanted]
    return any(fnmatch.fnmatchcase(value, str(w)) for w in wanted)


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, ContextValue]) -> bool:
    qualifier, kind, negated, if_exists = _operator(operator)
    present = key.lower() in context
    values = [str(v) for v in _as_list(context.get(key.lower()))]
    wanted = _as_list(wanted)
    if kind == "null":
        return (not present) == (str(wanted[0]).lower() == "true")
    if qualifier == "ForAllValues:":
        return all(_value_matches(kind, wanted, v) != negated for v in values)
    if qualifier == "ForAnyValue:":
        return any(_value_matches(kind, wanted, v) != negated for v in values)
    if not present:
        return if_exists or negated
    hit = any(_value_matches(kind, wanted, v) for v in values)
    return hit != negated


def _conditions_hold(statement: dict[str, Any], context: Mapping[str, ContextValue]) -> bool:
    return all(
        _condition_holds(operator, key, wanted, context)
        for operator, pairs in statement.get("Condition", {}).items()
        for key, wanted in pairs.items()
    )


def _statement_applies(statement: dict[str, Any], action: str, resource: str,
                       context: Mapping[str, ContextValue]) -> bool:
    if "Action" in statement:
        hit = _matches(_as_list(statement["Action"]), action)
    else:
        hit = not _matches(_as_list(statement.get("NotAction")), action)
    if not hit:
        return False
    if "Resource" in statement:
        hit = _resource_matches(_as_list(statement["Resource"]), resource)
    elif "NotResource" in statement:
        hit = not _resource_matches(_as_list(statement["NotResource"]), resource)
    return hit and _conditions_hold(statement, context)


def _effects(policy: dict[str, Any], action: str, resource: str = "*",
             context: Mapping[str, ContextValue] | None = None) -> set[str]:
    return {
        statement["Effect"]
        for statement in _as_list(policy.get("Statement"))
        if _statement_applies(statement, action, resource, context or {})
    }


def is_allowed(identity: dict[str, Any], session: dict[str, Any] | None, action: str, resource: str = "*",
               context: Mapping[str, ContextValue] | None = None) -> bool:
    identity_effects = _effects(identity, action, resource, context)
    session_effects = _effects(session, action, resource, context) if session is not None else {"Allow"}
    if "Deny" in identity_effects or "Deny" in session_effects:
        return False
    return "Allow" in identity_effects and "Allow" in session_effects


def _principal_matches(principal: Any, caller_account: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for value in _as_list(principal.get("AWS")):
        text = str(value)
        account = text if re.fullmatch(r"\d{12}", text) else (text.split(":")[4] if text.count(":") >= 5 else None)
        if text == "*" or account == caller_account:
            return True
    return False


def trust_allows(trust: dict[str, Any], caller_account: str, action: str, role_arn: str,
                 context: Mapping[str, ContextValue]) -> bool:
    """The role's trust policy (a resource policy: Principal, no Resource needed) on one STS action."""
    effects = {
        statement["Effect"]
        for statement in _as_list(trust.get("Statement"))
        if _principal_matches(statement.get("Principal"), caller_account)
        and _statement_applies({**statement, "Resource": statement.get("Resource", "*")}, action,
                               role_arn if "Resource" in statement else "*", context)
    }
    return "Allow" in effects and "Deny" not in effects


@dataclass
class AssumedSession:
    role_arn: str
    session_name: str
    session_policy: dict[str, Any] | None
    source_identity: str | None = None

    @property
    def account_id(self) -> str:
        parts = self.role_arn.split(":")
        return parts[4] if len(parts) > 4 else ""


@dataclass
class IamEnforcer:
    enforce: bool = False
    identity_policy: dict[str, Any] = field(default_factory=lambda: {"Statement": []})
    # The ExternalId every role expects; None: AssumeRole does not check it.
    external_id: str | None = None
    # The roles' trust policy (None: AssumeRole checks only the ExternalId above).
    trust_policy: dict[str, Any] | None = None
    # The daemon's own identity policy for AssumeRole (None: its base credentials may call any sts: action).
    hub_policy: dict[str, Any] | None = None
    # Per account: the role's identity policy there (else ``identity_policy``).
    account_policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, AssumedSession] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(
        self,
        enforce: bool,
        policy: Any | None,
        external_id: str | None,
        trust_policy: Any | None = None,
        hub_policy: Any | None = None,
        account_policies: Mapping[str, Any] | None = None,
    ) -> None:
        """Every configuration starts clean: what is not given here (trust, hub, per-account) is off."""
        with self._lock:
            self.enforce = enforce
            if policy is not None:
                self.identity_policy = validate_policy(policy)
            self.external_id = external_id
            self.trust_policy = validate_policy(trust_policy) if trust_policy is not None else None
            self.hub_policy = validate_policy(hub_policy) if hub_policy is not None else None
            self.account_policies = {str(k): validate_policy(v) for k, v in (account_policies or {}).items()}

    def remember_session(self, access_key: str, session: AssumedSession) -> None:
        with self._lock:
            self.sessions[access_key] = session

    def check(self, access_key: str, action: str, request: CallRequest | None = None) -> bool:
        """True when the call may proceed. Only assumed-role sessions are constrained: the daemon's own base
        identity is there to call sts:AssumeRole and nothing else (its hub policy is checked by AssumeRole)."""
        if not self.enforce:
            return True
        session = self.sessions.get(access_key)
        if session is None:
            return action.lower().startswith("sts:")
        identity = self.account_policies.get(session.account_id, self.identity_policy)
        context: dict[str, ContextValue] = {}
        if session.source_identity:
            context["aws:sourceidentity"] = session.source_identity
        for authorization in authorizations(action, request):
            merged = {**context, **authorization.context}
            for resource in authorization.resources:
                if not is_allowed(identity, session.session_policy, authorization.action, resource, merged):
                    return False
        return True

    def assume_role_denial(self, caller_account: str, role_arn: str, params: Mapping[str, Any]) -> str | None:
        """Why AssumeRole is refused (the STS action AWS names), or None: the hub policy of the caller, then the
        role's trust policy, on sts:AssumeRole and, with a SourceIdentity, sts:SetSourceIdentity."""
        context: dict[str, ContextValue] = {"aws:principalaccount": caller_account}
        if params.get("ExternalId") is not None:
            context["sts:externalid"] = str(params["ExternalId"])
        actions = ["sts:AssumeRole"]
        if params.get("SourceIdentity") is not None:
            context["sts:sourceidentity"] = str(params["SourceIdentity"])
            actions.append("sts:SetSourceIdentity")
        for action in actions:
            if self.enforce and self.hub_policy is not None and not is_allowed(
                    self.hub_policy, None, action, role_arn, context):
                return action
            if self.trust_policy is not None and not trust_allows(
                    self.trust_policy, caller_account, action, role_arn, context):
                return action
        return None
