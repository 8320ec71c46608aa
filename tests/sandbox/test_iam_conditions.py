"""The sandbox evaluates what the shipped policies rely on: resource ARNs, condition keys, the trust policy and the
hub policy. Each scoping in deploy/iam/ is shown by a call it allows and a call it denies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl
from sandbox.iam import is_allowed, validate_policy
from sandbox.server import SandboxServer
from worker import policy

ACCOUNT = "111122223333"
HUB_ACCOUNT = "123456789012"  # the account the sandbox gives the daemon's base credentials
HUB_ROLE = f"arn:aws:iam::{HUB_ACCOUNT}:role/commitd-hub"
EXTERNAL_ID = "iam-conditions-external-id"
FLEET_ROLE = f"arn:aws:iam::{ACCOUNT}:role/{policy.SPOT_FLEET_ROLE}"
IMAGE = "ami-0123456789abcdef0"
COMMITD_TAGS = [{"Key": "commitd:plan-id", "Value": "p-1"}, {"Key": "commitd:managed-by", "Value": "commitd"}]


def _merge(*documents: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [s for d in documents for s in d["Statement"]]}


def _code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


@pytest.fixture
def iam(sandbox: SandboxControl, sandbox_server: SandboxServer) -> Iterator[Callable[..., None]]:
    """Configure the in-process sandbox's IAM: enforcement on, a role policy per account, trust and hub policies."""

    def configure(policies: dict[str, dict[str, Any]] | None = None, trust: dict[str, Any] | None = None,
                  hub: dict[str, Any] | None = None) -> None:
        sandbox_server.app.iam.configure(True, {"Statement": []}, None, trust_policy=trust, hub_policy=hub,
                                         account_policies=policies or {})

    yield configure
    sandbox.set_iam(enforce=False, policy=None, external_id=None)


def _assume(sandbox: SandboxControl, role_arn: str, source_identity: str | None = "commitd",
            external_id: str | None = EXTERNAL_ID) -> dict[str, Any]:
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=sandbox.url,
                       aws_access_key_id="commitd-base", aws_secret_access_key="commitd-base")
    request: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": "commitd-test"}
    if source_identity is not None:
        request["SourceIdentity"] = source_identity
    if external_id is not None:
        request["ExternalId"] = external_id
    return dict(sts.assume_role(**request)["Credentials"])


def _ec2(sandbox: SandboxControl, account: str = ACCOUNT) -> Any:
    creds = _assume(sandbox, f"arn:aws:iam::{account}:role/commitd", source_identity=None, external_id=None)
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=sandbox.url,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


# --- evaluation rules --------------------------------------------------------------------------------------------
def test_condition_operators() -> None:
    statement = {"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*:*:reserved-instances/*",
                 "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]},
                               "StringLike": {"aws:RequestTag/a": "x-*"}}}
    doc = {"Statement": [statement]}
    ri = "arn:aws:ec2:us-east-1:111122223333:reserved-instances/7c1f3e2a-5b4d-4e6f-8a9b-0c1d2e3f4a51"
    assert is_allowed(doc, None, "ec2:CreateTags", ri, {"aws:tagkeys": ["a"], "aws:requesttag/a": "x-1"})
    assert not is_allowed(doc, None, "ec2:CreateTags", ri, {"aws:tagkeys": ["a", "c"], "aws:requesttag/a": "x-1"})
    assert not is_allowed(doc, None, "ec2:CreateTags", ri, {"aws:tagkeys": ["a"], "aws:requesttag/a": "y"})
    assert not is_allowed(doc, None, "ec2:CreateTags", ri, {"aws:tagkeys": ["b"]})  # the tag is absent
    assert not is_allowed(doc, None, "ec2:CreateTags", "*", {"aws:tagkeys": ["a"], "aws:requesttag/a": "x-1"})
    assert not is_allowed(doc, None, "ec2:CreateTags", ri.replace("reserved-instances", "instance"),
                          {"aws:tagkeys": ["a"], "aws:requesttag/a": "x-1"})
    negated = {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*",
                              "Condition": {"StringNotEquals": {"k": "v"}, "StringEqualsIfExists": {"m": "n"},
                                            "Null": {"z": "true"}}}]}
    assert is_allowed(negated, None, "ec2:X", context={})
    assert not is_allowed(negated, None, "ec2:X", context={"k": "v"})
    assert not is_allowed(negated, None, "ec2:X", context={"m": "o"})
    assert not is_allowed(negated, None, "ec2:X", context={"z": "1"})
    with pytest.raises(ValueError, match="NumericLessThan"):
        validate_policy({"Statement": [{"Effect": "Allow", "Action": "*", "Condition": {"NumericLessThan": {}}}]})


