"""The sandbox's control API and each fault kind, driven over HTTP with real boto3 clients."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from sandbox.control import SandboxControl, SandboxControlError
from tests.sandbox.clients import client

ACCOUNT = "111122223333"


def _offering_id(ec2) -> str:
    offerings = ec2.describe_reserved_instances_offerings(
        InstanceType="m5.large",
        OfferingClass="standard",
        OfferingType="No Upfront",
        ProductDescription="Linux/UNIX",
        IncludeMarketplace=False,
        Filters=[{"Name": "scope", "Values": ["Region"]}, {"Name": "duration", "Values": ["31536000"]}],
    )["ReservedInstancesOfferings"]
    assert len(offerings) == 1
    return offerings[0]["ReservedInstancesOfferingId"]


def test_reset_forgets_resources_but_keeps_catalogue(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=_offering_id(ec2), InstanceCount=1)
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1
    sandbox.reset()
    assert sandbox.resources() == []
    ec2 = aws("ec2", account_id=ACCOUNT)
    assert ec2.describe_reserved_instances()["ReservedInstances"] == []
    assert _offering_id(ec2)


def test_clock_moves_payment_pending_to_active_and_expiry_to_retired(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    ri_id = ec2.purchase_reserved_instances_offering(
        ReservedInstancesOfferingId=_offering_id(ec2), InstanceCount=1
    )["ReservedInstancesId"]
    [truth] = sandbox.resources(account_id=ACCOUNT)
    assert truth["id"] == ri_id and truth["state"] == "payment-pending"
    assert truth["created_by"]["operation"] == "ec2:PurchaseReservedInstancesOffering"
    sandbox.advance_clock(60)
    assert ec2.describe_reserved_instances()["ReservedInstances"][0]["State"] == "active"
    sandbox.advance_clock(366 * 86400)
    assert ec2.describe_reserved_instances()["ReservedInstances"][0]["State"] == "retired"


def test_control_api_rejects_bad_input(sandbox: SandboxControl) -> None:
    with pytest.raises(SandboxControlError, match="probability or a count"):
        sandbox.add_fault("ec2:*", "throttle")
    with pytest.raises(SandboxControlError, match="kind"):
        sandbox.add_fault("ec2:*", "explode", count=1)
    with pytest.raises(SandboxControlError, match="only moves forward"):
        sandbox.advance_clock(-5)
    with pytest.raises(SandboxControlError, match="no control route"):
        sandbox._call("GET", "nothing-here")


def test_throttle_fault_uses_the_service_error_and_botocore_retries_reads(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    sandbox.add_fault("ec2:DescribeReservedInstances", "throttle", count=1)
    with pytest.raises(ClientError) as caught:
        ec2.describe_reserved_instances()
    assert caught.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    sandbox.add_fault("ec2:DescribeReservedInstances", "throttle", count=1)
    retrying = aws("ec2", account_id=ACCOUNT, retries=3)
    response = retrying.describe_reserved_instances()
    assert response["ResponseMetadata"]["RetryAttempts"] == 1


def test_error_fault_is_a_5xx(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    sandbox.add_fault("ec2:Purchase*", "error", probability=1.0)
    with pytest.raises(ClientError) as caught:
        ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=_offering_id(ec2), InstanceCount=1)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert sandbox.resources() == []


def test_latency_fault_delays_the_answer(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT)
    sandbox.add_fault("ec2:DescribeReservedInstances", "latency", count=1, latency_ms=300)
    started = time.monotonic()
    ec2.describe_reserved_instances()
    assert time.monotonic() - started >= 0.3


def test_latency_fault_applies_the_call_after_the_delay_while_other_calls_are_served(
    sandbox: SandboxControl, aws
) -> None:
    """A purchase delayed past the client's read timeout still happens once the delay is over, and the server
    answers other calls meanwhile (the delay holds no lock)."""
    ec2 = aws("ec2")
    impatient = client(sandbox.url, "ec2", Config(read_timeout=1, retries={"total_max_attempts": 1}))
    offering = _offering_id(ec2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "latency", count=1, latency_ms=2500)
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        purchase = pool.submit(
            impatient.purchase_reserved_instances_offering, ReservedInstancesOfferingId=offering, InstanceCount=1
        )
        time.sleep(0.5)
        asked = time.monotonic()
        assert ec2.describe_reserved_instances()["ReservedInstances"] == []
        assert time.monotonic() - asked < 0.5
        with pytest.raises(ReadTimeoutError):
            purchase.result()
    assert ec2.describe_reserved_instances()["ReservedInstances"] == []  # the client gave up; the call waits on
    while not ec2.describe_reserved_instances()["ReservedInstances"]:
        assert time.monotonic() - started < 4, "the delayed purchase never took effect"
        time.sleep(0.05)
    assert time.monotonic() - started >= 2.5
    assert len(sandbox.resources()) == 1


def test_reset_fault_drops_before_anything_happens(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    offering = _offering_id(ec2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "reset", count=1)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering, InstanceCount=1)
    assert sandbox.resources() == []


def test_commit_then_drop_applies_the_effect_without_an_answer(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    offering = _offering_id(ec2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_drop", count=1)
    with pytest.raises(ConnectionClosedError):
        ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering, InstanceCount=1)
    assert len(sandbox.resources(account_id=ACCOUNT)) == 1
    assert sandbox.faults()["fired"]["commit_then_drop"] >= 1


def test_commit_then_error_applies_the_effect_then_answers_a_5xx(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    offering = _offering_id(ec2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_error", count=1)
    with pytest.raises(ClientError) as caught:
        ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering, InstanceCount=1)
    assert caught.value.response["Error"]["Code"] == "InternalError"  # the body of the `error` fault
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert [r["type"] for r in sandbox.resources(account_id=ACCOUNT)] == ["reserved-instances"]
    assert sandbox.faults()["fired"]["commit_then_error"] == 1


def test_commit_then_error_makes_a_blind_retry_buy_twice(sandbox: SandboxControl, aws) -> None:
    """botocore re-sends a 500 on its own: the purchase without a client token happens twice."""
    ec2 = aws("ec2", account_id=ACCOUNT, retries=2)
    offering = _offering_id(ec2)
    sandbox.add_fault("ec2:PurchaseReservedInstancesOffering", "commit_then_error", count=1)
    answered = ec2.purchase_reserved_instances_offering(ReservedInstancesOfferingId=offering, InstanceCount=1)
    assert answered["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(ec2.describe_reserved_instances()["ReservedInstances"]) == 2
    assert len(sandbox.resources(account_id=ACCOUNT)) == 2


def test_faults_are_repeatable_with_a_seed() -> None:
    from sandbox.faults import FaultInjector, FaultRule

    def pattern(seed: int) -> list[bool]:
        injector = FaultInjector(seed)
        injector.add(FaultRule(operation="ec2:*", kind="throttle", probability=0.5))
        return [bool(injector.draw("ec2:PurchaseReservedInstancesOffering")) for _ in range(50)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)


def test_an_operation_nobody_simulates_is_a_plain_error_not_a_dropped_connection(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    with pytest.raises(ClientError) as caught:
        ec2.get_capacity_reservation_usage(CapacityReservationId="cr-12345678901234567")
    assert caught.value.response["Error"]["Code"] == "NotImplemented"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "ec2:GetCapacityReservationUsage" in caught.value.response["Error"]["Message"]


def test_a_required_parameter_left_empty_is_missing_parameter(sandbox: SandboxControl, aws) -> None:
    ec2 = aws("ec2", account_id=ACCOUNT, retries=1)
    # An empty structure is dropped by the query protocol: AWS sees no Recurrence at all.
    with pytest.raises(ClientError) as caught:
        ec2.describe_scheduled_instance_availability(
            FirstSlotStartTimeRange={"EarliestTime": "2026-12-01T00:00:00Z", "LatestTime": "2026-12-02T00:00:00Z"},
            Recurrence={},
        )
    assert caught.value.response["Error"]["Code"] == "MissingParameter"
    assert "Recurrence" in caught.value.response["Error"]["Message"]
