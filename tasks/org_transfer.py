"""Family: Organizations sub-account transfer (the optional "organizations" block of the production role).

Actions: organizations:CreateAccount, organizations:RemoveAccountFromOrganization,
organizations:InviteAccountToOrganization. Each runs in the management account whose role makes the call
(creation and removal in the source organization's, the invitation in the buying organization's);
``worker/transfer.py`` chains them into one transfer. None of them commits money: there is no ceiling to check,
and intake refuses them for an account that does not grant the optional block (``Family.optional_block``).

None of the three calls takes a token (aws-commitment-apis.md §1), so each holds a signature (one plan at a time
per email, per member account, per invited target) and reconciles by reading what AWS holds:

- CreateAccount is asynchronous. AWS answers with a create-account request id, kept as the plan's accepted
  answer and followed through DescribeCreateAccountStatus until SUCCEEDED or FAILED. When that answer was lost,
  reconciliation looks for the email among the organization's accounts and for the plan's request by account name
  (AWS does not show a request's email). A second account is impossible: AWS refuses a second account for one
  email (the request fails EMAIL_ALREADY_EXISTS), and that failure is settled as done when the account with the
  email came from this plan's own earlier request, as a conflict otherwise.
- RemoveAccountFromOrganization is declarative: the end state is "not a member". An account already gone
  (AccountNotFoundException after a send) is a "look" signal, confirmed by DescribeAccount and ListAccounts.
- InviteAccountToOrganization: AWS refuses a second open invitation to one target (DuplicateHandshakeException),
  another "look" signal; reconciliation finds the plan's handshake with ListHandshakesForOrganization.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, model_validator

from tasks.families import ORG_TRANSFER
from worker.actions import (
    Absent,
    Action,
    Ambiguous,
    Failed,
    Found,
    Idempotency,
    Intent,
    Nouns,
    Pending,
    PlanFailed,
    Reconciled,
    Submitted,
    register,
)
from worker.handle import PlanHandle
from worker.plans import STRICT

# AWS's own limits on these parameters (the CreateAccount and InviteAccountToOrganization API references).
EMAIL_PATTERN = r"^[^\s@]+@[^\s@]+\.[^\s@]+$"
ACCOUNT_ID_PATTERN = r"^\d{12}$"
ACCOUNT_NAME_PATTERN = r"^[\u0020-\u007E]+$"
ROLE_NAME_PATTERN = r"^[\w+=,.@-]{1,64}$"


# --- shared reads --------------------------------------------------------------------------------------------------
def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _management_organization(aws: PlanHandle, nothing: str) -> dict[str, Any]:
    """The caller's organization, which it must manage: these calls are refused from any other account."""
    try:
        org: dict[str, Any] = aws.read("describe_organization")["Organization"]
    except ClientError as exc:
        if _code(exc) == "AWSOrganizationsNotInUseException":
            raise PlanFailed("NotInOrganization", f"account {aws.account.account_id} is in no organization; "
                             f"{nothing}") from None
        raise
    if org["MasterAccountId"] != aws.account.account_id:
        raise PlanFailed("NotManagementAccount", f"account {aws.account.account_id} is a member of organization "
                         f"{org['Id']}, whose management account is {org['MasterAccountId']}; only a management "
                         f"account can make this call; {nothing}")
    return org


def _accounts(aws: PlanHandle) -> list[dict[str, Any]]:
    return aws.paginate("list_accounts", "Accounts")


def _send(aws: PlanHandle, operation: str, **params: Any) -> dict[str, Any]:
    """The mutating call. Organizations gives the why of a refusal in a separate ``Reason`` (WAIT_PERIOD_ACTIVE,
    ACCOUNT_CANNOT_LEAVE_WITHOUT_PHONE_VERIFICATION, ALREADY_IN_AN_ORGANIZATION...): it is put into the error's
    message, which is what the plan's record keeps."""
    try:
        return aws.send(operation, **params)
    except ClientError as exc:
        reason = exc.response.get("Reason")
        error = exc.response.get("Error")
        if reason and isinstance(error, dict) and str(reason) not in str(error.get("Message", "")):
            error["Message"] = f"{error.get('Message', '')} (Reason: {reason})".strip()
        raise


