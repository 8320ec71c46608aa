"""IAM enforcement: identity policy ∩ session policy, and the ExternalId check on AssumeRole."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from sandbox.iam import is_allowed

ACCOUNT = "111122223333"
ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["ec2:Describe*", "ec2:PurchaseReservedInstancesOffering"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["rds:Describe*"], "Resource": "*"},
    ],
}


def test_policy_evaluation_rules() -> None:
    assert is_allowed(ROLE_POLICY, None, "ec2:DescribeReservedInstances")
    assert is_allowed(ROLE_POLICY, None, "EC2:purchasereservedinstancesoffering")  # case-insensitive
    assert not is_allowed(ROLE_POLICY, None, "ec2:ModifyReservedInstances")
    session = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}
    assert not is_allowed(ROLE_POLICY, session, "ec2:PurchaseReservedInstancesOffering")
    deny = {"Statement": [{"Effect": "Allow", "Action": "*"}, {"Effect": "Deny", "Action": "ec2:Purchase*"}]}
    assert not is_allowed(ROLE_POLICY, deny, "ec2:PurchaseReservedInstancesOffering")
    assert is_allowed(ROLE_POLICY, deny, "ec2:DescribeReservedInstances")


def test_denied_call_returns_unauthorized_operation(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]})
    ec2 = aws("ec2", account_id=ACCOUNT)
    offering = ec2.describe_reserved_instances_offerings(InstanceType="m5.large")["ReservedInstancesOfferings"][0]
    with pytest.raises(ClientError) as caught:
        ec2.purchase_reserved_instances_offering(
            ReservedInstancesOfferingId=offering["ReservedInstancesOfferingId"], InstanceCount=1
        )
    assert caught.value.response["Error"]["Code"] == "UnauthorizedOperation"
    assert sandbox.resources() == []


def test_session_policy_narrows_the_role(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, ROLE_POLICY)
    narrow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeInstances"}]}
    ec2 = aws("ec2", account_id=ACCOUNT, session_policy=narrow)
    with pytest.raises(ClientError) as caught:
        ec2.describe_reserved_instances()
    assert caught.value.response["Error"]["Code"] == "UnauthorizedOperation"
    # Calls that moto serves are evaluated too.
    assert ec2.describe_instances()["Reservations"] == []


def test_assume_role_checks_the_external_id(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, ROLE_POLICY, external_id="the-right-one")
    with pytest.raises(ClientError) as caught:
        aws("ec2", account_id=ACCOUNT, external_id="the-wrong-one")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    aws("ec2", account_id=ACCOUNT, external_id="the-right-one").describe_reserved_instances()