# --- resource ARNs and tag conditions: ec2:CreateTags --------------------------------------------------------------
def _bought_ri(ec2: Any) -> str:
    offering = ec2.describe_reserved_instances_offerings(InstanceType="m5.large")["ReservedInstancesOfferings"][0]
    return str(ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=offering["ReservedInstancesOfferingId"], InstanceCount=1)["ReservedInstancesId"])


def test_tagging_is_scoped_to_reserved_instances_and_commitd_keys(sandbox: SandboxControl, iam) -> None:
    iam({ACCOUNT: _merge(policy.production_policy(), policy.extras_policy())})
    ec2 = _ec2(sandbox)
    ri = _bought_ri(ec2)
    ec2.create_tags(Resources=[ri], Tags=COMMITD_TAGS)
    for tags in ([*COMMITD_TAGS, {"Key": "owner", "Value": "x"}],  # a key that is not commitd's
                 [{"Key": "commitd:plan-id", "Value": "p-1"}],  # without commitd:managed-by = commitd
                 [{"Key": "commitd:plan-id", "Value": "p"}, {"Key": "commitd:managed-by", "Value": "other"}]):
        with pytest.raises(ClientError) as caught:
            ec2.create_tags(Resources=[ri], Tags=tags)
        assert _code(caught) == "UnauthorizedOperation"
    # commitd's own keys, on a resource that is not an RI and is not being created: denied.
    created = ec2.create_capacity_reservation(InstanceType="m5.large", InstancePlatform="Linux/UNIX",
                                              AvailabilityZone="us-east-1a", InstanceCount=1)
    with pytest.raises(ClientError) as caught:
        ec2.create_tags(Resources=[created["CapacityReservation"]["CapacityReservationId"]], Tags=COMMITD_TAGS)
    assert _code(caught) == "UnauthorizedOperation"
    [tagged] = ec2.describe_reserved_instances(ReservedInstancesIds=[ri])["ReservedInstances"]
    assert {t["Key"]: t["Value"] for t in tagged["Tags"]} == {"commitd:plan-id": "p-1", "commitd:managed-by": "commitd"}


def test_tag_on_create_needs_create_tags_with_the_create_action(sandbox: SandboxControl, iam) -> None:
    request = {"InstanceType": "m5.large", "InstancePlatform": "Linux/UNIX", "AvailabilityZone": "us-east-1a",
               "InstanceCount": 1}
    tagged = [{"ResourceType": "capacity-reservation", "Tags": COMMITD_TAGS}]
    iam({ACCOUNT: policy.production_policy()})  # without the extras: tag-on-create is refused, nothing is made
    ec2 = _ec2(sandbox)
    with pytest.raises(ClientError) as caught:
        ec2.create_capacity_reservation(**request, TagSpecifications=tagged)
    assert _code(caught) == "UnauthorizedOperation"
    assert sandbox.resources(type="capacity-reservation") == []
    ec2.create_capacity_reservation(**request)  # untagged, the production policy is enough
    iam({ACCOUNT: _merge(policy.production_policy(), policy.extras_policy())})
    ec2 = _ec2(sandbox)
    made = ec2.create_capacity_reservation(**request, TagSpecifications=tagged)["CapacityReservation"]
    assert {t["Key"] for t in made["Tags"]} == {"commitd:plan-id", "commitd:managed-by"}
    with pytest.raises(ClientError) as caught:  # another key on create: denied
        ec2.create_capacity_reservation(**request, TagSpecifications=[
            {"ResourceType": "capacity-reservation", "Tags": [*COMMITD_TAGS, {"Key": "team", "Value": "a"}]}])
    assert _code(caught) == "UnauthorizedOperation"
    assert len(sandbox.resources(type="capacity-reservation")) == 2