# --- organizations:CreateAccount -----------------------------------------------------------------------------------
class CreateAccountParams(BaseModel):
    """Parameters of organizations:CreateAccount (AWS's names in snake_case; Tags are not offered: they need
    organizations:TagResource, which the production role does not grant)."""

    model_config = STRICT

    email: str = Field(min_length=6, max_length=64, pattern=EMAIL_PATTERN,
                       description="the new account's root email; unique across all of AWS")
    account_name: str = Field(min_length=1, max_length=50, pattern=ACCOUNT_NAME_PATTERN)
    role_name: str | None = Field(None, pattern=ROLE_NAME_PATTERN,
                                  description="the role AWS creates in the new account for the management account")
    iam_user_access_to_billing: Literal["ALLOW", "DENY"] | None = None


class CreateAccountIntent(Intent):
    email: str
    account_name: str
    role_name: str | None
    iam_user_access_to_billing: str | None
    organization_id: str
    # Create-account requests with this account name that existed when the intent was made: never this plan's.
    requests_before: tuple[str, ...]


@register
class CreateAccount(Action[CreateAccountParams, CreateAccountIntent]):
    action: ClassVar[str] = "organizations:CreateAccount"
    family = ORG_TRANSFER
    service: ClassVar[str] = "organizations"
    params_model = CreateAccountParams
    intent_model = CreateAccountIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="AWS accounts", done="created", claim_kind="org-account")
    permissions = frozenset({
        "organizations:CreateAccount",
        "organizations:DescribeOrganization",
        "organizations:ListAccounts",
        "organizations:ListCreateAccountStatus",
        "organizations:DescribeCreateAccountStatus",
    })

    NOTHING = "nothing was created"

    def prepare(self, aws: PlanHandle, params: CreateAccountParams) -> CreateAccountIntent:
        org = _management_organization(aws, self.NOTHING)
        taken = [a for a in _accounts(aws) if str(a.get("Email", "")).lower() == params.email.lower()]
        if taken:
            account = taken[0]
            raise PlanFailed(
                "EmailAlreadyInOrganization",
                f"account {account['Id']} ({account.get('Name')}) of organization {org['Id']} already uses "
                f"{params.email}; {self.NOTHING}. To move that account, start the transfer from its account id",
                {"account_id": account["Id"]},
            )
        same_name = [s for s in aws.paginate("list_create_account_status", "CreateAccountStatuses")
                     if s.get("AccountName") == params.account_name]
        running = [s["Id"] for s in same_name if s.get("State") == "IN_PROGRESS"]
        if running:
            # AWS does not show a request's email: a request in progress under this name may be for this email,
            # and this plan could not tell it from its own.
            raise PlanFailed(
                "CreateAccountInProgress",
                f"account creation {running} for an account named {params.account_name!r} is in progress in "
                f"organization {org['Id']}; {self.NOTHING}. Try again once it has finished",
                {"create_account_request_ids": running},
            )
        return CreateAccountIntent(
            email=params.email,
            account_name=params.account_name,
            role_name=params.role_name,
            iam_user_access_to_billing=params.iam_user_access_to_billing,
            organization_id=org["Id"],
            requests_before=tuple(s["Id"] for s in same_name),
            # No token: one plan at a time per email (AWS keeps emails unique across all accounts).
            signature=f"organizations:create-account:{params.email.lower()}",
        )

    def submit(self, aws: PlanHandle, params: CreateAccountParams, intent: CreateAccountIntent) -> Submitted:
        request: dict[str, Any] = {"Email": intent.email, "AccountName": intent.account_name}
        if intent.role_name:
            request["RoleName"] = intent.role_name
        if intent.iam_user_access_to_billing:
            request["IamUserAccessToBilling"] = intent.iam_user_access_to_billing
        status = _send(aws, "create_account", **request)["CreateAccountStatus"]
        if status.get("State") == "SUCCEEDED" and status.get("AccountId"):
            return Submitted(self._result(intent, status["AccountId"], status["Id"], "response"),
                             (status["AccountId"],))
        # Asynchronous: the executor keeps this answer (aws.accepted) and follows the request with reconcile.
        return Submitted({"create_account_request_id": status["Id"], "state": status.get("State")}, (),
                         follow=f"account creation {status['Id']} in progress")

    def _result(self, intent: CreateAccountIntent, account_id: str, request_id: str | None,
                found_by: str) -> dict[str, Any]:
        return {"account_id": account_id, "email": intent.email, "account_name": intent.account_name,
                "organization_id": intent.organization_id, "create_account_request_id": request_id,
                "found_by": found_by}

    # --- reconciliation -----------------------------------------------------------------------------------------
    def reconcile(self, aws: PlanHandle, params: CreateAccountParams, intent: CreateAccountIntent) -> Reconciled:
        request_id = (aws.accepted or {}).get("create_account_request_id")
        if request_id:
            status = aws.read("describe_create_account_status",
                              CreateAccountRequestId=request_id)["CreateAccountStatus"]
            return self._by_request(aws, intent, status)
        # AWS's answer was lost (a dropped connection, a worker that died after the send): this plan's request is
        # one made under its account name since the intent. The statuses are read before the accounts, so a
        # request that finishes between the two reads shows as its account.
        mine = self._requests_since_intent(aws, intent)
        account = self._account_with_email(aws, intent)
        evidence = {"requests": {s["Id"]: s.get("State") for s in mine}}
        if account is not None:
            return self._done_or_conflict(aws, intent, account, mine, "email")
        running = [s["Id"] for s in mine if s.get("State") == "IN_PROGRESS"]
        if running:
            return Pending(f"account creation {running} in progress", evidence)
        # Nothing with this email exists. A FAILED request under this name proves nothing about this plan's (AWS
        # does not show its email): absent, so the executor may send again once that is conclusive, which AWS
        # makes harmless (a second request for an email that got an account fails EMAIL_ALREADY_EXISTS).
        return Absent(evidence)

    def _by_request(self, aws: PlanHandle, intent: CreateAccountIntent, status: dict[str, Any]) -> Reconciled:
        state = status.get("State")
        if state == "IN_PROGRESS":
            return Pending(f"account creation {status['Id']} in progress")
        if state == "SUCCEEDED":
            return Found(self._result(intent, status["AccountId"], status["Id"], "request id"),
                         (status["AccountId"],), {"create_account_status": state})
        reason = str(status.get("FailureReason") or "UNKNOWN")
        if reason == "EMAIL_ALREADY_EXISTS":
            # Done or conflict: the email got an account, either from this plan's own earlier request (a send
            # repeated after an answer was lost) or from someone else.
            account = self._account_with_email(aws, intent)
            if account is not None:
                return self._done_or_conflict(aws, intent, account, self._requests_since_intent(aws, intent),
                                              "email after EMAIL_ALREADY_EXISTS")
            return Failed(reason, f"AWS refused to create the account: {intent.email} belongs to an AWS account "
                          f"outside organization {intent.organization_id} (EMAIL_ALREADY_EXISTS); "
                          f"{self.NOTHING}", {"create_account_request_id": status["Id"]})
        return Failed(reason, f"AWS could not create the account (FailureReason {reason}); {self.NOTHING}",
                      {"create_account_request_id": status["Id"]})

    def _done_or_conflict(self, aws: PlanHandle, intent: CreateAccountIntent, account: dict[str, Any],
                          mine: list[dict[str, Any]], found_by: str) -> Reconciled:
        """An account with the plan's email exists (prepare saw none): this plan's if one of its requests made
        it, someone else's otherwise."""
        made = [s for s in mine if s.get("State") == "SUCCEEDED" and s.get("AccountId") == account["Id"]]
        if made and account.get("JoinedMethod", "CREATED") == "CREATED":
            # Claimed for this plan by the executor, which refuses an account another plan already holds.
            return Found(self._result(intent, account["Id"], made[0]["Id"], found_by), (account["Id"],),
                         {"requests": [s["Id"] for s in mine]})
        running = [s["Id"] for s in mine if s.get("State") == "IN_PROGRESS"]
        if running:
            # The requests were listed before the accounts: one of this plan's own, in progress then, may have made
            # this account since (found by the 1,000-plan chaos run). Look again once it has finished.
            return Pending(f"account creation {running} finishing", {"requests": [s["Id"] for s in mine]})
        return Failed("EMAIL_ALREADY_EXISTS", f"{intent.email} now belongs to account {account['Id']}, which no "
                      f"request of this plan made; {self.NOTHING}", {"account_id": account["Id"]})

    def _requests_since_intent(self, aws: PlanHandle, intent: CreateAccountIntent) -> list[dict[str, Any]]:
        return [s for s in aws.paginate("list_create_account_status", "CreateAccountStatuses")
                if s.get("AccountName") == intent.account_name and s["Id"] not in intent.requests_before]

    def _account_with_email(self, aws: PlanHandle, intent: CreateAccountIntent) -> dict[str, Any] | None:
        for account in _accounts(aws):
            if str(account.get("Email", "")).lower() == intent.email.lower():
                return account
        return None

    def look_alikes(self, aws: PlanHandle, params: CreateAccountParams, intent: CreateAccountIntent,
                    own: tuple[str, ...]) -> dict[str, datetime]:
        """A duplicate of this plan's call would carry the same email; AWS keeps emails unique, so this finds the
        plan's own account, and anything else would be a sandbox or AWS fault worth a person's look."""
        return {a["Id"]: a["JoinedTimestamp"] for a in _accounts(aws)
                if str(a.get("Email", "")).lower() == intent.email.lower()}


