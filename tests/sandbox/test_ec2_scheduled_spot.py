"""EC2 Scheduled Instances and Spot, driven over HTTP with real boto3 clients (shapes checked on every call)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.control import SandboxControl

ACCOUNT = "210000000001"
OTHER = "210000000002"
DENY_ACCOUNT = "111122223333"
IMAGE = "ami-0123456789abcdef0"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/aws-ec2-spot-fleet-tagging-role"
DESCRIBE_ONLY = {"Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}


def _code(caught: pytest.ExceptionInfo[ClientError]) -> str:
    return str(caught.value.response["Error"]["Code"])


def _status(caught: pytest.ExceptionInfo[ClientError]) -> int:
    return int(caught.value.response["ResponseMetadata"]["HTTPStatusCode"])


def _truth(sandbox: SandboxControl, type_: str) -> list[dict[str, Any]]:
    return sandbox.resources(type=type_)


# --- Scheduled Instances: no longer sold -------------------------------------------------------------------
def _old_token() -> str:
    return base64.b64encode(json.dumps({"v": "1", "s": 1, "c": "old-schedule"}).encode()).decode()


def test_availability_is_empty_because_aws_no_longer_sells_schedules(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    now = datetime.now(UTC)
    found = ec2.describe_scheduled_instance_availability(
        FirstSlotStartTimeRange={"EarliestTime": now, "LatestTime": now + timedelta(days=30)},
        Recurrence={"Frequency": "Weekly", "Interval": 1, "OccurrenceDays": [2]},
        MinSlotDurationInHours=24,
    )
    assert found["ScheduledInstanceAvailabilitySet"] == []
    with pytest.raises(ClientError) as caught:
        ec2.describe_scheduled_instance_availability(
            FirstSlotStartTimeRange={"EarliestTime": now, "LatestTime": now + timedelta(days=1)},
            Recurrence={"Frequency": "Hourly"},
        )
    assert _code(caught) == "InvalidParameterValue"


def test_purchase_scheduled_instances_is_refused(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    request = [{"InstanceCount": 1, "PurchaseToken": _old_token()}]
    with pytest.raises(ClientError) as caught:
        ec2.purchase_scheduled_instances(PurchaseRequests=request, DryRun=True)
    assert (_code(caught), _status(caught)) == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as caught:
        ec2.purchase_scheduled_instances(PurchaseRequests=request)
    assert (_code(caught), _status(caught)) == ("UnsupportedOperation", 400)
    assert "no longer purchase Scheduled Instances" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        ec2.purchase_scheduled_instances(PurchaseRequests=[{"InstanceCount": 1, "PurchaseToken": "not a token!"}])
    assert _code(caught) == "InvalidPurchaseToken.Malformed"
    # The same ClientToken again is refused the same way: nothing was ever accepted, nothing is replayed.
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            ec2.purchase_scheduled_instances(PurchaseRequests=request, ClientToken="sched-1")
        assert _code(caught) == "UnsupportedOperation"
    assert sandbox.resources() == []
    assert ec2.describe_scheduled_instances()["ScheduledInstanceSet"] == []


def test_purchase_scheduled_instances_denied(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    ec2 = aws("ec2", account_id=DENY_ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.purchase_scheduled_instances(PurchaseRequests=[{"InstanceCount": 1, "PurchaseToken": _old_token()}])
    assert (_code(caught), _status(caught)) == ("UnauthorizedOperation", 403)


# --- Scheduled Instances: seeded ones can still run --------------------------------------------------------
def _seed_daily(sandbox: SandboxControl, opened_hours_ago: float = 1, count: int = 2, **extra: Any) -> str:
    """A daily 4-hour slot that opened ``opened_hours_ago`` hours ago on the sandbox clock."""
    now = datetime.fromisoformat(sandbox.health()["now"])
    start = (now - timedelta(hours=opened_hours_ago)).replace(second=0, microsecond=0)
    entry = {
        "kind": "ec2:scheduled-instance",
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "instance_type": "c5.large",
        "availability_zone": "us-east-1b",
        "recurrence": {"Frequency": "Daily", "Interval": 1},
        "slot_start_utc": start.strftime("%H:%M"),
        "slot_duration_hours": 4,
        "term_days_left": 200,
        "instance_count": count,
        "id": "sci-1234-1234-1234-1234-123456789012",
        **extra,
    }
    sandbox.seed([entry])
    return str(entry["id"])


def test_describe_scheduled_instances_shows_seeded_schedule(sandbox: SandboxControl, aws) -> None:
    sci_id = _seed_daily(sandbox, opened_hours_ago=5)  # the slot closed an hour ago
    ec2 = aws("ec2", account_id=ACCOUNT)
    [item] = ec2.describe_scheduled_instances(ScheduledInstanceIds=[sci_id])["ScheduledInstanceSet"]
    assert item["InstanceType"] == "c5.large" and item["InstanceCount"] == 2
    assert item["Recurrence"]["Frequency"] == "Daily" and item["SlotDurationInHours"] == 4
    now = datetime.now(UTC)
    assert now < item["NextSlotStartTime"] <= now + timedelta(hours=20)
    assert now - timedelta(hours=2) <= item["PreviousSlotEndTime"] <= now
    assert item["TermEndDate"] - item["TermStartDate"] == timedelta(days=365)
    assert item["TotalScheduledInstanceHours"] == 365 * 4
    filtered = ec2.describe_scheduled_instances(Filters=[{"Name": "instance-type", "Values": ["m5.large"]}])
    assert filtered["ScheduledInstanceSet"] == []
    window = {"EarliestTime": now, "LatestTime": now + timedelta(days=1)}
    assert len(ec2.describe_scheduled_instances(SlotStartTimeRange=window)["ScheduledInstanceSet"]) == 1
    with pytest.raises(ClientError) as caught:
        ec2.describe_scheduled_instances(ScheduledInstanceIds=["sci-0000-0000-0000-0000-000000000000"])
    assert _code(caught) == "InvalidScheduledInstance"
    # Another account sees nothing.
    assert aws("ec2", account_id=OTHER).describe_scheduled_instances()["ScheduledInstanceSet"] == []


def test_weekly_and_monthly_recurrences(sandbox: SandboxControl, aws) -> None:
    _seed_daily(sandbox, recurrence={"Frequency": "Weekly", "Interval": 1, "OccurrenceDays": [1, 7]})
    sandbox.seed(
        [
            {
                "kind": "ec2:scheduled-instance",
                "account_id": ACCOUNT,
                "region": "us-east-1",
                "instance_type": "m5.large",
                "availability_zone": "us-east-1a",
                "recurrence": {
                    "Frequency": "Monthly",
                    "Interval": 1,
                    "OccurrenceDays": [1],
                    "OccurrenceUnit": "DayOfMonth",
                },
                "slot_duration_hours": 24,
                "term_days_left": 300,
            }
        ]
    )
    items = aws("ec2", account_id=ACCOUNT).describe_scheduled_instances()["ScheduledInstanceSet"]
    weekly = next(i for i in items if i["Recurrence"]["Frequency"] == "Weekly")
    monthly = next(i for i in items if i["Recurrence"]["Frequency"] == "Monthly")
    assert weekly["NextSlotStartTime"].weekday() in (5, 6)  # Saturday or Sunday
    assert weekly["TotalScheduledInstanceHours"] in range(4 * 102, 4 * 106)
    assert monthly["NextSlotStartTime"].day == 1 and monthly["TotalScheduledInstanceHours"] in (11 * 24, 12 * 24)


def test_run_scheduled_instances_launches_real_instances(sandbox: SandboxControl, aws) -> None:
    sci_id = _seed_daily(sandbox)
    ec2 = aws("ec2", account_id=ACCOUNT)
    spec = {"ImageId": IMAGE, "InstanceType": "c5.large"}
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(ScheduledInstanceId=sci_id, LaunchSpecification=spec, DryRun=True)
    assert (_code(caught), _status(caught)) == ("DryRunOperation", 412)
    first = ec2.run_scheduled_instances(
        ScheduledInstanceId=sci_id, InstanceCount=1, LaunchSpecification=spec, ClientToken="run-1"
    )["InstanceIdSet"]
    assert len(first) == 1 and first[0].startswith("i-")
    # Same token, same parameters: the same answer and no second launch.
    again = ec2.run_scheduled_instances(
        ScheduledInstanceId=sci_id, InstanceCount=1, LaunchSpecification=spec, ClientToken="run-1"
    )["InstanceIdSet"]
    assert again == first
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(
            ScheduledInstanceId=sci_id, InstanceCount=2, LaunchSpecification=spec, ClientToken="run-1"
        )
    assert _code(caught) == "IdempotentParameterMismatch"
    reservations = ec2.describe_instances(InstanceIds=first)["Reservations"]
    [instance] = reservations[0]["Instances"]
    assert instance["InstanceType"] == "c5.large" and instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    [run] = _truth(sandbox, "scheduled-instance-run")
    assert run["created_by"] == {**run["created_by"], "operation": "ec2:RunScheduledInstances", "token": "run-1"}
    assert run["state"] == "running"
    # One of the two purchased instances is running: asking for two more exceeds the schedule.
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(ScheduledInstanceId=sci_id, InstanceCount=2, LaunchSpecification=spec)
    assert _code(caught) == "MaxScheduledInstanceCapacityExceeded"
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(
            ScheduledInstanceId=sci_id, LaunchSpecification={"ImageId": IMAGE, "InstanceType": "m5.large"}
        )
    assert _code(caught) == "ScheduledInstanceParameterMismatch"
    # AWS terminates the instances three minutes before the slot ends; then the slot is closed.
    sandbox.advance_clock(3 * 3600)
    state = ec2.describe_instances(InstanceIds=first)["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"
    assert _truth(sandbox, "scheduled-instance-run")[0]["state"] == "terminated"
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(ScheduledInstanceId=sci_id, LaunchSpecification=spec)
    assert _code(caught) == "ScheduledInstanceSlotNotOpen"


def test_run_scheduled_instances_terminal_errors(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(
            ScheduledInstanceId="sci-0000-0000-0000-0000-000000000000", LaunchSpecification={"ImageId": IMAGE}
        )
    assert (_code(caught), _status(caught)) == ("InvalidScheduledInstance", 400)
    sci_id = _seed_daily(sandbox, opened_hours_ago=6)
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(ScheduledInstanceId=sci_id, LaunchSpecification={"ImageId": IMAGE})
    assert _code(caught) == "ScheduledInstanceSlotNotOpen"
    assert _truth(sandbox, "scheduled-instance-run") == []
    assert ec2.describe_instances()["Reservations"] == []


def test_run_scheduled_instances_denied(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    ec2 = aws("ec2", account_id=DENY_ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.run_scheduled_instances(
            ScheduledInstanceId="sci-0000-0000-0000-0000-000000000000", LaunchSpecification={"ImageId": IMAGE}
        )
    assert _code(caught) == "UnauthorizedOperation"


# --- Spot instance requests ----------------------------------------------------------------------------------
def _spot_kwargs(**extra: Any) -> dict[str, Any]:
    return {
        "InstanceCount": 1,
        "LaunchSpecification": {"ImageId": IMAGE, "InstanceType": "m5.large"},
        "TagSpecifications": [
            {"ResourceType": "spot-instances-request", "Tags": [{"Key": "commitd:plan", "Value": "p-1"}]}
        ],
        **extra,
    }


def test_request_spot_instances_happy_path(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    [request] = ec2.request_spot_instances(**_spot_kwargs(ClientToken="spot-1"))["SpotInstanceRequests"]
    sir_id = request["SpotInstanceRequestId"]
    assert sir_id.startswith("sir-") and request["State"] == "open"
    assert request["Status"]["Code"] == "pending-evaluation"
    assert request["Tags"] == [{"Key": "commitd:plan", "Value": "p-1"}]
    [truth] = _truth(sandbox, "spot-instances-request")
    assert truth["id"] == sir_id and truth["state"] == "open"
    assert truth["created_by"]["operation"] == "ec2:RequestSpotInstances" and truth["created_by"]["token"] == "spot-1"
    sandbox.advance_clock(10)
    found = ec2.describe_spot_instance_requests(Filters=[{"Name": "tag:commitd:plan", "Values": ["p-1"]}])
    [active] = found["SpotInstanceRequests"]
    assert active["State"] == "active" and active["Status"]["Code"] == "fulfilled"
    [instance] = ec2.describe_instances(InstanceIds=[active["InstanceId"]])["Reservations"][0]["Instances"]
    assert instance["InstanceLifecycle"] == "spot" and instance["InstanceType"] == "m5.large"
    assert _truth(sandbox, "spot-instances-request")[0]["state"] == "active"
    assert (
        ec2.describe_spot_instance_requests(Filters=[{"Name": "state", "Values": ["open"]}])["SpotInstanceRequests"]
        == []
    )
    assert aws("ec2", account_id=OTHER).describe_spot_instance_requests()["SpotInstanceRequests"] == []


def test_request_spot_instances_full_launch_specification(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    vpc_id = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group_id = ec2.create_security_group(GroupName="spot", Description="spot", VpcId=vpc_id)["GroupId"]
    spec = {
        "ImageId": IMAGE,
        "InstanceType": "c5.large",
        "SecurityGroupIds": [group_id],
        "Placement": {"AvailabilityZone": "us-east-1c"},
        "Monitoring": {"Enabled": True},
        "KeyName": "ops",
        "BlockDeviceMappings": [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 20, "VolumeType": "gp3"}}],
        "UserData": base64.b64encode(b"#!/bin/sh").decode(),
    }
    [request] = ec2.request_spot_instances(
        LaunchSpecification=spec, SpotPrice="0.05", Type="persistent", InstanceInterruptionBehavior="stop"
    )["SpotInstanceRequests"]
    launch = request["LaunchSpecification"]
    assert launch["SecurityGroups"] == [{"GroupId": group_id}] and "UserData" not in launch
    assert launch["Placement"] == {"AvailabilityZone": "us-east-1c"} and launch["Monitoring"] == {"Enabled": True}
    assert request["SpotPrice"] == "0.050000" and request["InstanceInterruptionBehavior"] == "stop"
    sandbox.advance_clock(10)
    [active] = ec2.describe_spot_instance_requests(
        Filters=[{"Name": "launch.group-id", "Values": [group_id]}, {"Name": "type", "Values": ["persistent"]}]
    )["SpotInstanceRequests"]
    assert active["LaunchedAvailabilityZone"] == "us-east-1c"
    [instance] = ec2.describe_instances(InstanceIds=[active["InstanceId"]])["Reservations"][0]["Instances"]
    assert instance["SecurityGroups"][0]["GroupId"] == group_id


def test_spot_request_validity_window(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    now = datetime.fromisoformat(sandbox.health()["now"])
    [later] = ec2.request_spot_instances(
        **_spot_kwargs(ValidFrom=now + timedelta(hours=1), ValidUntil=now + timedelta(hours=2))
    )["SpotInstanceRequests"]
    sandbox.advance_clock(60)
    [waiting] = ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
    assert waiting["State"] == "open" and waiting["Status"]["Code"] == "not-scheduled-yet"
    sandbox.advance_clock(3600)
    [running] = ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
    assert running["State"] == "active" and running["SpotInstanceRequestId"] == later["SpotInstanceRequestId"]
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(**_spot_kwargs(ValidUntil=now - timedelta(hours=1)))
    assert _code(caught) == "InvalidParameterValue"


def test_request_spot_instances_client_token(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    first = ec2.request_spot_instances(**_spot_kwargs(ClientToken="spot-2", InstanceCount=2))
    assert len(first["SpotInstanceRequests"]) == 2
    again = ec2.request_spot_instances(**_spot_kwargs(ClientToken="spot-2", InstanceCount=2))
    assert [r["SpotInstanceRequestId"] for r in again["SpotInstanceRequests"]] == [
        r["SpotInstanceRequestId"] for r in first["SpotInstanceRequests"]
    ]
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(**_spot_kwargs(ClientToken="spot-2", InstanceCount=3))
    assert _code(caught) == "IdempotentParameterMismatch"
    assert len(_truth(sandbox, "spot-instances-request")) == 2
    # The token is per account: another account may use it.
    aws("ec2", account_id=OTHER).request_spot_instances(**_spot_kwargs(ClientToken="spot-2"))
    assert len(_truth(sandbox, "spot-instances-request")) == 3


def test_request_spot_instances_errors_and_dry_run(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(**_spot_kwargs(DryRun=True))
    assert (_code(caught), _status(caught)) == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(LaunchSpecification={"InstanceType": "m5.large"})
    assert _code(caught) == "MissingParameter"
    bad_tags = [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(**_spot_kwargs(TagSpecifications=bad_tags))
    assert _code(caught) == "InvalidParameterValue"
    spec = {"ImageId": IMAGE, "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(LaunchSpecification=spec)
    assert _code(caught) == "InvalidGroup.NotFound"
    assert _truth(sandbox, "spot-instances-request") == []


def test_request_spot_instances_denied(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    ec2 = aws("ec2", account_id=DENY_ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_instances(**_spot_kwargs())
    assert _code(caught) == "UnauthorizedOperation"
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=["sir-abcd1234"])
    assert _code(caught) == "UnauthorizedOperation"


def test_cancel_spot_instance_requests_keeps_them_visible(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    [opened] = ec2.request_spot_instances(**_spot_kwargs())["SpotInstanceRequests"]
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[opened["SpotInstanceRequestId"]], DryRun=True)
    assert _code(caught) == "DryRunOperation"
    result = ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[opened["SpotInstanceRequestId"]])
    assert result["CancelledSpotInstanceRequests"] == [
        {"SpotInstanceRequestId": opened["SpotInstanceRequestId"], "State": "cancelled"}
    ]
    sandbox.advance_clock(60)  # a cancelled open request never launches
    [gone] = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[opened["SpotInstanceRequestId"]])[
        "SpotInstanceRequests"
    ]
    assert gone["State"] == "cancelled" and gone["Status"]["Code"] == "canceled-before-fulfillment"
    assert "InstanceId" not in gone
    # An active request: cancelling leaves its instance running, which the caller must terminate.
    [active] = ec2.request_spot_instances(**_spot_kwargs())["SpotInstanceRequests"]
    sandbox.advance_clock(10)
    sir_id = active["SpotInstanceRequestId"]
    ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[sir_id])
    [cancelled] = ec2.describe_spot_instance_requests(
        Filters=[{"Name": "state", "Values": ["cancelled"]}, {"Name": "spot-instance-request-id", "Values": [sir_id]}]
    )["SpotInstanceRequests"]
    assert cancelled["Status"]["Code"] == "request-canceled-and-instance-running"
    instance_id = cancelled["InstanceId"]
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"
    # Cancelling again is harmless.
    again = ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=[sir_id])["CancelledSpotInstanceRequests"]
    assert again[0]["State"] == "cancelled"
    states = {r["id"]: r["state"] for r in _truth(sandbox, "spot-instances-request")}
    assert states == {opened["SpotInstanceRequestId"]: "cancelled", sir_id: "cancelled"}
    # Four hours after it is cancelled and its instance terminated, AWS deletes the request.
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.describe_spot_instance_requests()
    sandbox.advance_clock(4 * 3600 + 120)
    assert ec2.describe_spot_instance_requests()["SpotInstanceRequests"] == []
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[sir_id])
    assert _code(caught) == "InvalidSpotInstanceRequestID.NotFound"


def test_cancel_spot_instance_requests_unknown_and_malformed_ids(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=["sir-abcd1234"])
    assert (_code(caught), _status(caught)) == ("InvalidSpotInstanceRequestID.NotFound", 400)
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_instance_requests(SpotInstanceRequestIds=["nonsense"])
    assert _code(caught) == "InvalidSpotInstanceRequestID.Malformed"
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_instance_requests(SpotInstanceRequestIds=["sir-abcd1234"])
    assert _code(caught) == "InvalidSpotInstanceRequestID.NotFound"


def test_terminating_the_instance_closes_a_one_time_request(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    [one_time] = ec2.request_spot_instances(**_spot_kwargs())["SpotInstanceRequests"]
    [persistent] = ec2.request_spot_instances(**_spot_kwargs(Type="persistent"))["SpotInstanceRequests"]
    sandbox.advance_clock(10)
    described = ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
    ec2.terminate_instances(InstanceIds=[r["InstanceId"] for r in described])
    states = {r["SpotInstanceRequestId"]: r for r in ec2.describe_spot_instance_requests()["SpotInstanceRequests"]}
    assert states[one_time["SpotInstanceRequestId"]]["State"] == "closed"
    assert states[one_time["SpotInstanceRequestId"]]["Status"]["Code"] == "instance-terminated-by-user"
    assert states[one_time["SpotInstanceRequestId"]]["InstanceId"].startswith("i-")
    assert states[persistent["SpotInstanceRequestId"]]["State"] == "open"
    sandbox.advance_clock(10)
    relaunched = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[persistent["SpotInstanceRequestId"]])
    assert relaunched["SpotInstanceRequests"][0]["State"] == "active"


# --- Spot fleets ---------------------------------------------------------------------------------------------
def _fleet_config(**extra: Any) -> dict[str, Any]:
    return {
        "IamFleetRole": ROLE,
        "TargetCapacity": 2,
        "LaunchSpecifications": [{"ImageId": IMAGE, "InstanceType": "m5.large"}],
        "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": [{"Key": "commitd:plan", "Value": "f"}]}],
        **extra,
    }


def test_request_spot_fleet_happy_path(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(ClientToken="fleet-1"))["SpotFleetRequestId"]
    assert fleet_id.startswith("sfr-") and len(fleet_id) == 40
    [fleet] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert fleet["SpotFleetRequestState"] == "submitted"
    config = fleet["SpotFleetRequestConfig"]
    assert config["ClientToken"] == "fleet-1" and config["AllocationStrategy"] == "lowestPrice"
    assert config["Type"] == "maintain" and config["IamFleetRole"] == ROLE
    assert fleet["Tags"] == [{"Key": "commitd:plan", "Value": "f"}]
    [truth] = _truth(sandbox, "spot-fleet-request")
    assert (truth["id"], truth["state"], truth["created_by"]["operation"], truth["created_by"]["token"]) == (
        fleet_id,
        "submitted",
        "ec2:RequestSpotFleet",
        "fleet-1",
    )
    sandbox.advance_clock(10)
    [fleet] = ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]
    assert fleet["SpotFleetRequestState"] == "active" and fleet["ActivityStatus"] == "fulfilled"
    assert fleet["SpotFleetRequestConfig"]["FulfilledCapacity"] == 2.0
    active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    assert len(active) == 2
    instances = ec2.describe_instances(InstanceIds=[a["InstanceId"] for a in active])["Reservations"][0]["Instances"]
    assert {i["InstanceLifecycle"] for i in instances} == {"spot"}
    assert all({"Key": "aws:ec2spot:fleet-request-id", "Value": fleet_id} in i["Tags"] for i in instances)
    assert _truth(sandbox, "spot-fleet-request")[0]["state"] == "active"


def test_request_spot_fleet_client_token(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    first = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(ClientToken="fleet-2"))
    again = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(ClientToken="fleet-2"))
    assert again["SpotFleetRequestId"] == first["SpotFleetRequestId"]
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(ClientToken="fleet-2", TargetCapacity=5))
    assert _code(caught) == "IdempotentParameterMismatch"
    assert len(_truth(sandbox, "spot-fleet-request")) == 1
    # Without a token (it is not auto-filled for fleets), every call is a new fleet.
    ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())
    assert len(ec2.describe_spot_fleet_requests()["SpotFleetRequestConfigs"]) == 2


def test_request_spot_fleet_errors_and_dry_run(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(), DryRun=True)
    assert (_code(caught), _status(caught)) == ("DryRunOperation", 412)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(IamFleetRole="spot-fleet-role"))
    assert (_code(caught), _status(caught)) == ("InvalidSpotFleetRequestConfig", 400)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(LaunchSpecifications=[]))
    assert _code(caught) == "InvalidSpotFleetRequestConfig"
    bad_tags = [{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}]
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(TagSpecifications=bad_tags))
    assert _code(caught) == "InvalidParameterValue"
    assert _truth(sandbox, "spot-fleet-request") == []


def test_request_spot_fleet_with_launch_template(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    template = ec2.create_launch_template(
        LaunchTemplateName="spot-lt", LaunchTemplateData={"ImageId": IMAGE, "InstanceType": "c5.large"}
    )["LaunchTemplate"]
    config = _fleet_config(
        LaunchSpecifications=None,
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
                "Overrides": [{"InstanceType": "c5.large", "WeightedCapacity": 2.0}],
            }
        ],
        TargetCapacity=4,
    )
    config = {k: v for k, v in config.items() if v is not None}
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]
    sandbox.advance_clock(10)
    active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    assert [a["InstanceType"] for a in active] == ["c5.large", "c5.large"]
    missing = {**config, "LaunchTemplateConfigs": [{"LaunchTemplateSpecification": {"LaunchTemplateName": "nope"}}]}
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=missing)
    assert _code(caught).startswith("InvalidLaunchTemplateName")


def test_request_spot_fleet_denied(sandbox: SandboxControl, aws) -> None:
    sandbox.set_iam(True, DESCRIBE_ONLY)
    ec2 = aws("ec2", account_id=DENY_ACCOUNT)
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())
    assert _code(caught) == "UnauthorizedOperation"
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_fleet_requests(
            SpotFleetRequestIds=[f"sfr-{'0' * 8}-0000-0000-0000-{'0' * 12}"], TerminateInstances=True
        )
    assert _code(caught) == "UnauthorizedOperation"


def test_cancel_spot_fleet_with_termination(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())["SpotFleetRequestId"]
    sandbox.advance_clock(10)
    instance_ids = [
        a["InstanceId"] for a in ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    ]
    with pytest.raises(ClientError) as caught:
        ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True, DryRun=True)
    assert _code(caught) == "DryRunOperation"
    unknown = "sfr-11111111-2222-3333-4444-555555555555"
    result = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id, unknown, "sfr-bad"], TerminateInstances=True)
    assert result["SuccessfulFleetRequests"] == [
        {
            "SpotFleetRequestId": fleet_id,
            "PreviousSpotFleetRequestState": "active",
            "CurrentSpotFleetRequestState": "cancelled_terminating",
        }
    ]
    errors = {e["SpotFleetRequestId"]: e["Error"]["Code"] for e in result["UnsuccessfulFleetRequests"]}
    assert errors == {unknown: "fleetRequestIdDoesNotExist", "sfr-bad": "fleetRequestIdMalformed"}
    reservations = ec2.describe_instances(InstanceIds=instance_ids)["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    sandbox.advance_clock(120)
    [fleet] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert fleet["SpotFleetRequestState"] == "cancelled"  # still visible: moto would have deleted it
    assert _truth(sandbox, "spot-fleet-request")[0]["state"] == "cancelled"
    again = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    assert again["UnsuccessfulFleetRequests"][0]["Error"]["Code"] == "fleetRequestNotInCancellableState"
    sandbox.advance_clock(49 * 3600)
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])
    assert _code(caught) == "InvalidSpotFleetRequestId.NotFound"
    with pytest.raises(ClientError) as caught:
        ec2.describe_spot_fleet_requests(SpotFleetRequestIds=["sfr-bad"])
    assert _code(caught) == "InvalidSpotFleetRequestId.Malformed"


def test_cancel_spot_fleet_without_termination(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())["SpotFleetRequestId"]
    sandbox.advance_clock(10)
    result = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=False)
    assert result["SuccessfulFleetRequests"][0]["CurrentSpotFleetRequestState"] == "cancelled_running"
    active = ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]
    assert len(active) == 2
    assert _truth(sandbox, "spot-fleet-request")[0]["state"] == "cancelled_running"
    # A cancelled_running fleet can still be cancelled with termination (moto deleted it instead).
    result = ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    assert result["SuccessfulFleetRequests"][0] == {
        "SpotFleetRequestId": fleet_id,
        "PreviousSpotFleetRequestState": "cancelled_running",
        "CurrentSpotFleetRequestState": "cancelled_terminating",
    }
    assert ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"] == []


def test_cancelled_running_fleet_becomes_cancelled_when_its_instances_are_gone(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())["SpotFleetRequestId"]
    sandbox.advance_clock(10)
    ids = [a["InstanceId"] for a in ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]]
    ec2.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=False)
    ec2.terminate_instances(InstanceIds=ids)
    [fleet] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert fleet["SpotFleetRequestState"] == "cancelled"


def test_spot_fleet_paginates(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    for _ in range(3):
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(TargetCapacity=0))
    page = ec2.describe_spot_fleet_requests(MaxResults=2)
    assert len(page["SpotFleetRequestConfigs"]) == 2 and page["NextToken"]
    rest = ec2.describe_spot_fleet_requests(MaxResults=2, NextToken=page["NextToken"])
    assert len(rest["SpotFleetRequestConfigs"]) == 1 and "NextToken" not in rest


def test_spot_fleet_expires_at_valid_until(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    now = datetime.fromisoformat(sandbox.health()["now"])
    config = _fleet_config(ValidUntil=now + timedelta(hours=1), TerminateInstancesWithExpiration=True)
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]
    sandbox.advance_clock(10)
    assert len(ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"]) == 2
    sandbox.advance_clock(3600)
    [fleet] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert fleet["SpotFleetRequestState"] == "cancelled_terminating"
    assert ec2.describe_spot_fleet_instances(SpotFleetRequestId=fleet_id)["ActiveInstances"] == []
    with pytest.raises(ClientError) as caught:
        ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config(ValidUntil=now - timedelta(hours=1)))
    assert _code(caught) == "InvalidSpotFleetRequestConfig"


def test_spot_requests_can_be_tagged_after_creation(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    [request] = ec2.request_spot_instances(**_spot_kwargs())["SpotInstanceRequests"]
    sir_id = request["SpotInstanceRequestId"]
    fleet_id = ec2.request_spot_fleet(SpotFleetRequestConfig=_fleet_config())["SpotFleetRequestId"]
    ec2.create_tags(Resources=[sir_id, fleet_id], Tags=[{"Key": "intent", "Value": "i-42"}])
    found = ec2.describe_spot_instance_requests(Filters=[{"Name": "tag:intent", "Values": ["i-42"]}])
    assert [r["SpotInstanceRequestId"] for r in found["SpotInstanceRequests"]] == [sir_id]
    [fleet] = ec2.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    assert {"Key": "intent", "Value": "i-42"} in fleet["Tags"]
