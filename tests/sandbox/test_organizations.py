"""Organizations for the sub-account transfer: CreateAccount (asynchronous), invitations (handshakes) and
RemoveAccountFromOrganization, over HTTP with real boto3 clients whose responses are shape-checked."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

CUSTOMER = "260000000011"  # management account of the customer's organization
BUYER = "260000000012"  # management account of the buyer's organization
OUTSIDER = "260000000013"  # an account in no organization
DESCRIBE_ONLY = {"Statement": [{"Effect": "Allow", "Action": "organizations:Describe*", "Resource": "*"}]}


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, dict[str, Any]]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response


def _org(aws, account_id: str) -> Any:
    client = aws("organizations", account_id=account_id)
    client.create_organization(FeatureSet="ALL")
    return client


def _created_account(sandbox: SandboxControl, org: Any, email: str, name: str = "commitments") -> str:
    request_id = org.create_account(Email=email, AccountName=name)["CreateAccountStatus"]["Id"]
    sandbox.advance_clock(30)
    status = org.describe_create_account_status(CreateAccountRequestId=request_id)["CreateAccountStatus"]
    assert status["State"] == "SUCCEEDED"
    return str(status["AccountId"])


def _truth(sandbox: SandboxControl, type_: str, id_: str) -> dict[str, Any]:
    [found] = [r for r in sandbox.resources(service="organizations", type=type_) if r["id"] == id_]
    return found


# --- organizations
def test_create_and_describe_organization(sandbox: SandboxControl, aws) -> None:
    org = aws("organizations", account_id=CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.describe_organization()
    assert _error(caught)[:2] == ("AWSOrganizationsNotInUseException", 400)
    created = org.create_organization()["Organization"]
    assert created["FeatureSet"] == "ALL" and created["MasterAccountId"] == CUSTOMER
    assert created["Id"].startswith("o-")
    assert org.describe_organization()["Organization"] == created
    with pytest.raises(ClientError) as caught:
        org.create_organization()
    assert _error(caught)[0] == "AlreadyInOrganizationException"
    [management] = org.list_accounts()["Accounts"]
    assert management["Id"] == CUSTOMER and management["Status"] == "ACTIVE"
    [root] = org.list_roots()["Roots"]
    assert org.list_parents(ChildId=CUSTOMER)["Parents"] == [{"Id": root["Id"], "Type": "ROOT"}]
    assert org.list_delegated_administrators()["DelegatedAdministrators"] == []
    # Operations moto serves (OUs) see the same organization: it is mirrored into moto with the same ids.
    assert org.list_organizational_units_for_parent(ParentId=root["Id"])["OrganizationalUnits"] == []


# --- CreateAccount
def test_create_account_is_asynchronous(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    status = org.create_account(
        Email="commitments@customer.example",
        AccountName="commitd-transfer",
        RoleName="OrganizationAccountAccessRole",
        IamUserAccessToBilling="ALLOW",
        Tags=[{"Key": "commitd:plan", "Value": "plan-1"}],
    )["CreateAccountStatus"]
    assert status["State"] == "IN_PROGRESS" and status["AccountName"] == "commitd-transfer"
    assert status["Id"].startswith("car-") and len(status["Id"]) == 36
    assert "AccountId" not in status
    assert _truth(sandbox, "create-account-status", status["Id"])["state"] == "IN_PROGRESS"
    in_progress = org.list_create_account_status(States=["IN_PROGRESS"])["CreateAccountStatuses"]
    assert [s["Id"] for s in in_progress] == [status["Id"]]
    assert len(org.list_accounts()["Accounts"]) == 1  # not created yet

    sandbox.advance_clock(25)
    done = org.describe_create_account_status(CreateAccountRequestId=status["Id"])["CreateAccountStatus"]
    assert done["State"] == "SUCCEEDED" and done["CompletedTimestamp"] >= done["RequestedTimestamp"]
    account_id = done["AccountId"]
    assert len(account_id) == 12 and account_id.isdigit()
    assert org.list_create_account_status(States=["IN_PROGRESS"])["CreateAccountStatuses"] == []
    account = org.describe_account(AccountId=account_id)["Account"]
    assert account["Email"] == "commitments@customer.example" and account["Name"] == "commitd-transfer"
    assert account["JoinedMethod"] == "CREATED" and account["Status"] == "ACTIVE"
    assert account["Arn"].endswith(f"/{account_id}")
    assert account_id in [a["Id"] for a in org.list_accounts()["Accounts"]]
    assert org.list_tags_for_resource(ResourceId=account_id)["Tags"] == [
        {"Key": "commitd:plan", "Value": "plan-1"}
    ]
    truth = _truth(sandbox, "account", account_id)
    assert truth["account_id"] == CUSTOMER and truth["state"] == "ACTIVE"
    assert truth["created_by"]["operation"] == "organizations:CreateAccount"
    assert _truth(sandbox, "create-account-status", status["Id"])["state"] == "SUCCEEDED"


def test_create_account_has_no_idempotency_and_fails_on_duplicate_email(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    first = org.create_account(Email="dup@customer.example", AccountName="x")["CreateAccountStatus"]
    second = org.create_account(Email="dup@customer.example", AccountName="x")["CreateAccountStatus"]
    assert first["Id"] != second["Id"]  # no token: an identical call is a second request
    sandbox.advance_clock(30)
    statuses = {s["Id"]: s for s in org.list_create_account_status()["CreateAccountStatuses"]}
    assert statuses[first["Id"]]["State"] == "SUCCEEDED"
    assert statuses[second["Id"]]["State"] == "FAILED"
    assert statuses[second["Id"]]["FailureReason"] == "EMAIL_ALREADY_EXISTS"
    assert "AccountId" not in statuses[second["Id"]]
    assert [s["Id"] for s in org.list_create_account_status(States=["FAILED"])["CreateAccountStatuses"]] == [
        second["Id"]
    ]
    # An email used by an account of another organization fails too.
    buyer = _org(aws, BUYER)
    third = buyer.create_account(Email="DUP@customer.example", AccountName="y")["CreateAccountStatus"]
    sandbox.advance_clock(30)
    failed = buyer.describe_create_account_status(CreateAccountRequestId=third["Id"])["CreateAccountStatus"]
    assert failed["State"] == "FAILED" and failed["FailureReason"] == "EMAIL_ALREADY_EXISTS"
    assert len(sandbox.resources(type="account")) == 1


def test_create_account_errors(sandbox: SandboxControl, aws) -> None:
    outsider = aws("organizations", account_id=OUTSIDER)
    with pytest.raises(ClientError) as caught:
        outsider.create_account(Email="a@b.example", AccountName="x")
    assert _error(caught)[0] == "AWSOrganizationsNotInUseException"
    org = _org(aws, CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.create_account(Email="a" * 60 + "@b.example", AccountName="x")
    code, status, response = _error(caught)
    assert (code, status, response["Reason"]) == ("InvalidInputException", 400, "MAX_LENGTH_EXCEEDED")
    with pytest.raises(ClientError) as caught:
        org.create_account(Email="not-an-email", AccountName="x")
    assert _error(caught)[2]["Reason"] == "INVALID_PATTERN"
    with pytest.raises(ClientError) as caught:
        org.describe_create_account_status(CreateAccountRequestId="car-0123456789abcdef0123456789abcdef")
    assert _error(caught)[0] == "CreateAccountStatusNotFoundException"
    # A member account is not the management account.
    member_id = _created_account(sandbox, org, "member@customer.example")
    member = aws("organizations", account_id=member_id)
    assert member.describe_organization()["Organization"]["MasterAccountId"] == CUSTOMER
    with pytest.raises(ClientError) as caught:
        member.create_account(Email="other@customer.example", AccountName="x")
    assert _error(caught)[:2] == ("AccessDeniedException", 400)
    assert len(sandbox.resources(type="create-account-status")) == 1


def test_create_account_denied_by_iam(sandbox: SandboxControl, aws) -> None:
    _org(aws, CUSTOMER)
    sandbox.set_iam(True, DESCRIBE_ONLY)
    org = aws("organizations", account_id=CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.create_account(Email="denied@customer.example", AccountName="x")
    assert _error(caught)[0] == "AccessDeniedException"
    # Tags need organizations:TagResource as well.
    sandbox.set_iam(True, {"Statement": [{"Effect": "Allow", "Action": "organizations:CreateAccount"}]})
    org = aws("organizations", account_id=CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.create_account(
            Email="denied@customer.example", AccountName="x", Tags=[{"Key": "k", "Value": "v"}]
        )
    assert _error(caught)[0] == "AccessDeniedException"
    assert sandbox.resources(type="create-account-status") == []


def test_list_accounts_paginates(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    for n in range(2):
        org.create_account(Email=f"p{n}@customer.example", AccountName=f"p{n}")
    sandbox.advance_clock(30)
    first = org.list_accounts(MaxResults=2)
    assert len(first["Accounts"]) == 2 and first["NextToken"]
    second = org.list_accounts(MaxResults=2, NextToken=first["NextToken"])
    assert len(second["Accounts"]) == 1 and "NextToken" not in second
    pages = org.get_paginator("list_accounts").paginate(PaginationConfig={"PageSize": 1})
    assert len([a for page in pages for a in page["Accounts"]]) == 3
    with pytest.raises(ClientError) as caught:
        org.list_accounts(NextToken="forged")
    assert _error(caught)[2]["Reason"] == "INVALID_NEXT_TOKEN"


# --- RemoveAccountFromOrganization
def test_remove_account_from_organization(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    account_id = _created_account(sandbox, org, "leaver@customer.example")
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId=account_id)
    code, _, response = _error(caught)
    assert (code, response["Reason"]) == ("ConstraintViolationException", "WAIT_PERIOD_ACTIVE")
    sandbox.advance_clock(4 * 86400)
    org.remove_account_from_organization(AccountId=account_id)
    assert account_id not in [a["Id"] for a in org.list_accounts()["Accounts"]]
    with pytest.raises(ClientError) as caught:
        org.describe_account(AccountId=account_id)
    assert _error(caught)[0] == "AccountNotFoundException"
    # A replay is the done signal: AccountNotFoundException.
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId=account_id)
    assert _error(caught)[:2] == ("AccountNotFoundException", 400)
    assert _truth(sandbox, "account", account_id)["state"] == "REMOVED"
    removed = aws("organizations", account_id=account_id)
    with pytest.raises(ClientError) as caught:
        removed.describe_organization()
    assert _error(caught)[0] == "AWSOrganizationsNotInUseException"


def test_remove_account_errors(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId=CUSTOMER)
    assert _error(caught)[0] == "MasterCannotLeaveOrganizationException"
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId="999999999999")
    assert _error(caught)[0] == "AccountNotFoundException"
    account_id = _created_account(sandbox, org, "admin@customer.example")
    sandbox.advance_clock(5 * 86400)
    org.register_delegated_administrator(AccountId=account_id, ServicePrincipal="securityhub.amazonaws.com")
    [admin] = org.list_delegated_administrators()["DelegatedAdministrators"]
    assert admin["Id"] == account_id
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId=account_id)
    code, _, response = _error(caught)
    assert (code, response["Reason"]) == (
        "ConstraintViolationException",
        "CANNOT_REMOVE_DELEGATED_ADMINISTRATOR_FROM_ORG",
    )
    member = aws("organizations", account_id=account_id)
    with pytest.raises(ClientError) as caught:
        member.remove_account_from_organization(AccountId=account_id)
    assert _error(caught)[0] == "AccessDeniedException"
    org.deregister_delegated_administrator(AccountId=account_id, ServicePrincipal="securityhub.amazonaws.com")
    org.remove_account_from_organization(AccountId=account_id)
    outsider = aws("organizations", account_id=OUTSIDER)
    with pytest.raises(ClientError) as caught:
        outsider.remove_account_from_organization(AccountId=account_id)
    assert _error(caught)[0] == "AWSOrganizationsNotInUseException"


def test_remove_account_denied_by_iam(sandbox: SandboxControl, aws) -> None:
    org = _org(aws, CUSTOMER)
    account_id = _created_account(sandbox, org, "stay@customer.example")
    sandbox.advance_clock(5 * 86400)
    sandbox.set_iam(True, DESCRIBE_ONLY)
    org = aws("organizations", account_id=CUSTOMER)
    with pytest.raises(ClientError) as caught:
        org.remove_account_from_organization(AccountId=account_id)
    assert _error(caught)[0] == "AccessDeniedException"
    assert org.describe_account(AccountId=account_id)["Account"]["Status"] == "ACTIVE"


# --- InviteAccountToOrganization and handshakes
def test_invite_and_accept(sandbox: SandboxControl, aws) -> None:
    buyer = _org(aws, BUYER)
    handshake = buyer.invite_account_to_organization(
        Target={"Id": OUTSIDER, "Type": "ACCOUNT"},
        Notes="commitment transfer",
        Tags=[{"Key": "commitd:plan", "Value": "plan-2"}],
    )["Handshake"]
    assert handshake["State"] == "OPEN" and handshake["Action"] == "INVITE"
    assert handshake["Id"].startswith("h-") and len(handshake["Id"]) == 34
    assert {"Id": OUTSIDER, "Type": "ACCOUNT"} in handshake["Parties"]
    assert (handshake["ExpirationTimestamp"] - handshake["RequestedTimestamp"]).days == 15
    assert {"Type": "NOTES", "Value": "commitment transfer"} in handshake["Resources"]
    truth = _truth(sandbox, "handshake", handshake["Id"])
    assert truth["account_id"] == BUYER and truth["state"] == "OPEN"
    assert truth["created_by"]["operation"] == "organizations:InviteAccountToOrganization"
    listed = buyer.list_handshakes_for_organization(Filter={"ActionType": "INVITE"})["Handshakes"]
    assert [h["Id"] for h in listed] == [handshake["Id"]]

    invited = aws("organizations", account_id=OUTSIDER)
    assert [h["Id"] for h in invited.list_handshakes_for_account()["Handshakes"]] == [handshake["Id"]]
    assert invited.describe_handshake(HandshakeId=handshake["Id"])["Handshake"]["State"] == "OPEN"
    with pytest.raises(ClientError) as caught:
        buyer.accept_handshake(HandshakeId=handshake["Id"])  # only the invited account may accept
    assert _error(caught)[0] == "AccessDeniedException"
    accepted = invited.accept_handshake(HandshakeId=handshake["Id"])["Handshake"]
    assert accepted["State"] == "ACCEPTED"
    assert invited.describe_organization()["Organization"]["MasterAccountId"] == BUYER
    account = buyer.describe_account(AccountId=OUTSIDER)["Account"]
    assert account["JoinedMethod"] == "INVITED"
    tags = buyer.list_tags_for_resource(ResourceId=OUTSIDER)["Tags"]
    assert tags == [{"Key": "commitd:plan", "Value": "plan-2"}]
    assert _truth(sandbox, "handshake", handshake["Id"])["state"] == "ACCEPTED"
    with pytest.raises(ClientError) as caught:
        invited.accept_handshake(HandshakeId=handshake["Id"])
    assert _error(caught)[0] == "HandshakeAlreadyInStateException"


def test_invite_errors(sandbox: SandboxControl, aws) -> None:
    outsider = aws("organizations", account_id=OUTSIDER)
    with pytest.raises(ClientError) as caught:
        outsider.invite_account_to_organization(Target={"Id": BUYER, "Type": "ACCOUNT"})
    assert _error(caught)[0] == "AWSOrganizationsNotInUseException"
    customer = _org(aws, CUSTOMER)
    buyer = _org(aws, BUYER)
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": CUSTOMER, "Type": "ACCOUNT"})
    code, status, response = _error(caught)
    assert (code, status, response["Reason"]) == (
        "HandshakeConstraintViolationException",
        400,
        "ALREADY_IN_AN_ORGANIZATION",
    )
    member_id = _created_account(sandbox, customer, "member@customer.example")
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": "member@customer.example", "Type": "EMAIL"})
    assert _error(caught)[2]["Reason"] == "ALREADY_IN_AN_ORGANIZATION"
    member = aws("organizations", account_id=member_id)
    with pytest.raises(ClientError) as caught:
        member.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})
    assert _error(caught)[0] == "AccessDeniedException"
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": "12345", "Type": "ACCOUNT"})
    assert _error(caught)[2]["Reason"] == "INVALID_PATTERN_TARGET_ID"
    first = buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})["Handshake"]
    # A second open invitation for the same account is the done signal.
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})
    assert _error(caught)[0] == "DuplicateHandshakeException"
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": f"aws+{OUTSIDER}@example.com", "Type": "EMAIL"})
    assert _error(caught)[0] == "DuplicateHandshakeException"
    assert [r["id"] for r in sandbox.resources(type="handshake")] == [first["Id"]]
    with pytest.raises(ClientError) as caught:
        buyer.describe_handshake(HandshakeId="h-0123456789abcdef0123456789abcdef")
    assert _error(caught)[0] == "HandshakeNotFoundException"


def test_invite_denied_by_iam(sandbox: SandboxControl, aws) -> None:
    _org(aws, BUYER)
    sandbox.set_iam(True, DESCRIBE_ONLY)
    buyer = aws("organizations", account_id=BUYER)
    with pytest.raises(ClientError) as caught:
        buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})
    assert _error(caught)[0] == "AccessDeniedException"
    assert sandbox.resources(type="handshake") == []


def test_handshake_decline_cancel_and_expiry(sandbox: SandboxControl, aws) -> None:
    buyer = _org(aws, BUYER)
    invited = aws("organizations", account_id=OUTSIDER)
    declined = buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})["Handshake"]
    assert invited.decline_handshake(HandshakeId=declined["Id"])["Handshake"]["State"] == "DECLINED"
    canceled = buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})["Handshake"]
    with pytest.raises(ClientError) as caught:
        invited.cancel_handshake(HandshakeId=canceled["Id"])
    assert _error(caught)[0] == "AccessDeniedException"
    assert buyer.cancel_handshake(HandshakeId=canceled["Id"])["Handshake"]["State"] == "CANCELED"
    with pytest.raises(ClientError) as caught:
        invited.accept_handshake(HandshakeId=canceled["Id"])
    assert _error(caught)[0] == "InvalidHandshakeTransitionException"
    expiring = buyer.invite_account_to_organization(Target={"Id": OUTSIDER, "Type": "ACCOUNT"})["Handshake"]
    sandbox.advance_clock(15 * 86400 + 1)
    assert buyer.describe_handshake(HandshakeId=expiring["Id"])["Handshake"]["State"] == "EXPIRED"
    assert _truth(sandbox, "handshake", expiring["Id"])["state"] == "EXPIRED"
    with pytest.raises(ClientError) as caught:
        invited.accept_handshake(HandshakeId=expiring["Id"])
    assert _error(caught)[0] == "InvalidHandshakeTransitionException"
    states = {h["Id"]: h["State"] for h in buyer.list_handshakes_for_organization()["Handshakes"]}
    assert states == {declined["Id"]: "DECLINED", canceled["Id"]: "CANCELED", expiring["Id"]: "EXPIRED"}
    sandbox.advance_clock(31 * 86400)  # closed handshakes are listed for 30 days only
    assert buyer.list_handshakes_for_organization()["Handshakes"] == []


# --- the whole transfer
def test_sub_account_transfer_end_to_end(sandbox: SandboxControl, aws) -> None:
    customer = _org(aws, CUSTOMER)
    buyer = _org(aws, BUYER)
    account_id = _created_account(sandbox, customer, "transfer@customer.example", "commitd-transfer")
    sandbox.advance_clock(4 * 86400)
    customer.remove_account_from_organization(AccountId=account_id)
    handshake = buyer.invite_account_to_organization(Target={"Id": account_id, "Type": "ACCOUNT"})[
        "Handshake"
    ]
    sub = aws("organizations", account_id=account_id)
    sub.accept_handshake(HandshakeId=handshake["Id"])
    account = buyer.describe_account(AccountId=account_id)["Account"]
    assert account["JoinedMethod"] == "INVITED" and account["Name"] == "commitd-transfer"
    assert account["Email"] == "transfer@customer.example"
    assert sub.describe_organization()["Organization"]["MasterAccountId"] == BUYER
    assert account_id not in [a["Id"] for a in customer.list_accounts()["Accounts"]]
    # The account stays REMOVED for the customer's organization; the buyer's side is the accepted handshake.
    assert _truth(sandbox, "account", account_id)["state"] == "REMOVED"
    assert _truth(sandbox, "handshake", handshake["Id"])["state"] == "ACCEPTED"


def test_seeded_organization(sandbox: SandboxControl, aws) -> None:
    sandbox.seed(
        [
            {
                "kind": "organizations:organization",
                "management_account_id": CUSTOMER,
                "members": [
                    {"account_id": "260000000021", "email": "old@customer.example", "joined_days_ago": 90},
                    {
                        "account_id": "260000000022",
                        "joined_method": "INVITED",
                        "delegated_admin_for": ["a.b"],
                    },
                ],
            }
        ]
    )
    org = aws("organizations", account_id=CUSTOMER)
    assert {a["Id"] for a in org.list_accounts()["Accounts"]} == {CUSTOMER, "260000000021", "260000000022"}
    admins = org.list_delegated_administrators(ServicePrincipal="a.b")["DelegatedAdministrators"]
    assert [d["Id"] for d in admins] == ["260000000022"]
    org.remove_account_from_organization(AccountId="260000000021")  # joined 90 days ago: no wait period
    assert _truth(sandbox, "account", "260000000021")["state"] == "REMOVED"
    request = org.create_account(Email="old@customer.example", AccountName="again")["CreateAccountStatus"]
    sandbox.advance_clock(30)
    status = org.describe_create_account_status(CreateAccountRequestId=request["Id"])["CreateAccountStatus"]
    assert status["FailureReason"] == "EMAIL_ALREADY_EXISTS"  # the removed account still owns its email