# --- organizations:RemoveAccountFromOrganization -------------------------------------------------------------------
class RemoveAccountParams(BaseModel):
    """Parameters of organizations:RemoveAccountFromOrganization: the member account to remove (the plan's own
    ``account_id`` is the management account that removes it)."""

    model_config = STRICT

    account_id: str = Field(pattern=ACCOUNT_ID_PATTERN, description="the member account to remove")


class RemoveAccountIntent(Intent):
    account_id: str
    organization_id: str
    account_name: str
    email: str
    joined_method: str
    joined_at: datetime  # identifies the membership being removed (an account may rejoin later)


@register
class RemoveAccountFromOrganization(Action[RemoveAccountParams, RemoveAccountIntent]):
    action: ClassVar[str] = "organizations:RemoveAccountFromOrganization"
    family = ORG_TRANSFER
    service: ClassVar[str] = "organizations"
    params_model = RemoveAccountParams
    intent_model = RemoveAccountIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="organization memberships", done="removed", claim_kind="org-membership")
    permissions = frozenset({
        "organizations:RemoveAccountFromOrganization",
        "organizations:DescribeOrganization",
        "organizations:DescribeAccount",
        "organizations:ListAccounts",
        "organizations:ListDelegatedAdministrators",
    })
    # The call is declarative (the end state is "not a member"): a repeat of a removal that took effect is
    # answered AccountNotFoundException. Reconciliation confirms it; it is never trusted alone.
    done_signals = frozenset({"AccountNotFoundException"})

    NOTHING = "nothing was removed"

    def prepare(self, aws: PlanHandle, params: RemoveAccountParams) -> RemoveAccountIntent:
        org = _management_organization(aws, self.NOTHING)
        if params.account_id == org["MasterAccountId"]:
            raise PlanFailed("MasterCannotLeaveOrganization", f"account {params.account_id} is the management "
                             f"account of organization {org['Id']} and cannot be removed from it; {self.NOTHING}")
        account = self._member(aws, params.account_id)
        if account is None:
            raise PlanFailed("AccountNotInOrganization", f"account {params.account_id} is not a member of "
                             f"organization {org['Id']}; {self.NOTHING}")
        delegated = [d for d in aws.paginate("list_delegated_administrators", "DelegatedAdministrators")
                     if d.get("Id") == params.account_id]
        if delegated:
            # AWS refuses it too (ConstraintViolationException CANNOT_REMOVE_DELEGATED_ADMINISTRATOR_FROM_ORG).
            raise PlanFailed("CannotRemoveDelegatedAdministrator", f"account {params.account_id} is a delegated "
                             f"administrator of organization {org['Id']}; deregister it first; {self.NOTHING}")
        # AWS's waiting period after an account was created in the organization, and the prerequisites of a
        # standalone account (payment method, phone verification, agreement), are AWS's to judge: its refusal
        # (ConstraintViolationException with its Reason) fails the plan with that reason.
        return RemoveAccountIntent(
            account_id=params.account_id,
            organization_id=org["Id"],
            account_name=str(account.get("Name", "")),
            email=str(account.get("Email", "")),
            joined_method=str(account.get("JoinedMethod", "")),
            joined_at=account["JoinedTimestamp"],
            signature=f"organizations:remove-account:{org['Id']}:{params.account_id}",
        )

    def _member(self, aws: PlanHandle, account_id: str) -> dict[str, Any] | None:
        try:
            account: dict[str, Any] = aws.read("describe_account", AccountId=account_id)["Account"]
        except ClientError as exc:
            if _code(exc) == "AccountNotFoundException":
                return None
            raise
        return account

    def _membership_id(self, intent: RemoveAccountIntent) -> str:
        return f"{intent.organization_id}/{intent.account_id}/{int(intent.joined_at.timestamp())}"

    def _result(self, intent: RemoveAccountIntent, found_by: str) -> dict[str, Any]:
        return {"account_id": intent.account_id, "organization_id": intent.organization_id,
                "account_name": intent.account_name, "email": intent.email, "removed": True, "found_by": found_by}

    def submit(self, aws: PlanHandle, params: RemoveAccountParams, intent: RemoveAccountIntent) -> Submitted:
        _send(aws, "remove_account_from_organization", AccountId=intent.account_id)
        return Submitted(self._result(intent, "response"), (self._membership_id(intent),))

    def reconcile(self, aws: PlanHandle, params: RemoveAccountParams, intent: RemoveAccountIntent) -> Reconciled:
        account = self._member(aws, intent.account_id)
        listed = any(a["Id"] == intent.account_id for a in _accounts(aws))
        evidence = {"describe_account": "member" if account is not None else "AccountNotFoundException",
                    "list_accounts": "listed" if listed else "not listed"}
        if account is None and not listed:
            return Found(self._result(intent, "DescribeAccount and ListAccounts"), (self._membership_id(intent),),
                         evidence)
        if account is not None and abs((account["JoinedTimestamp"] - intent.joined_at).total_seconds()) > 1:
            # The membership this plan removed is gone; the account has joined again since.
            return Found(self._result(intent, "a later membership"), (self._membership_id(intent),), evidence)
        # Still a member (or the two reads disagree while AWS settles): not removed, or not visible yet.
        return Absent(evidence)

    def look_alikes(self, aws: PlanHandle, params: RemoveAccountParams, intent: RemoveAccountIntent,
                    own: tuple[str, ...]) -> dict[str, datetime]:
        """A removal cannot happen twice: a repeat is refused (AccountNotFoundException) and changes nothing."""
        return {}


