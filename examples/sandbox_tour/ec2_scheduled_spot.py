"""Tour section: EC2 Scheduled Instances (no longer sold) and Spot requests and fleets.

Scheduled Instances: AWS stopped selling them, so DescribeScheduledInstanceAvailability finds nothing and
PurchaseScheduledInstances is refused. The tour tries the purchase and shows that refusal
(``UnsupportedOperation``): it is counted as a refusal, not as performing the action. RunScheduledInstances
works for a schedule bought in the past: the tour seeds one into the sandbox (``POST /_sandbox/seed``), lets
the sandbox's clock reach its next slot, and launches it.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from examples.sandbox_tour.tour import Tour

ACCOUNT = "230000000001"
REGION = "us-east-1"
IMAGE_ID = "ami-0abcdef1234567890"
ZONE = "us-east-1a"


def tour(t: Tour) -> None:
    ec2 = t.client("ec2", REGION, account_id=ACCOUNT)
    _scheduled_instances(t, ec2)
    _spot_instances(t, ec2)
    _spot_fleet(t, ec2)


def _scheduled_instances(t: Tour, client: Any) -> None:
    now = datetime.now(UTC)
    available = client.describe_scheduled_instance_availability(
        FirstSlotStartTimeRange={"EarliestTime": now, "LatestTime": now + timedelta(days=30)},
        Recurrence={"Frequency": "Weekly", "Interval": 1, "OccurrenceDays": [2]},
        MinSlotDurationInHours=24,
    )["ScheduledInstanceAvailabilitySet"]
    # There is nothing on sale; a purchase token from the days when there was is refused all the same.
    token = available[0]["PurchaseToken"] if available else base64.b64encode(b'{"schedule":"weekly"}').decode()
    try:
        purchased = client.purchase_scheduled_instances(
            PurchaseRequests=[{"InstanceCount": 1, "PurchaseToken": token}]
        )["ScheduledInstanceSet"]
        t.record("ec2:PurchaseScheduledInstances", ", ".join(s["ScheduledInstanceId"] for s in purchased))
    except ClientError as exc:
        t.refused("ec2:PurchaseScheduledInstances", exc, "AWS no longer sells Scheduled Instances")

    # A schedule bought in the past: every day from 06:00 UTC for 8 hours, two m5.large in us-east-1a.
    t.seed([{
        "kind": "ec2:scheduled-instance", "account_id": ACCOUNT, "region": REGION, "instance_type": "m5.large",
        "availability_zone": ZONE, "platform": "Linux/UNIX", "recurrence": {"Frequency": "Daily", "Interval": 1},
        "slot_start_utc": "06:00", "slot_duration_hours": 8, "term_days_left": 200, "instance_count": 2,
    }])
    [schedule] = client.describe_scheduled_instances(
        Filters=[{"Name": "availability-zone", "Values": [ZONE]}]
    )["ScheduledInstanceSet"]
    now = t.let_time_pass(0)
    t.let_time_pass((schedule["NextSlotStartTime"] - now).total_seconds() + 60)  # a minute into the next slot
    launched = client.run_scheduled_instances(
        ScheduledInstanceId=schedule["ScheduledInstanceId"],
        InstanceCount=1,
        ClientToken=f"tour-run-{uuid.uuid4()}",
        LaunchSpecification={"ImageId": IMAGE_ID, "InstanceType": "m5.large"},
    )["InstanceIdSet"]
    states = [
        i["State"]["Name"]
        for r in client.describe_instances(InstanceIds=launched)["Reservations"]
        for i in r["Instances"]
    ]
    t.record("ec2:RunScheduledInstances", f"{schedule['ScheduledInstanceId']} launched {', '.join(launched)} {states}")


def _spot_instances(t: Tour, client: Any) -> None:
    token = f"tour-spot-{uuid.uuid4()}"
    request = {
        "ClientToken": token,
        "InstanceCount": 1,
        "Type": "one-time",
        "LaunchSpecification": {"ImageId": IMAGE_ID, "InstanceType": "m5.large"},
        "TagSpecifications": [{"ResourceType": "spot-instances-request", "Tags": [{"Key": "tour", "Value": "spot"}]}],
    }
    [created] = client.request_spot_instances(**request)["SpotInstanceRequests"]
    # A retry with the same token creates nothing new.
    [replayed] = client.request_spot_instances(**request)["SpotInstanceRequests"]
    assert replayed["SpotInstanceRequestId"] == created["SpotInstanceRequestId"]
    t.let_time_pass(30)
    # Our own requests, by tag (a crashed caller would find them this way), then this one by id.
    mine = client.describe_spot_instance_requests(Filters=[{"Name": "tag:tour", "Values": ["spot"]}])
    [fulfilled] = [
        r for r in mine["SpotInstanceRequests"] if r["SpotInstanceRequestId"] == created["SpotInstanceRequestId"]
    ]
    t.record("ec2:RequestSpotInstances", f"{fulfilled['SpotInstanceRequestId']} {fulfilled['State']}")

    cancelled = client.cancel_spot_instance_requests(SpotInstanceRequestIds=[fulfilled["SpotInstanceRequestId"]])[
        "CancelledSpotInstanceRequests"
    ][0]
    # Cancelling a request leaves its instance running: terminate it separately.
    if fulfilled.get("InstanceId"):
        client.terminate_instances(InstanceIds=[fulfilled["InstanceId"]])
    t.record("ec2:CancelSpotInstanceRequests", f"{cancelled['SpotInstanceRequestId']} {cancelled['State']}")


def _spot_fleet(t: Tour, client: Any) -> None:
    config = {
        "ClientToken": f"tour-fleet-{uuid.uuid4()}",
        "IamFleetRole": f"arn:aws:iam::{ACCOUNT}:role/aws-ec2-spot-fleet-tagging-role",
        "TargetCapacity": 2,
        "AllocationStrategy": "priceCapacityOptimized",
        "Type": "request",
        "LaunchSpecifications": [{"ImageId": IMAGE_ID, "InstanceType": "c5.large"}],
        "TagSpecifications": [{"ResourceType": "spot-fleet-request", "Tags": [{"Key": "tour", "Value": "fleet"}]}],
    }
    fleet_id = client.request_spot_fleet(SpotFleetRequestConfig=config)["SpotFleetRequestId"]
    t.let_time_pass(30)
    [fleet] = client.describe_spot_fleet_requests(SpotFleetRequestIds=[fleet_id])["SpotFleetRequestConfigs"]
    capacity = fleet["SpotFleetRequestConfig"].get("FulfilledCapacity", 0)
    t.record("ec2:RequestSpotFleet", f"{fleet_id} {fleet['SpotFleetRequestState']}, capacity {capacity:g}")

    result = client.cancel_spot_fleet_requests(SpotFleetRequestIds=[fleet_id], TerminateInstances=True)
    [done] = result["SuccessfulFleetRequests"]
    t.record("ec2:CancelSpotFleetRequests", f"{fleet_id} {done['CurrentSpotFleetRequestState']}")
