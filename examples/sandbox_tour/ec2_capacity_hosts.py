"""Tour section: On-Demand Capacity Reservations and Dedicated Host Reservations, as in AWS's EC2 docs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from examples.sandbox_tour.tour import Tour

ACCOUNT = "220000000001"
REGION = "us-east-1"
ZONE = "us-east-1a"


def tour(t: Tour) -> None:
    ec2 = t.client("ec2", REGION, account_id=ACCOUNT)
    capacity_reservations(t, ec2)
    host_reservation(t, ec2)


def capacity_reservations(t: Tour, client: Any) -> None:
    # Reserve two m5.large in one AZ; the client token makes a retried create safe.
    created = client.create_capacity_reservation(
        ClientToken=str(uuid.uuid4()),
        InstanceType="m5.large",
        InstancePlatform="Linux/UNIX",
        AvailabilityZone=ZONE,
        InstanceCount=2,
        InstanceMatchCriteria="targeted",
        EndDateType="unlimited",
        TagSpecifications=[{"ResourceType": "capacity-reservation", "Tags": [{"Key": "tour", "Value": "yes"}]}],
    )["CapacityReservation"]
    cr_id = created["CapacityReservationId"]
    t.record("ec2:CreateCapacityReservation", f"{cr_id} {created['State']}, {created['TotalInstanceCount']} slots")

    # Grow it to three and let it end thirty days after it was created (the service's clock, not ours).
    client.modify_capacity_reservation(
        CapacityReservationId=cr_id,
        InstanceCount=3,
        EndDateType="limited",
        EndDate=created["CreateDate"] + timedelta(days=30),
    )
    [modified] = client.describe_capacity_reservations(
        CapacityReservationIds=[cr_id]
    )["CapacityReservations"]
    t.record("ec2:ModifyCapacityReservation", f"{modified['TotalInstanceCount']} slots, ends {modified['EndDate']:%F}")

    # Point a stopped instance at the reservation (targeted reservations only take instances that ask for them).
    [image] = client.describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn2-ami-hvm-2.0.20180810-x86_64-gp2"]}]
    )["Images"]
    instance_id = client.run_instances(
        ImageId=image["ImageId"], InstanceType="m5.large", MinCount=1, MaxCount=1,
        Placement={"AvailabilityZone": ZONE},
    )["Instances"][0]["InstanceId"]
    client.stop_instances(InstanceIds=[instance_id])
    client.get_waiter("instance_stopped").wait(InstanceIds=[instance_id])
    client.modify_instance_capacity_reservation_attributes(
        InstanceId=instance_id,
        CapacityReservationSpecification={"CapacityReservationTarget": {"CapacityReservationId": cr_id}},
    )
    instance = client.describe_instances(
        InstanceIds=[instance_id]
    )["Reservations"][0]["Instances"][0]
    target = instance["CapacityReservationSpecification"]["CapacityReservationTarget"]["CapacityReservationId"]
    client.start_instances(InstanceIds=[instance_id])
    [used] = client.describe_capacity_reservations(
        CapacityReservationIds=[cr_id]
    )["CapacityReservations"]
    t.record(
        "ec2:ModifyInstanceCapacityReservationAttributes",
        f"{instance_id} targets {target}; {used['AvailableInstanceCount']} of {used['TotalInstanceCount']} free",
    )

    client.stop_instances(InstanceIds=[instance_id])
    client.cancel_capacity_reservation(CapacityReservationId=cr_id)
    [cancelled] = client.describe_capacity_reservations(
        CapacityReservationIds=[cr_id], Filters=[{"Name": "state", "Values": ["cancelled"]}]
    )["CapacityReservations"]
    t.record("ec2:CancelCapacityReservation", f"{cancelled['CapacityReservationId']} {cancelled['State']}")


def host_reservation(t: Tour, client: Any) -> None:
    host_ids = client.allocate_hosts(
        AvailabilityZone=ZONE, InstanceFamily="m5", Quantity=2
    )["HostIds"]
    [offering] = client.describe_host_reservation_offerings(
        Filter=[
            {"Name": "instance-family", "Values": ["m5"]},
            {"Name": "payment-option", "Values": ["PartialUpfront"]},
        ],
        MinDuration=31536000,
        MaxDuration=31536000,
    )["OfferingSet"]
    preview = client.get_host_reservation_purchase_preview(
        HostIdSet=host_ids, OfferingId=offering["OfferingId"]
    )
    token = str(uuid.uuid4())
    bought = client.purchase_host_reservation(
        HostIdSet=host_ids,
        OfferingId=offering["OfferingId"],
        ClientToken=token,
        LimitPrice=preview["TotalUpfrontPrice"],
        CurrencyCode="USD",
        TagSpecifications=[{"ResourceType": "host-reservation", "Tags": [{"Key": "tour", "Value": "yes"}]}],
    )
    hr_id = bought["Purchase"][0]["HostReservationId"]
    t.let_time_pass(120)
    [reservation] = client.describe_host_reservations(
        HostReservationIdSet=[hr_id], Filter=[{"Name": "tag:tour", "Values": ["yes"]}]
    )["HostReservationSet"]
    t.record(
        "ec2:PurchaseHostReservation",
        f"{hr_id} {reservation['State']} for {reservation['Count']} hosts, {bought['TotalUpfrontPrice']} USD upfront",
    )