def test_pass_role_is_scoped_to_the_spot_fleet_role(sandbox: SandboxControl, iam) -> None:
    def fleet(role: str) -> dict[str, Any]:
        return {"IamFleetRole": role, "TargetCapacity": 1,
                "LaunchSpecifications": [{"ImageId": IMAGE, "InstanceType": "m5.large"}]}

    iam({ACCOUNT: policy.production_policy()})
    with pytest.raises(ClientError) as caught:
        _ec2(sandbox).request_spot_fleet(SpotFleetRequestConfig=fleet(FLEET_ROLE))
    assert _code(caught) == "UnauthorizedOperation"
    iam({ACCOUNT: _merge(policy.production_policy(), policy.extras_policy())})
    ec2 = _ec2(sandbox)
    with pytest.raises(ClientError) as caught:  # a role the extras do not name (an admin role, say)
        ec2.request_spot_fleet(SpotFleetRequestConfig=fleet(f"arn:aws:iam::{ACCOUNT}:role/admin"))
    assert _code(caught) == "UnauthorizedOperation"
    assert sandbox.resources(type="spot-fleet-request") == []
    assert ec2.request_spot_fleet(SpotFleetRequestConfig=fleet(FLEET_ROLE))["SpotFleetRequestId"].startswith("sfr-")


# --- the trust policy and the hub policy ----------------------------------------------------------------------------
def test_trust_policy_requires_principal_external_id_and_allows_source_identity(sandbox: SandboxControl,
                                                                               iam) -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/commitd"
    shipped = policy.trust_policy(HUB_ROLE, EXTERNAL_ID)
    iam({ACCOUNT: policy.production_policy()}, trust=shipped)
    assert _assume(sandbox, role)["AccessKeyId"]

    def refused(**kwargs: Any) -> str:
        with pytest.raises(ClientError) as caught:
            _assume(sandbox, role, **kwargs)
        assert _code(caught) == "AccessDenied"
        assert EXTERNAL_ID not in str(caught.value)
        return str(caught.value.response["Error"]["Message"])

    assert "sts:AssumeRole" in refused(external_id="another-one")
    assert "sts:AssumeRole" in refused(external_id=None)
    assert "sts:SetSourceIdentity" in refused(source_identity="somebody-else")
    # AWS refuses a SourceIdentity that the trust policy does not allow with sts:SetSourceIdentity.
    without = {**shipped, "Statement": [s for s in shipped["Statement"] if s["Action"] != "sts:SetSourceIdentity"]}
    iam({ACCOUNT: policy.production_policy()}, trust=without)
    assert "sts:SetSourceIdentity" in refused()
    assert _assume(sandbox, role, source_identity=None)["AccessKeyId"]
    iam({ACCOUNT: policy.production_policy()}, trust=policy.trust_policy(
        "arn:aws:iam::999999999999:role/commitd-hub", EXTERNAL_ID))  # another principal's account
    assert "sts:AssumeRole" in refused()


def test_hub_policy_assumes_only_roles_named_commitd(sandbox: SandboxControl, iam) -> None:
    iam({ACCOUNT: policy.production_policy()}, hub=policy.hub_policy())
    assert _assume(sandbox, f"arn:aws:iam::{ACCOUNT}:role/commitd")["AccessKeyId"]
    for role, identity in ((f"arn:aws:iam::{ACCOUNT}:role/admin", "commitd"),
                           (f"arn:aws:iam::{ACCOUNT}:role/commitd", None)):  # it must name itself
        with pytest.raises(ClientError) as caught:
            _assume(sandbox, role, source_identity=identity)
        assert _code(caught) == "AccessDenied"


def test_session_carries_the_source_identity_into_conditions(sandbox: SandboxControl, iam) -> None:
    only_commitd = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*",
                                   "Condition": {"StringEquals": {"aws:SourceIdentity": "commitd"}}}]}
    iam({ACCOUNT: only_commitd})
    creds = _assume(sandbox, f"arn:aws:iam::{ACCOUNT}:role/commitd", external_id=None)
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=sandbox.url,
                       aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                       aws_session_token=creds["SessionToken"])
    assert ec2.describe_reserved_instances()["ReservedInstances"] == []
    with pytest.raises(ClientError) as caught:
        _ec2(sandbox).describe_reserved_instances()  # a session without a SourceIdentity
    assert _code(caught) == "UnauthorizedOperation"