# --- organizations:InviteAccountToOrganization ---------------------------------------------------------------------
class InviteTarget(BaseModel):
    """AWS's ``Target`` (a HandshakeParty): an account id, or the email of the account to invite."""

    model_config = STRICT

    type: Literal["ACCOUNT", "EMAIL"]
    id: str = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _id_matches_type(self) -> InviteTarget:
        if self.type == "ACCOUNT" and not re.match(ACCOUNT_ID_PATTERN, self.id):
            raise ValueError("id must be a 12-digit account id when type is ACCOUNT")
        if self.type == "EMAIL" and (len(self.id) < 6 or not re.match(EMAIL_PATTERN, self.id)):
            raise ValueError("id must be an email address when type is EMAIL")
        return self


class InviteAccountParams(BaseModel):
    """Parameters of organizations:InviteAccountToOrganization (Tags are not offered: they need
    organizations:TagResource, which the production role does not grant)."""

    model_config = STRICT

    target: InviteTarget
    notes: str | None = Field(None, max_length=1024)


class InviteAccountIntent(Intent):
    target_type: str
    target_id: str
    notes: str | None
    organization_id: str
    # Invitations to this target that existed when the intent was made: never this plan's.
    handshakes_before: tuple[str, ...]


def _targets(handshake: dict[str, Any], target_type: str, target_id: str) -> bool:
    return any(p.get("Type") == target_type and str(p.get("Id", "")).lower() == target_id.lower()
               for p in handshake.get("Parties", []))


