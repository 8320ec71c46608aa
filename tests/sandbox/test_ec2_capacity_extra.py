"""The ``ec2:instance`` seed kind: moto instances with fixed ids, so that a plan file can name one."""

from __future__ import annotations

import pytest

from sandbox.control import SandboxControl, SandboxControlError

ACCOUNT = "111122223333"


def _instances(ec2: object) -> dict[str, dict[str, object]]:
    reservations = ec2.describe_instances()["Reservations"]  # type: ignore[attr-defined]
    return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}


def test_seeded_instances_have_their_ids_state_and_placement(sandbox: SandboxControl, aws) -> None:
    sandbox.seed([
        {"kind": "ec2:instance", "account_id": ACCOUNT, "region": "us-east-1", "instance_type": "m5.large",
         "availability_zone": "us-east-1a", "instance_ids": ["i-0c0ffee0000000e01"]},
        {"kind": "ec2:instance", "account_id": ACCOUNT, "region": "us-east-1", "instance_type": "c5.large",
         "availability_zone": "us-east-1b", "instance_state": "running", "count": 2},
    ])
    ec2 = aws("ec2", account_id=ACCOUNT)
    seen = _instances(ec2)
    assert len(seen) == 3
    stopped = seen["i-0c0ffee0000000e01"]
    assert stopped["State"]["Name"] == "stopped" and stopped["InstanceType"] == "m5.large"
    assert stopped["Placement"]["AvailabilityZone"] == "us-east-1a"
    running = [i for i in seen.values() if i["InstanceId"] != "i-0c0ffee0000000e01"]
    assert {i["State"]["Name"] for i in running} == {"running"}
    assert {i["Placement"]["AvailabilityZone"] for i in running} == {"us-east-1b"}
    # A seeded stopped instance takes a capacity reservation setting, as one RunInstances made would.
    ec2.modify_instance_capacity_reservation_attributes(
        InstanceId="i-0c0ffee0000000e01", CapacityReservationSpecification={"CapacityReservationPreference": "none"})
    assert _instances(ec2)["i-0c0ffee0000000e01"]["CapacityReservationSpecification"] == {
        "CapacityReservationPreference": "none"}
    # Reset forgets them (moto's state goes with the sandbox's).
    sandbox.reset()
    assert _instances(ec2) == {}


@pytest.mark.parametrize("entry, reason", [
    ({"instance_ids": ["i-nothex"]}, "not i- followed by"),
    ({"instance_ids": ["i-0c0ffee0000000e01"], "count": 2}, "exactly count"),
    ({"instance_state": "terminated"}, "instance_state"),
    ({"availability_zone": "us-west-2a"}, "Invalid availability zone"),
])
def test_bad_instance_seeds_are_refused(sandbox: SandboxControl, entry: dict[str, object], reason: str) -> None:
    base = {"kind": "ec2:instance", "account_id": ACCOUNT, "region": "us-east-1", "instance_type": "m5.large",
            "availability_zone": "us-east-1a"}
    with pytest.raises(SandboxControlError, match=reason):
        sandbox.seed([{**base, **entry}])


def test_an_instance_id_is_seeded_once(sandbox: SandboxControl) -> None:
    entry = {"kind": "ec2:instance", "account_id": ACCOUNT, "region": "us-east-1", "instance_type": "m5.large",
             "availability_zone": "us-east-1a", "instance_ids": ["i-0c0ffee0000000e09"]}
    sandbox.seed([entry])
    with pytest.raises(SandboxControlError, match="already exist"):
        sandbox.seed([entry])
