"""AWS Organizations for the sub-account transfer: organizations, accounts, CreateAccount, invites, removal.

Design choice: the sandbox owns every Organizations operation the worker uses, with one consistent model in
``state.extra["organizations"]`` (organizations, current memberships, every known account's email, delegated
administrators) plus ``Resource``s for ground truth. Wrapping moto's backend was the alternative, but moto
keeps one backend per management account, creates accounts synchronously with random ids, tracks members in
a module-level dict and has no handshakes at all: making CreateAccount asynchronous, emails unique across
organizations and letting a removed account join another organization would rewrite most of its account
model anyway, for more code than owning it. What the worker does not use (OUs, policies, service access,
tagging writes) still falls through to moto; so that those calls find an organization, CreateOrganization
also creates one in moto's backend for the same management account and adopts moto's organization and root
ids. Moto does not see the member accounts.

Ground truth (all under region us-east-1; Organizations is global):
- ``create-account-status`` (id ``car-...``, owner: the management account): IN_PROGRESS, then SUCCEEDED or
  FAILED (``EMAIL_ALREADY_EXISTS``) after ``CREATE_ACCOUNT_SECONDS`` on the sandbox clock.
- ``account`` (id: the new 12-digit account id, owner: the management account that created it): ACTIVE
  while it is a member of its creator's organization, REMOVED once removed from it.
- ``handshake`` (id ``h-...``, owner: the inviting management account): OPEN, then ACCEPTED, DECLINED,
  CANCELED or EXPIRED (15 days on the sandbox clock).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sandbox.catalogue import Catalogue
from sandbox.errors import AwsError
from sandbox.registry import CallContext, Handler, handles, on_state_setup, seeder
from sandbox.services._common import public
from sandbox.state import CreatedBy, Resource, SandboxState

SERVICE = "organizations"
REGION = "us-east-1"  # Organizations is global; its resources are recorded under us-east-1.
CREATE_ACCOUNT_SECONDS = 20
HANDSHAKE_LIFETIME = timedelta(days=15)
# ConstraintViolationException WAIT_PERIOD_ACTIVE: a created account cannot be removed for this long.
REMOVE_WAIT_PERIOD = timedelta(days=4)
# Closed handshakes (accepted, declined, canceled, expired) stay listed for 30 days.
CLOSED_HANDSHAKE_VISIBLE = timedelta(days=30)
MAX_PAGE = 20

_ACCOUNT_ID = re.compile(r"^\d{12}$")
_EMAIL = re.compile(r"^[^\s@]+@[^\s@]+\.[^\s@]+$")
_ACCOUNT_NAME = re.compile(r"^[\u0020-\u007E]+$")
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_HANDSHAKE_ID = re.compile(r"^h-[0-9a-z]{8,32}$")
_CAR_ID = re.compile(r"^car-[a-z0-9]{8,32}$")
_DEFAULT_EMAIL = re.compile(r"^aws\+(\d{12})@example\.com$")


class OrganizationsError(AwsError):
    """An Organizations error; ``Reason`` is the modeled member moto's JSON serializer writes into the body
    (botocore then exposes it as ``error.response["Reason"]``)."""

    def __init__(self, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(code, message)
        if reason is not None:
            self.Reason = reason


def _not_in_use() -> OrganizationsError:
    return OrganizationsError("AWSOrganizationsNotInUseException", "Your account is not a member of an organization.")


def _access_denied(what: str) -> OrganizationsError:
    return OrganizationsError("AccessDeniedException", f"You don't have permissions to access this resource: {what}")


def _invalid(message: str, reason: str) -> OrganizationsError:
    return OrganizationsError("InvalidInputException", message, reason)


# --- the model
def _model(state: SandboxState) -> dict[str, Any]:
    return state.extra.setdefault(
        SERVICE,
        {
            "orgs": {},  # org id -> organization record
            "members": {},  # account id -> membership {org, Name, JoinedMethod, JoinedTimestamp, Tags}
            "emails": {},  # account id -> email, for every account the sandbox knows (kept after removal)
            "names": {},  # account id -> account name, likewise
            "requests": {},  # car id -> create-account-status Resource
            "pending": [],  # create-account-status Resources still IN_PROGRESS
            "accounts": {},  # account id -> "account" Resource (accounts created by CreateAccount or seeded)
            "handshakes": {},  # handshake id -> handshake Resource
            "delegated": {},  # org id -> account id -> {service principal -> registered at}
        },
    )


def _default_email(account_id: str) -> str:
    """Accounts that existed before the sandbox (management accounts, invited standalone accounts)."""
    return f"aws+{account_id}@example.com"


def _email_of(model: dict[str, Any], account_id: str) -> str:
    return str(model["emails"].setdefault(account_id, _default_email(account_id)))


def _account_by_email(model: dict[str, Any], email: str) -> str | None:
    for account_id, known in model["emails"].items():
        if known.lower() == email.lower():
            return str(account_id)
    # Accounts the sandbox has not met yet own their default address.
    match = _DEFAULT_EMAIL.match(email.lower())
    if match and match.group(1) not in model["emails"]:
        return match.group(1)
    return None


def _org_of(model: dict[str, Any], account_id: str) -> dict[str, Any] | None:
    membership = model["members"].get(account_id)
    return model["orgs"][membership["org"]] if membership else None


def _require_org(ctx: CallContext) -> dict[str, Any]:
    org = _org_of(_model(ctx.state), ctx.account_id)
    if org is None:
        raise _not_in_use()
    return org


def _require_management(ctx: CallContext, allow_delegated: bool = False) -> dict[str, Any]:
    """The caller's organization, when the caller may run management-only operations there."""
    org = _require_org(ctx)
    if org["MasterAccountId"] == ctx.account_id:
        return org
    if allow_delegated and _model(ctx.state)["delegated"].get(org["Id"], {}).get(ctx.account_id):
        return org
    raise _access_denied(f"organizations:{ctx.operation} can only be called from the management account")