OPEN_HANDSHAKE_STATES = ("REQUESTED", "OPEN")


@register
class InviteAccountToOrganization(Action[InviteAccountParams, InviteAccountIntent]):
    action: ClassVar[str] = "organizations:InviteAccountToOrganization"
    family = ORG_TRANSFER
    service: ClassVar[str] = "organizations"
    params_model = InviteAccountParams
    intent_model = InviteAccountIntent
    idempotency = Idempotency.NONE
    nouns = Nouns(resource="invitations (handshakes)", done="sent", claim_kind="org-handshake")
    permissions = frozenset({
        "organizations:InviteAccountToOrganization",
        "organizations:DescribeOrganization",
        "organizations:ListAccounts",
        "organizations:ListHandshakesForOrganization",
    })
    # AWS refuses a second open invitation to the same target: after a send, that means "look" (the first may be
    # this plan's own, whose answer was lost). Reconciliation decides.
    done_signals = frozenset({"DuplicateHandshakeException"})

    NOTHING = "no invitation was sent"

    def prepare(self, aws: PlanHandle, params: InviteAccountParams) -> InviteAccountIntent:
        org = _management_organization(aws, self.NOTHING)
        target = params.target
        field = "Id" if target.type == "ACCOUNT" else "Email"
        members = [a for a in _accounts(aws) if str(a.get(field, "")).lower() == target.id.lower()]
        if members:
            raise PlanFailed("AlreadyInOrganization", f"account {members[0]['Id']} is already a member of "
                             f"organization {org['Id']}; {self.NOTHING}")
        earlier = self._invitations(aws, target.type, target.id)
        still_open = [h for h in earlier if h.get("State") in OPEN_HANDSHAKE_STATES]
        if still_open:
            handshake = still_open[0]
            raise PlanFailed(
                "InvitationAlreadyOpen",
                f"invitation {handshake['Id']} to {target.id}, requested {handshake.get('RequestedTimestamp')}, is "
                f"still {handshake.get('State')} and is not this plan's; the account can accept it, or cancel it "
                f"(CancelHandshake) before inviting again; {self.NOTHING}",
                {"handshake_id": handshake["Id"]},
            )
        return InviteAccountIntent(
            target_type=target.type,
            target_id=target.id,
            notes=params.notes,
            organization_id=org["Id"],
            handshakes_before=tuple(h["Id"] for h in earlier),
            signature=f"organizations:invite:{org['Id']}:{target.id.lower()}",
        )

    def _invitations(self, aws: PlanHandle, target_type: str, target_id: str) -> list[dict[str, Any]]:
        handshakes = aws.paginate("list_handshakes_for_organization", "Handshakes", Filter={"ActionType": "INVITE"})
        return [h for h in handshakes if _targets(h, target_type, target_id)]

    def _result(self, intent: InviteAccountIntent, handshake: dict[str, Any], found_by: str) -> dict[str, Any]:
        expires = handshake.get("ExpirationTimestamp")
        return {"handshake_id": handshake["Id"], "handshake_state": handshake.get("State"),
                "target": {"type": intent.target_type, "id": intent.target_id},
                "organization_id": intent.organization_id,
                "expires_at": expires.isoformat() if isinstance(expires, datetime) else expires,
                "found_by": found_by}

    def submit(self, aws: PlanHandle, params: InviteAccountParams, intent: InviteAccountIntent) -> Submitted:
        request: dict[str, Any] = {"Target": {"Id": intent.target_id, "Type": intent.target_type}}
        if intent.notes:
            request["Notes"] = intent.notes
        handshake = _send(aws, "invite_account_to_organization", **request)["Handshake"]
        return Submitted(self._result(intent, handshake, "response"), (handshake["Id"],))

    def reconcile(self, aws: PlanHandle, params: InviteAccountParams, intent: InviteAccountIntent) -> Reconciled:
        mine = self._since_intent(aws, intent)
        evidence = {"handshakes": {h["Id"]: h.get("State") for h in mine}}
        if not mine:
            return Absent(evidence)
        if len(mine) > 1:
            return Ambiguous(tuple(h["Id"] for h in mine), evidence)
        # Whatever its state now (the account may already have accepted or declined), the invitation was sent.
        return Found(self._result(intent, mine[0], "ListHandshakesForOrganization"), (mine[0]["Id"],), evidence)

    def _since_intent(self, aws: PlanHandle, intent: InviteAccountIntent) -> list[dict[str, Any]]:
        return [h for h in self._invitations(aws, intent.target_type, intent.target_id)
                if h["Id"] not in intent.handshakes_before]

    def look_alikes(self, aws: PlanHandle, params: InviteAccountParams, intent: InviteAccountIntent,
                    own: tuple[str, ...]) -> dict[str, datetime]:
        return {h["Id"]: h["RequestedTimestamp"] for h in self._since_intent(aws, intent)}
