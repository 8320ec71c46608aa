"""EC2 capacity reservations and Dedicated Host reservations, over HTTP with real boto3 clients.

Instances and hosts come from moto through the sandbox (RunInstances, StopInstances, AllocateHosts); the
reservations are the sandbox's own.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
LINUX_AMI = "ami-760aaa0f"  # one of moto's default Amazon Linux images
DESCRIBE_ONLY = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}


def _error(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _create(ec2: Any, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "InstanceType": "m5.large",
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": "us-east-1a",
        "InstanceCount": 2,
    }
    kwargs.update(overrides)
    return dict(ec2.create_capacity_reservation(**kwargs)["CapacityReservation"])


def _describe(ec2: Any, cr_id: str) -> dict[str, Any]:
    [reservation] = ec2.describe_capacity_reservations(CapacityReservationIds=[cr_id])["CapacityReservations"]
    return dict(reservation)


def _stopped_instance(ec2: Any, instance_type: str = "m5.large", zone: str = "us-east-1a") -> str:
    instance = ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1, InstanceType=instance_type,
        Placement={"AvailabilityZone": zone},
    )["Instances"][0]
    ec2.stop_instances(InstanceIds=[instance["InstanceId"]])
    return str(instance["InstanceId"])


# --- CreateCapacityReservation / DescribeCapacityReservations -------------------------------------------
def test_create_capacity_reservation_is_described_and_in_ground_truth(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    created = _create(
        ec2,
        ClientToken="plan-1-cr",
        InstanceMatchCriteria="targeted",
        TagSpecifications=[{"ResourceType": "capacity-reservation", "Tags": [{"Key": "plan", "Value": "p1"}]}],
    )
    cr_id = created["CapacityReservationId"]
    assert re.fullmatch(r"cr-[0-9a-f]{17}", cr_id)
    assert created["State"] == "active"
    assert created["CapacityReservationArn"] == f"arn:aws:ec2:us-east-1:{ACCOUNT}:capacity-reservation/{cr_id}"
    assert (created["TotalInstanceCount"], created["AvailableInstanceCount"]) == (2, 2)
    assert created["AvailabilityZoneId"] == "use1-az6" and created["EndDateType"] == "unlimited"

    described = _describe(ec2, cr_id)
    assert described["Tags"] == [{"Key": "plan", "Value": "p1"}]
    assert described["InstanceMatchCriteria"] == "targeted" and described["OwnerId"] == ACCOUNT
    for name, value in [
        ("tag:plan", "p1"), ("tag-key", "plan"), ("instance-type", "m5.large"),
        ("availability-zone", "us-east-1a"), ("state", "active"), ("tenancy", "default"),
        ("instance-platform", "Linux/UNIX"), ("end-date-type", "unlimited"),
        ("instance-match-criteria", "targeted"), ("owner-id", ACCOUNT),
    ]:
        found = ec2.describe_capacity_reservations(Filters=[{"Name": name, "Values": [value]}])
        assert [c["CapacityReservationId"] for c in found["CapacityReservations"]] == [cr_id], name
    assert ec2.describe_capacity_reservations(
        Filters=[{"Name": "instance-type", "Values": ["c5.large"]}]
    )["CapacityReservations"] == []

    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert (truth["type"], truth["id"], truth["state"]) == ("capacity-reservation", cr_id, "active")
    assert truth["created_by"]["operation"] == "ec2:CreateCapacityReservation"
    assert truth["created_by"]["token"] == "plan-1-cr"
    # Other accounts see nothing.
    assert aws("ec2", account_id=OTHER_ACCOUNT).describe_capacity_reservations()["CapacityReservations"] == []


def test_create_capacity_reservation_by_zone_id_and_pagination(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    ids: set[str] = set()
    for _ in range(3):
        created = ec2.create_capacity_reservation(
            InstanceType="c5.large", InstancePlatform="Linux/UNIX", AvailabilityZoneId="use1-az1", InstanceCount=1
        )["CapacityReservation"]
        assert created["AvailabilityZone"] == "us-east-1b"
        ids.add(created["CapacityReservationId"])
    first = ec2.describe_capacity_reservations(MaxResults=2)
    assert len(first["CapacityReservations"]) == 2 and first["NextToken"]
    second = ec2.describe_capacity_reservations(MaxResults=2, NextToken=first["NextToken"])
    assert "NextToken" not in second
    seen = {c["CapacityReservationId"] for c in first["CapacityReservations"] + second["CapacityReservations"]}
    assert seen == ids


def test_create_capacity_reservation_client_token(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    first = _create(ec2, ClientToken="tok-1")
    again = _create(ec2, ClientToken="tok-1")
    assert again["CapacityReservationId"] == first["CapacityReservationId"]
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1
    with pytest.raises(ClientError) as caught:
        _create(ec2, ClientToken="tok-1", InstanceCount=3)
    assert _error(caught)[0] == "IdempotentParameterMismatch"
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"AvailabilityZone": "us-west-2a"}, "InvalidParameterValue"),
        ({"InstanceCount": 0}, "InvalidParameterValue"),
        ({"InstanceType": "m5.galactic"}, "InvalidParameterValue"),
        ({"EndDateType": "limited"}, "InvalidParameterValue"),
        ({"EndDateType": "limited", "EndDate": datetime.now(UTC) - timedelta(hours=1)}, "InvalidParameterValue"),
        ({"EndDate": datetime.now(UTC) + timedelta(days=1)}, "InvalidParameterValue"),
        ({"TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}]},
         "InvalidParameterValue"),
    ],
)
def test_create_capacity_reservation_rejects_bad_input(
    sandbox: SandboxControl, aws, overrides: dict[str, Any], code: str
) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        _create(ec2, **overrides)
    assert _error(caught) == (code, 400)
    assert sandbox.resources() == []


def test_insufficient_capacity_is_a_server_error(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    with pytest.raises(ClientError) as caught:
        _create(ec2, InstanceCount=201)
    assert _error(caught) == ("InsufficientInstanceCapacity", 500)
    cr_id = _create(ec2, InstanceCount=150)["CapacityReservationId"]
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=250)
    assert _error(caught) == ("InsufficientInstanceCapacity", 500)
    assert _describe(ec2, cr_id)["TotalInstanceCount"] == 150
    # Another AZ still has room.
    assert _create(ec2, InstanceCount=200, AvailabilityZone="us-east-1c")["State"] == "active"


def test_capacity_reservation_dry_runs(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        _create(ec2, DryRun=True)
    assert _error(caught) == ("DryRunOperation", 412)
    assert sandbox.resources() == []
    cr_id = _create(ec2)["CapacityReservationId"]
    instance_id = _stopped_instance(ec2)
    calls = [
        lambda: ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=5, DryRun=True),
        lambda: ec2.cancel_capacity_reservation(CapacityReservationId=cr_id, DryRun=True),
        lambda: ec2.modify_instance_capacity_reservation_attributes(
            InstanceId=instance_id,
            CapacityReservationSpecification={"CapacityReservationPreference": "none"},
            DryRun=True,
        ),
        lambda: ec2.describe_capacity_reservations(DryRun=True),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert _error(caught) == ("DryRunOperation", 412)
    described = _describe(ec2, cr_id)
    assert (described["State"], described["TotalInstanceCount"]) == ("active", 2)
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert "CapacityReservationSpecification" not in instance


# --- ModifyCapacityReservation ---------------------------------------------------------------------------
def test_modify_capacity_reservation_and_expiry(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2)["CapacityReservationId"]
    end = datetime.now(UTC) + timedelta(hours=2)
    assert ec2.modify_capacity_reservation(
        CapacityReservationId=cr_id, InstanceCount=4, EndDateType="limited", EndDate=end,
        InstanceMatchCriteria="targeted",
    )["Return"] is True
    described = _describe(ec2, cr_id)
    assert (described["TotalInstanceCount"], described["AvailableInstanceCount"]) == (4, 4)
    assert described["EndDateType"] == "limited" and described["InstanceMatchCriteria"] == "targeted"
    assert abs((described["EndDate"] - end).total_seconds()) < 1
    # Replaying the same declarative change is harmless.
    assert ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=4)["Return"] is True
    assert ec2.describe_capacity_reservations(
        Filters=[{"Name": "end-date-type", "Values": ["limited"]}]
    )["CapacityReservations"][0]["CapacityReservationId"] == cr_id

    sandbox.advance_clock(3 * 3600)
    assert _describe(ec2, cr_id)["State"] == "expired"
    assert sandbox.resources(account_id=ACCOUNT)[0]["state"] == "expired"
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=1)
    assert _error(caught) == ("IncorrectState", 400)


def test_modify_capacity_reservation_errors(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2)["CapacityReservationId"]
    cases = [
        ({"CapacityReservationId": "cr-0123456789abcdef0"}, "InvalidCapacityReservationId.NotFound"),
        ({"CapacityReservationId": "not-a-reservation"}, "InvalidCapacityReservationId.Malformed"),
        ({"CapacityReservationId": cr_id, "EndDateType": "limited"}, "InvalidParameterValue"),
        ({"CapacityReservationId": cr_id, "InstanceCount": 0}, "InvalidParameterValue"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as caught:
            ec2.modify_capacity_reservation(**kwargs)
        assert _error(caught)[0] == code, kwargs
    # Someone else's reservation does not exist for this account.
    other = aws("ec2", account_id=OTHER_ACCOUNT)
    with pytest.raises(ClientError) as caught:
        other.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=3)
    assert _error(caught)[0] == "InvalidCapacityReservationId.NotFound"
    with pytest.raises(ClientError) as caught:
        other.describe_capacity_reservations(CapacityReservationIds=[cr_id])
    assert _error(caught)[0] == "InvalidCapacityReservationId.NotFound"


# --- CancelCapacityReservation ---------------------------------------------------------------------------
def test_cancel_capacity_reservation(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2)["CapacityReservationId"]
    assert ec2.cancel_capacity_reservation(CapacityReservationId=cr_id)["Return"] is True
    described = _describe(ec2, cr_id)
    assert described["State"] == "cancelled" and described["AvailableInstanceCount"] == 0
    found = ec2.describe_capacity_reservations(Filters=[{"Name": "state", "Values": ["cancelled"]}])
    assert [c["CapacityReservationId"] for c in found["CapacityReservations"]] == [cr_id]
    assert sandbox.resources(account_id=ACCOUNT)[0]["state"] == "cancelled"
    # AWS cancels only assessing or active reservations: a replay is refused; the state says it is done.
    with pytest.raises(ClientError) as caught:
        ec2.cancel_capacity_reservation(CapacityReservationId=cr_id)
    assert _error(caught) == ("IncorrectState", 400)
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=3)
    assert _error(caught)[0] == "IncorrectState"
    with pytest.raises(ClientError) as caught:
        ec2.cancel_capacity_reservation(CapacityReservationId="cr-0123456789abcdef0")
    assert _error(caught)[0] == "InvalidCapacityReservationId.NotFound"


def test_future_dated_reservation_with_commitment(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    start = datetime.now(UTC) + timedelta(days=6)
    cr_id = _create(
        ec2, InstanceCount=4, StartDate=start, CommitmentDuration=14 * 86400
    )["CapacityReservationId"]
    described = _describe(ec2, cr_id)
    assert described["State"] == "assessing"
    assert described["CommitmentInfo"]["CommittedInstanceCount"] == 4
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=5)
    assert _error(caught)[0] == "IncorrectState"
    sandbox.advance_clock(3600)
    assert _describe(ec2, cr_id)["State"] == "scheduled"
    sandbox.advance_clock(6 * 86400)
    assert _describe(ec2, cr_id)["State"] == "active"
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceCount=2)
    assert _error(caught)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as caught:
        ec2.cancel_capacity_reservation(CapacityReservationId=cr_id)
    assert _error(caught)[0] == "IncorrectState"
    sandbox.advance_clock(15 * 86400)
    assert ec2.cancel_capacity_reservation(CapacityReservationId=cr_id)["Return"] is True


# --- ModifyInstanceCapacityReservationAttributes --------------------------------------------------------
def test_target_a_stopped_instance_at_a_reservation(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2, InstanceMatchCriteria="targeted")["CapacityReservationId"]
    running = ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1, InstanceType="m5.large",
        Placement={"AvailabilityZone": "us-east-1a"},
    )["Instances"][0]["InstanceId"]
    spec = {"CapacityReservationTarget": {"CapacityReservationId": cr_id}}
    with pytest.raises(ClientError) as caught:
        ec2.modify_instance_capacity_reservation_attributes(
            InstanceId=running, CapacityReservationSpecification=spec
        )
    assert _error(caught) == ("IncorrectInstanceState", 400)

    ec2.stop_instances(InstanceIds=[running])
    assert ec2.modify_instance_capacity_reservation_attributes(
        InstanceId=running, CapacityReservationSpecification=spec
    )["Return"] is True
    instance = ec2.describe_instances(InstanceIds=[running])["Reservations"][0]["Instances"][0]
    assert instance["CapacityReservationSpecification"] == spec
    assert _describe(ec2, cr_id)["AvailableInstanceCount"] == 2  # stopped: uses nothing
    ec2.start_instances(InstanceIds=[running])
    described = _describe(ec2, cr_id)
    assert (described["TotalInstanceCount"], described["AvailableInstanceCount"]) == (2, 1)
    assert described["CapacityAllocations"] == [{"AllocationType": "used", "Count": 1}]
    # Eligibility changes need an idle reservation.
    with pytest.raises(ClientError) as caught:
        ec2.modify_capacity_reservation(CapacityReservationId=cr_id, InstanceMatchCriteria="open")
    assert _error(caught)[0] == "IncorrectState"

    ec2.stop_instances(InstanceIds=[running])
    ec2.modify_instance_capacity_reservation_attributes(
        InstanceId=running, CapacityReservationSpecification={"CapacityReservationPreference": "none"}
    )
    instance = ec2.describe_instances(InstanceIds=[running])["Reservations"][0]["Instances"][0]
    assert instance["CapacityReservationSpecification"] == {"CapacityReservationPreference": "none"}
    # Nothing new in the ground truth: the instance is moto's, the reservation unchanged.
    assert [r["id"] for r in sandbox.resources(account_id=ACCOUNT)] == [cr_id]


def test_open_reservations_count_matching_running_instances(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2, InstanceCount=1)["CapacityReservationId"]
    ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=2, MaxCount=2, InstanceType="m5.large",
        Placement={"AvailabilityZone": "us-east-1a"},
    )
    ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1, InstanceType="c5.large",
        Placement={"AvailabilityZone": "us-east-1a"},
    )
    described = _describe(ec2, cr_id)
    assert (described["TotalInstanceCount"], described["AvailableInstanceCount"]) == (1, 0)


def test_modify_instance_capacity_reservation_attributes_errors(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2)["CapacityReservationId"]
    instance_id = _stopped_instance(ec2)
    target = {"CapacityReservationTarget": {"CapacityReservationId": cr_id}}
    cases = [
        ({"InstanceId": "i-0123456789abcdef0", "CapacityReservationSpecification": target},
         "InvalidInstanceID.NotFound"),
        ({"InstanceId": "bogus", "CapacityReservationSpecification": target}, "InvalidInstanceID.Malformed"),
        ({"InstanceId": instance_id, "CapacityReservationSpecification": {
            "CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}}},
         "InvalidCapacityReservationId.NotFound"),
        ({"InstanceId": instance_id, "CapacityReservationSpecification": {
            "CapacityReservationPreference": "open", **target}}, "InvalidParameterCombination"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as caught:
            ec2.modify_instance_capacity_reservation_attributes(**kwargs)
        assert _error(caught)[0] == code, kwargs
    # Another account's instance does not exist for this caller.
    with pytest.raises(ClientError) as caught:
        aws("ec2", account_id=OTHER_ACCOUNT).modify_instance_capacity_reservation_attributes(
            InstanceId=instance_id, CapacityReservationSpecification={"CapacityReservationPreference": "open"}
        )
    assert _error(caught)[0] == "InvalidInstanceID.NotFound"


@pytest.mark.parametrize(
    "action",
    [
        "CreateCapacityReservation",
        "ModifyCapacityReservation",
        "CancelCapacityReservation",
        "ModifyInstanceCapacityReservationAttributes",
        "PurchaseHostReservation",
    ],
)
def test_writes_are_denied_without_permission(sandbox: SandboxControl, aws, action: str) -> None:
    setup = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(setup)["CapacityReservationId"]
    instance_id = _stopped_instance(setup)
    host_id = setup.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="m5", Quantity=1)["HostIds"][0]
    offering_id = _host_offering(setup, "m5", "NoUpfront", 1)["OfferingId"]
    before = sandbox.resources()
    sandbox.set_iam(True, DESCRIBE_ONLY)
    ec2 = aws("ec2", account_id=ACCOUNT)
    calls = {
        "CreateCapacityReservation": lambda: _create(ec2),
        "ModifyCapacityReservation": lambda: ec2.modify_capacity_reservation(
            CapacityReservationId=cr_id, InstanceCount=5
        ),
        "CancelCapacityReservation": lambda: ec2.cancel_capacity_reservation(CapacityReservationId=cr_id),
        "ModifyInstanceCapacityReservationAttributes": lambda: ec2.modify_instance_capacity_reservation_attributes(
            InstanceId=instance_id, CapacityReservationSpecification={"CapacityReservationPreference": "none"}
        ),
        "PurchaseHostReservation": lambda: ec2.purchase_host_reservation(
            HostIdSet=[host_id], OfferingId=offering_id
        ),
    }
    with pytest.raises(ClientError) as caught:
        calls[action]()
    assert _error(caught) == ("UnauthorizedOperation", 403)
    assert sandbox.resources() == before
    assert _describe(ec2, cr_id)["TotalInstanceCount"] == 2


def test_seeded_capacity_reservation(sandbox: SandboxControl, aws) -> None:
    sandbox.seed([{
        "kind": "ec2:capacity-reservation", "account_id": ACCOUNT, "region": "us-east-1",
        "instance_type": "r5.large", "availability_zone": "us-east-1b", "instance_count": 3,
        "ends_in_days": 2, "tags": {"team": "data"}, "id": "cr-00000000000005eed",
    }])
    ec2 = aws("ec2", account_id=ACCOUNT)
    [described] = ec2.describe_capacity_reservations(
        Filters=[{"Name": "tag:team", "Values": ["data"]}]
    )["CapacityReservations"]
    assert described["CapacityReservationId"] == "cr-00000000000005eed"
    assert (described["State"], described["TotalInstanceCount"]) == ("active", 3)
    assert described["EndDateType"] == "limited"
    assert sandbox.resources(account_id=ACCOUNT)[0]["created_by"]["operation"] == "seed"
    sandbox.advance_clock(3 * 86400)
    assert ec2.describe_capacity_reservations()["CapacityReservations"][0]["State"] == "expired"


# --- Host reservations ---------------------------------------------------------------------------------
def _host_offering(ec2: Any, family: str, option: str, years: int) -> dict[str, Any]:
    offerings = ec2.describe_host_reservation_offerings(
        Filter=[
            {"Name": "instance-family", "Values": [family]},
            {"Name": "payment-option", "Values": [option]},
        ],
        MinDuration=years * 31536000,
        MaxDuration=years * 31536000,
    )["OfferingSet"]
    assert len(offerings) == 1
    return dict(offerings[0])


def test_host_reservation_offerings(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    all_offerings = ec2.describe_host_reservation_offerings()["OfferingSet"]
    assert len(all_offerings) == 3 * 2 * 3
    assert all(re.fullmatch(r"hro-[0-9a-f]{17}", o["OfferingId"]) for o in all_offerings)
    no_upfront = _host_offering(ec2, "m5", "NoUpfront", 1)
    all_upfront = _host_offering(ec2, "m5", "AllUpfront", 3)
    assert no_upfront["UpfrontPrice"] == "0.000" and float(no_upfront["HourlyPrice"]) > 0
    assert all_upfront["HourlyPrice"] == "0.000" and float(all_upfront["UpfrontPrice"]) > 0
    by_id = ec2.describe_host_reservation_offerings(OfferingId=no_upfront["OfferingId"])["OfferingSet"]
    assert by_id == [no_upfront]
    page = ec2.describe_host_reservation_offerings(MaxResults=5)
    assert len(page["OfferingSet"]) == 5 and page["NextToken"]
    # Ids are stable, and each region has its own offerings and prices.
    again = aws("ec2", account_id=OTHER_ACCOUNT).describe_host_reservation_offerings()["OfferingSet"]
    assert [o["OfferingId"] for o in again] == [o["OfferingId"] for o in all_offerings]
    eu = aws("ec2", region="eu-west-1", account_id=ACCOUNT).describe_host_reservation_offerings()["OfferingSet"]
    assert not {o["OfferingId"] for o in eu} & {o["OfferingId"] for o in all_offerings}


def test_purchase_host_reservation(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    host_ids = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="m5", Quantity=2)["HostIds"]
    offering = _host_offering(ec2, "m5", "PartialUpfront", 1)
    preview = ec2.get_host_reservation_purchase_preview(HostIdSet=host_ids, OfferingId=offering["OfferingId"])
    expected_upfront = float(offering["UpfrontPrice"]) * 2
    assert float(preview["TotalUpfrontPrice"]) == pytest.approx(expected_upfront, abs=0.01)
    assert float(preview["TotalHourlyPrice"]) == pytest.approx(float(offering["HourlyPrice"]) * 2, abs=0.01)
    assert preview["Purchase"][0]["HostIdSet"] == host_ids
    assert sandbox.resources() == []  # a preview buys nothing

    bought = ec2.purchase_host_reservation(
        HostIdSet=host_ids,
        OfferingId=offering["OfferingId"],
        ClientToken="plan-7-hr",
        LimitPrice=f"{expected_upfront + 1:.2f}",
        CurrencyCode="USD",
        TagSpecifications=[{"ResourceType": "host-reservation", "Tags": [{"Key": "plan", "Value": "p7"}]}],
    )
    assert bought["ClientToken"] == "plan-7-hr"
    assert bought["TotalUpfrontPrice"] == preview["TotalUpfrontPrice"]
    [purchase] = bought["Purchase"]
    hr_id = purchase["HostReservationId"]
    assert re.fullmatch(r"hr-[0-9a-f]{17}", hr_id)

    [reservation] = ec2.describe_host_reservations(
        Filter=[{"Name": "tag:plan", "Values": ["p7"]}]
    )["HostReservationSet"]
    assert reservation["HostReservationId"] == hr_id and reservation["State"] == "payment-pending"
    assert reservation["HostIdSet"] == host_ids and reservation["Count"] == 2
    assert reservation["OfferingId"] == offering["OfferingId"]
    assert reservation["End"] - reservation["Start"] == timedelta(seconds=31536000)
    for name, value in [("tag-key", "plan"), ("instance-family", "m5"), ("payment-option", "PartialUpfront"),
                        ("state", "payment-pending")]:
        found = ec2.describe_host_reservations(Filter=[{"Name": name, "Values": [value]}])["HostReservationSet"]
        assert [r["HostReservationId"] for r in found] == [hr_id], name
    assert ec2.describe_host_reservations(HostReservationIdSet=[hr_id])["HostReservationSet"][0]["Count"] == 2
    hosts = ec2.describe_hosts(HostIds=host_ids)["Hosts"]
    assert {h["HostReservationId"] for h in hosts} == {hr_id}

    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert (truth["type"], truth["id"], truth["state"]) == ("host-reservation", hr_id, "payment-pending")
    assert truth["created_by"] == {**truth["created_by"], "operation": "ec2:PurchaseHostReservation",
                                   "token": "plan-7-hr"}
    sandbox.advance_clock(60)
    assert ec2.describe_host_reservations()["HostReservationSet"][0]["State"] == "active"
    sandbox.advance_clock(366 * 86400)
    assert ec2.describe_host_reservations()["HostReservationSet"][0]["State"] == "retired"
    assert "HostReservationId" not in ec2.describe_hosts(HostIds=host_ids)["Hosts"][0]
    assert aws("ec2", account_id=OTHER_ACCOUNT).describe_host_reservations()["HostReservationSet"] == []


def test_purchase_host_reservation_client_token(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    host_ids = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="c5", Quantity=2)["HostIds"]
    offering_id = _host_offering(ec2, "c5", "NoUpfront", 1)["OfferingId"]
    first = ec2.purchase_host_reservation(HostIdSet=host_ids[:1], OfferingId=offering_id, ClientToken="tok")
    again = ec2.purchase_host_reservation(HostIdSet=host_ids[:1], OfferingId=offering_id, ClientToken="tok")
    first.pop("ResponseMetadata")
    again.pop("ResponseMetadata")
    assert again == first
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1
    with pytest.raises(ClientError) as caught:
        ec2.purchase_host_reservation(HostIdSet=host_ids[1:], OfferingId=offering_id, ClientToken="tok")
    assert _error(caught)[0] == "IdempotentParameterMismatch"
    # Without the token, buying the same host again is refused: it is already covered.
    with pytest.raises(ClientError) as caught:
        ec2.purchase_host_reservation(HostIdSet=host_ids[:1], OfferingId=offering_id)
    assert _error(caught) == ("HostAlreadyCoveredByReservation", 400)
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1


def test_purchase_host_reservation_errors(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    [m5_host] = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceType="m5.large", Quantity=1)["HostIds"]
    m5 = _host_offering(ec2, "m5", "AllUpfront", 1)
    r5 = _host_offering(ec2, "r5", "NoUpfront", 1)
    [other_host] = aws("ec2", account_id=OTHER_ACCOUNT).allocate_hosts(
        AvailabilityZone="us-east-1a", InstanceFamily="m5", Quantity=1
    )["HostIds"]
    cases = [
        ({"HostIdSet": [m5_host], "OfferingId": m5["OfferingId"], "LimitPrice": "100.00"}, "LimitPriceExceeded"),
        ({"HostIdSet": [m5_host], "OfferingId": r5["OfferingId"]}, "InvalidInstanceFamily"),
        ({"HostIdSet": ["h-0123456789abcdef0"], "OfferingId": m5["OfferingId"]}, "InvalidHostId.NotFound"),
        ({"HostIdSet": [other_host], "OfferingId": m5["OfferingId"]}, "InvalidHostId.NotFound"),
        ({"HostIdSet": ["host-1"], "OfferingId": m5["OfferingId"]}, "InvalidHostId.Malformed"),
        ({"HostIdSet": [m5_host], "OfferingId": "hro-bogus"}, "InvalidHostReservationOfferingId.Malformed"),
        ({"HostIdSet": [m5_host], "OfferingId": m5["OfferingId"], "TagSpecifications": [
            {"ResourceType": "dedicated-host", "Tags": [{"Key": "k", "Value": "v"}]}]}, "InvalidParameterValue"),
    ]
    for kwargs, code in cases:
        with pytest.raises(ClientError) as caught:
            ec2.purchase_host_reservation(**kwargs)
        assert _error(caught) == (code, 400), kwargs
    with pytest.raises(ClientError) as caught:
        ec2.get_host_reservation_purchase_preview(HostIdSet=[m5_host], OfferingId=r5["OfferingId"])
    assert _error(caught)[0] == "InvalidInstanceFamily"
    assert sandbox.resources() == []
    # The limit equal to the price is enough.
    bought = ec2.purchase_host_reservation(
        HostIdSet=[m5_host], OfferingId=m5["OfferingId"], LimitPrice=m5["UpfrontPrice"]
    )
    assert bought["TotalUpfrontPrice"] == m5["UpfrontPrice"] and "ClientToken" not in bought


def test_dropped_create_is_made_safe_by_the_client_token(sandbox: SandboxControl, aws) -> None:
    """The effect is applied, the connection dropped; botocore re-sends with the same token: one reservation."""
    ec2 = aws("ec2", account_id=ACCOUNT)
    dropped_before = sandbox.faults()["fired"].get("commit_then_drop", 0)
    sandbox.add_fault("ec2:CreateCapacityReservation", "commit_then_drop", count=1)
    created = _create(ec2, ClientToken="plan-9-cr")
    assert sandbox.faults()["fired"]["commit_then_drop"] == dropped_before + 1
    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert truth["id"] == created["CapacityReservationId"]


def test_reservations_take_tags_afterwards(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    cr_id = _create(ec2)["CapacityReservationId"]
    [host_id] = ec2.allocate_hosts(AvailabilityZone="us-east-1a", InstanceFamily="r5", Quantity=1)["HostIds"]
    bought = ec2.purchase_host_reservation(
        HostIdSet=[host_id], OfferingId=_host_offering(ec2, "r5", "NoUpfront", 3)["OfferingId"]
    )
    hr_id = bought["Purchase"][0]["HostReservationId"]
    ec2.create_tags(Resources=[cr_id, hr_id], Tags=[{"Key": "plan", "Value": "p3"}])
    found = ec2.describe_capacity_reservations(Filters=[{"Name": "tag:plan", "Values": ["p3"]}])
    assert [c["CapacityReservationId"] for c in found["CapacityReservations"]] == [cr_id]
    found_hr = ec2.describe_host_reservations(Filter=[{"Name": "tag:plan", "Values": ["p3"]}])
    assert [r["HostReservationId"] for r in found_hr["HostReservationSet"]] == [hr_id]