def _account_arn(org: dict[str, Any], account_id: str) -> str:
    return f"arn:aws:organizations::{org['MasterAccountId']}:account/{org['Id']}/{account_id}"


def _account_view(model: dict[str, Any], account_id: str) -> dict[str, Any]:
    membership = model["members"][account_id]
    org = model["orgs"][membership["org"]]
    return {
        "Id": account_id,
        "Arn": _account_arn(org, account_id),
        "Email": _email_of(model, account_id),
        "Name": membership["Name"],
        "Status": "ACTIVE",
        "State": "ACTIVE",
        "JoinedMethod": membership["JoinedMethod"],
        "JoinedTimestamp": membership["JoinedTimestamp"],
    }


def _members_of(model: dict[str, Any], org_id: str) -> list[str]:
    ids = [a for a, m in model["members"].items() if m["org"] == org_id]
    return sorted(ids, key=lambda a: (model["members"][a]["JoinedTimestamp"], a))


def _join(
    model: dict[str, Any],
    org: dict[str, Any],
    account_id: str,
    name: str,
    method: str,
    at: datetime,
    tags: list[dict[str, str]],
) -> None:
    model["members"][account_id] = {
        "org": org["Id"],
        "Name": name,
        "JoinedMethod": method,
        "JoinedTimestamp": at,
        "Tags": list(tags),
    }
    _email_of(model, account_id)
    model["names"][account_id] = name
    _sync_account_resource(model, account_id)


def _sync_account_resource(model: dict[str, Any], account_id: str) -> None:
    """An ``account`` resource is ACTIVE while the account is in its creator's organization, else REMOVED."""
    resource = model["accounts"].get(account_id)
    if resource is None:
        return
    org = _org_of(model, account_id)
    resource.state = "ACTIVE" if org is not None and org["MasterAccountId"] == resource.account_id else "REMOVED"


def _new_account_id(model: dict[str, Any]) -> str:
    while True:
        candidate = f"{uuid.uuid4().int % 10**12:012d}"
        if candidate not in model["emails"] and not candidate.startswith("0"):
            return candidate


