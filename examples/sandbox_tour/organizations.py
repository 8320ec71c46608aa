"""Tour section: hand a sub-account over from the customer's organization to the buyer's.

Following AWS's documentation: the customer's management account creates a member account (CreateAccount is
asynchronous: poll DescribeCreateAccountStatus), removes it from its organization once the waiting period for
created accounts is over, and the buyer's management account invites it; the sub-account accepts the
invitation from inside its own account.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from examples.sandbox_tour.tour import Tour

CUSTOMER_MANAGEMENT = "260000000001"
BUYER_MANAGEMENT = "260000000002"


def _organization(client: Any) -> dict[str, Any]:
    """The caller's organization, created if the account is not in one yet."""
    try:
        return dict(client.describe_organization()["Organization"])
    except ClientError as error:
        if error.response["Error"]["Code"] != "AWSOrganizationsNotInUseException":
            raise
    return dict(client.create_organization(FeatureSet="ALL")["Organization"])


def tour(t: Tour) -> None:
    customer = t.client("organizations", account_id=CUSTOMER_MANAGEMENT)
    buyer = t.client("organizations", account_id=BUYER_MANAGEMENT)
    _organization(customer)
    buyer_org = _organization(buyer)

    # 1. CreateAccount returns at once with State IN_PROGRESS; the account exists once it has SUCCEEDED.
    request = customer.create_account(
        # Every AWS account needs an email address of its own (a reused one fails EMAIL_ALREADY_EXISTS).
        Email=f"commitments-transfer+{uuid.uuid4().hex[:8]}@customer.example",
        AccountName="commitd-transfer",
        Tags=[{"Key": "commitd:purpose", "Value": "commitment-transfer"}],
    )["CreateAccountStatus"]
    status = request
    for _ in range(10):
        if status["State"] != "IN_PROGRESS":
            break
        t.let_time_pass(10)
        status = customer.describe_create_account_status(CreateAccountRequestId=request["Id"])[
            "CreateAccountStatus"
        ]
    if status["State"] != "SUCCEEDED":
        raise RuntimeError(f"CreateAccount ended {status['State']}: {status.get('FailureReason')}")
    account_id = status["AccountId"]
    t.record("organizations:CreateAccount", f"{request['Id']} IN_PROGRESS -> SUCCEEDED, account {account_id}")

    # 2. A created account can leave its organization only after a waiting period (four days).
    try:
        customer.remove_account_from_organization(AccountId=account_id)
    except ClientError as error:
        if error.response.get("Reason") != "WAIT_PERIOD_ACTIVE":
            raise
        t.let_time_pass(4 * 86400)
        customer.remove_account_from_organization(AccountId=account_id)
    try:
        customer.describe_account(AccountId=account_id)
        raise RuntimeError("the removed account is still in the customer's organization")
    except ClientError as error:
        if error.response["Error"]["Code"] != "AccountNotFoundException":
            raise
    t.record("organizations:RemoveAccountFromOrganization", f"{account_id} left {CUSTOMER_MANAGEMENT}'s org")

    # 3. The buyer invites the now standalone account; the sub-account accepts from inside its own account.
    handshake = buyer.invite_account_to_organization(
        Target={"Id": account_id, "Type": "ACCOUNT"}, Notes="Commitment transfer"
    )["Handshake"]
    sub_account = t.client("organizations", account_id=account_id)
    offered = sub_account.list_handshakes_for_account(Filter={"ActionType": "INVITE"})["Handshakes"]
    pending = [h["Id"] for h in offered if h["State"] == "OPEN"]
    if handshake["Id"] not in pending:
        raise RuntimeError("the invited account does not see the invitation")
    accepted = sub_account.accept_handshake(HandshakeId=handshake["Id"])["Handshake"]
    joined = buyer.describe_account(AccountId=account_id)["Account"]
    if joined["JoinedMethod"] != "INVITED":
        raise RuntimeError(f"unexpected join method {joined['JoinedMethod']}")
    t.record(
        "organizations:InviteAccountToOrganization",
        f"{handshake['Id']} OPEN -> {accepted['State']}, {account_id} now in {buyer_org['Id']}",
    )
