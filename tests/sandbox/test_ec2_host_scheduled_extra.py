"""What the host-reservation and scheduled-instance families need from the sandbox beyond its first version:
seeded Dedicated Hosts with fixed ids, and the instances of a scheduled run found by AWS's ``client-token`` and
``instance-lifecycle`` filters of DescribeInstances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox.control import SandboxControl, SandboxControlError

ACCOUNT = "210000000011"
OTHER = "210000000012"
IMAGE = "ami-0123456789abcdef0"
HOSTS = ["h-0c0ffee00000000a1", "h-0c0ffee00000000a2"]


def _seed_hosts(sandbox: SandboxControl, **entry: Any) -> None:
    sandbox.seed([{"kind": "ec2:dedicated-host", "account_id": ACCOUNT, "region": "us-east-1",
                   "availability_zone": "us-east-1a", **entry}])


def test_seeded_hosts_have_their_ids_and_can_be_reserved(sandbox: SandboxControl, aws) -> None:
    _seed_hosts(sandbox, instance_family="m5", host_ids=HOSTS, tags={"team": "db"})
    _seed_hosts(sandbox, instance_type="c5.large")  # one host, moto's random id
    ec2 = aws("ec2", account_id=ACCOUNT)
    hosts = {h["HostId"]: h for h in ec2.describe_hosts()["Hosts"]}
    assert set(HOSTS) < set(hosts) and len(hosts) == 3
    assert hosts[HOSTS[0]]["HostProperties"] == {"InstanceFamily": "m5"}
    assert hosts[HOSTS[0]]["Tags"] == [{"Key": "team", "Value": "db"}]
    assert hosts[HOSTS[0]]["State"] == "available" and hosts[HOSTS[0]]["AvailabilityZone"] == "us-east-1a"
    [c5] = [h for h in hosts.values() if h["HostId"] not in HOSTS]
    assert c5["HostProperties"]["InstanceType"] == "c5.large"
    assert aws("ec2", account_id=OTHER).describe_hosts()["Hosts"] == []
    [offering] = ec2.describe_host_reservation_offerings(
        Filter=[{"Name": "instance-family", "Values": ["m5"]}, {"Name": "payment-option", "Values": ["NoUpfront"]}],
        MaxDuration=31536000)["OfferingSet"]
    bought = ec2.purchase_host_reservation(HostIdSet=HOSTS, OfferingId=offering["OfferingId"], ClientToken="t-1")
    hr_id = bought["Purchase"][0]["HostReservationId"]
    assert {h["HostReservationId"] for h in ec2.describe_hosts(HostIds=HOSTS)["Hosts"]} == {hr_id}


@pytest.mark.parametrize("entry, words", [
    ({"instance_family": "m5", "instance_type": "m5.large"}, "one of them"),
    ({}, "one of them"),
    ({"instance_family": "m5", "host_ids": ["host-1"]}, "hex digits"),
    ({"instance_family": "m5", "host_ids": HOSTS, "quantity": 3}, "exactly quantity"),
])
def test_bad_host_seeds_are_refused(sandbox: SandboxControl, entry: dict[str, Any], words: str) -> None:
    with pytest.raises(SandboxControlError, match=words):
        _seed_hosts(sandbox, **entry)


def test_a_host_id_cannot_be_seeded_twice(sandbox: SandboxControl) -> None:
    _seed_hosts(sandbox, instance_family="m5", host_ids=HOSTS[:1])
    with pytest.raises(SandboxControlError, match="already exist"):
        _seed_hosts(sandbox, instance_family="m5", host_ids=HOSTS[:1])


def test_a_scheduled_run_is_found_by_its_client_token_and_lifecycle(sandbox: SandboxControl, aws) -> None:
    opened = datetime.now(UTC) - timedelta(hours=1)
    sci_id = "sci-abcd-abcd-abcd-abcd-abcdabcdabcd"
    sandbox.seed([{"kind": "ec2:scheduled-instance", "account_id": ACCOUNT, "region": "us-east-1",
                   "instance_type": "c5.large", "availability_zone": "us-east-1b",
                   "recurrence": {"Frequency": "Daily", "Interval": 1},
                   "slot_start_utc": f"{opened.hour:02d}:{opened.minute:02d}", "slot_duration_hours": 4,
                   "term_days_left": 200, "instance_count": 2, "id": sci_id}])
    ec2 = aws("ec2", account_id=ACCOUNT)
    ec2.run_instances(ImageId=IMAGE, MinCount=1, MaxCount=1, InstanceType="c5.large", ClientToken="plain-run")
    launched = ec2.run_scheduled_instances(ScheduledInstanceId=sci_id, InstanceCount=1, ClientToken="sched-run-1",
                                           LaunchSpecification={"ImageId": IMAGE})["InstanceIdSet"]

    def ids(filters: list[dict[str, Any]]) -> list[str]:
        found = ec2.describe_instances(Filters=filters)["Reservations"]
        return sorted(i["InstanceId"] for r in found for i in r["Instances"])

    assert ids([{"Name": "client-token", "Values": ["sched-run-1"]}]) == launched
    assert ids([{"Name": "client-token", "Values": ["nobody's"]}]) == []
    assert ids([{"Name": "instance-lifecycle", "Values": ["scheduled"]}]) == launched
    [instance] = ec2.describe_instances(InstanceIds=launched)["Reservations"][0]["Instances"]
    assert (instance["ClientToken"], instance["InstanceLifecycle"]) == ("sched-run-1", "scheduled")
    assert len(ids([{"Name": "client-token", "Values": ["plain-run"]}])) == 1  # RunInstances' own token