# --- pagination and validation
def _page(items: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    """Organizations pagination: MaxResults 1..20, an opaque NextToken (InvalidInputException if forged)."""
    size = params.get("MaxResults")
    if size is not None and not 1 <= int(size) <= MAX_PAGE:
        raise _invalid(f"MaxResults must be between 1 and {MAX_PAGE}.", "MAX_VALUE_EXCEEDED")
    token = params.get("NextToken")
    start = 0
    if token:
        match = re.fullmatch(r"sbx-(\d+)", str(token))
        if not match:
            raise _invalid("The NextToken is not valid.", "INVALID_NEXT_TOKEN")
        start = int(match.group(1))
    end = start + int(size or MAX_PAGE)
    out: dict[str, Any] = {"items": items[start:end]}
    if end < len(items):
        out["NextToken"] = f"sbx-{end}"
    return out


def _listing(key: str, items: list[Any], params: dict[str, Any]) -> dict[str, Any]:
    page = _page(items, params)
    out: dict[str, Any] = {key: page["items"]}
    if "NextToken" in page:
        out["NextToken"] = page["NextToken"]
    return out


def _check_account_id(value: str, field: str = "AccountId") -> None:
    if not _ACCOUNT_ID.match(value):
        raise _invalid(f"{field} {value!r} does not match the pattern ^\\d{{12}}$.", "INVALID_PATTERN")


def _check_tags(ctx: CallContext, tags: list[dict[str, str]]) -> None:
    if not tags:
        return
    keys = [t["Key"] for t in tags]
    if len(set(keys)) != len(keys):
        raise _invalid("Tags contain a duplicate key.", "DUPLICATE_TAG_KEY")
    if len(tags) > 50:
        raise OrganizationsError("ConstraintViolationException", "Too many tags.", "MAX_TAG_LIMIT_EXCEEDED")
    # AWS: a request with Tags also needs organizations:TagResource.
    if not ctx.iam.check(ctx.access_key, "organizations:TagResource"):
        raise _access_denied("organizations:TagResource is required to pass Tags")


def _op(operation: str) -> Callable[[Handler], Handler]:
    """Register a handler that runs under the state lock, after the time-driven transitions are applied."""

    def register(fn: Handler) -> Handler:
        def run(ctx: CallContext, params: dict[str, Any]) -> Any:
            with ctx.state.lock:
                ctx.state.advance_all()
                return fn(ctx, params)

        handles(SERVICE, operation)(run)
        return fn

    return register


# --- organizations
def _mirror_in_moto(account_id: str, feature_set: str) -> tuple[str, str] | None:
    """Create the organization in moto's backend too, for the operations moto serves: (org id, root id)."""
    try:
        from moto.organizations.models import organizations_backends

        backend = organizations_backends[account_id]["aws"]
        backend.create_organization(region=REGION, FeatureSet=feature_set)
        root = backend.ou[0]
        return str(backend.org.id), str(root.id)  # type: ignore[union-attr]
    except Exception:  # moto already has one (state from outside the sandbox): keep our own ids
        return None


def _create_org(model: dict[str, Any], management: str, feature_set: str, at: datetime) -> dict[str, Any]:
    ids = _mirror_in_moto(management, feature_set)
    org_id, root_id = ids or (f"o-{uuid.uuid4().hex[:10]}", f"r-{uuid.uuid4().hex[:4]}")
    org = {
        "Id": org_id,
        "Arn": f"arn:aws:organizations::{management}:organization/{org_id}",
        "FeatureSet": feature_set,
        "MasterAccountArn": f"arn:aws:organizations::{management}:account/{org_id}/{management}",
        "MasterAccountId": management,
        "MasterAccountEmail": _email_of(model, management),
        "AvailablePolicyTypes": [],
        "_Root": {
            "Id": root_id,
            "Arn": f"arn:aws:organizations::{management}:root/{org_id}/{root_id}",
            "Name": "Root",
            "PolicyTypes": [],
        },
    }
    model["orgs"][org_id] = org
    # The management account joins its own organization (AWS reports it as INVITED).
    _join(model, org, management, f"management-{management}", "INVITED", at, [])
    return org


@_op("CreateOrganization")
def create_organization(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    model = _model(ctx.state)
    if _org_of(model, ctx.account_id) is not None:
        raise OrganizationsError(
            "AlreadyInOrganizationException", "The provided account is already a member of an organization."
        )
    feature_set = params.get("FeatureSet") or "ALL"
    if feature_set not in ("ALL", "CONSOLIDATED_BILLING"):
        raise _invalid(f"FeatureSet {feature_set!r} is not valid.", "INVALID_ENUM")
    org = _create_org(model, ctx.account_id, feature_set, ctx.now())
    return {"Organization": public(org)}


@_op("DescribeOrganization")
def describe_organization(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    return {"Organization": public(_require_org(ctx))}


@_op("ListRoots")
def list_roots(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    return _listing("Roots", [org["_Root"]], params)


@_op("ListParents")
def list_parents(ctx: CallContext, params: dict[str, Any]) -> Any:
    child = params["ChildId"]
    if not _ACCOUNT_ID.match(child):
        return ctx.call_moto()  # organizational units live in moto's mirror of the organization
    org = _require_management(ctx, allow_delegated=True)
    membership = _model(ctx.state)["members"].get(child)
    if membership is None or membership["org"] != org["Id"]:
        raise OrganizationsError("ChildNotFoundException", f"We can't find a child with the ID {child}.")
    return _listing("Parents", [{"Id": org["_Root"]["Id"], "Type": "ROOT"}], params)


# --- accounts
@_op("ListAccounts")
def list_accounts(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    model = _model(ctx.state)
    return _listing("Accounts", [_account_view(model, a) for a in _members_of(model, org["Id"])], params)


def _member_of(ctx: CallContext, org: dict[str, Any], account_id: str) -> dict[str, Any]:
    _check_account_id(account_id)
    membership = _model(ctx.state)["members"].get(account_id)
    if membership is None or membership["org"] != org["Id"]:
        raise OrganizationsError(
            "AccountNotFoundException", f"You specified an account ({account_id}) that doesn't exist."
        )
    return dict(membership)


@_op("DescribeAccount")
def describe_account(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    _member_of(ctx, org, params["AccountId"])
    return {"Account": _account_view(_model(ctx.state), params["AccountId"])}


@_op("ListTagsForResource")
def list_tags_for_resource(ctx: CallContext, params: dict[str, Any]) -> Any:
    resource_id = params["ResourceId"]
    if not _ACCOUNT_ID.match(resource_id):
        return ctx.call_moto()  # roots, OUs and policies live in moto's mirror
    org = _require_management(ctx, allow_delegated=True)
    membership = _model(ctx.state)["members"].get(resource_id)
    if membership is None or membership["org"] != org["Id"]:
        raise OrganizationsError("TargetNotFoundException", f"We can't find a target with the ID {resource_id}.")
    return _listing("Tags", membership["Tags"], params)


@_op("RemoveAccountFromOrganization")
def remove_account(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx)
    account_id = params["AccountId"]
    _check_account_id(account_id)
    if account_id == org["MasterAccountId"]:
        raise OrganizationsError(
            "MasterCannotLeaveOrganizationException",
            "You can't remove the management account from an organization.",
        )
    model = _model(ctx.state)
    membership = _member_of(ctx, org, account_id)
    if model["delegated"].get(org["Id"], {}).get(account_id):
        raise OrganizationsError(
            "ConstraintViolationException",
            f"Account {account_id} is a delegated administrator; deregister it first.",
            "CANNOT_REMOVE_DELEGATED_ADMINISTRATOR_FROM_ORG",
        )
    if membership["JoinedMethod"] == "CREATED" and ctx.now() < membership["JoinedTimestamp"] + REMOVE_WAIT_PERIOD:
        raise OrganizationsError(
            "ConstraintViolationException",
            "After you create an account, you must wait until at least four days after it was created.",
            "WAIT_PERIOD_ACTIVE",
        )
    del model["members"][account_id]
    _sync_account_resource(model, account_id)
    return {}


# --- CreateAccount
def _validate_create_account(ctx: CallContext, params: dict[str, Any]) -> None:
    email, name = params["Email"], params["AccountName"]
    if not 6 <= len(email) <= 64:
        reason = "MIN_LENGTH_EXCEEDED" if len(email) < 6 else "MAX_LENGTH_EXCEEDED"
        raise _invalid("Email must be between 6 and 64 characters long.", reason)
    if not _EMAIL.match(email):
        raise _invalid(f"Email {email!r} is not a valid email address.", "INVALID_PATTERN")
    if not 1 <= len(name) <= 50 or not _ACCOUNT_NAME.match(name):
        reason = "MAX_LENGTH_EXCEEDED" if len(name) > 50 else "INVALID_PATTERN"
        raise _invalid("AccountName must be 1 to 50 printable ASCII characters.", reason)
    role = params.get("RoleName")
    if role is not None and not _ROLE_NAME.match(role):
        raise _invalid(f"RoleName {role!r} is not valid.", "INVALID_ROLE_NAME")
    billing = params.get("IamUserAccessToBilling")
    if billing is not None and billing not in ("ALLOW", "DENY"):
        raise _invalid(f"IamUserAccessToBilling {billing!r} is not valid.", "INVALID_ENUM")
    _check_tags(ctx, params.get("Tags") or [])


def _status_view(resource: Resource) -> dict[str, Any]:
    view = public(resource.data)
    view["State"] = resource.state
    return view


@_op("CreateAccount")
def create_account(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx)
    _validate_create_account(ctx, params)
    now = ctx.now()
    car_id = f"car-{uuid.uuid4().hex}"
    data = {
        "Id": car_id,
        "AccountName": params["AccountName"],
        "RequestedTimestamp": now,
        "_OrgId": org["Id"],
        "_Email": params["Email"],
        "_Tags": list(params.get("Tags") or []),
        "_DueAt": now + timedelta(seconds=CREATE_ACCOUNT_SECONDS),
        "_Seq": ctx.state.next_number(),
    }
    # No client token: AWS's CreateAccount is not idempotent, so every call is a new request.
    resource = Resource(
        ctx.account_id,
        REGION,
        SERVICE,
        "create-account-status",
        car_id,
        "IN_PROGRESS",
        CreatedBy("organizations:CreateAccount", None, now),
        data,
    )
    model = _model(ctx.state)
    model["requests"][car_id] = resource
    model["pending"].append(resource)
    ctx.state.add(resource)
    return {"CreateAccountStatus": _status_view(resource)}


def _settle_creations(state: SandboxState, now: datetime) -> None:
    """Finish every due CreateAccount request, oldest first, so that of two requests for one email the first
    succeeds and the second fails EMAIL_ALREADY_EXISTS whatever order the advancers run in."""
    model = _model(state)
    due = sorted(
        (r for r in model["pending"] if r.data["_DueAt"] <= now),
        key=lambda r: (r.data["_DueAt"], r.data["_Seq"]),
    )
    for resource in due:
        model["pending"].remove(resource)
        _complete_creation(state, model, resource)


def _complete_creation(state: SandboxState, model: dict[str, Any], resource: Resource) -> None:
    data = resource.data
    done_at = data["_DueAt"]
    data["CompletedTimestamp"] = done_at
    if _account_by_email(model, data["_Email"]) is not None:
        resource.state = "FAILED"
        data["FailureReason"] = "EMAIL_ALREADY_EXISTS"
        return
    org = model["orgs"][data["_OrgId"]]
    account_id = _new_account_id(model)
    model["emails"][account_id] = data["_Email"]
    account = Resource(
        resource.account_id,
        REGION,
        SERVICE,
        "account",
        account_id,
        "ACTIVE",
        CreatedBy("organizations:CreateAccount", None, resource.created_by.at),
        {"Email": data["_Email"], "Name": data["AccountName"], "_CreateAccountRequestId": resource.id},
    )
    model["accounts"][account_id] = account
    _join(model, org, account_id, data["AccountName"], "CREATED", done_at, data["_Tags"])
    state.add(account)
    resource.state = "SUCCEEDED"
    data["AccountId"] = account_id


def _visible_requests(ctx: CallContext, org: dict[str, Any]) -> list[Resource]:
    requests = _model(ctx.state)["requests"].values()
    found = [r for r in requests if r.data["_OrgId"] == org["Id"]]
    return sorted(found, key=lambda r: (r.data["RequestedTimestamp"], r.data["_Seq"]))


@_op("DescribeCreateAccountStatus")
def describe_create_account_status(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    car_id = params["CreateAccountRequestId"]
    if not _CAR_ID.match(car_id):
        raise _invalid(f"CreateAccountRequestId {car_id!r} is not valid.", "INVALID_PATTERN")
    for resource in _visible_requests(ctx, org):
        if resource.id == car_id:
            return {"CreateAccountStatus": _status_view(resource)}
    raise OrganizationsError(
        "CreateAccountStatusNotFoundException",
        f"We can't find a create account request with the ID {car_id}.",
    )


@_op("ListCreateAccountStatus")
def list_create_account_status(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    states = params.get("States") or ["IN_PROGRESS", "SUCCEEDED", "FAILED"]
    items = [_status_view(r) for r in _visible_requests(ctx, org) if r.state in states]
    return _listing("CreateAccountStatuses", items, params)


# --- handshakes (invitations)
def _handshake_view(resource: Resource) -> dict[str, Any]:
    view = public(resource.data)
    view["State"] = resource.state
    return view


def _close(resource: Resource, state: str, at: datetime) -> None:
    resource.state = state
    resource.data["_ClosedAt"] = at


def _advance_handshake(resource: Resource, now: datetime) -> bool:
    if resource.state == "OPEN" and now >= resource.data["ExpirationTimestamp"]:
        _close(resource, "EXPIRED", resource.data["ExpirationTimestamp"])
    return resource.state == "OPEN"


def _is_target(model: dict[str, Any], resource: Resource, account_id: str) -> bool:
    target = resource.data["_Target"]
    if resource.data["_TargetType"] == "ACCOUNT":
        return bool(target == account_id)
    return bool(_email_of(model, account_id).lower() == str(target).lower())


def _target_account(model: dict[str, Any], target_type: str, target: str) -> str | None:
    return target if target_type == "ACCOUNT" else _account_by_email(model, target)


def _validate_target(target: dict[str, Any]) -> tuple[str, str]:
    target_type, target_id = target.get("Type"), target["Id"]
    if target_type == "ACCOUNT":
        if not _ACCOUNT_ID.match(target_id):
            raise _invalid(f"Target.Id {target_id!r} is not an account id.", "INVALID_PATTERN_TARGET_ID")
    elif target_type == "EMAIL":
        if not _EMAIL.match(target_id) or not 6 <= len(target_id) <= 64:
            raise _invalid(f"Target.Id {target_id!r} is not an email address.", "INVALID_EMAIL_ADDRESS_TARGET")
    else:
        raise _invalid("You can invite only an ACCOUNT or an EMAIL.", "INVALID_PARTY_TYPE_TARGET")
    return str(target_type), str(target_id)


def _handshake_resources(
    model: dict[str, Any], org: dict[str, Any], target_type: str, target: str, notes: str | None
) -> list[dict[str, Any]]:
    management = org["MasterAccountId"]
    feature_set = "FULL" if org["FeatureSet"] == "ALL" else "CONSOLIDATED_BILLING"
    resources: list[dict[str, Any]] = [
        {
            "Type": "ORGANIZATION",
            "Value": org["Id"],
            "Resources": [
                {"Type": "MASTER_EMAIL", "Value": _email_of(model, management)},
                {"Type": "MASTER_NAME", "Value": model["members"][management]["Name"]},
                {"Type": "ORGANIZATION_FEATURE_SET", "Value": feature_set},
            ],
        },
        {"Type": target_type, "Value": target},
    ]
    if notes:
        resources.append({"Type": "NOTES", "Value": notes})
    return resources


@_op("InviteAccountToOrganization")
def invite_account(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx)
    target_type, target = _validate_target(params["Target"])
    notes = params.get("Notes")
    if notes is not None and len(notes) > 1024:
        raise _invalid("Notes can be at most 1024 characters long.", "MAX_LENGTH_EXCEEDED")
    tags = list(params.get("Tags") or [])
    _check_tags(ctx, tags)
    model = _model(ctx.state)
    account_id = _target_account(model, target_type, target)
    if account_id is not None and _org_of(model, account_id) is not None:
        raise OrganizationsError(
            "HandshakeConstraintViolationException",
            f"The account {account_id} is already a member of an organization.",
            "ALREADY_IN_AN_ORGANIZATION",
        )
    for existing in model["handshakes"].values():
        same = existing.data["_Target"] == target or (
            account_id is not None and _is_target(model, existing, account_id)
        )
        if existing.data["_OrgId"] == org["Id"] and existing.state == "OPEN" and same:
            raise OrganizationsError(
                "DuplicateHandshakeException",
                f"An open invitation to {target} already exists: {existing.id}.",
            )
    now = ctx.now()
    handshake_id = f"h-{uuid.uuid4().hex}"
    data = {
        "Id": handshake_id,
        "Arn": f"arn:aws:organizations::{org['MasterAccountId']}:handshake/{org['Id']}/invite/{handshake_id}",
        "Parties": [{"Id": org["Id"], "Type": "ORGANIZATION"}, {"Id": target, "Type": target_type}],
        "RequestedTimestamp": now,
        "ExpirationTimestamp": now + HANDSHAKE_LIFETIME,
        "Action": "INVITE",
        "Resources": _handshake_resources(model, org, target_type, target, notes),
        "_OrgId": org["Id"],
        "_Target": target,
        "_TargetType": target_type,
        "_Tags": tags,
    }
    resource = Resource(
        ctx.account_id,
        REGION,
        SERVICE,
        "handshake",
        handshake_id,
        "OPEN",
        CreatedBy("organizations:InviteAccountToOrganization", None, now),
        data,
    )
    model["handshakes"][handshake_id] = resource
    ctx.state.add(resource)
    return {"Handshake": _handshake_view(resource)}


def _filtered_handshakes(ctx: CallContext, keep: Callable[[Resource], bool], params: dict[str, Any]) -> dict[str, Any]:
    wanted = params.get("Filter") or {}
    if wanted.get("ActionType") and wanted.get("ParentHandshakeId"):
        raise _invalid("Specify either ActionType or ParentHandshakeId, not both.", "MAX_LIMIT_EXCEEDED_FILTER")
    now = ctx.now()
    items = []
    for resource in _model(ctx.state)["handshakes"].values():
        closed_at = resource.data.get("_ClosedAt")
        if closed_at is not None and now - closed_at > CLOSED_HANDSHAKE_VISIBLE:
            continue
        if wanted.get("ActionType") and resource.data["Action"] != wanted["ActionType"]:
            continue
        if wanted.get("ParentHandshakeId"):
            continue  # invitations have no parent handshake
        if keep(resource):
            items.append(resource)
    items.sort(key=lambda r: (r.data["RequestedTimestamp"], r.id))
    return _listing("Handshakes", [_handshake_view(r) for r in items], params)


@_op("ListHandshakesForOrganization")
def list_handshakes_for_organization(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    return _filtered_handshakes(ctx, lambda r: r.data["_OrgId"] == org["Id"], params)


@_op("ListHandshakesForAccount")
def list_handshakes_for_account(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    model = _model(ctx.state)
    return _filtered_handshakes(ctx, lambda r: _is_target(model, r, ctx.account_id), params)


def _handshake(ctx: CallContext, params: dict[str, Any]) -> Resource:
    handshake_id = params["HandshakeId"]
    if not _HANDSHAKE_ID.match(handshake_id):
        raise _invalid(f"HandshakeId {handshake_id!r} is not valid.", "INVALID_PATTERN")
    resource = _model(ctx.state)["handshakes"].get(handshake_id)
    if resource is None:
        raise OrganizationsError("HandshakeNotFoundException", f"We can't find a handshake with the ID {handshake_id}.")
    return resource


def _is_originator(ctx: CallContext, resource: Resource) -> bool:
    org = _model(ctx.state)["orgs"].get(resource.data["_OrgId"])
    return org is not None and org["MasterAccountId"] == ctx.account_id


@_op("DescribeHandshake")
def describe_handshake(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _handshake(ctx, params)
    if not (_is_originator(ctx, resource) or _is_target(_model(ctx.state), resource, ctx.account_id)):
        # Handshakes of other parties are not visible: the same answer as for an unknown id.
        raise OrganizationsError("HandshakeNotFoundException", f"We can't find a handshake with the ID {resource.id}.")
    return {"Handshake": _handshake_view(resource)}


def _transition(resource: Resource, new_state: str) -> None:
    if resource.state == new_state:
        raise OrganizationsError(
            "HandshakeAlreadyInStateException", f"The handshake {resource.id} is already {new_state}."
        )
    if resource.state != "OPEN":
        raise OrganizationsError(
            "InvalidHandshakeTransitionException",
            f"The handshake {resource.id} is {resource.state} and can't be changed to {new_state}.",
        )


def _require_target(ctx: CallContext, resource: Resource) -> None:
    if not _is_target(_model(ctx.state), resource, ctx.account_id):
        raise _access_denied(f"only the invited account can answer handshake {resource.id}")


@_op("AcceptHandshake")
def accept_handshake(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _handshake(ctx, params)
    _require_target(ctx, resource)
    _transition(resource, "ACCEPTED")
    model = _model(ctx.state)
    if _org_of(model, ctx.account_id) is not None:
        raise OrganizationsError(
            "HandshakeConstraintViolationException",
            "Your account is already a member of an organization.",
            "ALREADY_IN_AN_ORGANIZATION",
        )
    org = model["orgs"][resource.data["_OrgId"]]
    now = ctx.now()
    name = model["names"].get(ctx.account_id) or f"account-{ctx.account_id}"
    _join(model, org, ctx.account_id, name, "INVITED", now, resource.data["_Tags"])
    _close(resource, "ACCEPTED", now)
    return {"Handshake": _handshake_view(resource)}


@_op("DeclineHandshake")
def decline_handshake(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _handshake(ctx, params)
    _require_target(ctx, resource)
    _transition(resource, "DECLINED")
    _close(resource, "DECLINED", ctx.now())
    return {"Handshake": _handshake_view(resource)}


@_op("CancelHandshake")
def cancel_handshake(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    resource = _handshake(ctx, params)
    if not _is_originator(ctx, resource):
        raise _access_denied(f"only the inviting organization's management account can cancel {resource.id}")
    _transition(resource, "CANCELED")
    _close(resource, "CANCELED", ctx.now())
    return {"Handshake": _handshake_view(resource)}


# --- delegated administrators
@_op("RegisterDelegatedAdministrator")
def register_delegated_administrator(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx)
    account_id, principal = params["AccountId"], params["ServicePrincipal"]
    if account_id == org["MasterAccountId"]:
        raise OrganizationsError(
            "ConstraintViolationException",
            "You can't register the management account as a delegated administrator.",
            "CANNOT_REGISTER_MASTER_AS_DELEGATED_ADMINISTRATOR",
        )
    _member_of(ctx, org, account_id)
    services = _model(ctx.state)["delegated"].setdefault(org["Id"], {}).setdefault(account_id, {})
    if principal in services:
        raise OrganizationsError(
            "AccountAlreadyRegisteredException",
            f"Account {account_id} is already a delegated administrator for {principal}.",
        )
    services[principal] = ctx.now()
    return {}


@_op("DeregisterDelegatedAdministrator")
def deregister_delegated_administrator(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx)
    account_id, principal = params["AccountId"], params["ServicePrincipal"]
    _member_of(ctx, org, account_id)
    delegated = _model(ctx.state)["delegated"].setdefault(org["Id"], {})
    if principal not in delegated.get(account_id, {}):
        raise OrganizationsError(
            "AccountNotRegisteredException",
            f"Account {account_id} is not a delegated administrator for {principal}.",
        )
    del delegated[account_id][principal]
    if not delegated[account_id]:
        del delegated[account_id]
    return {}


@_op("ListDelegatedAdministrators")
def list_delegated_administrators(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    org = _require_management(ctx, allow_delegated=True)
    model = _model(ctx.state)
    principal = params.get("ServicePrincipal")
    items = []
    for account_id, services in sorted(model["delegated"].get(org["Id"], {}).items()):
        if principal and principal not in services:
            continue
        view = _account_view(model, account_id)
        view["DelegationEnabledDate"] = min(services.values())
        items.append(view)
    return _listing("DelegatedAdministrators", items, params)


# --- time and seeds
@on_state_setup
def _setup(state: SandboxState) -> None:
    def advance_request(resource: Resource, now: datetime) -> bool:
        _settle_creations(state, now)
        return resource.state == "IN_PROGRESS"

    state.register_advancer(SERVICE, "create-account-status", advance_request)
    state.register_advancer(SERVICE, "handshake", _advance_handshake)


@seeder("organizations:organization")
def seed_organization(state: SandboxState, catalogue: Catalogue, entry: dict[str, Any]) -> None:
    """``{"kind": "organizations:organization", "management_account_id", "feature_set"?: "ALL",
    "management_email"?, "members": [{"account_id", "email"?, "name"?,
    "joined_method"?: "CREATED" | "INVITED",
    "joined_days_ago"?: 30, "delegated_admin_for"?: ["service principal", ...]}]}``"""
    with state.lock:
        model = _model(state)
        now = state.clock.now()
        management = str(entry["management_account_id"])
        if entry.get("management_email"):
            model["emails"][management] = entry["management_email"]
        if _org_of(model, management) is not None:
            raise ValueError(f"account {management} is already in an organization")
        org = _create_org(model, management, entry.get("feature_set", "ALL"), now)
        for member in entry.get("members", []):
            account_id = str(member["account_id"])
            if _org_of(model, account_id) is not None:
                raise ValueError(f"account {account_id} is already in an organization")
            if member.get("email"):
                model["emails"][account_id] = member["email"]
            joined = now - timedelta(days=float(member.get("joined_days_ago", 30)))
            method = member.get("joined_method", "CREATED")
            if method == "CREATED":
                account = Resource(
                    management,
                    REGION,
                    SERVICE,
                    "account",
                    account_id,
                    "ACTIVE",
                    CreatedBy("seed", None, now),
                    {"Email": _email_of(model, account_id), "Name": member.get("name", account_id)},
                )
                model["accounts"][account_id] = account
                state.add(account)
            _join(model, org, account_id, member.get("name", f"account-{account_id}"), method, joined, [])
            for principal in member.get("delegated_admin_for", []):
                model["delegated"].setdefault(org["Id"], {}).setdefault(account_id, {})[principal] = joined
